"""A device's MQTT payload into readings to store and refusals to send back.

`decode` takes the bytes as they came off the broker and never raises on their content:
whatever is wrong with them becomes a `Refusal` a firmware developer can act on.

The whole payload is refused (`record` None, `field` "payload") when it is larger than
`max_bytes`, not UTF-8 (a leading byte-order mark is allowed), empty, not JSON, nested
deeper than MAX_DEPTH, has a key twice in one object, or is neither an array (a SenML
pack) nor an object (the compact form). Then each measurement the codec produced is
checked, and a good one is kept even when others in the same payload are refused:

- its value must be a finite number: the NaN and Infinity literals that some serializers
  write (Python's json reads them) are refused record by record;
- it must fall in the vital's physiologically possible range (devices/vitals.py);
- its time (below 2**28: seconds relative to `now`; otherwise Unix seconds) must be no
  later than now + max_skew and no earlier than now - max_age;
- a second reading of the same code at the same millisecond is refused; the first kept.

Times become timezone-aware UTC datetimes cut to whole milliseconds.

`decode_rows` is the same without the `Reading` objects, for the ingest hot path: it
gives (code, value, unit, taken_at) tuples that become store rows directly. The common
payload takes a fast way through (no parser hook, integer time arithmetic); anything the
fast way does not accept goes the general way, which decides and names every refusal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import orjson

from devices.compact import decode_object
from devices.readings import Decoded, Reading, Refusal, Row
from devices.senml import decode_pack, resolve
from devices.vitals import DECLARED, Measurement, describe
from telemed.clock import from_epoch_ms, iso, truncate

DEFAULT_MAX_BYTES = 16384
MAX_DEPTH = 8  # SenML needs 2 levels (pack, record), the compact form 2 (object, "u")
RELATIVE_LIMIT = 2**28  # RFC 8428 §4.5.3: times below this are relative to now
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FAR = 1e10  # seconds (about 317 years): beyond any window, and safe for datetime math
_LOOKS_LIKE_MS = 1e11  # a Unix time this large is in the year 5138: milliseconds, surely
MAX_REFUSALS = 20  # per message; one more names how many others were refused
_US = timedelta(microseconds=1)
_MS = timedelta(milliseconds=1)
# The one-pass way's parser: orjson reads a 10-record pack in a third of the json
# module's time (2 against 7 µs). It reads what json.loads reads, but refuses the NaN and
# Infinity literals and nesting past 1,024 levels, and reads an integer past 64 bits as
# the float that float() makes of it: the same value the one-pass way computes with.
# Anything it refuses goes the general way, which parses with the json module (`_PARSE_JSON`,
# then json.loads with hooks), so that refusals name what was sent.
# tests/devices/test_payloads_fast.py checks that both ways agree.
_PARSE = orjson.loads
_PARSE_JSON = json.JSONDecoder().decode  # what json.loads(text) does, without its checks


def decode(
    payload: bytes,
    device_id: str,
    *,
    now: datetime,
    max_age: timedelta,
    max_skew: timedelta,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Decoded:
    """Readings and refusals for one payload from `device_id`, received at `now`."""
    rows, refusals = decode_rows(
        payload, now=now, max_age=max_age, max_skew=max_skew, max_bytes=max_bytes
    )
    return Decoded(tuple([Reading(device_id, *row[:4]) for row in rows]), refusals)


def decode_rows(
    payload: bytes,
    *,
    now: datetime,
    max_age: timedelta,
    max_skew: timedelta,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> tuple[list[Row], tuple[Refusal, ...]]:
    """As `decode`: the readings as (code, value, unit, taken_at, taken_at in ms since the
    epoch), and the refusals."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    rows = _usual_pack(payload, now, max_age, max_skew, max_bytes)
    if rows is not None:
        return rows, ()
    parsed = _parse(payload, max_bytes)
    if isinstance(parsed, Refusal):
        return [], (parsed,)
    if isinstance(parsed, list):
        items = decode_pack(parsed)
    elif isinstance(parsed, dict):
        items = decode_object(parsed)
    else:
        return [], (
            _whole(
                f"{describe(parsed)} is neither a SenML pack (a JSON array of records) "
                f"nor the compact form (a JSON object)"
            ),
        )
    rows, refusals = _validate(items, now, max_age, max_skew)
    if not rows and not refusals:
        return [], (_whole("no measurement in this message; send at least one"),)
    if len(refusals) > MAX_REFUSALS:
        more = len(refusals) - MAX_REFUSALS
        summary = _whole(f"{more} more records were refused; fix the ones named above first")
        return rows, (*refusals[:MAX_REFUSALS], summary)
    return rows, tuple(refusals)


