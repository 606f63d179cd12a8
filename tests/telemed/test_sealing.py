"""Envelope encryption: whatever is altered, moved or cut is refused, never opened.

The tamper tests are property-based (hypothesis): each generates its plaintexts, bindings,
positions and masks, checks that the untampered value opens (so a refusal is the
tamper's doing), then that the tampered one raises exactly `Unreadable` (a sealed field)
or `KeyringError` (a wrapped data key) and returns nothing. `TAMPER_CASES` counts the
cases each of them actually ran; the last test of the file checks they add up to at least
10,000 when all of them ran.
"""

from __future__ import annotations

import base64
import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telemed.accounts import new_id
from telemed.keyring import EnvKeys, KeyFile, KeyringError
from telemed.records import (
    ChatLine,
    Diagnosis,
    Note,
    Prescription,
    note_fields,
    note_from_fields,
)
from telemed.sealing import (
    FORMAT,
    Binding,
    DataKey,
    Sealer,
    SealError,
    Unreadable,
    WrappedKey,
)

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
VARIABLE = "TELEMED_RECORDS_ENV_KEYS"
HELD = ("kek-a", "kek-b")  # the two key ids the tamper tests' providers hold
SEALED_OVERHEAD = 1 + 12 + 16  # format byte, nonce, tag

# cases run by each tamper test (test name -> count); see test_tamper_case_count
TAMPER_CASES: Counter[str] = Counter()
TAMPER_TESTS = (
    "flipped_bytes",
    "truncated",
    "moved_binding",
    "format_byte",
    "wrapped_format",
    "kek_id_held",
    "kek_id_not_held",
    "wrapped_patient",
    "wrapped_id",
    "wrapped_flipped",
    "wrapped_truncated",
)
MIN_TAMPER_CASES = 10_000
E = TypeVar("E", bound=Exception)

texts = st.text(min_size=1, max_size=40)
plaintexts = st.binary(max_size=300)
bindings = st.builds(
    Binding,
    record_id=texts,
    version=st.integers(min_value=0, max_value=10**6),
    patient_id=texts,
    field=st.sampled_from(("soap", "diagnoses", "prescriptions", "chat", "addendum")) | texts,
)
# what each component of a binding is drawn from, to draw a different one
COMPONENTS = {
    "record_id": texts,
    "version": st.integers(min_value=0, max_value=10**6),
    "patient_id": texts,
    "field": texts,
}


def env_text(keys: dict[str, bytes]) -> str:
    return ",".join(f"{kid}={base64.b64encode(key).decode()}" for kid, key in keys.items())


def refused(expected: type[E], open_: Callable[[], bytes | DataKey | WrappedKey]) -> E:
    """Run `open_`; it must raise exactly `expected` (any other exception propagates and
    fails the test) and return nothing."""
    try:
        leaked = open_()
    except expected as exc:
        error = exc
    else:
        pytest.fail(f"opened instead of refusing: returned {leaked!r:.80}")
    assert type(error) is expected, f"raised {type(error).__name__}, not {expected.__name__}"
    return error


def flip(blob: bytes, positions: list[int], masks: list[int]) -> bytes:
    out = bytearray(blob)
    for position, mask in zip(positions, masks, strict=True):
        out[position] ^= mask
    return bytes(out)


def draw_flips(data: st.DataObject, size: int) -> tuple[list[int], list[int]]:
    """One to four distinct positions of a `size`-byte value, each with a nonzero mask."""
    positions = data.draw(
        st.lists(st.integers(0, size - 1), min_size=1, max_size=4, unique=True), "positions"
    )
    masks = data.draw(
        st.lists(st.integers(1, 255), min_size=len(positions), max_size=len(positions)), "masks"
    )
    return positions, masks


@pytest.fixture(scope="module")
def key_material() -> dict[str, bytes]:
    return {kid: os.urandom(32) for kid in HELD}


@pytest.fixture(scope="module")
def sealers(key_material: dict[str, bytes]) -> dict[str, Sealer]:
    """A sealer per primary: the same two keys, either of them first."""
    forward = env_text(key_material)
    backward = env_text(dict(reversed(key_material.items())))
    return {
        HELD[0]: Sealer(EnvKeys(forward, VARIABLE)),
        HELD[1]: Sealer(EnvKeys(backward, VARIABLE)),
    }


