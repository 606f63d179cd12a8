"""FHIR R4 video visits and consultation records: `GET /fhir/Encounter?patient=` and
`GET /fhir/Encounter/<id>/$everything`.

The data goes in through the real services (Reception books and moves visits, the
RecordsOffice writes, signs and seals records) and comes out over HTTP. Every bundle
and every resource in it is validated against the `fhir.resources` R4B models; those do
not parse XHTML, so each narrative `div` is parsed here as XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from telemed.accounts import User
from telemed.clinic import Actor
from telemed.clock import iso
from telemed.records import note_from_json
from telemed.visits import Visit
from telemed.web.keys import RECEPTION, RECORDS, STORE
from tests.conftest import FakeClock, People, login

Client = TestClient[web.Request, web.Application]
Json = dict[str, Any]

LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
XHTML = "{http://www.w3.org/1999/xhtml}"
EVERYTHING = "http://hl7.org/fhir/OperationDefinition/Encounter-everything"

NOTE = {
    "subjective": "Cough for 3 days,\nworse at night & after <exercise>",
    "objective": 'Temperature 38.1 °C; "wheeze" on the left',
    "assessment": "Acute bronchitis, likely viral",
    "plan": "Rest and fluids; review in a week",
    "diagnoses": [
        {"code": "J20.9", "display": "Acute bronchitis, unspecified"},
        {"code": "R05", "display": "Cough"},
    ],
    "prescriptions": [
        {
            "medication": "Amoxicillin 500 mg capsules",
            "dose": "500 mg",
            "route": "oral",
            "frequency": "three times a day",
            "duration": "7 days",
            "instructions": "Take with food",
        },
        {
            "medication": "Paracetamol",
            "dose": "1 g",
            "route": "oral",
            "frequency": "every 6 hours as needed",
        },
    ],
}
FIRST_DRAFT = {
    "subjective": "Sore throat",
    "diagnoses": [{"code": "J06.9", "display": "Upper respiratory infection"}],
    "prescriptions": [
        {"medication": "Ibuprofen", "dose": "400 mg", "route": "oral", "frequency": "tds"}
    ],
}


# helpers ------------------------------------------------------------------------------
def as_actor(user: User) -> Actor:
    return Actor.of(user, "127.0.0.1")


async def book(client: Client, clinician: User, patient: User, clock: FakeClock) -> Visit:
    booking = await client.app[RECEPTION].book(
        as_actor(clinician), patient_id=patient.id, clinician_id=clinician.id, at=clock()
    )
    return booking.visit


async def write(client: Client, author: User, visit_id: str, note: Json) -> int:
    """Save a note version through the records office; its version number."""
    chart = await client.app[RECORDS].save_note(as_actor(author), visit_id, note_from_json(note))
    return chart.versions[-1].number


async def sign(client: Client, doctor: User, visit_id: str, version: int) -> None:
    await client.app[RECORDS].sign(as_actor(doctor), visit_id, version)


def narrative_div(text: Json) -> ET.Element:
    """A Narrative's div, parsed: well-formed XHTML in the XHTML namespace."""
    assert text["status"] == "generated"
    div = ET.fromstring(text["div"])
    assert div.tag == f"{XHTML}div"
    return div


def lines(paragraph: ET.Element) -> list[str]:
    """The lines of an XHTML paragraph whose lines are split by <br/>."""
    assert paragraph.tag == f"{XHTML}p"
    assert all(child.tag == f"{XHTML}br" for child in paragraph)
    return [paragraph.text or "", *(br.tail or "" for br in paragraph)]


def validate(body: Json) -> Bundle:
    """The bundle and each resource in it against the R4B models, and every narrative
    in it as XHTML."""
    assert body["resourceType"] == "Bundle"
    bundle = Bundle.model_validate(body)
    for entry in body.get("entry", []):
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert entry["fullUrl"].endswith(f"/fhir/{resource['resourceType']}/{resource['id']}")
        for section in resource.get("section", []):
            narrative_div(section["text"])
    return bundle


async def fetch(client: Client, path: str, params: Json | None = None) -> Json:
    response = await client.get(path, params=params or {})
    assert response.status == 200, await response.text()
    assert response.content_type == "application/fhir+json"
    body: Json = await response.json(content_type=None)
    validate(body)
    assert body["type"] == "searchset"
    return body


