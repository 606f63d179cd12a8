"""A passphrase-protected export of the key file's keys, to move them between machines.

`telemed keys export` writes every key-encryption key (ids, key bytes, created_at, which
one is primary) into one small JSON text file; `telemed keys import` opens it on another
machine and merges the keys into that machine's key file. The file:

    {"format": 1, "kind": "telemed-keys",
     "kdf": {"name": "scrypt", "n": 131072, "r": 8, "p": 1, "salt": b64},
     "nonce": b64, "ciphertext": b64}

The passphrase (NFC-normalised UTF-8) gives a 256-bit key through scrypt with the
parameters and the random salt recorded in `kdf`. AES-256-GCM seals the JSON of the keys
under that key, with the header (format, kind, kdf with its salt) as associated data: a
wrong passphrase, or any byte changed in the salt, the parameters or the ciphertext,
fails the tag check, and the two cannot be told apart. The keys exist unprotected only
in memory; the file is written with mode 0600 through a temporary file holding the
sealed form only, then linked or renamed into place.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from telemed.clock import iso, parse_iso
from telemed.errors import TelemedError
from telemed.keyring import KEY_BYTES, NONCE_BYTES, FileKey
from telemed.private_file import write_private

FORMAT = 1
KIND = "telemed-keys"
KDF_NAME = "scrypt"
SALT_BYTES = 16
TAG_BYTES = 16
MIN_PASSPHRASE = 12
MAX_FILE_BYTES = 1 << 20  # far above any real key file; refuses a wrong file quickly
# what `open_export` accepts from a file (a larger cost could exhaust the machine)
MAX_N = 1 << 20
MAX_R = 32
MAX_P = 16
MAX_SCRYPT_MEMORY = 1 << 30  # 128 * n * r bytes


class KeyExportError(TelemedError):
    """An export cannot be made or opened; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class ScryptCost:
    n: int
    r: int
    p: int


# The cost of every export the server writes (about 128 MiB and half a second). Only
# tests lower it, by replacing this constant; there is no option or setting for it.
SCRYPT_COST = ScryptCost(n=1 << 17, r=8, p=1)


@dataclass(frozen=True, slots=True)
class ExportedKeys:
    """The keys of an opened export; `primary` is among them."""

    keys: tuple[FileKey, ...] = field(repr=False)
    primary: str


def check_passphrase(passphrase: str) -> str:
    """The passphrase as it is derived from; refuse one too short to protect the keys."""
    normal = unicodedata.normalize("NFC", passphrase)
    if len(normal) < MIN_PASSPHRASE:
        raise KeyExportError(f"passphrase: at least {MIN_PASSPHRASE} characters, please")
    return normal


def seal_export(keys: Sequence[FileKey], primary: str, passphrase: str) -> bytes:
    """The export file's bytes: `keys` sealed under `passphrase` at `SCRYPT_COST`."""
    if primary not in {k.id for k in keys}:
        raise KeyExportError(f"the primary key {primary} is not among the keys to export")
    passphrase = check_passphrase(passphrase)
    cost = SCRYPT_COST
    salt = secrets.token_bytes(SALT_BYTES)
    header = _header(cost, salt)
    payload = {
        "primary": primary,
        "keys": [{"id": k.id, "key": _b64(k.key), "created_at": iso(k.created_at)} for k in keys],
    }
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(_derive(passphrase, cost, salt)).encrypt(
        nonce, json.dumps(payload).encode(), _aad(header)
    )
    body = {**header, "nonce": _b64(nonce), "ciphertext": _b64(ciphertext)}
    return (json.dumps(body, indent=2) + "\n").encode()


def open_export(data: bytes, passphrase: str, where: str) -> ExportedKeys:
    """The keys in an export file's bytes; `where` names the file in messages."""
    body = _parse_body(data, where)
    cost, salt = _parse_kdf(body.get("kdf"), where)
    nonce = _field_bytes(body, "nonce", where)
    ciphertext = _field_bytes(body, "ciphertext", where)
    if len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
        raise KeyExportError(f"{where}: wrong passphrase, or the file was altered")
    key = _derive(unicodedata.normalize("NFC", passphrase), cost, salt)
    try:
        plaintext = AESGCM(key).decrypt(nonce, ciphertext, _aad(_header(cost, salt)))
    except InvalidTag:
        raise KeyExportError(f"{where}: wrong passphrase, or the file was altered") from None
    return _parse_payload(plaintext, where)


