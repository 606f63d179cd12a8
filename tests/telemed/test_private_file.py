"""Private files: mode 0600, whole or not at all, never over an existing file unless
asked, and on file systems without hard links too."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from telemed.private_file import write_private


def test_written_private_and_never_over_another(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_private(path, b"one")
    assert path.read_bytes() == b"one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_private(path, b"two")
    assert path.read_bytes() == b"one"
    write_private(path, b"three", replace=True)
    assert path.read_bytes() == b"three"
    assert os.listdir(tmp_path) == ["key"]  # no partial file left


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV])
def test_without_hard_links_a_checked_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "backup.tmbk"
    write_private(path, b"archive")
    assert path.read_bytes() == b"archive"
    with pytest.raises(FileExistsError):
        write_private(path, b"other")
    assert path.read_bytes() == b"archive"
    assert os.listdir(tmp_path) == ["backup.tmbk"]


def test_another_failure_is_raised_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", full)
    with pytest.raises(OSError, match="No space"):
        write_private(tmp_path / "key", b"x")
    assert os.listdir(tmp_path) == []