@pytest.fixture(scope="module")
def sealer(sealers: dict[str, Sealer]) -> Sealer:
    return sealers[HELD[0]]


# sealed fields ------------------------------------------------------------------------
BINDING = Binding("rec-1", 3, "pat-1", "soap")
BINDING_OF_PAT_1 = Binding("rec-9", 2, "pat-1", "soap")


@pytest.fixture(scope="module")
def data_key() -> DataKey:
    return DataKey("dk-1", BINDING.patient_id, os.urandom(32))


@settings(max_examples=2000, deadline=None)
@given(plain=plaintexts, data=st.data())
def test_flipped_bytes_in_a_sealed_field_are_refused(
    data_key: DataKey, plain: bytes, data: st.DataObject
) -> None:
    sealed = data_key.seal(BINDING, plain)
    assert data_key.open(BINDING, sealed) == plain
    positions, masks = draw_flips(data, len(sealed))
    tampered = flip(sealed, positions, masks)
    refused(Unreadable, lambda: data_key.open(BINDING, tampered))
    TAMPER_CASES["flipped_bytes"] += 1


@settings(max_examples=1000, deadline=None)
@given(plain=plaintexts, data=st.data())
def test_a_truncated_sealed_field_is_refused(
    data_key: DataKey, plain: bytes, data: st.DataObject
) -> None:
    sealed = data_key.seal(BINDING, plain)
    assert data_key.open(BINDING, sealed) == plain
    length = data.draw(st.integers(0, len(sealed) - 1), "length")
    refused(Unreadable, lambda: data_key.open(BINDING, sealed[:length]))
    TAMPER_CASES["truncated"] += 1


@settings(max_examples=2000, deadline=None)
@given(binding=bindings, plain=st.binary(max_size=64), data=st.data())
def test_a_sealed_field_moved_to_another_record_version_field_or_patient_is_refused(
    binding: Binding, plain: bytes, data: st.DataObject
) -> None:
    key = DataKey(new_id(), binding.patient_id, os.urandom(32))
    sealed = key.seal(binding, plain)
    assert key.open(binding, sealed) == plain
    component = data.draw(st.sampled_from(sorted(COMPONENTS)), "component")
    current = getattr(binding, component)
    other = data.draw(COMPONENTS[component].filter(lambda v: v != current), "other")
    moved = dataclasses.replace(binding, **{component: other})
    refused(Unreadable, lambda: key.open(moved, sealed))
    TAMPER_CASES["moved_binding"] += 1


@settings(max_examples=500, deadline=None)
@given(plain=plaintexts, other=st.integers(0, 255).filter(lambda b: b != FORMAT))
def test_a_sealed_field_of_another_format_version_is_refused(
    data_key: DataKey, plain: bytes, other: int
) -> None:
    sealed = data_key.seal(BINDING, plain)
    assert sealed[0] == FORMAT
    assert data_key.open(BINDING, sealed) == plain
    error = refused(Unreadable, lambda: data_key.open(BINDING, bytes([other]) + sealed[1:]))
    assert f"format version {other}" in str(error)
    TAMPER_CASES["format_byte"] += 1


# wrapped data keys ----------------------------------------------------------------------
@settings(max_examples=500, deadline=None)
@given(patient=texts, other=st.integers().filter(lambda f: f != FORMAT))
def test_a_wrapped_key_of_another_format_is_refused(
    sealer: Sealer, patient: str, other: int
) -> None:
    _, stored = sealer.new_key(patient, NOW)
    sealer.open_key(stored)
    altered = dataclasses.replace(stored, format=other)
    refused(Unreadable, lambda: sealer.open_key(altered))
    # nor does a rotation re-wrap it into a key of the current format
    refused(KeyringError, lambda: sealer.rewrap(altered, HELD[1]))
    TAMPER_CASES["wrapped_format"] += 1