def write_export(path: Path, data: bytes, *, force: bool) -> None:
    """Put `data` at `path`, mode 0600, whole or not at all; refuse to replace an
    existing file unless `force`."""
    folder = path.parent
    if not folder.is_dir():
        raise KeyExportError(f"--out: folder {folder} does not exist")
    try:
        write_private(path, data, replace=force)
    except FileExistsError:
        raise KeyExportError(f"--out: {path} already exists (add --force to replace it)") from None
    except OSError as exc:
        raise KeyExportError(f"--out: cannot write {path}: {exc.strerror or exc}") from None


def read_export(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyExportError(f"{path}: no such file") from None
    except OSError as exc:
        raise KeyExportError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise KeyExportError(f"{path}: not a telemed key export (too large)")
    return data


# the file's parts -----------------------------------------------------------------------
def _header(cost: ScryptCost, salt: bytes) -> dict[str, Any]:
    kdf = {"name": KDF_NAME, "n": cost.n, "r": cost.r, "p": cost.p, "salt": _b64(salt)}
    return {"format": FORMAT, "kind": KIND, "kdf": kdf}


def _aad(header: dict[str, Any]) -> bytes:
    """The header in one canonical form, rebuilt from the parsed values when opening."""
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def _derive(passphrase: str, cost: ScryptCost, salt: bytes) -> bytes:
    kdf = Scrypt(salt=salt, length=KEY_BYTES, n=cost.n, r=cost.r, p=cost.p)
    return kdf.derive(passphrase.encode())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _parse_body(data: bytes, where: str) -> dict[str, Any]:
    try:
        body: Any = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyExportError(f"{where}: not a telemed key export (not JSON text)") from None
    if not isinstance(body, dict) or body.get("kind") != KIND:
        raise KeyExportError(f"{where}: not a telemed key export (made by telemed keys export)")
    version = body.get("format")
    if type(version) is not int:
        raise KeyExportError(f"{where}: format {version!r} is not a format version")
    if version > FORMAT:
        raise KeyExportError(
            f"{where}: format {version} comes from a newer telemed (this one reads format "
            f"{FORMAT}): upgrade telemed here, then import"
        )
    if version != FORMAT:
        raise KeyExportError(f"{where}: format {version} is unknown (this one reads {FORMAT})")
    return body


def _parse_kdf(kdf: Any, where: str) -> tuple[ScryptCost, bytes]:
    if not isinstance(kdf, dict) or kdf.get("name") != KDF_NAME:
        raise KeyExportError(f"{where}: kdf: expected scrypt (the file was altered)")
    n, r, p = (kdf.get(k) for k in ("n", "r", "p"))
    if not (
        type(n) is int
        and type(r) is int
        and type(p) is int
        and 1 < n <= MAX_N
        and n & (n - 1) == 0
        and 0 < r <= MAX_R
        and 0 < p <= MAX_P
        and 128 * n * r <= MAX_SCRYPT_MEMORY
    ):
        raise KeyExportError(
            f"{where}: kdf: parameters n={n!r} r={r!r} p={p!r} are out of range "
            "(the file was altered)"
        )
    salt = _field_bytes(kdf, "salt", where)
    if len(salt) != SALT_BYTES:
        raise KeyExportError(f"{where}: wrong passphrase, or the file was altered")
    return ScryptCost(n, r, p), salt


def _field_bytes(body: dict[str, Any], name: str, where: str) -> bytes:
    text = body.get(name)
    if not isinstance(text, str):
        raise KeyExportError(f"{where}: {name} is missing (the file was altered)")
    try:
        return base64.b64decode(text.encode(), validate=True)
    except (binascii.Error, ValueError):
        raise KeyExportError(f"{where}: {name} is not base64 (the file was altered)") from None


def _parse_payload(plaintext: bytes, where: str) -> ExportedKeys:
    """The sealed keys. They passed the tag check, so a refusal here means a bug in the
    exporter, not an attack; it is refused all the same."""
    bad = KeyExportError(f"{where}: the sealed keys are malformed")
    try:
        payload: Any = json.loads(plaintext)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad from None
    if not isinstance(payload, dict) or not isinstance(payload.get("keys"), list):
        raise bad
    keys: list[FileKey] = []
    for entry in payload["keys"]:
        if not isinstance(entry, dict) or not all(
            isinstance(entry.get(k), str) for k in ("id", "key", "created_at")
        ):
            raise bad
        try:
            key = base64.b64decode(entry["key"].encode(), validate=True)
            created = parse_iso(entry["created_at"])
        except (binascii.Error, ValueError):
            raise bad from None
        if len(key) != KEY_BYTES or not entry["id"] or entry["id"] in {k.id for k in keys}:
            raise bad
        keys.append(FileKey(entry["id"], key, created))
    primary = payload.get("primary")
    if not isinstance(primary, str) or primary not in {k.id for k in keys}:
        raise bad
    return ExportedKeys(tuple(keys), primary)
