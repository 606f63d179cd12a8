"""Malformed and hostile device payloads, each with what the server must do with it.

`corpus(start, rng)` builds at least a thousand payloads in families (non-JSON, truncated
JSON, deep nesting, oversized, NaN and Infinity, wrong types, unknown names and units,
impossible values, times far in the future or the past, duplicate keys, binary garbage,
unicode oddities, repetition, SenML versions, empty messages, and packs that mix good
records with bad ones). The server must answer every one of them with at least one
refusal on the device's errors topic. A payload that also carries valid readings lists
them in `keeps` as (LOINC code, Unix seconds): those, and only those, must be stored.

Times: every absolute time is taken from `start` upwards, one second per payload, so
that no two payloads of a device share a reading key and none collides with a valid
stream that uses other times. `start` must be recent: the server accepts readings up to
24 hours old, and the corpus spans about 20 minutes from `start`. Times meant to be
refused are placed around `now`, the clock the server reads.
"""

from __future__ import annotations

import gzip
import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_BYTES = 16384  # the server's default payload limit (config.toml monitoring)

HR, SPO2, RR, TEMP, SYS, DIA, WEIGHT, GLUCOSE = (
    "8867-4",
    "2708-6",
    "9279-1",
    "8310-5",
    "8480-6",
    "8462-4",
    "29463-7",
    "41653-7",
)
# (SenML name, LOINC code, a valid value in the canonical unit)
GOOD = (
    ("hr", HR, 72.0),
    ("spo2", SPO2, 97.0),
    ("rr", RR, 14.0),
    ("temp", TEMP, 36.8),
    ("sys", SYS, 121.0),
    ("dia", DIA, 79.0),
    ("weight", WEIGHT, 71.5),
    ("glucose", GLUCOSE, 95.0),
)
# (name, value) pairs no living patient has, in the canonical unit
IMPOSSIBLE = (
    ("hr", 0),
    ("hr", 9.99),
    ("hr", 350.01),
    ("hr", 1000),
    ("hr", -72),
    ("spo2", 100.5),
    ("spo2", 9),
    ("spo2", 250),
    ("rr", 0),
    ("rr", 101),
    ("temp", 9.9),
    ("temp", 47.1),
    ("temp", 98.6),  # Fahrenheit sent as Celsius
    ("sys", 19),
    ("sys", 301),
    ("dia", 9),
    ("dia", 251),
    ("weight", 0.1),
    ("weight", 651),
    ("glucose", 9),
    ("glucose", 1501),
)
UNKNOWN_NAMES = (
    "heartbeat",
    "bp",
    "blood_pressure",
    "85354-9",
    "x",
    "hr2",
    "h r",
    "weight_kg",
    "urn:dev:ow:10e2073a01080063:",
    "temperature_room",
    "steps",
    "ecg",
    "null",
    "__proto__",
    "constructor",
    "../../etc/passwd",
    "'; DROP TABLE observations; --",
    "$where",
    "{{7*7}}",
    "%s%s%s%n",
)
# (name, unit) pairs that cannot be converted: wrong dimension or no such unit
BAD_UNITS = (
    ("hr", "furlongs"),
    ("hr", "Hz"),
    ("hr", "%"),
    ("spo2", "mm[Hg]"),
    ("spo2", "ratio"),
    ("rr", "bpm"),
    ("temp", "F"),
    ("temp", "C"),
    ("temp", "kelvin"),
    ("sys", "kPa"),
    ("sys", "cmH2O"),
    ("dia", "Pa"),
    ("weight", "stone"),
    ("weight", "oz"),
    ("glucose", "mg/L"),
    ("glucose", "g/dL"),
    ("hr", "/s"),
)
# look-alikes: none of them is a name the server knows
UNICODE_NAMES = (
    "h\u200br",  # zero-width space
    "\u202ehr",  # right-to-left override
    "\uff48\uff52",  # fullwidth "hr"
    "\u04bbr",  # Cyrillic shha looks like h
    "hr\u0301",  # combining acute accent
    "sp\u00f82",  # o with stroke
    "hr\u0000",  # NUL
    "\U0001f493",  # beating heart emoji
    "\ud800hr",  # a lone surrogate, as a JSON escape
    "hr\udfff",
    "\ufeffhr",  # byte-order mark inside a string
    "\u0068\u0327r",  # h with cedilla
)
NON_FINITE = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400")


