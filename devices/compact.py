"""The compact JSON form: one object, one time, one value per vital.

    {"t": 1764400000, "hr": 72, "spo2": 97, "sys": 121, "dia": 79, "temp": 36.8,
     "rr": 14, "u": {"temp": "[degF]", "weight": "lb"}}

- Keys: "t", "u" and the vitals' short keys (hr spo2 rr temp sys dia weight glucose),
  matched exactly. Any other key is refused, naming it; the rest of the object is kept.
- "t": one time for every value, in seconds (a fraction carries milliseconds). The same
  rule as SenML: below 2**28 it is relative to now (so 0 or -30 work without a clock),
  otherwise Unix time. Missing means now. There is no millisecond variant ("t_ms"):
  one spelling of time, and an unknown key is refused like any other.
- "u": optional units by key; a vital without one is in its canonical unit. A unit for
  a key that is not a vital is refused; a unit for a vital not in the message is ignored.
- A "t" or "u" that is not of the right type makes every value's time or unit unknown,
  so it is the only refusal and nothing is kept.
- Record numbers in refusals are 0-based positions of the key in the object.
"""

from __future__ import annotations

from collections.abc import Mapping

from devices.readings import Refusal
from devices.vitals import BY_KEY, Measurement, UnitError, describe, number, to_canonical

TIME = "t"
UNITS = "u"
_KEYS = ", ".join((TIME, UNITS, *BY_KEY))


def decode_object(payload: Mapping[str, object]) -> list[Measurement | Refusal]:
    """Measurements and refusals, in key order."""
    position = {key: index for index, key in enumerate(payload)}

    time = 0.0
    if TIME in payload:
        found = number(payload[TIME])
        if found is None:
            return [
                Refusal(
                    position[TIME],
                    TIME,
                    f"t: must be a number of seconds, not {describe(payload[TIME])}; "
                    f"nothing in this message was kept",
                )
            ]
        time = found

    units = payload.get(UNITS, {})
    if not isinstance(units, Mapping):
        return [
            Refusal(
                position[UNITS],
                UNITS,
                f'u: must be an object of units by key (e.g. {{"temp": "[degF]"}}), not '
                f"{describe(units)}; nothing in this message was kept",
            )
        ]

    out: list[Measurement | Refusal] = []
    for index, (key, raw) in enumerate(payload.items()):
        if key == TIME:
            continue
        if key == UNITS:
            out.extend(
                Refusal(
                    index,
                    UNITS,
                    f"u: {name!r} is not a measurement key; units are given for: "
                    f"{', '.join(BY_KEY)}",
                    name,
                )
                for name in units
                if name not in BY_KEY
            )
            continue
        out.append(_decode_value(index, key, raw, units.get(key), time))
    return out


def _decode_value(
    index: int, key: str, raw: object, unit: object, time: float
) -> Measurement | Refusal:
    vital = BY_KEY.get(key)
    if vital is None:
        field = key or '""'
        return Refusal(
            index,
            field,
            f"{field}: not a key of the compact form; it takes: {_KEYS} (other names are for "
            f"SenML)",
            key,
        )
    value = number(raw)
    if value is None:
        hint = "; leave the key out when there is no reading" if raw is None else ""
        return Refusal(index, key, f"{key}: must be a JSON number, not {describe(raw)}{hint}", key)
    if unit is not None and not isinstance(unit, str):
        return Refusal(
            index, UNITS, f"u: the unit for {key!r} must be a string, not {describe(unit)}", key
        )
    try:
        canonical = to_canonical(vital, value, unit)
    except UnitError as exc:
        return Refusal(index, UNITS, f"u: {exc}", key)
    return Measurement(
        record=index,
        name=key,
        vital=vital,
        value=canonical,
        value_field=key,
        time=time,
        time_field=TIME,
        as_sent="" if canonical == value else f"{value:g} {unit}",
    )