async def refused(client: Client, path: str, status: int, params: Json | None = None) -> str:
    response = await client.get(path, params=params or {})
    assert response.status == status, await response.text()
    body = await response.json(content_type=None)
    assert body["resourceType"] == "OperationOutcome"
    get_fhir_model_class("OperationOutcome").model_validate(body)
    diagnostics: str = body["issue"][0]["diagnostics"]
    return diagnostics


def everything_path(visit_id: str) -> str:
    return f"/fhir/Encounter/{visit_id}/$everything"


def resources(body: Json) -> list[Json]:
    return [e["resource"] for e in body.get("entry", [])]


def of_type(body: Json, kind: str) -> list[Json]:
    return [r for r in resources(body) if r["resourceType"] == kind]


async def audit_of(client: Client, patient_id: str, action: str) -> list[tuple[str, str]]:
    return [
        (r.event.actor_id, r.event.outcome.value)
        async for r in client.app[STORE].audit_records(patient_id=patient_id)
        if r.event.action == action
    ]


# Encounter search ---------------------------------------------------------------------
async def test_encounter_search_maps_each_visit_state(
    client: Client, people: People, clock: FakeClock
) -> None:
    doctor, patient = people.doctor_a, people.patient_1
    desk = client.app[RECEPTION]
    by = as_actor(doctor)

    planned = await book(client, doctor, patient, clock)
    clock.advance(minutes=1)
    waiting = await book(client, doctor, patient, clock)
    waiting = await desk.arrive(waiting, "127.0.0.1")
    clock.advance(minutes=1)
    in_call = await book(client, doctor, patient, clock)
    await desk.arrive(in_call, "127.0.0.1")
    in_call = await desk.admit(by, in_call.id)
    clock.advance(minutes=1)
    ended = await book(client, doctor, patient, clock)
    await desk.arrive(ended, "127.0.0.1")
    clock.advance(minutes=4)
    await desk.admit(by, ended.id)
    clock.advance(minutes=15)
    ended = await desk.end(by, ended.id)
    clock.advance(minutes=1)
    cancelled = await desk.cancel(by, (await book(client, doctor, patient, clock)).id)
    clock.advance(minutes=1)
    no_show = await desk.mark_no_show(by, (await book(client, doctor, patient, clock)).id)
    await book(client, people.doctor_b, people.patient_2, clock)  # another patient's

    await login(client, doctor.email)
    body = await fetch(client, "/fhir/Encounter", {"patient": patient.id})
    assert body["total"] == 6
    assert {x["relation"]: x["url"] for x in body["link"]}["self"].endswith(
        f"/fhir/Encounter?patient={patient.id}"
    )
    assert all(e["search"] == {"mode": "match"} for e in body["entry"])
    found = resources(body)
    expected = [planned, waiting, in_call, ended, cancelled, no_show]
    assert [r["id"] for r in found] == [v.id for v in expected]  # by scheduled time
    statuses = ["planned", "arrived", "in-progress", "finished", "cancelled", "cancelled"]
    assert [r["status"] for r in found] == statuses

    for r, visit in zip(found, expected, strict=True):
        assert r["resourceType"] == "Encounter"
        assert r["class"] == {"system": ACT_CODE, "code": "VR", "display": "virtual"}
        assert r["subject"] == {"reference": f"Patient/{patient.id}"}
        [participant] = r["participant"]
        assert participant["individual"] == {"reference": f"Practitioner/{doctor.id}"}
        assert participant["type"][0]["coding"][0]["code"] == "ATND"
        [identifier] = r["identifier"]
        assert identifier["value"] == visit.id
        assert identifier["system"].endswith("/fhir/sid/visit-id")
        # no clinical content in an Encounter
        assert not {"reasonCode", "reasonReference", "diagnosis", "text"} & set(r)
        history = r["statusHistory"]
        assert history[0]["status"] == "planned"
        assert history[-1]["status"] == r["status"]
        assert "end" not in history[-1]["period"]
        for before, after in zip(history, history[1:], strict=False):
            assert before["period"]["end"] == after["period"]["start"]

    r_planned, r_waiting, r_in_call, r_ended, r_cancelled, r_no_show = found
    # before the call: the planned start; during it: admission; after: admission to end
    assert r_planned["period"] == {"start": iso(planned.scheduled_at)}
    assert r_waiting["period"] == {"start": iso(waiting.scheduled_at)}
    assert in_call.admitted_at is not None
    assert r_in_call["period"] == {"start": iso(in_call.admitted_at)}
    assert ended.admitted_at is not None
    assert ended.ended_at is not None
    assert r_ended["period"] == {"start": iso(ended.admitted_at), "end": iso(ended.ended_at)}
    assert ended.ended_at - ended.admitted_at == timedelta(minutes=15)
    assert [h["status"] for h in r_ended["statusHistory"]] == [
        "planned",
        "arrived",
        "in-progress",
        "finished",
    ]
    assert r_ended["meta"]["lastUpdated"] == iso(ended.ended_at)
    # never took place: no period
    assert "period" not in r_cancelled
    assert "period" not in r_no_show