@dataclass(frozen=True, slots=True)
class Hostile:
    family: str
    payload: bytes
    keeps: tuple[tuple[str, int], ...] = ()  # (LOINC code, Unix seconds) to be stored


class _Times:
    """One fresh Unix second per call, counting up from `start`; `now` is the clock."""

    def __init__(self, start: int, now: int) -> None:
        self.next = start
        self.now = now

    def __call__(self) -> int:
        self.next += 1
        return self.next - 1


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def _good_pack(at: int, rng: random.Random, records: int = 5) -> list[dict[str, object]]:
    chosen = rng.sample(GOOD, k=min(records, len(GOOD)))
    pack: list[dict[str, object]] = [{"bt": at}]
    pack += [{"n": name, "v": value} for name, _, value in chosen]
    return pack


# the families ----------------------------------------------------------------------------
def not_json(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    fixed = [
        b"hello",
        b"hr=72;spo2=97",
        b"<vitals><hr>72</hr></vitals>",
        b"hr: 72\nspo2: 97\n",
        b"{hr: 72}",
        b"{'hr': 72}",
        b"[1,2,]",
        b'{"hr":72,}',
        b"[01]",
        b'{"hr":0x48}',
        b'{"hr":+72}',
        b'{"hr":.5}',
        b"undefined",
        b"True",
        b"None",
        b'{"hr":72}{"hr":73}',
        b"[][]",
        b'"unterminated',
        b"/* comment */ []",
        b"// comment\n{}",
        b"\\u0000",
        b"\x1b[31mred\x1b[0m",
        b"SELECT * FROM observations",
        b"${jndi:ldap://x/a}",
        b"%00%01",
    ]
    yield from (Hostile("not-json", payload) for payload in fixed)
    alphabet = string.ascii_letters + string.digits + " ,;:=-_!?#@()<>"
    made = 0
    while made < 75:
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 300))).encode()
        if text.strip() and not _is_json(text):
            made += 1
            yield Hostile("not-json", text)


