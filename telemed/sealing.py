"""Envelope encryption of consultation records (AES-256-GCM, the `cryptography` package).

Each record version and each attachment gets a fresh 256-bit data key. The data key
seals that version's fields; the data key itself is stored only wrapped by a
key-encryption key (`telemed.keyring`), and the stored wrapped key names that KEK's id.
Rotation re-wraps data keys under a new KEK without touching the sealed fields; erasing
a patient destroys their data keys, after which nothing of theirs can be opened.

Stored forms:
- a sealed field: `format (1 byte) | nonce (12) | ciphertext and tag`, opened only with
  the associated data (format, record id, version, patient id, field): a ciphertext
  copied to another record, version, field or patient, or given another format byte,
  fails its tag check;
- a wrapped data key (`WrappedKey`): its id, patient, KEK id, format and the KEK's
  ciphertext of the key, bound to (format, data key id, patient id, KEK id).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from telemed.accounts import new_id
from telemed.keyring import KEY_BYTES, NONCE_BYTES, KeyProvider, KeyringError

FORMAT = 1
TAG_BYTES = 16
_FORMAT_BYTE = bytes([FORMAT])
_CHECK = b"telemed key check"


class SealError(Exception):
    """A sealed value cannot be opened; the message says why. Never returns garbage."""


class Unreadable(SealError):
    """Altered, truncated, moved to another record, field or patient, or of an unknown
    format: the tag check (or the format check) refused it."""


class Shredded(SealError):
    """The data key was destroyed (the patient's data was erased)."""


@dataclass(frozen=True, slots=True)
class Binding:
    """What a sealed field belongs to; all of it goes into the associated data."""

    record_id: str
    version: int
    patient_id: str
    field: str


@dataclass(frozen=True, slots=True)
class WrappedKey:
    id: str
    patient_id: str
    kek_id: str
    wrapped: bytes
    created_at: datetime
    format: int = FORMAT


# Associated data: each text part carries its length, so that no two different bindings
# encode to the same bytes ("ab" + "c" is not "a" + "bc").
def field_aad(binding: Binding, fmt: int = FORMAT) -> bytes:
    b = binding
    return (
        f"telemed-field|{fmt}|{len(b.record_id)}:{b.record_id}|{b.version}|"
        f"{len(b.patient_id)}:{b.patient_id}|{len(b.field)}:{b.field}"
    ).encode()


def wrap_aad(key_id: str, patient_id: str, kek_id: str, fmt: int = FORMAT) -> bytes:
    return (
        f"telemed-key|{fmt}|{len(key_id)}:{key_id}|{len(patient_id)}:{patient_id}|"
        f"{len(kek_id)}:{kek_id}"
    ).encode()


def _check_aad(kek_id: str) -> bytes:
    """A check value's associated data: never that of a data key, so neither passes for
    the other."""
    return f"telemed-check|{FORMAT}|{len(kek_id)}:{kek_id}".encode()


class DataKey:
    """An unwrapped data key, in memory only for as long as one seal or open takes."""

    __slots__ = ("_aead", "id", "patient_id")

    def __init__(self, key_id: str, patient_id: str, key: bytes) -> None:
        self.id = key_id
        self.patient_id = patient_id
        self._aead = AESGCM(key)

    def seal(self, binding: Binding, plaintext: bytes) -> bytes:
        if binding.patient_id != self.patient_id:
            raise SealError(f"data key {self.id} belongs to another patient")
        nonce = os.urandom(NONCE_BYTES)
        return _FORMAT_BYTE + nonce + self._aead.encrypt(nonce, plaintext, field_aad(binding))

    def open(self, binding: Binding, sealed: bytes) -> bytes:
        where = f"{binding.field} of record {binding.record_id} version {binding.version}"
        if len(sealed) < 1 + NONCE_BYTES + TAG_BYTES:
            raise Unreadable(f"{where}: truncated ({len(sealed)} bytes)")
        if sealed[0] != FORMAT:
            raise Unreadable(f"{where}: format version {sealed[0]} is unknown to this server")
        try:
            return self._aead.decrypt(
                sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :], field_aad(binding)
            )
        except InvalidTag:
            raise Unreadable(
                f"{where}: does not open (altered, or copied from another record, field or patient)"
            ) from None


class Sealer:
    """Makes, opens and re-wraps data keys with the provider's key-encryption keys."""

    def __init__(self, provider: KeyProvider) -> None:
        self.provider = provider

    def new_key(self, patient_id: str, now: datetime) -> tuple[DataKey, WrappedKey]:
        key_id = new_id()
        key = AESGCM.generate_key(256)
        kek_id = self.provider.primary_id()
        wrapped = self.provider.wrap(kek_id, key, wrap_aad(key_id, patient_id, kek_id))
        return DataKey(key_id, patient_id, key), WrappedKey(
            key_id, patient_id, kek_id, wrapped, now
        )

    def open_key(self, stored: WrappedKey) -> DataKey:
        if stored.format != FORMAT:
            raise Unreadable(
                f"data key {stored.id}: format version {stored.format} is unknown to this server"
            )
        aad = wrap_aad(stored.id, stored.patient_id, stored.kek_id, stored.format)
        key = self.provider.unwrap(stored.kek_id, stored.wrapped, aad)
        if len(key) != KEY_BYTES:
            raise Unreadable(f"data key {stored.id}: not a data key ({len(key)} bytes)")
        return DataKey(stored.id, stored.patient_id, key)

    def rewrap(self, stored: WrappedKey, kek_id: str) -> WrappedKey:
        """The same data key, wrapped by `kek_id` instead; the sealed data is untouched."""
        aad = wrap_aad(stored.id, stored.patient_id, stored.kek_id, stored.format)
        key = self.provider.unwrap(stored.kek_id, stored.wrapped, aad)
        wrapped = self.provider.wrap(kek_id, key, wrap_aad(stored.id, stored.patient_id, kek_id))
        return WrappedKey(stored.id, stored.patient_id, kek_id, wrapped, stored.created_at)

    # key checks: prove at start-up that each KEK is the one the store was sealed with
    def make_check(self, kek_id: str) -> bytes:
        return self.provider.wrap(kek_id, _CHECK, _check_aad(kek_id))

    def verify_check(self, kek_id: str, check: bytes) -> None:
        try:
            opened = self.provider.unwrap(kek_id, check, _check_aad(kek_id))
        except KeyringError as exc:
            raise KeyringError(
                f"key {kek_id} of {self.provider.description} is not the key this store's "
                f"records were sealed with ({exc}): restore the right key (see README, Keys)"
            ) from None
        if opened != _CHECK:
            raise KeyringError(f"key {kek_id}: its check value is wrong")