class _Window:
    """The accepted times, in whole microseconds since the epoch. `ms` computes exactly
    what `_time` does with datetimes (timedelta rounds seconds to microseconds half to
    even, as `round` does; truncating to milliseconds floors), without them."""

    __slots__ = ("earliest_us", "latest_us", "now_seconds", "now_us")

    def __init__(self, now: datetime, max_age: timedelta, max_skew: timedelta) -> None:
        self.now_us = (now - EPOCH) // _US
        self.now_seconds = now.timestamp()
        self.earliest_us = self.now_us - max_age // _US
        self.latest_us = self.now_us + max_skew // _US

    def ms(self, seconds: float) -> int | None:
        """Milliseconds since the epoch of a reading's time (below 2**28: relative to
        now), or None when it is outside the window or not a time to compute this way."""
        if seconds < RELATIVE_LIMIT:
            start, ahead = self.now_us, seconds
        else:
            start, ahead = 0, seconds - self.now_seconds
        if not -_FAR < ahead < _FAR:  # False for NaN too
            return None
        fraction, whole = math.modf(seconds)
        taken_us = start + int(whole) * 1_000_000 + round(fraction * 1e6)
        if not self.earliest_us <= taken_us // 1000 * 1000 <= self.latest_us:
            return None
        return taken_us // 1000


_WINDOWS: dict[tuple[datetime, timedelta, timedelta], _Window] = {}


def _window(now: datetime, max_age: timedelta, max_skew: timedelta) -> _Window:
    """`_Window(now, max_age, max_skew)`, the last one made kept: the messages of one
    millisecond share their `now`."""
    key = (now, max_age, max_skew)
    window = _WINDOWS.get(key)
    if window is None:
        _WINDOWS.clear()
        window = _WINDOWS[key] = _Window(now, max_age, max_skew)
    return window


def _pairs_written(text: str) -> int:
    """The key-value pairs written in JSON text without escapes: every other
    '"'-separated part is outside strings, and each pair has one ':' there."""
    return "".join(text.split('"')[::2]).count(":")


def _no_key_twice(text: str, pairs: int, colons_read: int = 0) -> bool:
    """Whether JSON text without escapes, whose parsed objects hold `pairs` key-value
    pairs and whose strings read hold `colons_read` ':', wrote none of its keys twice (a
    key written twice is read once). Every ':' is a pair's or inside a string, and each
    string read was written: as many ':' as pairs and colons read settles it at once (a
    key written twice would add one more); otherwise the count outside strings does."""
    return text.count(":") == pairs + colons_read or _pairs_written(text) == pairs


_USUAL_LABELS = frozenset({"bn", "bt", "bu", "n", "u", "v", "t"})
_NUMBER = (int, float)  # a JSON number's class (bool, a JSON true or false, is neither)
_NEVER = -1.0  # an ambiguity bound no value is at or under while also at or over 0


# (base name, name, unit) as a device sends them, if the vital's unit is the canonical
# one (or means it): (code, unit, low, high, value up to which the unit is ambiguous, or
# _NEVER); () otherwise. A cache of what `resolve` and `DECLARED` say, emptied when full
# (devices choose names).
_Series = tuple[str, str, float, float, float] | tuple[()]
_USUAL_SERIES: dict[tuple[str, str, str], _Series] = {}
_USUAL_SERIES_MAX = 4096


def _usual_series(key: tuple[str, str, str]) -> _Series:
    base_name, name, unit = key
    vital = resolve(base_name + name)
    conversion = None if vital is None else DECLARED.get((vital.code, unit))
    found: _Series = ()
    if vital is not None and conversion is not None and conversion.identity:
        bound = conversion.ambiguous_up_to
        found = (vital.code, vital.unit, vital.low, vital.high, _NEVER if bound is None else bound)
    if len(_USUAL_SERIES) >= _USUAL_SERIES_MAX:
        _USUAL_SERIES.clear()
    _USUAL_SERIES[key] = found
    return found


