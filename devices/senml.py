"""SenML packs (RFC 8428, application/senml+json) into measurements of known vitals.

Resolution follows RFC 8428 §4.6: base fields (bn bt bu bv) hold from the record that
sets them until a later record sets them again; name = bn + n, time = bt + t,
value = bv + v, unit = u or else bu. Further rules of this server:

- Version: every `bver` in a pack must be the same positive integer, at most 10;
  otherwise the whole pack is refused.
- Labels ending in "_" are must-understand extensions (RFC 8428 §4.4): none is
  understood here, so a pack carrying one is refused whole, as the RFC requires. Other
  unknown labels, and `ut`, are ignored.
- A malformed base field (`bn` or `bu` not a string, `bt` or `bv` not a number) would
  change every later record, so decoding stops there: the records before it are kept,
  one refusal names the field and the records left undecoded.
- A record holding only base fields (every label starting with "b") sets them and
  carries no measurement: it is skipped without a refusal.
- Values: a vital needs a number in `v`. A record with `vs`, `vb` or `vd` is refused,
  naming that field; a record with more than one of v/vs/vb/vd is refused. A sum
  (`s`, `bs`) next to `v` is ignored; a record whose only value is a sum is refused.
- Names: the resolved name is looked up whole ("hr", "8867-4", "MDC_TEMP_BODY"); if it
  is not known, the part after its last ":", "/" or "." is looked up, so
  "urn:dev:ow:10e2073a01080063:" + "hr" and "urn:dev:mac:0024befffe804ff1/spo2" work.
- Time: the resolved time (bt + t, absent fields counting as 0) is kept as sent; the
  payload layer reads values below 2**28 as relative to now, others as Unix seconds.
- Record numbers in refusals are 0-based positions in the pack.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from devices.readings import Refusal
from devices.vitals import (
    VITALS,
    Measurement,
    UnitError,
    Vital,
    describe,
    lookup,
    number,
    to_canonical,
)

MAX_VERSION = 10
VALUE_FIELDS = ("v", "vs", "vb", "vd")
SEPARATORS = (":", "/", ".")
PANEL_NAMES = frozenset(
    {"bp", "blood_pressure", "bloodpressure", "85354-9", "150020", "mdc_press_bld_noninv"}
)
_KNOWN_NAMES = ", ".join(vital.key for vital in VITALS)


def decode_pack(pack: Sequence[object]) -> list[Measurement | Refusal]:
    """Measurements and refusals, in pack order.

    This runs once per reading on the ingest hot path, so the common record (n, u, v,
    perhaps t, no value field but v) takes the shortest way: plain dict lookups, no
    generic helper per field. Anything unusual goes the general way, which names it.
    """
    refused = _check_pack(pack)
    if refused is not None:
        return [refused]
    out: list[Measurement | Refusal] = []
    base_name = ""
    base_unit = ""
    base_time = 0.0
    base_value = 0.0
    for index, record in enumerate(pack):
        if not isinstance(record, dict):  # JSON objects parse to dicts
            out.append(
                Refusal(index, "record", f"record: must be a JSON object, not {describe(record)}")
            )
            continue
        if "bn" in record or "bu" in record or "bt" in record or "bv" in record:
            bad_base = _bad_base(record)
            if bad_base is not None:
                label, wanted = bad_base
                later = (
                    f"records {index}..{len(pack) - 1} were"
                    if index < len(pack) - 1
                    else f"record {index} was"
                )
                out.append(
                    Refusal(
                        index,
                        label,
                        f"{label}: must be {wanted}, not {describe(record[label])}; base "
                        f"fields apply to every later record, so {later} not decoded",
                    )
                )
                break
            base_name = _str(record.get("bn"), base_name)
            base_unit = _str(record.get("bu"), base_unit)
            base_time = _float(record.get("bt"), base_time)
            base_value = _float(record.get("bv"), base_value)
        if (
            "n" not in record
            and "v" not in record
            and record
            and all(str(label).startswith("b") for label in record)
        ):
            continue  # a header: base fields only
        out.append(_decode_record(index, record, base_name, base_unit, base_time, base_value))
    return out


def _check_pack(pack: Sequence[object]) -> Refusal | None:
    """Refuse the whole pack for a version or a must-understand label we don't support."""
    versions: set[int] = set()
    for index, record in enumerate(pack):
        if not isinstance(record, dict):
            continue
        try:  # one join finds whether any label has a "_" at all (JSON labels are strings)
            labels = "".join(record)
        except TypeError:
            labels = "_"
        if "_" in labels:
            for label in record:
                if isinstance(label, str) and label.endswith("_"):
                    return Refusal(
                        None,
                        label,
                        f"{label}: record {index} carries a must-understand label (ending "
                        f"in '_') that this server does not support; RFC 8428 requires "
                        f"refusing the whole pack",
                    )
        if "bver" in record:
            version = record["bver"]
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                return Refusal(
                    None,
                    "bver",
                    f"bver: record {index} has {version!r}; the version must be a positive "
                    f"integer (10, or leave bver out)",
                )
            versions.add(version)
    if len(versions) > 1:
        return Refusal(
            None,
            "bver",
            f"bver: the records disagree on the version ({sorted(versions)}); every record "
            f"of a pack has the same version",
        )
    if versions and max(versions) > MAX_VERSION:
        return Refusal(
            None,
            "bver",
            f"bver: version {max(versions)} is newer than this server supports "
            f"({MAX_VERSION}); send bver {MAX_VERSION} or leave it out",
        )
    return None