async def test_who_may_search_encounters(client: Client, people: People, clock: FakeClock) -> None:
    pid = people.patient_1.id
    visit = await book(client, people.doctor_a, people.patient_1, clock)

    assert (await refused(client, "/fhir/Encounter", 401, {"patient": pid})).startswith("sign in")
    for outsider in (people.doctor_b, people.patient_2):
        await login(client, outsider.email)
        await refused(client, "/fhir/Encounter", 403, {"patient": pid})
    for member in (people.doctor_a, people.nurse_a, people.patient_1, people.admin):
        await login(client, member.email)
        body = await fetch(client, "/fhir/Encounter", {"patient": f"Patient/{pid}"})
        assert [r["id"] for r in resources(body)] == [visit.id]
    await refused(client, "/fhir/Encounter", 400)  # no patient

    await login(client, people.doctor_b.email)
    empty = await fetch(client, "/fhir/Encounter", {"patient": people.patient_2.id})
    assert empty["total"] == 0
    assert "entry" not in empty

    assert await audit_of(client, pid, "encounter.search") == [
        (people.doctor_b.id, "denied"),
        (people.patient_2.id, "denied"),
        (people.doctor_a.id, "success"),
        (people.nurse_a.id, "success"),
        (people.patient_1.id, "success"),
        (people.admin.id, "success"),
    ]


