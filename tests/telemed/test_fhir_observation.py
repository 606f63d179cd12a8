"""FHIR R4 vital signs: `GET /fhir/Observation`, `GET /fhir/Device`, and /fhir/metadata.

Every resource the server returns is validated against the FHIR models of
`fhir.resources` (its R4B package: R4's Observation, Device and Bundle with R4B's
fixes). Those models check structure, types and cardinality, not terminology, so the
vital-signs specifics (category, LOINC, UCUM, the blood pressure panel) are asserted
here, against the FHIR R4 vital-signs profile as quoted in /work/shared/CLINICAL.md.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from yarl import URL

from telemed.accounts import new_id
from telemed.audit import Outcome
from telemed.clinic import OPERATOR
from telemed.monitoring import Device, Observation
from telemed.web.keys import CLINIC, STORE
from tests.conftest import FakeClock, People, login

Client = TestClient[web.Request, web.Application]
Json = dict[str, Any]
Params = Sequence[tuple[str, str]]

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)

# code: (canonical UCUM unit, LOINC display) -- CLINICAL.md and the R4 vital-signs profile
VITALS = {
    "8867-4": ("/min", "Heart rate"),
    "2708-6": ("%", "Oxygen saturation in Arterial blood"),
    "9279-1": ("/min", "Respiratory rate"),
    "8310-5": ("Cel", "Body temperature"),
    "8480-6": ("mm[Hg]", "Systolic blood pressure"),
    "8462-4": ("mm[Hg]", "Diastolic blood pressure"),
    "29463-7": ("kg", "Body weight"),
    "41653-7": ("mg/dL", "Glucose [Mass/volume] in Capillary blood by Glucometer"),
}
HR, SPO2, TEMP, SYS, DIA, GLUCOSE = "8867-4", "2708-6", "8310-5", "8480-6", "8462-4", "41653-7"
PANEL = "85354-9"


# helpers ------------------------------------------------------------------------------
def reading(patient_id: str, device_id: str, code: str, value: float, at: datetime) -> Observation:
    return Observation(
        patient_id=patient_id,
        device_id=device_id,
        code=code,
        value=value,
        unit=VITALS[code][0],
        taken_at=at,
        received_at=at + timedelta(seconds=2),
    )


async def enroll(
    client: Client, patient_id: str, kind: str, clock: FakeClock, device_id: str = ""
) -> Device:
    device = Device(id=device_id or new_id(), patient_id=patient_id, kind=kind, created_at=clock())
    await client.app[STORE].add_device(device)
    return device


async def store(client: Client, *readings: Observation) -> None:
    assert await client.app[STORE].add_observations(readings) == len(readings)


def validate(body: Json) -> Bundle:
    """The bundle and each resource in it, against the FHIR models."""
    assert body["resourceType"] == "Bundle"
    bundle = Bundle.model_validate(body)
    for entry in body.get("entry", []):
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert entry["fullUrl"].endswith(f"/fhir/{resource['resourceType']}/{resource['id']}")
        assert entry["search"] == {"mode": "match"}
    return bundle


async def search(client: Client, params: Params, **headers: str) -> Json:
    response = await client.get("/fhir/Observation", params=list(params), headers=headers)
    assert response.status == 200, await response.text()
    assert response.content_type == "application/fhir+json"
    body: Json = await response.json(content_type=None)
    validate(body)
    assert body["type"] == "searchset"
    return body


def resources(body: Json) -> list[Json]:
    return [e["resource"] for e in body.get("entry", [])]


def link(body: Json, relation: str) -> str | None:
    return next((x["url"] for x in body.get("link", []) if x["relation"] == relation), None)


async def follow(client: Client, url: str) -> Json:
    """GET a link the server gave (its base URL names the configured host, not ours)."""
    response = await client.get(URL(url).raw_path_qs)
    assert response.status == 200, await response.text()
    body: Json = await response.json(content_type=None)
    validate(body)
    return body


async def walk(client: Client, params: Params) -> list[Json]:
    """Every page of a search, first to last, by the `next` links."""
    pages = [await search(client, params)]
    while (url := link(pages[-1], "next")) is not None:
        assert len(pages) < 500, "the next links never end"
        pages.append(await follow(client, url))
    return pages


async def refused(client: Client, path: str, params: Params, status: int) -> str:
    response = await client.get(path, params=list(params))
    assert response.status == status, await response.text()
    body = await response.json(content_type=None)
    assert body["resourceType"] == "OperationOutcome"
    get_fhir_model_class("OperationOutcome").model_validate(body)
    diagnostics: str = body["issue"][0]["diagnostics"]
    return diagnostics


def times(body: Json) -> list[str]:
    return [r["effectiveDateTime"] for r in resources(body)]


def codes(body: Json) -> list[str]:
    return [r["code"]["coding"][0]["code"] for r in resources(body)]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# the resources ------------------------------------------------------------------------
async def test_vital_signs_are_valid_fhir_r4_observations(
    client: Client, people: People, clock: FakeClock
) -> None:
    pid = people.patient_1.id
    oximeter = await enroll(client, pid, "pulse-oximeter", clock)
    cuff = await enroll(client, pid, "bp-cuff", clock)
    t1, t2, t3 = T0, T0 + timedelta(minutes=5, milliseconds=123), T0 + timedelta(minutes=10)
    await store(
        client,
        reading(pid, oximeter.id, HR, 72, t1),
        reading(pid, oximeter.id, SPO2, 97.5, t1),
        reading(pid, oximeter.id, TEMP, 36.8, t1),
        reading(pid, cuff.id, SYS, 121, t2),
        reading(pid, cuff.id, DIA, 79, t2),
        reading(pid, cuff.id, SYS, 135, t3),  # a systolic alone
        reading(pid, oximeter.id, DIA, 81, t3),  # a diastolic at the same time, other device
        reading(pid, cuff.id, GLUCOSE, 104, t3),
    )
    await login(client, people.doctor_a.email)
    body = await search(client, [("patient", pid)])

    assert body["total"] == 7
    assert link(body, "next") is None
    self_link = link(body, "self")
    assert self_link is not None
    assert f"patient={pid}" in self_link
    found = resources(body)
    assert [r["effectiveDateTime"] for r in found] == [
        "2026-11-29T08:00:00.000Z",
        "2026-11-29T08:00:00.000Z",
        "2026-11-29T08:00:00.000Z",
        "2026-11-29T08:05:00.123Z",
        "2026-11-29T08:10:00.000Z",
        "2026-11-29T08:10:00.000Z",
        "2026-11-29T08:10:00.000Z",
    ]
    for r in found:
        assert r["resourceType"] == "Observation"
        assert r["status"] == "final"
        assert r["subject"] == {"reference": f"Patient/{pid}"}
        assert r["device"]["reference"] in (f"Device/{oximeter.id}", f"Device/{cuff.id}")
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", r["id"])
        received = at(r["effectiveDateTime"]) + timedelta(seconds=2)
        assert at(r["meta"]["lastUpdated"]) == received
        coding = r["code"]["coding"]
        assert len(coding) == 1
        assert coding[0]["system"] == LOINC
        category = r["category"][0]["coding"][0]
        assert category["system"] == CATEGORY
        expected = "laboratory" if coding[0]["code"] == GLUCOSE else "vital-signs"
        assert category["code"] == expected
    assert len({r["id"] for r in found}) == len(found)

    by_code: dict[str, list[Json]] = {}
    for r in found:
        by_code.setdefault(r["code"]["coding"][0]["code"], []).append(r)
    assert sorted(by_code) == sorted([HR, SPO2, TEMP, PANEL, SYS, DIA, GLUCOSE])

    for code, value in ((HR, 72), (SPO2, 97.5), (TEMP, 36.8), (SYS, 135), (DIA, 81)):
        [r] = by_code[code]
        unit, display = VITALS[code]
        assert r["code"]["coding"][0]["display"] == display
        assert r["valueQuantity"]["value"] == value
        assert r["valueQuantity"]["system"] == UCUM
        assert r["valueQuantity"]["code"] == unit
        assert "component" not in r
    assert by_code[HR][0]["code"]["text"] == "heart rate"  # the vitals catalogue's name
    assert by_code[HR][0]["device"] == {"reference": f"Device/{oximeter.id}"}
    # the lone systolic and the other device's diastolic did not become a panel
    assert by_code[SYS][0]["device"] == {"reference": f"Device/{cuff.id}"}
    assert by_code[DIA][0]["device"] == {"reference": f"Device/{oximeter.id}"}

    [panel] = by_code[PANEL]
    assert panel["code"]["coding"] == [
        {
            "system": LOINC,
            "code": PANEL,
            "display": "Blood pressure panel with all children optional",
        }
    ]
    assert panel["effectiveDateTime"] == "2026-11-29T08:05:00.123Z"
    assert panel["device"] == {"reference": f"Device/{cuff.id}"}
    assert "valueQuantity" not in panel
    components = {c["code"]["coding"][0]["code"]: c for c in panel["component"]}
    assert len(panel["component"]) == 2
    assert components[SYS]["valueQuantity"] == {
        "value": 121,
        "unit": "mmHg",
        "system": UCUM,
        "code": "mm[Hg]",
    }
    assert components[DIA]["valueQuantity"]["value"] == 79
    assert components[DIA]["valueQuantity"]["code"] == "mm[Hg]"
    for code, component in components.items():
        assert component["code"]["coding"][0] == {
            "system": LOINC,
            "code": code,
            "display": VITALS[code][1],
        }

    again = await search(client, [("patient", pid)])
    assert [r["id"] for r in resources(again)] == [r["id"] for r in found], "ids are stable"


async def test_a_patient_with_no_readings_gets_an_empty_bundle(
    client: Client, people: People
) -> None:
    await login(client, people.doctor_a.email)
    body = await search(client, [("patient", f"Patient/{people.patient_1.id}")])
    assert body["total"] == 0
    assert "entry" not in body  # FHIR JSON has no empty arrays


# who may search -----------------------------------------------------------------------
async def audit_of(client: Client, patient_id: str, action: str) -> list[tuple[str, str]]:
    return [
        (r.event.actor_id, r.event.outcome.value)
        async for r in client.app[STORE].audit_records(patient_id=patient_id)
        if r.event.action == action
    ]


async def test_only_the_care_team_and_the_patient_search_vital_signs(
    client: Client, people: People, clock: FakeClock
) -> None:
    pid = people.patient_1.id
    device = await enroll(client, pid, "pulse-oximeter", clock)
    await store(client, reading(pid, device.id, HR, 64, T0))
    params = [("patient", pid)]

    assert (await refused(client, "/fhir/Observation", params, 401)).startswith("sign in")

    await login(client, people.doctor_b.email)
    message = await refused(client, "/fhir/Observation", params, 403)
    assert "64" not in message
    await login(client, people.admin.email)  # administrative record only, no vitals
    await refused(client, "/fhir/Observation", params, 403)
    await login(client, people.patient_2.email)
    await refused(client, "/fhir/Observation", params, 403)

    for who in (people.doctor_a, people.nurse_a, people.patient_1):
        await login(client, who.email)
        assert codes(await search(client, params)) == [HR]

    assert await audit_of(client, pid, "observation.search") == [
        (people.doctor_b.id, Outcome.DENIED.value),
        (people.admin.id, Outcome.DENIED.value),
        (people.patient_2.id, Outcome.DENIED.value),
        (people.doctor_a.id, Outcome.SUCCESS.value),
        (people.nurse_a.id, Outcome.SUCCESS.value),
        (people.patient_1.id, Outcome.SUCCESS.value),
    ]


async def test_a_bearer_token_searches_with_its_users_rights(
    client: Client, people: People, clock: FakeClock
) -> None:
    device = await enroll(client, people.patient_1.id, "pulse-oximeter", clock)
    await store(client, reading(people.patient_1.id, device.id, SPO2, 95, T0))
    _, secret = await client.app[CLINIC].create_token(OPERATOR, people.doctor_a.email, "EHR")
    auth = {"Authorization": f"Bearer {secret}"}

    body = await search(client, [("patient", people.patient_1.id)], **auth)
    assert codes(body) == [SPO2]
    other = await client.get(
        "/fhir/Observation", params={"patient": people.patient_2.id}, headers=auth
    )
    assert other.status == 403
    assert await audit_of(client, people.patient_1.id, "observation.search") == [
        (people.doctor_a.id, "success")
    ]
    assert await audit_of(client, people.patient_2.id, "observation.search") == [
        (people.doctor_a.id, "denied")
    ]


# date ---------------------------------------------------------------------------------
DATED = {
    "a": "2026-11-28T23:59:59.999Z",
    "b": "2026-11-29T00:00:00.000Z",
    "c": "2026-11-29T08:00:00.000Z",
    "d": "2026-11-29T08:00:00.500Z",
    "e": "2026-11-29T08:00:01.000Z",
    "f": "2026-11-29T23:59:59.999Z",
    "g": "2026-11-30T00:00:00.000Z",
}


@pytest.mark.parametrize(
    ("dates", "expected"),
    [
        # to the millisecond: ge and le include the instant, gt and lt exclude it
        (["ge2026-11-29T08:00:00.000Z"], "cdefg"),
        (["gt2026-11-29T08:00:00.000Z"], "defg"),
        (["le2026-11-29T08:00:00.000Z"], "abc"),
        (["lt2026-11-29T08:00:00.000Z"], "ab"),
        (["eq2026-11-29T08:00:00.500Z"], "d"),
        (["2026-11-29T08:00:00.500Z"], "d"),  # no prefix is eq
        # to the second: the value is that whole second (R4 search, implicit ranges)
        (["ge2026-11-29T08:00:00Z"], "cdefg"),
        (["gt2026-11-29T08:00:00Z"], "efg"),
        (["le2026-11-29T08:00:00Z"], "abcd"),
        (["lt2026-11-29T08:00:00Z"], "ab"),
        (["eq2026-11-29T08:00:00Z"], "cd"),
        (["2026-11-29T08:00Z"], "cde"),  # to the minute
        # a date is that UTC day
        (["2026-11-29"], "bcdef"),
        (["eq2026-11-29"], "bcdef"),
        (["ge2026-11-29"], "bcdefg"),
        (["gt2026-11-29"], "g"),
        (["le2026-11-29"], "abcdef"),
        (["lt2026-11-29"], "a"),
        (["le2026-11-28"], "a"),
        (["ge2026-11-30"], "g"),
        (["2026-11"], "abcdefg"),  # a month
        (["2026-10"], ""),
        (["lt2026-11"], ""),
        (["2026"], "abcdefg"),  # a year
        (["gt2025"], "abcdefg"),
        # a time with an offset is that instant
        (["ge2026-11-29T09:00:00+01:00"], "cdefg"),
        (["lt2026-11-29T03:00:00-05:00"], "ab"),
        (["le2026-11-29T13:30:00.500+05:30"], "abcd"),
        # several date parameters all apply
        (["ge2026-11-29T00:00:00Z", "lt2026-11-29T08:00:00.500Z"], "bc"),
        (["gt2026-11-28", "lt2026-11-30"], "bcdef"),
        (["ge2026-11-29T08:00:00.500Z", "le2026-11-29T08:00:00.500Z"], "d"),
        (["gt2026-11-29", "lt2026-11-29"], ""),
    ],
)
async def test_date_prefixes_and_precision(
    client: Client, people: People, clock: FakeClock, dates: list[str], expected: str
) -> None:
    pid = people.patient_1.id
    device = await enroll(client, pid, "pulse-oximeter", clock)
    await store(
        client, *(reading(pid, device.id, HR, 60 + i, at(t)) for i, t in enumerate(DATED.values()))
    )
    await login(client, people.doctor_a.email)
    body = await search(client, [("patient", pid), *(("date", d) for d in dates)])
    assert times(body) == [DATED[name] for name in expected]
    assert body["total"] == len(expected)
    self_link = link(body, "self")
    assert self_link is not None
    assert URL(self_link).query.getall("date") == dates


async def test_an_unencoded_plus_in_an_offset_still_reads_as_plus(
    client: Client, people: People, clock: FakeClock
) -> None:
    """A client that forgets to write + as %2B sends a space; the offset is kept."""
    pid = people.patient_1.id
    device = await enroll(client, pid, "pulse-oximeter", clock)
    await store(client, *(reading(pid, device.id, HR, 70, at(t)) for t in DATED.values()))
    await login(client, people.doctor_a.email)
    response = await client.get(
        URL(f"/fhir/Observation?patient={pid}&date=lt2026-11-29T09:00:00+01:00", encoded=True)
    )
    assert response.status == 200, await response.text()
    assert times(await response.json(content_type=None)) == [DATED["a"], DATED["b"]]


# code ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("code_params", "expected"),
    [
        ([HR], [HR, HR]),
        ([f"{LOINC}|{HR}"], [HR, HR]),
        ([f"{HR},{SPO2}"], [HR, SPO2, HR]),
        ([f"{LOINC}|{SPO2},{HR}"], [HR, SPO2, HR]),
        ([PANEL], [PANEL]),  # blood pressure is searched as the panel
        ([SYS], [SYS]),  # only the systolic that has no diastolic
        ([f"{PANEL},{HR}"], [HR, PANEL, HR]),  # t1: HR and the panel; t2: HR
        ([f"{HR},{SPO2}", SPO2], [SPO2]),  # repeated parameters must all match
        (["9279-1"], []),
        (["1234-5"], []),  # well-formed, just never measured
    ],
)
async def test_code_filter(
    client: Client, people: People, clock: FakeClock, code_params: list[str], expected: list[str]
) -> None:
    pid = people.patient_1.id
    oximeter = await enroll(client, pid, "pulse-oximeter", clock)
    cuff = await enroll(client, pid, "bp-cuff", clock)
    t1, t2 = T0, T0 + timedelta(minutes=1)
    await store(
        client,
        reading(pid, oximeter.id, HR, 72, t1),
        reading(pid, oximeter.id, SPO2, 97, t1),
        reading(pid, cuff.id, SYS, 120, t1),
        reading(pid, cuff.id, DIA, 80, t1),
        reading(pid, oximeter.id, HR, 75, t2),
        reading(pid, cuff.id, SYS, 140, t2),
    )
    await login(client, people.doctor_a.email)
    body = await search(client, [("patient", pid), *(("code", c) for c in code_params)])
    # the order within an instant follows the (random) device ids: compare as multisets
    assert sorted(codes(body)) == sorted(expected)
    assert times(body) == sorted(times(body))
    if PANEL in expected:
        panel = next(r for r in resources(body) if r["code"]["coding"][0]["code"] == PANEL)
        assert {c["code"]["coding"][0]["code"] for c in panel["component"]} == {SYS, DIA}


# refusals -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ([], "patient"),
        ([("patient", "")], "patient"),
        ([("patient", "not an id!")], "patient"),
        ([("patient", "{p1}"), ("patient", "{p2}")], "patient"),
        ([("date", "yesterday")], "date"),
        ([("date", "ge2026-11-29T08:00:00")], "date"),  # a time without its zone
        ([("date", "2026-13-01")], "date"),
        ([("date", "2026-02-30")], "date"),
        ([("date", "ge2026-11-29T25:00:00Z")], "date"),
        ([("date", "ne2026-11-29")], "date"),
        ([("date", "sa2026-11-29")], "date"),
        ([("date", "ap2026-11-29")], "date"),
        ([("date", "")], "date"),
        ([("_count", "abc")], "_count"),
        ([("_count", "0")], "_count"),
        ([("_count", "-5")], "_count"),
        ([("_count", "2.5")], "_count"),
        ([("_count", "10"), ("_count", "20")], "_count"),
        ([("code", "heart-rate")], "code"),
        ([("code", "http://snomed.info/sct|364075005")], "code"),
        ([("code", f"{HR},")], "code"),
        ([("code:text", "heart")], "code:text"),
        ([("date:missing", "true")], "date:missing"),
        ([("_cursor", "not-a-cursor")], "_cursor"),
        ([("_cursor", "WzEsMl0")], "_cursor"),  # base64url of [1,2]: not a position
    ],
)
async def test_bad_parameters_are_refused_naming_the_parameter(
    client: Client, people: People, params: list[tuple[str, str]], parameter: str
) -> None:
    await login(client, people.doctor_a.email)
    ids = {"{p1}": people.patient_1.id, "{p2}": people.patient_2.id}
    given = [(k, ids.get(v, v)) for k, v in params]
    if parameter != "patient":
        given.insert(0, ("patient", people.patient_1.id))
    diagnostics = await refused(client, "/fhir/Observation", given, 400)
    assert diagnostics.startswith(f"{parameter}: "), diagnostics
    # a refused query reads nothing, so it is not an access to audit
    assert await audit_of(client, people.patient_1.id, "observation.search") == []


async def test_count_above_the_maximum_is_capped(client: Client, people: People) -> None:
    await login(client, people.doctor_a.email)
    body = await search(client, [("patient", people.patient_1.id), ("_count", "5000")])
    self_link = link(body, "self")
    assert self_link is not None
    assert URL(self_link).query["_count"] == "1000"


async def test_unknown_parameters_are_ignored_and_left_out_of_the_links(
    client: Client, people: People
) -> None:
    await login(client, people.doctor_a.email)
    body = await search(client, [("patient", people.patient_1.id), ("_sort", "-date")])
    self_link = link(body, "self")
    assert self_link is not None
    assert "_sort" not in URL(self_link).query


# paging -------------------------------------------------------------------------------
async def busy_patient(client: Client, pid: str, clock: FakeClock) -> None:
    """Readings that make page cuts hard: one instant with 4 devices x 4 codes (12
    resources, 16 rows, more than a small page reads at once), panels, lone halves."""
    devices = [await enroll(client, pid, f"monitor-{i}", clock) for i in range(4)]
    rows: list[Observation] = []
    for minute in range(6):
        t = T0 + timedelta(minutes=minute)
        for i, device in enumerate(devices):
            if minute == 2 or i == minute % 4:
                rows += [
                    reading(pid, device.id, HR, 60 + minute, t),
                    reading(pid, device.id, SPO2, 95 + i, t),
                    reading(pid, device.id, SYS, 120 + i, t),
                    reading(pid, device.id, DIA, 80 + i, t),
                ]
    rows.append(reading(pid, devices[0].id, SYS, 150, T0 + timedelta(minutes=7)))
    rows.append(reading(pid, devices[1].id, DIA, 90, T0 + timedelta(minutes=7)))
    rows += [
        reading(pid, devices[2].id, TEMP, 36 + i / 10, T0 + timedelta(minutes=8, milliseconds=i))
        for i in range(9)
    ]
    await store(client, *rows)


def sort_key(r: Json) -> tuple[str, str, str]:
    return (r["effectiveDateTime"], r["device"]["reference"], r["code"]["coding"][0]["code"])


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 12, 13])
async def test_next_links_walk_every_result_once_in_time_order(
    client: Client, people: People, clock: FakeClock, count: int
) -> None:
    pid = people.patient_1.id
    await busy_patient(client, pid, clock)
    await login(client, people.doctor_a.email)

    whole = await search(client, [("patient", pid), ("_count", "1000")])
    everything = resources(whole)
    assert whole["total"] == len(everything) == 4 * 3 + 5 * 3 + 2 + 9
    assert link(whole, "next") is None
    assert [sort_key(r) for r in everything] == sorted(sort_key(r) for r in everything)

    pages = await walk(client, [("patient", pid), ("_count", str(count))])
    walked = [r for page in pages for r in resources(page)]
    assert [r["id"] for r in walked] == [r["id"] for r in everything]  # no gap, no repeat
    assert len(pages) == -(-len(everything) // count)
    for page in pages[:-1]:
        assert len(resources(page)) == count
        assert "total" not in page  # unknown before the last page
    for page in pages:
        self_link = link(page, "self")
        assert self_link is not None
        assert URL(self_link).query["_count"] == str(count)


async def test_paging_keeps_the_filters(client: Client, people: People, clock: FakeClock) -> None:
    pid = people.patient_1.id
    await busy_patient(client, pid, clock)
    await login(client, people.doctor_a.email)
    params = [
        ("patient", pid),
        ("code", f"{PANEL},{HR},{TEMP}"),
        ("date", "gt2026-11-29T08:01:00Z"),
        ("date", "le2026-11-29T08:08:00.004Z"),
    ]
    whole = resources(await search(client, params))
    assert {r["code"]["coding"][0]["code"] for r in whole} == {PANEL, HR, TEMP}
    assert all("2026-11-29T08:02" <= r["effectiveDateTime"] for r in whole)
    assert max(r["effectiveDateTime"] for r in whole) == "2026-11-29T08:08:00.004Z"
    pages = await walk(client, [*params, ("_count", "2")])
    assert [r["id"] for page in pages for r in resources(page)] == [r["id"] for r in whole]
    for page in pages:
        self_link = link(page, "self")
        assert self_link is not None
        query = URL(self_link).query
        assert query.getall("date") == [params[2][1], params[3][1]]
        assert query["code"] == params[1][1]


async def test_paging_is_stable_when_readings_arrive_between_pages(
    client: Client, people: People, clock: FakeClock
) -> None:
    pid = people.patient_1.id
    device = await enroll(client, pid, "pulse-oximeter", clock, "8" * 32)
    await store(
        client, *(reading(pid, device.id, HR, 60 + i, T0 + timedelta(minutes=i)) for i in range(10))
    )
    await login(client, people.doctor_a.email)
    before = [r["id"] for r in resources(await search(client, [("patient", pid)]))]

    first = await search(client, [("patient", pid), ("_count", "4")])
    url = link(first, "next")
    assert url is not None
    # the first page ended at (08:03, device 888..., heart rate); now come late readings
    # before that position and after it, two of them at that very instant
    before_cut = await enroll(client, pid, "thermometer", clock, "0" * 32)
    after_cut = await enroll(client, pid, "thermometer", clock, "f" * 32)
    await store(
        client,
        reading(pid, device.id, SPO2, 96, T0 + timedelta(minutes=1)),
        reading(pid, before_cut.id, TEMP, 37.0, T0 + timedelta(minutes=3)),
        reading(pid, after_cut.id, TEMP, 37.1, T0 + timedelta(minutes=3)),
        reading(pid, device.id, HR, 99, T0 + timedelta(minutes=30)),
    )
    pages = [first, await follow(client, url)]
    while (url := link(pages[-1], "next")) is not None:
        pages.append(await follow(client, url))
    walked = [r for page in pages for r in resources(page)]
    ids = [r["id"] for r in walked]
    assert len(ids) == len(set(ids)), "no resource twice"
    assert set(before) <= set(ids), "nothing that was there is skipped"
    assert [sort_key(r) for r in walked] == sorted(sort_key(r) for r in walked)
    added = [(r["effectiveDateTime"], r["device"]["reference"]) for r in walked]
    added = [a for a, r in zip(added, walked, strict=True) if r["id"] not in before]
    # readings that sort before the position are not shown; those after it are
    assert added == [
        ("2026-11-29T08:03:00.000Z", f"Device/{after_cut.id}"),
        ("2026-11-29T08:30:00.000Z", f"Device/{device.id}"),
    ]


# Device -------------------------------------------------------------------------------
async def test_device_search_lists_the_patients_wearables(
    client: Client, people: People, clock: FakeClock
) -> None:
    pid = people.patient_1.id
    oximeter = await enroll(client, pid, "pulse-oximeter", clock)
    cuff = await enroll(client, pid, "bp-cuff", clock)
    await enroll(client, people.patient_2.id, "scale", clock)
    clock.advance(hours=1)
    assert await client.app[STORE].revoke_device(cuff.id, clock())

    await login(client, people.doctor_b.email)
    await refused(client, "/fhir/Device", [("patient", pid)], 403)
    await refused(client, "/fhir/Device", [], 400)

    for who in (people.doctor_a, people.admin):
        await login(client, who.email)
        response = await client.get("/fhir/Device", params={"patient": pid})
        assert response.status == 200
        assert response.content_type == "application/fhir+json"
        body = await response.json(content_type=None)
        validate(body)
        assert body["type"] == "searchset"
        assert body["total"] == 2
        found = {r["id"]: r for r in resources(body)}
        assert set(found) == {oximeter.id, cuff.id}
        for device, status in ((oximeter, "active"), (cuff, "inactive")):
            r = found[device.id]
            assert r["resourceType"] == "Device"
            assert r["status"] == status
            assert r["type"] == {"text": device.kind}
            assert r["patient"] == {"reference": f"Patient/{pid}"}
            assert [i["value"] for i in r["identifier"]] == [device.id]
        assert found[cuff.id]["meta"]["lastUpdated"] == "2026-11-29T10:00:00.000Z"
    assert await audit_of(client, pid, "device.list") == [
        (people.doctor_b.id, "denied"),
        (people.doctor_a.id, "success"),
        (people.admin.id, "success"),
    ]


async def test_observations_point_at_devices_the_device_search_returns(
    client: Client, people: People, clock: FakeClock
) -> None:
    pid = people.patient_1.id
    device = await enroll(client, pid, "pulse-oximeter", clock)
    await store(client, reading(pid, device.id, HR, 70, T0))
    await login(client, people.doctor_a.email)
    [observation] = resources(await search(client, [("patient", pid)]))
    devices = await (await client.get("/fhir/Device", params={"patient": pid})).json(
        content_type=None
    )
    assert observation["device"]["reference"] in {f"Device/{r['id']}" for r in resources(devices)}


# metadata -----------------------------------------------------------------------------
async def test_metadata_lists_observation_and_device_searches(client: Client) -> None:
    response = await client.get("/fhir/metadata")
    assert response.status == 200
    body = await response.json(content_type=None)
    get_fhir_model_class("CapabilityStatement").model_validate(body)
    [rest] = body["rest"]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert {"Patient", "AuditEvent", "Observation", "Device"} <= set(by_type)

    def interactions(kind: str) -> set[str]:
        return {i["code"] for i in by_type[kind]["interaction"]}

    def params(kind: str) -> dict[str, str]:
        return {p["name"]: p["type"] for p in by_type[kind].get("searchParam", [])}

    assert "search-type" in interactions("Observation")
    assert params("Observation") == {
        "patient": "reference",
        "code": "token",
        "date": "date",
        "_count": "number",
    }
    assert "search-type" in interactions("Device")
    assert params("Device") == {"patient": "reference"}
    assert {"read", "search-type"} <= interactions("Patient")
    assert params("AuditEvent") == {"patient": "reference"}
