"""Files only their owner reads, written whole or not at all: keys, key exports, backups.

The bytes go to a temporary file beside the target (mode 0600, created exclusively),
are synced, then take the target's name: by a hard link, which refuses an existing file
even one that appeared a moment ago, or by a rename when replacing is asked for. The
folder is synced after, so the new name survives a power loss. A crash at any point
leaves the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

# file systems without hard links (FAT, exFAT, some network shares) answer these
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV)


def publish(partial: Path, path: Path, *, replace: bool = False) -> None:
    """Give the synced `partial` the name `path`; without `replace`, never over a file
    (`FileExistsError`). Where hard links are missing, a rename after a check."""
    if replace:
        partial.replace(path)
    else:
        try:
            os.link(partial, path)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise
            if path.exists():
                raise FileExistsError(errno.EEXIST, "exists already", str(path)) from None
            partial.rename(path)
        else:
            partial.unlink()
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, *, replace: bool = False) -> None:
    """Write `data` to `path` (mode 0600) whole or not at all. Raises `FileExistsError`
    for an existing `path` unless `replace`, and `OSError` as the file system does."""
    partial = path.parent / f".{path.name}.{secrets.token_hex(4)}.partial"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        publish(partial, path, replace=replace)
    finally:
        partial.unlink(missing_ok=True)