# $everything --------------------------------------------------------------------------
async def test_everything_holds_the_signed_record_as_fhir(
    client: Client, people: People, clock: FakeClock
) -> None:
    doctor, patient = people.doctor_a, people.patient_1
    visit = await book(client, doctor, patient, clock)
    await write(client, doctor, visit.id, FIRST_DRAFT)
    clock.advance(minutes=10)
    written_at = clock()
    version = await write(client, doctor, visit.id, NOTE)
    clock.advance(minutes=2)
    signed_at = clock()
    await sign(client, doctor, visit.id, version)

    await login(client, patient.email)
    body = await fetch(client, everything_path(visit.id))
    assert body["total"] == 1  # the Encounter is the match; the record is included
    assert [e["search"]["mode"] for e in body["entry"]] == ["match"] + ["include"] * 5
    assert [r["resourceType"] for r in resources(body)] == [
        "Encounter",
        "Composition",
        "Condition",
        "Condition",
        "MedicationRequest",
        "MedicationRequest",
    ]
    [encounter] = of_type(body, "Encounter")
    assert encounter["id"] == visit.id
    assert encounter["class"]["code"] == "VR"

    # every reference to a resource of this bundle resolves within it
    held = {f"{r['resourceType']}/{r['id']}" for r in resources(body)}
    outside = {f"Patient/{patient.id}", f"Practitioner/{doctor.id}"}

    def references(value: Any) -> list[str]:
        if isinstance(value, dict):
            own = [value["reference"]] if isinstance(value.get("reference"), str) else []
            return own + [ref for v in value.values() for ref in references(v)]
        if isinstance(value, list):
            return [ref for v in value for ref in references(v)]
        return []

    for r in resources(body):
        assert set(references(r)) <= held | outside, r["resourceType"]

    [composition] = of_type(body, "Composition")
    assert composition["id"] == visit.id
    assert composition["status"] == "final"
    assert composition["type"]["coding"] == [
        {"system": LOINC, "code": "11488-4", "display": "Consult note"}
    ]
    assert composition["title"] == "Consult note"
    assert composition["subject"] == {"reference": f"Patient/{patient.id}"}
    assert composition["encounter"] == {"reference": f"Encounter/{visit.id}"}
    assert composition["author"] == [{"reference": f"Practitioner/{doctor.id}"}]
    assert composition["date"] == iso(written_at)
    assert composition["attester"] == [
        {
            "mode": "legal",
            "time": iso(signed_at),
            "party": {"reference": f"Practitioner/{doctor.id}"},
        }
    ]
    sections = {s["title"]: s for s in composition["section"]}
    assert list(sections) == ["Subjective", "Objective", "Assessment", "Plan"]
    codes = {title: s["code"]["coding"][0]["code"] for title, s in sections.items()}
    assert codes == {
        "Subjective": "61150-9",
        "Objective": "61149-1",
        "Assessment": "51848-0",
        "Plan": "18776-5",
    }
    subjective = sections["Subjective"]["text"]["div"]
    assert "worse at night &amp; after &lt;exercise&gt;" in subjective  # escaped
    for part, title in (("subjective", "Subjective"), ("objective", "Objective")):
        [paragraph] = narrative_div(sections[title]["text"])
        assert lines(paragraph) == NOTE[part].split("\n")
    assessment = narrative_div(sections["Assessment"]["text"])
    assert lines(assessment[0]) == [NOTE["assessment"]]
    assert [li.text for li in assessment[1]] == [
        "J20.9: Acute bronchitis, unspecified",
        "R05: Cough",
    ]
    plan = narrative_div(sections["Plan"]["text"])
    assert lines(plan[0]) == [NOTE["plan"]]
    assert [li.text for li in plan[1]] == [
        "Amoxicillin 500 mg capsules: 500 mg, oral, three times a day, 7 days",
        "Paracetamol: 1 g, oral, every 6 hours as needed",
    ]
    assert sections["Assessment"]["entry"] == [
        {"reference": f"Condition/{visit.id}-dx-1"},
        {"reference": f"Condition/{visit.id}-dx-2"},
    ]
    assert sections["Plan"]["entry"] == [
        {"reference": f"MedicationRequest/{visit.id}-rx-1"},
        {"reference": f"MedicationRequest/{visit.id}-rx-2"},
    ]

    conditions = of_type(body, "Condition")
    assert [c["id"] for c in conditions] == [f"{visit.id}-dx-1", f"{visit.id}-dx-2"]
    assert [c["code"]["coding"] for c in conditions] == [
        [{"system": ICD10, "code": "J20.9", "display": "Acute bronchitis, unspecified"}],
        [{"system": ICD10, "code": "R05", "display": "Cough"}],
    ]  # the signed version's diagnoses; the first draft's J06.9 is gone
    for c in conditions:
        assert c["clinicalStatus"]["coding"][0]["code"] == "active"
        assert c["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
        assert c["subject"] == {"reference": f"Patient/{patient.id}"}
        assert c["encounter"] == {"reference": f"Encounter/{visit.id}"}
        assert c["recordedDate"] == iso(written_at)

    amoxicillin, paracetamol = of_type(body, "MedicationRequest")
    assert [amoxicillin["id"], paracetamol["id"]] == [f"{visit.id}-rx-1", f"{visit.id}-rx-2"]
    assert amoxicillin["medicationCodeableConcept"] == {"text": "Amoxicillin 500 mg capsules"}
    assert paracetamol["medicationCodeableConcept"] == {"text": "Paracetamol"}
    for request in (amoxicillin, paracetamol):
        assert request["status"] == "active"
        assert request["intent"] == "order"
        assert request["subject"] == {"reference": f"Patient/{patient.id}"}
        assert request["encounter"] == {"reference": f"Encounter/{visit.id}"}
        assert request["requester"] == {"reference": f"Practitioner/{doctor.id}"}
        assert request["authoredOn"] == iso(written_at)
    assert amoxicillin["dosageInstruction"] == [
        {
            "text": "500 mg, oral, three times a day, 7 days",
            "timing": {"code": {"text": "three times a day"}},
            "route": {"text": "oral"},
            "patientInstruction": "Take with food",
        }
    ]
    [dosage] = paracetamol["dosageInstruction"]
    assert dosage["text"] == "1 g, oral, every 6 hours as needed"
    assert "patientInstruction" not in dosage  # none given: no empty string

    again = await fetch(client, everything_path(visit.id).replace("$", "%24"))
    assert again == body, "ids and content are stable"


async def test_a_draft_is_preliminary_for_the_care_team_and_hidden_from_the_patient(
    client: Client, people: People, clock: FakeClock
) -> None:
    visit = await book(client, people.doctor_a, people.patient_1, clock)
    await write(client, people.nurse_a, visit.id, NOTE)

    await login(client, people.patient_1.email)
    assert "no signed record" in await refused(client, everything_path(visit.id), 404)

    await login(client, people.doctor_a.email)
    body = await fetch(client, everything_path(visit.id))
    [composition] = of_type(body, "Composition")
    assert composition["status"] == "preliminary"
    assert "attester" not in composition
    assert composition["author"] == [{"reference": f"Practitioner/{people.nurse_a.id}"}]
    requests = of_type(body, "MedicationRequest")
    assert [r["status"] for r in requests] == ["draft", "draft"]  # not yet an order
    assert all(r["requester"]["reference"].endswith(people.nurse_a.id) for r in requests)
    assert len(of_type(body, "Condition")) == 2


async def test_an_addendum_amends_the_composition(
    client: Client, people: People, clock: FakeClock
) -> None:
    doctor = people.doctor_a
    visit = await book(client, doctor, people.patient_1, clock)
    await sign(client, doctor, visit.id, await write(client, doctor, visit.id, NOTE))
    clock.advance(hours=3)
    await client.app[RECORDS].add_addendum(
        as_actor(people.nurse_a), visit.id, "Phoned: fever gone <38"
    )

    await login(client, people.patient_1.email)
    [composition] = of_type(await fetch(client, everything_path(visit.id)), "Composition")
    assert composition["status"] == "amended"
    assert composition["date"] == iso(clock())
    assert composition["author"] == [
        {"reference": f"Practitioner/{doctor.id}"},
        {"reference": f"Practitioner/{people.nurse_a.id}"},
    ]
    addendum = composition["section"][-1]
    assert addendum["title"] == "Addendum, 2026-11-29 12:00 UTC"
    assert addendum["author"] == [{"reference": f"Practitioner/{people.nurse_a.id}"}]
    [paragraph] = narrative_div(addendum["text"])
    assert lines(paragraph) == ["Phoned: fever gone <38"]


async def test_a_visit_without_a_record_is_its_encounter_alone(
    client: Client, people: People, clock: FakeClock
) -> None:
    visit = await book(client, people.doctor_a, people.patient_1, clock)
    await login(client, people.doctor_a.email)
    body = await fetch(client, everything_path(visit.id))
    assert [(r["resourceType"], r["id"]) for r in resources(body)] == [("Encounter", visit.id)]
    await refused(client, everything_path("0" * 32), 404)


async def test_who_may_read_everything(client: Client, people: People, clock: FakeClock) -> None:
    pid = people.patient_1.id
    visit = await book(client, people.doctor_a, people.patient_1, clock)
    version = await write(client, people.doctor_a, visit.id, NOTE)
    path = everything_path(visit.id)

    assert (await refused(client, path, 401)).startswith("sign in")
    await login(client, people.doctor_b.email)  # not on the care team
    assert "Amoxicillin" not in await refused(client, path, 403)
    await login(client, people.patient_2.email)
    await refused(client, path, 403)
    await login(client, people.patient_1.email)
    await refused(client, path, 404)  # not signed yet
    await login(client, people.admin.email)
    assert "break-glass" in await refused(client, path, 403)

    await sign(client, people.doctor_a, visit.id, version)
    await login(client, people.patient_1.email)
    assert of_type(await fetch(client, path), "Composition")[0]["status"] == "final"
    await login(client, people.admin.email)
    await refused(client, path, 403)  # signing opens nothing to admins
    await client.app[RECORDS].break_glass(
        as_actor(people.admin), pid, "Patient unconscious in A&E, no team reachable"
    )
    body = await fetch(client, path)
    assert len(of_type(body, "MedicationRequest")) == 2

    assert await audit_of(client, pid, "record.read") == [
        (people.doctor_b.id, "denied"),
        (people.patient_2.id, "denied"),
        (people.patient_1.id, "success"),  # "no record yet": seen, and nothing shown
        (people.admin.id, "denied"),
        (people.patient_1.id, "success"),
        (people.admin.id, "denied"),
        (people.admin.id, "success"),
    ]


# metadata -----------------------------------------------------------------------------
async def test_metadata_lists_the_encounter_search_and_everything(client: Client) -> None:
    response = await client.get("/fhir/metadata")
    assert response.status == 200
    body = await response.json(content_type=None)
    get_fhir_model_class("CapabilityStatement").model_validate(body)
    [rest] = body["rest"]
    by_type = {r["type"]: r for r in rest["resource"]}
    encounter = by_type["Encounter"]
    assert [i["code"] for i in encounter["interaction"]] == ["search-type"]
    assert [(p["name"], p["type"]) for p in encounter["searchParam"]] == [("patient", "reference")]
    [operation] = encounter["operation"]
    assert operation["name"] == "everything"
    assert operation["definition"] == EVERYTHING
