"""Records benchmark: envelope encryption of consultation notes, and key rotation.

    .venv/bin/python bench/records.py [--records 4000] [--rounds 5] [--keys 100000]

Three measurements, in one run:

1. seal and open, through the real code path: for each record, `Sealer.new_key` (a fresh
   data key, wrapped by the key file's primary KEK) and `DataKey.seal` of every field of
   `records.note_fields(note)`, bound to the record as `RecordsOffice` binds them; then
   `Sealer.open_key`, `DataKey.open` of every field and `records.note_from_fields`. The
   note is a realistic consultation note whose SOAP texts total about 4 KB.
2. the baseline: raw AES-256-GCM (`cryptography`'s `AESGCM`, the key object created once,
   a fresh nonce per call) encrypting and decrypting the same plaintext bytes, in one
   call per record (10x as many records, so that its loops last long enough to time,
   ~0.1 s). `ratio` = seal_per_s / raw_aesgcm_per_s and `open_ratio` =
   open_per_s / raw_aesgcm_open_per_s: what the envelope (a data key per record, its
   wrapping, per-field nonces and associated data, JSON) costs over the cipher alone.
   The four loops alternate, `--rounds` times; each figure is the median of its rounds.
3. rotation: a SQLite store in a temp folder holding `--keys` data keys wrapped by the
   key file's KEK (made with `Sealer.new_key`, written `--batch` rows per transaction
   over a second connection: the store adds one key per durable commit, ~1,400/s here,
   which would make the setup longer than the measurement), then
   `KeyCustody(store, Sealer(key_file)).rotate(add=True, now_key=key_file.add_primary)`
   as `telemed keys rotate` runs it, timed: `rewrap_per_s`. Its baseline is
   `Sealer.rewrap` alone over the same kind of keys in memory (`rewrap_crypto_per_s`).
   `--profile` then runs a second, identical rotation under cProfile and prints where
   its time goes (the store's calls are timed from the event loop, which awaits each in
   turn: the rotation is sequential).

The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import json
import os
import pstats
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parent.parent
sys.path.insert(1, str(ROOT))  # measure the tree this script lives in

import cryptography  # noqa: E402
from cryptography.hazmat.backends.openssl.backend import backend as openssl  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from telemed.accounts import new_id  # noqa: E402
from telemed.key_custody import REWRAP_BATCH, KeyCustody  # noqa: E402
from telemed.keyring import NONCE_BYTES, KeyFile  # noqa: E402
from telemed.records import (  # noqa: E402
    SOAP,
    ChatLine,
    Diagnosis,
    Note,
    Prescription,
    note_fields,
    note_from_fields,
)
from telemed.sealing import Binding, Sealer, WrappedKey  # noqa: E402
from telemed.settings import StoreSettings  # noqa: E402
from telemed.store import Store, open_store  # noqa: E402

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)
PATIENTS = 1000  # the rotation's data keys are spread over this many patients
RAW_TIMES = 10  # the raw loops run 10x the records, to last about as long as the others


def consultation_note() -> Note:
    """A follow-up visit as a GP writes it: about 4 KB of SOAP text."""
    return Note(
        subjective=(
            "58-year-old woman seen by video for follow-up of type 2 diabetes and "
            "hypertension, three months after starting empagliflozin 10 mg daily in addition "
            "to metformin 1 g twice daily. She reports good adherence, no missed doses in "
            "the last month according to her pill organiser. Mild increase in urinary "
            "frequency during the first two weeks, now settled. One episode of vulvovaginal "
            "itching in October, treated with an over-the-counter clotrimazole cream, "
            "resolved within a week. No dysuria, no fever, no flank pain. Denies polyuria "
            "or polydipsia now. Home blood glucose readings before breakfast mostly between "
            "6.5 and 8.0 mmol/L, occasionally 9 after a late dinner. No hypoglycaemic "
            "symptoms. Walking 30 minutes most days since September; has lost about 3 kg. "
            "Sleeps 6-7 hours, wakes once to pass urine. Mood good. Occasional tingling in "
            "both feet in the evening, unchanged for a year. No chest pain, no breathlessness "
            "on exertion, no palpitations, no ankle swelling. Home blood pressure average "
            "over the last week 138/84 (readings attached from the connected cuff). Takes "
            "ramipril 5 mg daily, no cough. Asks whether she can stop metformin because of "
            "loose stools after meals, about twice a week, worse after large meals."
        ),
        objective=(
            "Video consultation, good connection, patient at home. Alert, well, speaking "
            "full sentences, no distress. Weight on her home scale 81.4 kg (84.5 kg in "
            "August), height 165 cm, BMI 29.9. Remote readings over the last 7 days from "
            "her enrolled devices: blood pressure mean 138/84 mmHg (range 129/79 to "
            "147/90), resting heart rate 68-74/min, SpO2 96-98% on room air. Feet shown to "
            "the camera: skin intact, no ulcers, no callus, nails trimmed, no visible "
            "deformity; monofilament and vibration testing not possible remotely. Recent "
            "laboratory results (clinic lab, 21 November): HbA1c 53 mmol/mol (61 in "
            "August), fasting glucose 7.4 mmol/L, creatinine 78 umol/L, eGFR 74 "
            "mL/min/1.73m2 (79 in August), potassium 4.6 mmol/L, sodium 139 mmol/L, urine "
            "albumin/creatinine ratio 2.1 mg/mmol, total cholesterol 4.9 mmol/L, LDL 2.9 "
            "mmol/L, HDL 1.2 mmol/L, triglycerides 1.8 mmol/L, ALT 24 U/L. Urine dipstick "
            "at home today negative for leucocytes and nitrites per patient's report."
        ),
        assessment=(
            "1. Type 2 diabetes, improving control on metformin and empagliflozin: HbA1c "
            "down from 61 to 53 mmol/mol, near her individual target of 53. Small expected "
            "fall in eGFR after starting the SGLT2 inhibitor, stable kidney function "
            "otherwise, no albuminuria. One genital mycotic infection, resolved, a known "
            "adverse effect; no recurrence. 2. Gastrointestinal intolerance of immediate-"
            "release metformin, intermittent, probably dose-related; no red flags (no "
            "weight loss beyond the intended, no blood, no nocturnal symptoms). 3. "
            "Hypertension, above target (<130/80 for her) on ramipril 5 mg. 4. Possible "
            "early peripheral neuropathy, stable symptoms, needs an in-person foot "
            "examination with monofilament. 5. LDL above target for primary prevention "
            "with diabetes; not on a statin yet, had declined in August, now open to "
            "discussing it. 6. Weight loss of 3 kg, intended, encouraged."
        ),
        plan=(
            "Switch metformin to the modified-release form, 1 g twice daily with meals, "
            "and review the stools in four weeks. Continue empagliflozin 10 mg daily; "
            "sick-day rules explained again (pause it and metformin during vomiting, "
            "diarrhoea or fever, restart when eating and drinking normally); genital "
            "hygiene advice given. Increase ramipril to 10 mg daily; repeat creatinine and "
            "potassium in two weeks at the clinic lab (request sent). Start atorvastatin "
            "20 mg at night after discussion of benefits and side effects; lipid profile "
            "and ALT in three months. Book an in-person diabetic foot check with the "
            "practice nurse, including monofilament and pulses, and annual retinal "
            "screening (due in January). Keep sending home blood pressure readings twice "
            "a day for two weeks through the connected cuff; alert thresholds unchanged. "
            "Safety-netting: seek care the same day for fever with flank pain, "
            "breathlessness, vomiting with inability to keep fluids down, or a foot wound. "
            "Follow-up video visit in six weeks with the results."
        ),
        diagnoses=(
            Diagnosis("E11.9", "Type 2 diabetes mellitus without complications"),
            Diagnosis("I10", "Essential (primary) hypertension"),
            Diagnosis("E78.0", "Pure hypercholesterolaemia"),
        ),
        prescriptions=(
            Prescription(
                "Metformin modified-release",
                "1 g",
                "oral",
                "twice daily",
                "3 months",
                "with breakfast and the evening meal",
            ),
            Prescription("Ramipril", "10 mg", "oral", "once daily", "3 months"),
            Prescription("Atorvastatin", "20 mg", "oral", "at night", "3 months"),
        ),
        chat=(
            ChatLine("patient", NOW, "Can I send you the cuff readings from last week?"),
            ChatLine("doctor", NOW + timedelta(seconds=40), "Yes, they are already here."),
        ),
    )


def rates(seconds: list[float], n: int) -> dict[str, float]:
    per_s = [n / s for s in seconds]
    return {"median": statistics.median(per_s), "min": min(per_s), "max": max(per_s)}


# 1-2: seal and open, against raw AES-GCM ---------------------------------------------------
def seal_records(sealer: Sealer, note: Note, record_ids: list[str]) -> list[Any]:
    out = []
    for record_id in record_ids:
        data_key, wrapped = sealer.new_key("pat-1", NOW)
        fields = {
            name: data_key.seal(Binding(record_id, 1, "pat-1", name), value)
            for name, value in note_fields(note).items()
        }
        out.append((wrapped, record_id, fields))
    return out


def new_keys(sealer: Sealer, n: int) -> None:
    """Only the fresh data key each record version needs, wrapped by the KEK."""
    for _ in range(n):
        sealer.new_key("pat-1", NOW)


def open_records(sealer: Sealer, sealed: list[Any]) -> Note | None:
    note = None
    for wrapped, record_id, fields in sealed:
        data_key = sealer.open_key(wrapped)
        note = note_from_fields(
            {
                name: data_key.open(Binding(record_id, 1, "pat-1", name), blob)
                for name, blob in fields.items()
            }
        )
    return note


def raw_encrypt(aead: AESGCM, plaintext: bytes, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        nonce = os.urandom(NONCE_BYTES)
        out.append(nonce + aead.encrypt(nonce, plaintext, None))
    return out


def raw_decrypt(aead: AESGCM, blobs: list[bytes]) -> bytes:
    plain = b""
    for blob in blobs:
        plain = aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
    return plain


def timed(fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def seal_bench(tmp: Path, records: int, rounds: int) -> dict[str, Any]:
    key_file = KeyFile(tmp / "seal-keys" / "record-keys.json")
    key_file.create(NOW)
    sealer = Sealer(key_file)
    note = consultation_note()
    fields = note_fields(note)
    plaintext = b"".join(fields.values())
    soap_bytes = sum(len(getattr(note, k).encode()) for k in SOAP)
    aead = AESGCM(AESGCM.generate_key(256))
    record_ids = [new_id() for _ in range(records)]
    times: dict[str, list[float]] = {
        "raw": [],
        "raw_open": [],
        "seal": [],
        "open": [],
        "new_key": [],
    }
    sealed_bytes = 0
    for _ in range(rounds):
        t, blobs = timed(raw_encrypt, aead, plaintext, records * RAW_TIMES)
        times["raw"].append(t)
        t, sealed = timed(seal_records, sealer, note, record_ids)
        times["seal"].append(t)
        t, _ = timed(new_keys, sealer, records)
        times["new_key"].append(t)
        t, plain = timed(raw_decrypt, aead, blobs)
        times["raw_open"].append(t)
        assert plain == plaintext
        t, opened = timed(open_records, sealer, sealed)
        times["open"].append(t)
        assert opened == note
        sealed_bytes = sum(len(b) for b in sealed[0][2].values()) + len(sealed[0][0].wrapped)
    r = {
        name: rates(t, records * (RAW_TIMES if name.startswith("raw") else 1))
        for name, t in times.items()
    }
    return {
        "seal_per_s": round(r["seal"]["median"]),
        "open_per_s": round(r["open"]["median"]),
        "raw_aesgcm_per_s": round(r["raw"]["median"]),
        "raw_aesgcm_open_per_s": round(r["raw_open"]["median"]),
        "ratio": round(r["seal"]["median"] / r["raw"]["median"], 3),
        "open_ratio": round(r["open"]["median"] / r["raw_open"]["median"], 3),
        # the floor of envelope encryption: a fresh data key, wrapped, costs this alone;
        # seal_per_s can never exceed it, so ratio <= new_key_per_s / raw_aesgcm_per_s
        "new_key_per_s": round(r["new_key"]["median"]),
        "ratio_bound": round(r["new_key"]["median"] / r["raw"]["median"], 3),
        "spread": {name: [round(v["min"]), round(v["max"])] for name, v in r.items()},
        "soap_bytes": soap_bytes,
        "plaintext_bytes": len(plaintext),
        "fields": len(fields),
        "stored_bytes": sealed_bytes,
        "records": records,
        "rounds": rounds,
    }


# 3: rotation ------------------------------------------------------------------------------
def fill(db: Path, sealer: Sealer, keys: int, batch: int) -> list[WrappedKey]:
    """`keys` data keys wrapped by the primary KEK, `batch` rows per transaction."""
    patients = [new_id() for _ in range(PATIENTS)]
    sample: list[WrappedKey] = []
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        done = 0
        while done < keys:
            n = min(batch, keys - done)
            wrapped = [sealer.new_key(patients[(done + i) % PATIENTS], NOW)[1] for i in range(n)]
            if not sample:
                sample = wrapped
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO data_keys (id, patient_id, kek_id, wrapped, created_at, format)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        k.id,
                        k.patient_id,
                        k.kek_id,
                        k.wrapped,
                        k.created_at.isoformat(timespec="milliseconds"),
                        k.format,
                    )
                    for k in wrapped
                ],
            )
            conn.execute("COMMIT")
            done += n
    finally:
        conn.close()
    return sample


class StoreTimes:
    """Wall time of the store calls the rotation awaits, by method."""

    def __init__(self, store: Store, names: tuple[str, ...]) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(names, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(names, 0)
        for name in names:
            setattr(store, name, self._timed(name, getattr(store, name)))

    def _timed(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.calls[name] += 1

        return timed_call


async def rotation_bench(tmp: Path, keys: int, batch: int, profile: bool) -> dict[str, Any]:
    key_file = KeyFile(tmp / "rotate-keys" / "record-keys.json")
    first = key_file.create(NOW)
    sealer = Sealer(key_file)
    db = tmp / "rotate.db"
    settings = StoreSettings(url=f"sqlite:///{db}", database="bench")
    store = await open_store(settings)  # creates the schema
    try:
        await KeyCustody(store, sealer).verify()  # keeps the KEK's check value
    finally:
        await store.close()

    start = time.perf_counter()
    sample = fill(db, sealer, keys, batch)
    fill_s = time.perf_counter() - start
    print(f"filled {keys:,} data keys in {fill_s:.1f} s", flush=True)

    # the baseline: the same unwrap and wrap, in memory, no store
    crypto_s, _ = timed(lambda: [sealer.rewrap(k, first) for k in sample])

    store = await open_store(settings)
    try:
        assert await store.count_data_keys() == {first: keys}
        custody = KeyCustody(store, sealer)
        start = time.perf_counter()
        rotation = await custody.rotate(add=True, now_key=lambda: key_file.add_primary(NOW))
        rotate_s = time.perf_counter() - start
        assert rotation.rewrapped == keys, rotation
        assert await store.count_data_keys() == {rotation.primary: keys}
        await custody.remove(first, forget=key_file.remove)  # the old KEK wraps nothing now
        moved = await store.get_data_keys([sample[0].id])
        sealer.open_key(moved[sample[0].id])  # opens under the new KEK alone
        profile_lines = await profile_rotation(store, custody, key_file, keys) if profile else []
    finally:
        await store.close()
    return {
        "rewrap_per_s": round(keys / rotate_s),
        "rewrap_crypto_per_s": round(len(sample) / crypto_s),
        "rewrap_ratio": round((keys / rotate_s) / (len(sample) / crypto_s), 3),
        "rotation_s": round(rotate_s, 2),
        "fill_s": round(fill_s, 1),
        "keys": keys,
        "rewrap_batch": REWRAP_BATCH,
        "profile": profile_lines,
    }


async def profile_rotation(
    store: Store, custody: KeyCustody, key_file: KeyFile, keys: int
) -> list[str]:
    """Rotate again (every key re-wrapped once more) under cProfile; where the time goes."""
    store_times = StoreTimes(store, ("data_keys_under", "rewrap_data_keys", "count_data_keys"))
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    rotation = await custody.rotate(add=True, now_key=lambda: key_file.add_primary(NOW))
    profiler.disable()
    total = time.perf_counter() - start
    assert rotation.rewrapped == keys
    lines = [f"profiled rotation: {keys:,} keys in {total:.2f} s ({keys / total:,.0f}/s)"]
    lines.append("store calls awaited by the rotation (wall time, the store's own thread):")
    for name, seconds in store_times.seconds.items():
        calls = store_times.calls[name]
        lines.append(
            f"  {100 * seconds / total:5.1f}%  {seconds:6.2f} s  {calls:4d} x {name}"
            f"  ({1000 * seconds / max(calls, 1):.1f} ms each)"
        )
    stats = pstats.Stats(profiler)
    rows = []
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for (file, line, function), (_, calls, own, cumulative, _) in entries.items():
        where = f"{Path(file).name}:{line}" if line else file
        rows.append((own, cumulative, calls, f"{function} ({where})"))
    lines.append("event-loop thread, cProfile, by own time (cumulative in brackets):")
    for own, cumulative, calls, name in sorted(rows, reverse=True)[:18]:
        lines.append(
            f"  {100 * own / total:5.1f}%  ({100 * cumulative / total:5.1f}%)  {calls:8d}  {name}"
        )
    return lines


# the run ------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Sealing, opening and re-wrapping rates.")
    p.add_argument("--records", type=int, default=4000, help="records sealed per round")
    p.add_argument("--rounds", type=int, default=7, help="rounds of the four seal/open loops")
    p.add_argument("--keys", type=int, default=100_000, help="data keys in the rotated store")
    p.add_argument("--batch", type=int, default=10_000, help="data keys per insert transaction")
    p.add_argument("--profile", action="store_true", help="profile a second rotation")
    a = p.parse_args(argv)
    if min(a.records, a.rounds, a.keys, a.batch) <= 0:
        p.error("--records, --rounds, --keys, --batch: > 0")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    with tempfile.TemporaryDirectory(prefix="bench-records-") as folder:
        tmp = Path(folder)
        print(f"sealing: {a.rounds} rounds of {a.records:,} records", flush=True)
        sealing = seal_bench(tmp, a.records, a.rounds)
        print(f"rotation: {a.keys:,} data keys", flush=True)
        rotation = asyncio.run(rotation_bench(tmp, a.keys, a.batch, a.profile))
    s, r = sealing, rotation
    lines = [
        "",
        f"== records benchmark, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"cryptography {cryptography.__version__}, {openssl.openssl_version_text()}",
        f"note        {s['soap_bytes']:,} bytes of SOAP text; {s['plaintext_bytes']:,} bytes in "
        f"{s['fields']} fields; stored {s['stored_bytes']:,} bytes (sealed fields + wrapped key)",
        f"seal        {s['seal_per_s']:,} records/s (new_key + seal x {s['fields']}); raw AES-GCM "
        f"{s['raw_aesgcm_per_s']:,}/s on the same bytes: ratio {s['ratio']}",
        f"open        {s['open_per_s']:,} records/s (open_key + open x {s['fields']} + "
        f"note_from_fields); raw AES-GCM {s['raw_aesgcm_open_per_s']:,}/s: ratio "
        f"{s['open_ratio']}",
        f"bound       a fresh wrapped data key alone: {s['new_key_per_s']:,}/s, so the seal ratio "
        f"cannot exceed {s['ratio_bound']}",
        "            spread over the rounds (min-max/s): "
        + ", ".join(f"{k} {lo:,}-{hi:,}" for k, (lo, hi) in s["spread"].items()),
        f"rotation    {r['keys']:,} data keys re-wrapped in {r['rotation_s']} s: "
        f"{r['rewrap_per_s']:,}/s; Sealer.rewrap alone {r['rewrap_crypto_per_s']:,}/s "
        f"(ratio {r['rewrap_ratio']}); batches of {r['rewrap_batch']}",
        *r.pop("profile"),
    ]
    print("\n".join(lines))
    summary = {**s, **r, "cores": os.cpu_count()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