def _usual_pack(
    payload: bytes, now: datetime, max_age: timedelta, max_skew: timedelta, max_bytes: int
) -> list[Row] | None:
    """The rows of the usual payload, a SenML pack of plain records every one of which is
    kept, in one pass; None for anything else (a refusal, a rarer label or unit, a
    conversion), which the rest of `decode_rows` decides and names. It computes what the
    general way computes, in the same order, each time as `_Window.ms` does (written out
    here: ingestion runs this loop for every reading). tests/devices/test_payloads_fast.py
    checks that the two agree, and that the usual pack takes this way."""
    if len(payload) > max_bytes or payload[:1] != b"[":
        return None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\\" in text:
        return None
    try:
        pack = _PARSE(text)
    except (ValueError, RecursionError):
        return None
    if pack.__class__ is not list or not pack:
        return None
    window = _window(now, max_age, max_skew)
    now_us, now_seconds = window.now_us, window.now_seconds
    earliest_us, latest_us = window.earliest_us, window.latest_us
    modf, series_of, labels, number = math.modf, _USUAL_SERIES.get, _USUAL_LABELS, _NUMBER
    epoch, one_ms = EPOCH, _MS
    base_name = base_unit = ""
    base_time = 0.0
    pairs = colons = 0  # colons: in the base names read (`urn:dev:...`), for _no_key_twice
    rows: list[Row] = []
    seen: set[tuple[str, int]] = set()
    try:
        for record in pack:
            if record.__class__ is not dict or not record.keys() <= labels:
                return None
            pairs += len(record)
            if "bn" in record or "bt" in record or "bu" in record:
                name, unit, start = (
                    record.get("bn", base_name),
                    record.get("bu", base_unit),
                    record.get("bt", base_time),
                )
                if name.__class__ is not str or unit.__class__ is not str:
                    return None
                if start.__class__ not in number:
                    return None
                base_name, base_unit, base_time = name, unit, float(start)
                if "bn" in record:
                    colons += name.count(":")
            n, unit, v, t = (
                record.get("n", ""),
                record.get("u", base_unit),
                record.get("v"),
                record.get("t", 0.0),
            )
            if n.__class__ is not str or unit.__class__ is not str:
                return None
            if v.__class__ not in number or t.__class__ not in number:
                return None
            key = (base_name, n, unit)
            series = series_of(key)
            if series is None:
                series = _usual_series(key)
            if not series:
                return None
            code, canonical, low, high, bound = series
            value = 0.0 + float(v)  # as bv (0) + v: -0 becomes 0 as it does there
            if not low <= value <= high or 0 <= value <= bound:
                return None
            # the time, as `_Window.ms` computes it
            seconds = base_time + float(t)
            if seconds < RELATIVE_LIMIT:
                start_us, ahead = now_us, seconds
            else:
                start_us, ahead = 0, seconds - now_seconds
            if not -_FAR < ahead < _FAR:  # False for NaN too
                return None
            fraction, whole = modf(seconds)
            ms = (start_us + int(whole) * 1_000_000 + round(fraction * 1e6)) // 1000
            if not earliest_us <= ms * 1000 <= latest_us:
                return None
            reading = (code, ms)
            if reading in seen:
                return None
            seen.add(reading)
            rows.append((code, value, canonical, epoch + one_ms * ms, ms))
    except OverflowError:  # an integer too large for a float: the general way names it
        return None
    return rows if _no_key_twice(text, pairs, colons) else None


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _parse(payload: bytes, max_bytes: int) -> object:
    """The JSON value of `payload`, or the Refusal of the whole payload."""
    if len(payload) > max_bytes:
        return _whole(
            f"{len(payload)} bytes is over the limit of {max_bytes} bytes; "
            f"send fewer records per message"
        )
    try:
        text = payload.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _whole(
            f"not UTF-8 text (byte 0x{payload[exc.start]:02x} at offset {exc.start}); "
            f"send JSON encoded as UTF-8"
        )
    if not text.strip():
        return _whole("empty message; send a SenML pack or the compact JSON form")
    if "\\" not in text:  # the usual payload: the fast way, if it has nothing to refuse
        try:
            fast: object = _PARSE_JSON(text)
        except (ValueError, RecursionError):
            pass  # the general way below names what is wrong
        else:
            depth, pairs = _shape(fast)
            # fewer pairs read than written: a key came twice (the general way names it)
            if depth <= MAX_DEPTH and _no_key_twice(text, pairs):
                return fast
    try:
        value: object = json.loads(text, object_pairs_hook=_unique)
    except RecursionError:  # deeper than the interpreter's limit: hostile, so count it
        return _too_deep(_depth(text))
    except _DuplicateKey as exc:
        return _whole(f"the key {exc.key!r} appears twice in one JSON object; send it once")
    except json.JSONDecodeError as exc:
        return _whole(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except ValueError as exc:  # e.g. an integer longer than Python converts
        return _whole(f"not JSON that can be read: {exc}")
    depth = _value_depth(value)
    return _too_deep(depth) if depth > MAX_DEPTH else value


def _shape(value: object) -> tuple[int, int]:
    """How deeply arrays and objects nest in a parsed value, and how many key-value pairs
    its objects hold: work in proportion to its values."""
    deepest = pairs = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[object]
        if isinstance(item, dict):
            pairs += len(item)
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        for child in children:
            if child.__class__ is dict or child.__class__ is list:
                stack.append((child, depth + 1))
    return deepest, pairs


def _too_deep(depth: int) -> Refusal:
    return _whole(
        f"JSON nested {depth} levels deep, more than the {MAX_DEPTH} accepted; a SenML "
        f"pack needs 2 (array, record), the compact form 2 (object, u)"
    )


def _value_depth(value: object) -> int:
    """How deeply arrays and objects nest in a parsed value: work in proportion to its
    containers, a dozen for a normal pack (the hot path never scans the text)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return deepest


def _depth(text: str) -> int:
    """How deeply arrays and objects nest in `text`, strings left aside, for a payload the
    parser could not nest into: one pass, so that no payload costs more than its length
    (a regular expression over strings took 0.5 s on 16 KB of escaped quotes)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _whole(reason: str) -> Refusal:
    return Refusal(None, "payload", f"payload: {reason}")


def _validate(
    items: Sequence[Measurement | Refusal],
    now: datetime,
    max_age: timedelta,
    max_skew: timedelta,
) -> tuple[list[Row], list[Refusal]]:
    rows: list[Row] = []
    refusals: list[Refusal] = []
    first: dict[tuple[str, int], int] = {}  # (code, ms since the epoch): record
    window = _Window(now, max_age, max_skew)  # what it does not accept, `_check` decides
    for item in items:
        if isinstance(item, Refusal):
            refusals.append(item)
            continue
        vital = item.vital
        ms = None
        if vital.low <= item.value <= vital.high:  # False for NaN and infinities too
            ms = window.ms(item.time)
        if ms is None:
            checked = _check(item, now, max_age, max_skew)
            if isinstance(checked, Refusal):
                refusals.append(checked)
                continue
            ms = (checked - EPOCH) // _MS
        key = (vital.code, ms)
        if key in first:
            refusals.append(
                Refusal(
                    item.record,
                    item.time_field,
                    f"{item.time_field}: another {vital} reading at {iso(from_epoch_ms(ms))} came "
                    f"earlier in this message (record {first[key]}); only the first is kept",
                    item.name,
                )
            )
            continue
        first[key] = item.record
        rows.append((vital.code, item.value, vital.unit, from_epoch_ms(ms), ms))
    return rows, refusals


def _check(
    item: Measurement, now: datetime, max_age: timedelta, max_skew: timedelta
) -> datetime | Refusal:
    """The reading's time if `item` passes the value and time checks, else its refusal."""
    vital, field = item.vital, item.value_field
    if not math.isfinite(item.value):
        return Refusal(
            item.record,
            field,
            f"{field}: {_literal(item.value)} is not a finite number; leave the measurement out "
            f"when the sensor has no reading",
            item.name,
        )
    if not vital.low <= item.value <= vital.high:
        sent = f" (sent as {item.as_sent})" if item.as_sent else ""
        return Refusal(
            item.record,
            field,
            f"{field}: {item.value:g} {vital.unit}{sent} is outside the possible range for "
            f"{vital} ({vital.low:g}..{vital.high:g} {vital.unit}); check the sensor "
            f"and the unit",
            item.name,
        )
    return _time(item, now, max_age, max_skew)


def _time(
    item: Measurement, now: datetime, max_age: timedelta, max_skew: timedelta
) -> datetime | Refusal:
    field, seconds = item.time_field, item.time
    if not math.isfinite(seconds):
        return Refusal(
            item.record,
            field,
            f"{field}: {_literal(seconds)} is not a finite number of seconds",
            item.name,
        )
    relative = seconds < RELATIVE_LIMIT
    ahead = seconds if relative else seconds - now.timestamp()
    taken_at: datetime | None = None
    if abs(ahead) < _FAR:
        start = now if relative else EPOCH
        taken_at = truncate(start + timedelta(seconds=seconds))
    if taken_at > now + max_skew if taken_at is not None else ahead > 0:
        if relative:
            hint = "times below 2**28 count from now: send 0 or a negative number of seconds"
        elif seconds > _LOOKS_LIKE_MS:
            hint = "that looks like milliseconds: send Unix time in seconds"
        else:
            hint = "set the device clock (e.g. by NTP)"
        return Refusal(
            item.record,
            field,
            f"{field}: {_when(seconds, relative, taken_at)} is in the future, more than the "
            f"allowed clock skew of {_span(max_skew)} ahead of the server's clock "
            f"({iso(now)}); {hint}",
            item.name,
        )
    if taken_at is None or taken_at < now - max_age:
        check = "" if relative else "check the device clock, and "
        return Refusal(
            item.record,
            field,
            f"{field}: {_when(seconds, relative, taken_at)} is older than the accepted window "
            f"of {_span(max_age)} (server clock {iso(now)}); {check}drop older readings from "
            f"the device's backlog",
            item.name,
        )
    return taken_at


def _when(seconds: float, relative: bool, taken_at: datetime | None) -> str:
    """How a refusal names a reading's time (formatted only when there is a refusal)."""
    if taken_at is None:
        return f"the time {seconds:.15g}"
    when = f"the time {iso(taken_at)}"
    return f"{when} ({seconds:g} s from now)" if relative else when


def _span(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _literal(value: float) -> str:
    """A non-finite float as a serializer writes it into JSON: NaN, Infinity, -Infinity."""
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"