@settings(max_examples=700, deadline=None)
@given(patient=texts, primary=st.sampled_from(HELD))
def test_a_wrapped_key_naming_another_held_kek_is_refused(
    sealers: dict[str, Sealer], patient: str, primary: str
) -> None:
    sealer = sealers[primary]
    _, stored = sealer.new_key(patient, NOW)
    assert stored.kek_id == primary
    sealer.open_key(stored)
    other = HELD[1] if primary == HELD[0] else HELD[0]
    altered = dataclasses.replace(stored, kek_id=other)
    refused(KeyringError, lambda: sealer.open_key(altered))
    TAMPER_CASES["kek_id_held"] += 1


@settings(max_examples=700, deadline=None)
@given(patient=texts, other=texts.filter(lambda kid: kid not in HELD))
def test_a_wrapped_key_naming_a_kek_not_held_is_refused(
    sealer: Sealer, patient: str, other: str
) -> None:
    _, stored = sealer.new_key(patient, NOW)
    sealer.open_key(stored)
    altered = dataclasses.replace(stored, kek_id=other)
    error = refused(KeyringError, lambda: sealer.open_key(altered))
    assert f"key {other} is not in environment variable {VARIABLE}" in str(error)
    TAMPER_CASES["kek_id_not_held"] += 1


@settings(max_examples=700, deadline=None)
@given(patient=texts, data=st.data())
def test_a_wrapped_key_given_to_another_patient_is_refused(
    sealer: Sealer, patient: str, data: st.DataObject
) -> None:
    _, stored = sealer.new_key(patient, NOW)
    sealer.open_key(stored)
    other = data.draw(texts.filter(lambda p: p != patient), "other")
    refused(KeyringError, lambda: sealer.open_key(dataclasses.replace(stored, patient_id=other)))
    TAMPER_CASES["wrapped_patient"] += 1


@settings(max_examples=700, deadline=None)
@given(patient=texts, data=st.data())
def test_a_wrapped_key_under_another_id_is_refused(
    sealer: Sealer, patient: str, data: st.DataObject
) -> None:
    _, stored = sealer.new_key(patient, NOW)
    sealer.open_key(stored)
    other = data.draw(texts.filter(lambda kid: kid != stored.id), "other")
    refused(KeyringError, lambda: sealer.open_key(dataclasses.replace(stored, id=other)))
    TAMPER_CASES["wrapped_id"] += 1


@settings(max_examples=1500, deadline=None)
@given(patient=texts, data=st.data())
def test_flipped_bytes_in_a_wrapped_key_are_refused(
    sealer: Sealer, patient: str, data: st.DataObject
) -> None:
    _, stored = sealer.new_key(patient, NOW)
    sealer.open_key(stored)
    positions, masks = draw_flips(data, len(stored.wrapped))
    altered = dataclasses.replace(stored, wrapped=flip(stored.wrapped, positions, masks))
    refused(KeyringError, lambda: sealer.open_key(altered))
    refused(KeyringError, lambda: sealer.rewrap(altered, HELD[1]))
    TAMPER_CASES["wrapped_flipped"] += 1


@settings(max_examples=500, deadline=None)
@given(patient=texts, data=st.data())
def test_a_truncated_wrapped_key_is_refused(
    sealer: Sealer, patient: str, data: st.DataObject
) -> None:
    _, stored = sealer.new_key(patient, NOW)
    sealer.open_key(stored)
    length = data.draw(st.integers(0, len(stored.wrapped) - 1), "length")
    altered = dataclasses.replace(stored, wrapped=stored.wrapped[:length])
    refused(KeyringError, lambda: sealer.open_key(altered))
    TAMPER_CASES["wrapped_truncated"] += 1


# plain tests ---------------------------------------------------------------------------
NOTE = Note(
    subjective="Sore throat for three days, no fever. Ça gratte — 喉の痛み.",
    objective="Pharynx red, no exudate. Temp 37.2 °C.",
    assessment="Viral pharyngitis.",
    plan="Fluids, paracetamol as needed; return if worse.",
    diagnoses=(Diagnosis("J02.9", "Acute pharyngitis, unspecified"),),
    prescriptions=(Prescription("Paracetamol", "500 mg", "oral", "every 6 h", "3 days"),),
    chat=(ChatLine("patient", NOW, "It hurts when I swallow"),),
)