def _bad_base(record: Mapping[object, object]) -> tuple[str, str] | None:
    for label in ("bn", "bu"):
        if label in record and not isinstance(record[label], str):
            return label, "a string"
    for label in ("bt", "bv"):
        if label in record and number(record[label]) is None:
            return label, "a number"
    return None


def _decode_record(
    index: int,
    record: Mapping[object, object],
    base_name: str,
    base_unit: str,
    base_time: float,
    base_value: float,
) -> Measurement | Refusal:
    n = record.get("n", "")
    if not isinstance(n, str):
        return Refusal(index, "n", f"n: must be a string, not {describe(n)}")
    name = base_name + n
    vital = resolve(name)
    if vital is None:
        return Refusal(index, "n", _unknown(name), name)

    if "v" not in record or "vs" in record or "vb" in record or "vd" in record:
        return _value_refusal(index, record, name, vital)
    raw = record["v"]
    sent = raw if isinstance(raw, float) else number(raw)
    if sent is None:
        return Refusal(index, "v", f"v: must be a JSON number, not {describe(raw)}", name)

    t = record.get("t", 0.0)
    offset = t if isinstance(t, float) else number(t)
    if offset is None:
        return Refusal(index, "t", f"t: must be a number of seconds, not {describe(t)}", name)

    unit = record.get("u", base_unit)
    if not isinstance(unit, str):
        return Refusal(index, "u", f"u: must be a string, not {describe(unit)}", name)
    value = base_value + sent
    try:
        canonical = to_canonical(vital, value, unit)
    except UnitError as exc:
        unit_field = "u" if "u" in record else "bu"
        return Refusal(index, unit_field, f"{unit_field}: {exc}", name)
    return Measurement(
        index,
        name,
        vital,
        canonical,
        "v",
        base_time + offset,
        "t",
        "" if canonical == value else f"{value:g} {unit}",
    )


def _value_refusal(index: int, record: Mapping[object, object], name: str, vital: Vital) -> Refusal:
    """Why a record has no usable value field: none, several, or not `v`."""
    present = [label for label in VALUE_FIELDS if label in record]
    if len(present) > 1:
        return Refusal(
            index,
            present[1],
            f"{present[1]}: a record carries one value field, this one has "
            f"{' and '.join(present)}; send {vital} as a number in v",
            name,
        )
    if not present:
        if "s" in record:
            return Refusal(
                index,
                "s",
                f"s: a sum is not a measurement of {vital}; send the value in v",
                name,
            )
        return Refusal(index, "v", f"v: missing; send {vital} as a number in v", name)
    label = present[0]
    return Refusal(
        index,
        label,
        f"{label}: {vital} needs a number in v, not a {_VALUE_KIND[label]} in {label}",
        name,
    )


@functools.lru_cache(maxsize=4096)  # a device sends the same few names in every pack
def resolve(name: str) -> Vital | None:
    """The vital `name` means: the whole name if known, else its last segment.

    The last segment is what follows the last ":", "/" or "." in the name.
    """
    vital = lookup(name)
    if vital is not None:
        return vital
    cut = max(name.rfind(separator) for separator in SEPARATORS)
    return lookup(name[cut + 1 :]) if cut >= 0 else None


def _unknown(name: str) -> str:
    cut = max(name.rfind(separator) for separator in SEPARATORS)
    last = name[cut + 1 :]
    if name.casefold() in PANEL_NAMES or last.casefold() in PANEL_NAMES:
        return (
            f"n: {name!r} is the blood-pressure panel; send systolic and diastolic as two "
            f"records, 'sys' and 'dia', with the same time"
        )
    if not name:
        return f"n: the record has no name (bn + n is empty); name it one of: {_KNOWN_NAMES}"
    looked = f" (nor its last part {last!r})" if cut >= 0 and last else ""
    return (
        f"n: {name!r}{looked} is not a known measurement; use one of: {_KNOWN_NAMES}, "
        f"a longer form (e.g. heart_rate), a LOINC code or an MDC code"
    )


def _str(value: object, default: str) -> str:
    return value if isinstance(value, str) else default


def _float(value: object, default: float) -> float:
    found = number(value)
    return default if found is None else found


_VALUE_KIND = {"vs": "string value", "vb": "boolean value", "vd": "data value"}