def truncated(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    for _ in range(100):
        if rng.random() < 0.7:
            whole = _dumps(_good_pack(times(), rng))
        else:
            whole = _dumps({"t": times(), "hr": 72, "spo2": 97, "temp": 36.8})
        cut = whole[: rng.randint(1, len(whole) - 1)]
        assert not _is_json(cut)
        yield Hostile("truncated", cut)


def deep_nesting(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    for depth in [9, 10, 16, 64, 100, 1000, 5000, 8000]:
        yield Hostile("deep-nesting", b"[" * depth + b"]" * depth)
        yield Hostile("deep-nesting", b'{"a":' * depth + b"1" + b"}" * depth)
        yield Hostile("deep-nesting", b"[" * depth)  # unbalanced too
    for _ in range(36):
        depth = rng.randint(9, 2000)
        opener, closer = rng.choice([(b"[", b"]"), (b'{"u":', b"}")])
        inner = opener * depth + b"0" * (opener == b'{"u":') + closer * depth
        # deep inside an otherwise good record: the whole message is refused
        record = b'{"n":"hr","v":72,"x":' + inner + b"}"
        payload = b'[{"bt":' + str(times()).encode() + b"}," + record + b"]"
        if len(payload) <= MAX_BYTES:
            yield Hostile("deep-nesting", payload)


def oversized(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    at = times()
    record = _dumps({"n": "hr", "v": 72})
    for size in [MAX_BYTES + 1, MAX_BYTES + 2, 20_000, 65_536, 262_144, 1_048_576]:
        head = b'[{"bt":' + str(at).encode() + b'},{"n":"hr","v":72}'
        body = head + b" " * (size - len(head) - 1) + b"]"
        assert len(body) == size
        yield Hostile("oversized", body)
    for _ in range(14):  # many good records, past the limit: refused whole, none kept
        at = times()
        count = rng.randint(MAX_BYTES // len(record) + 1, 3 * MAX_BYTES // len(record))
        pack = [{"bt": at}] + [{"n": "hr", "t": i, "v": 72} for i in range(count)]
        body = _dumps(pack)
        if len(body) <= MAX_BYTES:
            body += b" " * (MAX_BYTES + 1 - len(body))
        yield Hostile("oversized", body)


def non_finite(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    for literal in NON_FINITE:
        lit = literal.encode()
        for name, _, _ in GOOD:
            at = str(times()).encode()
            n = name.encode()
            yield Hostile("non-finite", b'[{"bt":' + at + b',"n":"' + n + b'","v":' + lit + b"}]")
            yield Hostile("non-finite", b'{"t":' + at + b',"' + n + b'":' + lit + b"}")
        yield Hostile("non-finite", b'[{"bt":' + lit + b',"n":"hr","v":72}]')
        yield Hostile("non-finite", b'[{"n":"hr","t":' + lit + b',"v":72}]')
        yield Hostile("non-finite", b'[{"bv":' + lit + b',"n":"hr","v":0}]')
        yield Hostile("non-finite", b'{"t":' + lit + b',"hr":72}')


def wrong_types(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    odd: list[object] = ["72", True, False, None, [], [72], {}, {"v": 72}, "", "NaN"]
    value: object
    for value in odd:
        for name in ("hr", "spo2", "temp"):
            yield Hostile("wrong-types", _dumps([{"bt": times(), "n": name, "v": value}]))
            yield Hostile("wrong-types", _dumps({"t": times(), name: value}))
    for value in [72, None, True, [], {}, 1.5]:
        yield Hostile("wrong-types", _dumps([{"bt": times(), "n": value, "v": 72}]))
        yield Hostile("wrong-types", _dumps([{"bt": times(), "n": "hr", "u": value, "v": 72}]))
        yield Hostile("wrong-types", _dumps([{"bn": value, "bt": times(), "n": "hr", "v": 72}]))
        yield Hostile("wrong-types", _dumps([{"bu": value, "bt": times(), "n": "hr", "v": 72}]))
        if value is not None:  # a null unit means the canonical one: that reading is good
            yield Hostile("wrong-types", _dumps({"t": times(), "hr": 72, "u": {"hr": value}}))
    for value in ["now", None, True, [], {}, "1764400000"]:
        yield Hostile("wrong-types", _dumps([{"bt": value, "n": "hr", "v": 72}]))
        yield Hostile("wrong-types", _dumps([{"bt": times(), "n": "hr", "t": value, "v": 72}]))
        yield Hostile("wrong-types", _dumps([{"bt": times(), "bv": value, "n": "hr", "v": 72}]))
        yield Hostile("wrong-types", _dumps({"t": value, "hr": 72}))
    for top in [72, -1, 0.5, "hr", "", True, False, None]:
        yield Hostile("wrong-types", _dumps(top))
    for record in [72, "hr", None, True, [], [{"n": "hr", "v": 72}]]:
        yield Hostile("wrong-types", _dumps([record]))
    for units in [[], "Cel", 37, None, True]:
        yield Hostile("wrong-types", _dumps({"t": times(), "temp": 37, "u": units}))
    other_values: dict[str, object] = {"vs": "72", "vb": True, "vd": "SGVsbG8", "s": 72}
    for field, other in other_values.items():
        yield Hostile("wrong-types", _dumps([{"bt": times(), "n": "hr", field: other}]))
    yield Hostile("wrong-types", _dumps([{"bt": times(), "n": "hr", "v": 72, "vs": "72"}]))
    yield Hostile("wrong-types", _dumps([{"bt": times(), "n": "hr"}]))


def unknown(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    for name in UNKNOWN_NAMES:
        yield Hostile("unknown", _dumps([{"bt": times(), "n": name, "v": 72}]))
        yield Hostile("unknown", _dumps([{"bn": "urn:dev:x:", "bt": times(), "n": name, "v": 72}]))
        yield Hostile("unknown", _dumps({"t": times(), name: 72}))
    for name, unit in BAD_UNITS:
        value = dict((n, v) for n, _, v in GOOD)[name]
        yield Hostile("unknown", _dumps([{"bt": times(), "n": name, "u": unit, "v": value}]))
        yield Hostile("unknown", _dumps([{"bt": times(), "bu": unit, "n": name, "v": value}]))
        yield Hostile("unknown", _dumps({"t": times(), name: value, "u": {name: unit}}))
    for key in ["HR", "Hr", "heart_rate", "pulse", "t_ms", "ts", "time", "device", "patient"]:
        # compact keys are exact: these are SenML names or nothing at all
        yield Hostile("unknown", _dumps({"t": times(), key: 72}))
    yield Hostile("unknown", _dumps({"t": times(), "u": {"pulse": "bpm"}}))
    yield Hostile("unknown", _dumps([{"bt": times(), "n": "bp", "v": 120}]))
    yield Hostile("unknown", _dumps([{"bt": times(), "n": "hr", "v": 72, "extension_": 1}]))
    yield Hostile("unknown", _dumps([{"bt": times(), "n": "", "v": 72}]))
    yield Hostile("unknown", _dumps([{"bt": times(), "v": 72}]))


def out_of_range(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    for name, value in IMPOSSIBLE:
        yield Hostile("out-of-range", _dumps([{"bt": times(), "n": name, "v": value}]))
        yield Hostile("out-of-range", _dumps({"t": times(), name: value}))
    converted = [
        ("temp", 150, "[degF]"),
        ("temp", 0, "K"),
        ("weight", 2000, "lb"),
        ("glucose", 100, "mmol/L"),
        ("spo2", 1.5, "/"),
        ("spo2", 0.05, "/"),
        ("spo2", 0.97, "%"),  # ambiguous: a ratio sent as percent
        ("spo2", 1, "%"),
    ]
    for name, value, unit in converted:
        yield Hostile("out-of-range", _dumps([{"bt": times(), "n": name, "u": unit, "v": value}]))
        yield Hostile("out-of-range", _dumps({"t": times(), name: value, "u": {name: unit}}))
    for _ in range(30):
        name, value = rng.choice(IMPOSSIBLE)
        base = rng.choice([-1e6, 1e6, -1e300, 1e300])  # far enough to stay impossible
        yield Hostile("out-of-range", _dumps([{"bt": times(), "bv": base, "n": name, "v": value}]))


def bad_times(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    now = times.now
    future = [now + 86_400, now + 3_600, now + 10 * 365 * 86_400, 32_503_680_000, 1e15, 1e300]
    past = [now - 30 * 86_400, now - 25 * 3_600, 2**28, 1_000_000_000, 268_435_457, -1e300]
    relative = [3_600, 600, 86_400, 2**28 - 1, -(2**28), -1e12]
    for when in future + past + relative:
        for name, _, value in GOOD[:4]:
            yield Hostile("bad-time", _dumps([{"bt": when, "n": name, "v": value}]))
        yield Hostile("bad-time", _dumps({"t": when, "hr": 72, "spo2": 97}))
        yield Hostile("bad-time", _dumps([{"bt": now, "n": "hr", "t": when, "v": 72}]))
    for _ in range(10):  # milliseconds instead of seconds
        yield Hostile("bad-time", _dumps({"t": times() * 1000, "hr": 72}))


def duplicate_keys(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    for _ in range(15):
        at = str(times()).encode()
        yield Hostile("duplicate-keys", b'{"t":' + at + b',"hr":72,"hr":73}')
        yield Hostile("duplicate-keys", b'[{"bt":' + at + b',"n":"hr","v":72,"v":73}]')
        yield Hostile("duplicate-keys", b'[{"bt":' + at + b',"n":"hr","n":"spo2","v":97}]')
        yield Hostile("duplicate-keys", b'{"t":' + at + b',"t":1,"hr":72}')
    for _ in range(10):
        at = str(times()).encode()
        yield Hostile(
            "duplicate-keys", b'{"t":' + at + b',"temp":98,"u":{"temp":"degF","temp":"Cel"}}'
        )
        yield Hostile("duplicate-keys", b'[{"bt":' + at + b',"bt":1,"n":"hr","v":72}]')


def binary(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    good = _dumps({"t": times(), "hr": 72})
    fixed = [
        b"\x00",
        b"\x00" * 100,
        b"\xff\xfe\xfd",
        b"\xc0\xaf",  # overlong "/"
        b'[{"n":"hr\xc0\xaf","v":72}]',
        b'[{"n":"\xed\xa0\x80","v":72}]',  # an encoded surrogate (CESU-8)
        b"\xef\xbb\xbf\xef\xbb\xbf[]",  # two byte-order marks
        good.decode().encode("utf-16"),
        good.decode().encode("utf-16-be"),
        good.decode().encode("utf-32"),
        gzip.compress(good, mtime=0),
        b"\x81\xa2hr\x48",  # MessagePack of {"hr": 72}
        b"\xa1bhr\x18H",  # CBOR of {"hr": 72}
        b'{"hr":72}\x00',
        b'\x00{"hr":72}',
        b'{"t":' + str(times()).encode() + b',"hr":72\x80}',
    ]
    yield from (Hostile("binary", payload) for payload in fixed)
    made = 0
    while made < 100:
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 2048)))
        if data.strip() and not _is_json(data):
            made += 1
            yield Hostile("binary", data)


def unicode_oddities(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    for name in UNICODE_NAMES:
        escaped = json.dumps(name).encode()  # \uXXXX escapes, lone surrogates included
        raw = json.dumps(name, ensure_ascii=False).encode("utf-8", "surrogatepass")
        for spelled in (escaped, raw):
            at = str(times()).encode()
            yield Hostile("unicode", b'[{"bt":' + at + b',"n":' + spelled + b',"v":72}]')
            yield Hostile("unicode", b'{"t":' + at + b"," + spelled + b":72}")
            yield Hostile("unicode", b'[{"bt":' + at + b',"n":"hr","u":' + spelled + b',"v":72}]')
    for digits in ["\u0667\u0662", "\uff17\uff12", "\u2077\u00b2"]:  # 72 in other scripts
        yield Hostile("unicode", _dumps([{"bt": times(), "n": "hr", "v": digits}]))
        yield Hostile("unicode", f'{{"t":{times()},"hr":{digits}}}'.encode())


def repetition(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    """Billion-laughs-like: small messages that ask for a lot of work or many answers."""
    yield Hostile("repetition", _dumps([{"bt": times(), "n": "hr" * 8000, "v": 72}]))
    yield Hostile("repetition", _dumps([{"bt": times(), "n": "a" * 16000, "v": 72}]))
    yield Hostile("repetition", b'{"t":' + str(times()).encode() + b',"hr":' + b"9" * 4000 + b"}")
    yield Hostile("repetition", b'{"t":' + str(times()).encode() + b',"hr":' + b"9" * 5000 + b"}")
    yield Hostile(
        "repetition", b'{"t":' + str(times()).encode() + b',"hr":0.' + b"0" * 9000 + b"1}"
    )
    yield Hostile(
        "repetition", b'{"t":' + str(times()).encode() + b',"hr":72e' + b"9" * 4000 + b"}"
    )
    yield Hostile("repetition", b" " * MAX_BYTES)  # whitespace only, at the limit
    yield Hostile("repetition", b"\n" * 1000 + b"[" + b" " * 1000)
    # one message, many refusals
    yield Hostile("repetition", b"[" + b",".join([b"{}"] * 1000) + b"]")
    yield Hostile("repetition", b"[" + b",".join([b"1"] * 2000) + b"]")
    yield Hostile("repetition", _dumps({f"k{i}": 1 for i in range(800)}))
    yield Hostile("repetition", _dumps([{"bt": times()}] + [{"n": "hr", "v": 0}] * 500))
    # strings that are expensive to skip when counting brackets
    for size in (1000, 4000, 8000):
        yield Hostile("repetition", b'"' + b'\\"' * size)
        yield Hostile("repetition", b'["' + b'\\"' * size + b"]")
        yield Hostile("repetition", b"[" + b'"' * size)
        yield Hostile("repetition", b"[" + b'"\\' * size)


def senml_version(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    version: object
    for version in [11, 12, 99, 2**31, 2**63, 10**30]:
        for placement in range(3):
            at = times()
            pack: list[dict[str, object]] = [
                {"bt": at, "n": "hr", "v": 72},
                {"n": "spo2", "v": 97},
                {"n": "temp", "v": 36.8},
            ]
            pack[placement]["bver"] = version
            yield Hostile("senml-version", _dumps(pack))
    for version in [0, -1, 10.5, 5.0, "10", None, True, [10], {"v": 10}]:
        yield Hostile(
            "senml-version", _dumps([{"bver": version, "bt": times(), "n": "hr", "v": 7}])
        )
    for first, second in [(5, 6), (10, 9), (1, 10)]:
        at = times()
        pack = [
            {"bver": first, "bt": at, "n": "hr", "v": 72},
            {"bver": second, "n": "rr", "v": 1},
        ]
        yield Hostile("senml-version", _dumps(pack))
    for label in ["foo_", "bt_", "_", "crit_", "v_"]:
        pack = [{"bt": times(), "n": "hr", "v": 72}, {"n": "spo2", "v": 97, label: 1}]
        yield Hostile("senml-version", _dumps(pack))


def empty(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    payloads = [
        b"",
        b" ",
        b"\n",
        b"\t\r\n ",
        b"\xef\xbb\xbf",  # a byte-order mark and nothing else
        b"[]",
        b"[ ]",
        b"{}",
        b"{ }",
        b"\xef\xbb\xbf[]",
        b"null",
        b'""',
        b"[{}]",
        b"[[]]",
        b"[{},{}]",
        _dumps({"t": times()}),
        _dumps({"u": {}}),
        _dumps({"t": times(), "u": {"hr": "bpm"}}),
        _dumps([{"bn": "urn:dev:x:"}]),
        _dumps([{"bt": times()}]),
        _dumps([{"bn": "urn:dev:x:", "bt": times(), "bu": "Cel", "bver": 10}]),
    ]
    yield from (Hostile("empty", payload) for payload in payloads)


def mixed(rng: random.Random, times: _Times) -> Iterator[Hostile]:
    """Good and bad records in one message: the good ones are kept."""
    for _ in range(70):
        at = times()
        good = rng.sample(GOOD, k=rng.randint(1, 4))
        bad: list[dict[str, object]] = []
        for _ in range(rng.randint(1, 3)):
            kind = rng.randrange(5)
            if kind == 0:
                name, value = rng.choice(IMPOSSIBLE)
                bad.append({"n": name, "v": value})
            elif kind == 1:
                bad.append({"n": rng.choice(UNKNOWN_NAMES), "v": 72})
            elif kind == 2:
                name, unit = rng.choice(BAD_UNITS)
                bad.append({"n": name, "u": unit, "v": 72})
            elif kind == 3:
                bad.append({"n": "hr", "t": 86_400 * 3, "v": 72})  # from the future
            else:
                bad.append({"n": "hr", "v": "72"})
        records = [{"n": name, "v": value} for name, _, value in good] + bad
        rng.shuffle(records)
        records[0] = {"bt": at, **records[0]}
        keeps = tuple((code, at) for _, code, _ in good)
        yield Hostile("mixed", _dumps(records), keeps)
    for _ in range(30):
        at = times()
        good = rng.sample(GOOD, k=rng.randint(1, 4))
        compact: dict[str, object] = {"t": at}
        compact.update({name: value for name, _, value in good})
        bad_key = rng.choice(["heart", "bp", "steps", "HR", "x"])
        compact[bad_key] = 1
        if rng.random() < 0.5:
            name, value = rng.choice([(n, v) for n, v in IMPOSSIBLE if n not in compact])
            compact[name] = value
        keeps = tuple((code, at) for _, code, _ in good)
        yield Hostile("mixed", _dumps(compact), keeps)


FAMILIES: tuple[Callable[[random.Random, _Times], Iterator[Hostile]], ...] = (
    not_json,
    truncated,
    deep_nesting,
    oversized,
    non_finite,
    wrong_types,
    unknown,
    out_of_range,
    bad_times,
    duplicate_keys,
    binary,
    unicode_oddities,
    repetition,
    senml_version,
    empty,
    mixed,
)


def corpus(start: int, now: int, rng: random.Random) -> list[Hostile]:
    """Every family's payloads, in family order; times count up from `start`, and those
    meant to be too far ahead or behind are placed around `now` (Unix seconds)."""
    times = _Times(start, now)
    return [item for family in FAMILIES for item in family(rng, times)]