def test_a_note_seals_and_opens_field_by_field(sealer: Sealer) -> None:
    data_key, stored = sealer.new_key("pat-1", NOW)
    assert (stored.patient_id, stored.kek_id, stored.format) == ("pat-1", HELD[0], FORMAT)
    plain = note_fields(NOTE)
    sealed = {
        name: data_key.seal(Binding("rec-1", 1, "pat-1", name), value)
        for name, value in plain.items()
    }
    for name, blob in sealed.items():
        assert blob[0] == FORMAT
        assert len(blob) == SEALED_OVERHEAD + len(plain[name])
        assert plain[name] not in blob
    opened_key = sealer.open_key(stored)
    opened = {
        name: opened_key.open(Binding("rec-1", 1, "pat-1", name), blob)
        for name, blob in sealed.items()
    }
    assert note_from_fields(opened) == NOTE


def test_sealing_twice_gives_two_ciphertexts(data_key: DataKey) -> None:
    first, second = data_key.seal(BINDING, b"same"), data_key.seal(BINDING, b"same")
    assert first != second  # a fresh nonce each time
    assert data_key.open(BINDING, first) == data_key.open(BINDING, second) == b"same"


def test_a_data_key_seals_for_its_own_patient_only(data_key: DataKey) -> None:
    other = dataclasses.replace(BINDING, patient_id="pat-2")
    with pytest.raises(SealError, match="another patient"):
        data_key.seal(other, b"x")


def test_a_wrong_kek_under_the_same_id_is_refused(sealer: Sealer) -> None:
    _, stored = sealer.new_key("pat-1", NOW)
    impostor = Sealer(EnvKeys(env_text({HELD[0]: os.urandom(32)}), VARIABLE))
    error = refused(KeyringError, lambda: impostor.open_key(stored))
    assert f"does not open under key {HELD[0]}" in str(error)


def test_verify_check_refuses_a_wrong_key(sealer: Sealer) -> None:
    check = sealer.make_check(HELD[0])
    sealer.verify_check(HELD[0], check)  # the right key passes
    impostor = Sealer(EnvKeys(env_text({HELD[0]: os.urandom(32)}), VARIABLE))
    with pytest.raises(KeyringError, match="is not the key this store's records were sealed"):
        impostor.verify_check(HELD[0], check)
    with pytest.raises(KeyringError):  # nor is one key's check another's
        sealer.verify_check(HELD[1], check)


def test_rewrap_keeps_the_data_key_and_retires_the_old_kek(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "record-keys.json"
    key_file = KeyFile(path)
    old = key_file.create(NOW)
    sealer = Sealer(key_file)
    data_key, stored = sealer.new_key("pat-1", NOW)
    sealed = data_key.seal(BINDING_OF_PAT_1, b"the note")

    new = key_file.add_primary(NOW)
    rewrapped = sealer.rewrap(stored, new)
    assert (rewrapped.id, rewrapped.patient_id, rewrapped.kek_id) == (stored.id, "pat-1", new)
    assert rewrapped.wrapped != stored.wrapped
    key_file.remove(old)

    # a fresh process, holding only the new key, opens what was sealed before
    reloaded = KeyFile(path)
    reloaded.load()
    assert reloaded.key_ids() == [new]
    fresh = Sealer(reloaded)
    assert fresh.open_key(rewrapped).open(BINDING_OF_PAT_1, sealed) == b"the note"
    refused(KeyringError, lambda: fresh.open_key(stored))  # the old wrapping needs old


# last in the file ----------------------------------------------------------------------
def test_tamper_case_count() -> None:
    """The tamper tests above ran at least 10,000 cases between them (all of them ran:
    under `-k` selecting some, there is nothing to add up)."""
    missing = [name for name in TAMPER_TESTS if TAMPER_CASES[name] == 0]
    if missing:
        pytest.skip(f"not every tamper test ran (missing: {', '.join(missing)})")
    total = sum(TAMPER_CASES[name] for name in TAMPER_TESTS)
    assert total >= MIN_TAMPER_CASES, dict(TAMPER_CASES)
