"""Key-encryption keys (KEKs): where they live, and the one interface the sealing uses.

A KEK never touches the store. It wraps the per-record data keys (see `telemed.sealing`),
each wrapped key naming the KEK's id. Providers:

- `KeyFile` (the default): a JSON file outside the database, created on first start with
  mode 0600 in a 0700 folder. It can add keys (`telemed keys rotate`), take in keys from
  another machine (`telemed keys import`, see `telemed.key_export`) and remove retired
  ones; every change is written to a new file and renamed over the old one, so a crash
  leaves either the old file or the new one.
- `EnvKeys`: keys given in one environment variable (`TELEMED_RECORDS_ENV_KEYS`), as
  `id=base64key` pairs separated by commas, the primary first. It cannot add or remove
  keys: the operator changes the variable and restarts.
- A KMS or Vault: implement `KeyProvider` (wrap and unwrap by key id on the remote
  service, e.g. Vault transit `encrypt`/`decrypt` or AWS KMS `Encrypt`/`Decrypt` with
  the associated data as encryption context) and pass it to `open_key_provider`'s caller.
  The server never needs the key bytes. No fake KMS ships with the server.

Every failure to find or use a key raises `KeyringError` with a message that says which
key and what to do: the server stops at start-up, or refuses the read, and never
produces garbage or falls back to plaintext.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telemed.clock import iso, parse_iso
from telemed.errors import TelemedError
from telemed.private_file import write_private

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
FILE_FORMAT = 1


class KeyringError(TelemedError):
    """A key is missing, wrong, or cannot be stored; the message says which and why."""


class KeyProvider(Protocol):
    """Key-encryption keys by id. Calls may block (a remote KMS): the server makes them
    from a worker thread when `blocking` is true."""

    description: str  # for messages: "key file /path", "environment variable ..."
    blocking: bool

    def primary_id(self) -> str:
        """The key that wraps new data keys."""

    def key_ids(self) -> list[str]:
        """Every key this provider holds, the primary first."""

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        """Encrypt `data_key` under the key, bound to `aad`; raise `KeyringError` if the
        provider does not hold `key_id`."""

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        """The data key; raise `KeyringError` if the key is not held, or if `wrapped` does
        not open under it with `aad` (the wrong key, or altered data)."""

    def refresh(self) -> None:
        """Pick up keys another process added or removed (a rotation from the CLI)."""


def new_key_id(now: datetime) -> str:
    return f"kek-{now:%Y%m%d}-{secrets.token_hex(4)}"


class _AesKeys:
    """Local key bytes: AES-256-GCM wrapping, one cipher object per key."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.blocking = False
        self._ciphers: dict[str, AESGCM] = {}
        self._order: list[str] = []

    def _install(self, keys: list[tuple[str, bytes]]) -> None:
        self._ciphers = {kid: AESGCM(key) for kid, key in keys}
        self._order = [kid for kid, _ in keys]

    def primary_id(self) -> str:
        return self._order[0]

    def key_ids(self) -> list[str]:
        return list(self._order)

    def _cipher(self, key_id: str) -> AESGCM:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            self.refresh()
            cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise KeyringError(
                f"key {key_id} is not in {self.description}: restore the key that holds "
                "this id (see README, Keys)"
            )
        return cipher

    def wrap(self, key_id: str, data_key: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._cipher(key_id).encrypt(nonce, data_key, aad)

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        cipher = self._cipher(key_id)
        try:
            return cipher.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
        except (InvalidTag, ValueError):
            raise KeyringError(
                f"a data key does not open under key {key_id} of {self.description}: "
                "the key is wrong or the stored key was altered"
            ) from None

    def refresh(self) -> None:
        return None


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{where}: the key is not base64") from None
    if len(key) != KEY_BYTES:
        raise KeyringError(f"{where}: the key is {len(key)} bytes, expected {KEY_BYTES}")
    return key


class EnvKeys(_AesKeys):
    """Keys from one environment variable: `id=base64,id=base64`, the primary first."""

    def __init__(self, text: str, variable: str) -> None:
        super().__init__(f"environment variable {variable}")
        keys: list[tuple[str, bytes]] = []
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            kid, sep, encoded = part.partition("=")
            if not sep or not kid.strip():
                raise KeyringError(f"{variable}: expected id=base64key pairs")
            keys.append((kid.strip(), _decode_key(encoded.strip(), f"{variable}: {kid}")))
        if not keys:
            raise KeyringError(f"{variable} is empty: set it to id=base64key (see README, Keys)")
        if len({kid for kid, _ in keys}) != len(keys):
            raise KeyringError(f"{variable}: a key id is given twice")
        self._install(keys)

    @staticmethod
    def generate(key_id: str) -> str:
        """One `id=base64` pair for an operator to put in the variable."""
        return f"{key_id}={base64.b64encode(AESGCM.generate_key(256)).decode()}"


@dataclass(frozen=True, slots=True)
class FileKey:
    id: str
    key: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class KeyImport:
    """What `KeyFile.import_keys` did: key ids added, ids already held, the primary."""

    added: tuple[str, ...]
    present: tuple[str, ...]
    primary: str
    created: bool  # the key file did not exist before


class KeyFile(_AesKeys):
    """The local key file: `{"format": 1, "primary": id, "keys": [{id, key, created_at}]}`."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"key file {path}")
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: list[FileKey] = []

    # reading ---------------------------------------------------------------
    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> None:
        """Read the file; raise `KeyringError` if it is missing, unreadable or malformed."""
        with self._lock:
            self._load()

    def _load(self) -> None:
        try:
            stat = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise KeyringError(
                f"key file {self.path} not found: restore it from where you keep it (see "
                "README, Keys), or point records.key_file at it"
            ) from None
        except UnicodeDecodeError:
            raise KeyringError(
                f"key file {self.path}: not UTF-8 text (the file is damaged)"
            ) from None
        except OSError as exc:
            raise KeyringError(f"key file {self.path}: cannot read it: {exc}") from None
        if stat.st_mode & 0o077:
            raise KeyringError(
                f"key file {self.path}: others can read it (mode {stat.st_mode & 0o777:o}); "
                f"run chmod 600 {self.path}"
            )
        self._keys, primary = _parse_key_file(text, self.path)
        order = [k for k in self._keys if k.id == primary]
        order += [k for k in self._keys if k.id != primary]
        self._install([(k.id, k.key) for k in order])
        self._stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def refresh(self) -> None:
        """Reload when another process replaced the file (one stat when nothing changed)."""
        with self._lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                return  # keep the keys in memory; start-up reports a missing file
            if (stat.st_ino, stat.st_mtime_ns, stat.st_size) != self._stamp:
                self._load()

    def keys(self) -> list[FileKey]:
        return list(self._keys)

    # writing ---------------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """One process at a time changes the file (a rotation and an import at once would
        each write back what they read, and one key could be lost)."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(folder / f".{self.path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def create(self, now: datetime) -> str:
        """A new file holding one fresh key; refuse to replace an existing file."""
        with self._lock, self._changing():
            if self.path.exists():
                raise KeyringError(f"key file {self.path} already exists")
            key = FileKey(new_key_id(now), AESGCM.generate_key(256), now)
            self._write([key], key.id, exclusive=True)
            self._load()
            return key.id

    def add_primary(self, now: datetime) -> str:
        """Add a fresh key and make it the primary; return its id."""
        with self._lock, self._changing():
            self._load()
            key = FileKey(new_key_id(now), AESGCM.generate_key(256), now)
            self._write([*self._keys, key], key.id)
            self._load()
            return key.id

    def import_keys(
        self, keys: Sequence[FileKey], primary: str, *, make_primary: bool
    ) -> KeyImport:
        """Merge keys brought from another machine (`telemed keys import`), creating the
        file if there is none. A key already held with the same bytes is skipped; one held
        under the same id with other bytes refuses the whole import, nothing written.
        `primary` (among `keys`) becomes the primary when `make_primary`, or when the file
        is new; otherwise the local primary stays."""
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise KeyringError("a key id is given twice in the keys to import")
        if primary not in ids:
            raise KeyringError(f"key {primary} is not among the keys to import")
        with self._lock, self._changing():
            created = not self.path.exists()
            if not created:
                self._load()
            mine = [] if created else list(self._keys)
            held = {k.id: k for k in mine}
            added: list[FileKey] = []
            present: list[str] = []
            for key in keys:
                local = held.get(key.id)
                if local is None:
                    added.append(key)
                elif secrets.compare_digest(local.key, key.key):
                    present.append(key.id)
                else:
                    raise KeyringError(
                        f"key {key.id}: {self.description} already holds a different key "
                        "under this id; nothing was imported"
                    )
            local_primary = None if created else self.primary_id()
            new_primary = primary if make_primary or local_primary is None else local_primary
            if added or new_primary != local_primary:
                self._write([*mine, *added], new_primary, exclusive=created)
                self._load()
            return KeyImport(
                tuple(k.id for k in added), tuple(present), new_primary, created=created
            )

    def remove(self, key_id: str) -> None:
        """Drop a key (the caller checked that it wraps nothing); never the primary."""
        with self._lock, self._changing():
            self._load()
            if key_id not in {k.id for k in self._keys}:
                raise KeyringError(f"key {key_id} is not in {self.description}")
            if key_id == self.primary_id():
                raise KeyringError(f"key {key_id} is the primary key: rotate first")
            self._write([k for k in self._keys if k.id != key_id], self.primary_id())
            self._load()

    def _write(self, keys: list[FileKey], primary: str, *, exclusive: bool = False) -> None:
        body = {
            "format": FILE_FORMAT,
            "primary": primary,
            "keys": [
                {
                    "id": k.id,
                    "key": base64.b64encode(k.key).decode(),
                    "created_at": iso(k.created_at),
                }
                for k in keys
            ],
        }
        data = (json.dumps(body, indent=2) + "\n").encode()
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if folder.stat().st_mode & 0o077 and folder.stat().st_uid == os.getuid():
            folder.chmod(0o700)  # a folder made by someone else's umask: the keys' alone
        try:
            write_private(self.path, data, replace=not exclusive)
        except FileExistsError:
            raise KeyringError(f"key file {self.path} already exists") from None
        except OSError as exc:
            raise KeyringError(f"key file {self.path}: cannot write it: {exc}") from None


def _parse_key_file(text: str, path: Path) -> tuple[list[FileKey], str]:
    where = f"key file {path}"
    try:
        body: Any = json.loads(text)
    except json.JSONDecodeError:
        raise KeyringError(f"{where}: not JSON (the file is damaged)") from None
    if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
        raise KeyringError(f"{where}: expected an object with a keys list")
    if body.get("format") != FILE_FORMAT:
        raise KeyringError(
            f"{where}: format {body.get('format')!r} is not {FILE_FORMAT}: upgrade the server"
        )
    keys: list[FileKey] = []
    for entry in body["keys"]:
        if not isinstance(entry, Mapping) or not all(
            isinstance(entry.get(k), str) for k in ("id", "key", "created_at")
        ):
            raise KeyringError(f"{where}: each key needs id, key and created_at strings")
        try:
            created = parse_iso(entry["created_at"])
        except ValueError:
            raise KeyringError(f"{where}: key {entry['id']}: created_at is not a time") from None
        if entry["id"] in {k.id for k in keys}:
            raise KeyringError(f"{where}: key id {entry['id']} appears twice")
        keys.append(
            FileKey(entry["id"], _decode_key(entry["key"], f"{where}: key {entry['id']}"), created)
        )
    primary = body.get("primary")
    if not keys or not isinstance(primary, str) or primary not in {k.id for k in keys}:
        raise KeyringError(f"{where}: the primary key {primary!r} is not among its keys")
    return keys, primary
