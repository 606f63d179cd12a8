"""Who sees which patient: roles and care teams, by page, JSON API and FHIR; bearer tokens."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from telemed.clinic import OPERATOR
from telemed.web.keys import CLINIC, STORE
from tests.conftest import People, login

Client = TestClient  # type: ignore[type-arg]


async def denied_reads(client: Client, patient_id: str) -> int:
    return len(
        [
            r
            async for r in client.app[STORE].audit_records(patient_id=patient_id)
            if r.event.action == "patient.read" and r.event.outcome.value == "denied"
        ]
    )


async def test_dashboard_lists_only_the_care_teams_patients(client: Client, people: People) -> None:
    await login(client, people.doctor_a.email)
    text = await (await client.get("/dashboard")).text()
    assert "Paula One" in text
    assert "Peter Two" not in text


@pytest.mark.parametrize(
    "path",
    ["/patients/{id}", "/api/patients/{id}", "/fhir/Patient/{id}"],
)
async def test_a_doctor_cannot_read_another_teams_patient(
    client: Client, people: People, path: str
) -> None:
    await login(client, people.doctor_a.email)
    own = await client.get(path.format(id=people.patient_1.id))
    assert own.status == 200
    assert "Paula One" in await own.text()

    other = await client.get(path.format(id=people.patient_2.id))
    assert other.status == 403
    assert "Peter Two" not in await other.text()
    assert await denied_reads(client, people.patient_2.id) == 1


async def test_nurse_on_the_team_reads_the_patient(client: Client, people: People) -> None:
    await login(client, people.nurse_a.email)
    assert (await client.get(f"/api/patients/{people.patient_1.id}")).status == 200
    assert (await client.get(f"/api/patients/{people.patient_2.id}")).status == 403


async def test_leaving_the_care_team_ends_access(client: Client, people: People) -> None:
    await login(client, people.doctor_a.email)
    path = f"/api/patients/{people.patient_1.id}"
    assert (await client.get(path)).status == 200
    await client.app[CLINIC].remove_care_team_member(
        OPERATOR, people.patient_1.id, people.doctor_a.id
    )
    assert (await client.get(path)).status == 403


async def test_fhir_patient_search_returns_only_own_patients(
    client: Client, people: People
) -> None:
    await login(client, people.doctor_b.email)
    response = await client.get("/fhir/Patient")
    assert response.status == 200
    assert response.content_type == "application/fhir+json"
    bundle = await response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "searchset"
    assert [e["resource"]["id"] for e in bundle["entry"]] == [people.patient_2.id]
    assert bundle["entry"][0]["resource"]["name"][0]["text"] == "Peter Two"


async def test_a_patient_sees_only_themself(client: Client, people: People) -> None:
    response = await login(client, people.patient_1.email)
    assert response.headers["Location"] == "/me"
    assert "Paula One" in await (await client.get("/me")).text()
    ids = [p["id"] for p in (await (await client.get("/api/patients")).json())["patients"]]
    assert ids == [people.patient_1.id]
    assert (await client.get(f"/fhir/Patient/{people.patient_2.id}")).status == 403
    assert (await client.get("/dashboard")).status == 403


async def test_pages_need_a_session(client: Client, people: People) -> None:
    response = await client.get("/dashboard", allow_redirects=False)
    assert response.status == 302
    assert response.headers["Location"] == "/login?next=/dashboard"
    api = await client.get(f"/api/patients/{people.patient_1.id}")
    assert api.status == 401
    fhir = await client.get("/fhir/Patient")
    assert fhir.status == 401
    assert (await fhir.json())["resourceType"] == "OperationOutcome"


async def test_admin_pages_are_for_admins(client: Client, people: People) -> None:
    await login(client, people.doctor_a.email)
    assert (await client.get("/admin")).status == 403
    await login(client, people.admin.email)
    text = await (await client.get("/admin")).text()
    assert "Dr Alice" in text
    assert "Paula One" in text


async def test_bearer_token_follows_its_users_rules_until_revoked(
    client: Client, people: People
) -> None:
    token, secret = await client.app[CLINIC].create_token(OPERATOR, people.doctor_a.email, "EHR")
    assert token.token_hash != secret  # only the hash is stored
    stored = await client.app[STORE].find_token(token.token_hash)
    assert stored is not None
    assert secret not in repr(stored)

    auth = {"Authorization": f"Bearer {secret}"}
    listed = await (await client.get("/api/patients", headers=auth)).json()
    assert [p["id"] for p in listed["patients"]] == [people.patient_1.id]
    assert (await client.get(f"/api/patients/{people.patient_2.id}", headers=auth)).status == 403
    assert (await client.get(f"/fhir/Patient/{people.patient_1.id}", headers=auth)).status == 200

    await client.app[CLINIC].revoke_token(OPERATOR, token.id)
    revoked = await client.get("/api/patients", headers=auth)
    assert revoked.status == 401
    assert "revoked" in (await revoked.json())["error"]


async def test_unknown_bearer_token_is_refused(client: Client, people: People) -> None:
    response = await client.get("/api/patients", headers={"Authorization": "Bearer tmd_nope"})
    assert response.status == 401


async def test_audit_events_are_for_admins_as_a_fhir_bundle(client: Client, people: People) -> None:
    await login(client, people.doctor_b.email)
    assert (await client.get(f"/api/patients/{people.patient_1.id}")).status == 403
    await login(client, people.doctor_a.email)
    await client.get(f"/api/patients/{people.patient_1.id}")
    assert (await client.get(f"/fhir/AuditEvent?patient={people.patient_1.id}")).status == 403

    await login(client, people.admin.email)
    response = await client.get(f"/fhir/AuditEvent?patient={people.patient_1.id}")
    assert response.status == 200
    bundle = await response.json()
    events = [e["resource"] for e in bundle["entry"]]
    assert events, "reads of the patient must be in the audit log"
    assert all(e["resourceType"] == "AuditEvent" for e in events)
    read = next(
        e for e in events if e["subtype"][0]["code"] == "patient.read" and e["outcome"] == "0"
    )
    assert read["action"] == "R"
    assert read["outcome"] == "0"
    assert read["agent"][0]["who"] == {"reference": f"Practitioner/{people.doctor_a.id}"}
    assert read["agent"][0]["requestor"] is True
    assert read["agent"][0]["network"]["address"] == "127.0.0.1"
    assert read["entity"][0]["what"] == {"reference": f"Patient/{people.patient_1.id}"}
    assert read["recorded"].endswith("Z")
    assert "observer" in read["source"]
    # the other team's refused attempt is there too, as a failure
    denied = [
        e
        for e in events
        if e["agent"][0].get("who", {}).get("reference", "").endswith(people.doctor_b.id)
    ]
    assert [(e["subtype"][0]["code"], e["outcome"]) for e in denied] == [("patient.read", "4")]
