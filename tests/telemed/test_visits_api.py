"""The clinic's visit API and pages through the real app: booking, lists, a new link,
cancel and no-show, the call view, and the admin's waiting-room message."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from telemed.audit import Outcome
from telemed.web.keys import RECEPTION, SETTINGS, STORE
from tests.conftest import People, login, page_csrf

Client = TestClient  # type: ignore[type-arg]


async def as_user(client: Client, email: str, page: str = "/dashboard") -> dict[str, str]:
    """Sign in; the headers a browser script sends with a state-changing call."""
    await login(client, email)
    return {"X-CSRF-Token": await page_csrf(client, page)}


async def book(client: Client, headers: dict[str, str], **body: Any) -> Any:
    response = await client.post("/api/visits", json=body, headers=headers)
    return response.status, await response.json()


async def test_a_doctor_books_a_visit_and_gets_the_join_link_once(
    client: Client, people: People
) -> None:
    headers = await as_user(client, people.doctor_a.email)
    status, booked = await book(client, headers, patient_id=people.patient_1.id)
    assert status == 201
    assert booked["doctor_id"] == people.doctor_a.id  # the clinician asking, by default
    assert booked["state"] == "scheduled"
    assert booked["join_url"].startswith(f"{client.app[SETTINGS].base_url}/v/")
    token = booked["join_url"].rsplit("/v/", 1)[1]
    assert len(token) >= 43
    # the link is never shown again, and its hash never leaves the server
    shown = await (await client.get(f"/api/visits/{booked['visit_id']}")).json()
    assert "join_url" not in shown
    assert token not in str(shown)
    assert all("hash" not in key for key in shown)
    listed = await (await client.get(f"/api/visits?patient={people.patient_1.id}")).json()
    assert [v["visit_id"] for v in listed["visits"]] == [booked["visit_id"]]
    page = await client.get(f"/v/{token}")
    assert page.status == 200


async def test_booking_refuses_what_is_wrong_and_names_it(client: Client, people: People) -> None:
    headers = await as_user(client, people.doctor_a.email)
    patient = people.patient_1.id
    cases = [
        ({}, "patient_id: is required"),
        ({"patient_id": patient, "at": "tomorrow"}, "at: must be a time"),
        ({"patient_id": patient, "at": "2026-12-01T09:30:00"}, "at: must carry a time zone"),
        ({"patient_id": patient, "at": 5}, "at: must be a time"),
        ({"patient_id": patient, "doctor_id": people.doctor_b.id}, "doctor: is not on"),
        ({"patient_id": patient, "doctor_id": people.patient_2.id}, "is not a clinician"),
        ({"patient_id": patient, "colour": "red"}, "colour: is not accepted here"),
        ({"patient_id": patient, "at": "2020-01-01T09:00:00Z"}, "at: is so far in the past"),
    ]
    for body, expected in cases:
        status, answer = await book(client, headers, **body)
        assert status == 400, body
        assert expected in answer["error"], (body, answer)
    assert await client.app[STORE].list_visits() == []


async def test_only_the_care_team_books_reads_or_changes_a_visit(
    client: Client, people: People
) -> None:
    headers = await as_user(client, people.doctor_a.email)
    _, booked = await book(client, headers, patient_id=people.patient_1.id)
    visit_id = booked["visit_id"]

    headers = await as_user(client, people.doctor_b.email)  # another team
    status, _ = await book(client, headers, patient_id=people.patient_1.id)
    assert status == 403
    for method, path in [
        ("GET", f"/api/visits/{visit_id}"),
        ("GET", f"/api/visits?patient={people.patient_1.id}"),
        ("POST", f"/api/visits/{visit_id}/link"),
        ("POST", f"/api/visits/{visit_id}/cancel"),
        ("POST", f"/api/visits/{visit_id}/no-show"),
        ("GET", f"/visits/{visit_id}"),
    ]:
        response = await client.request(method, path, headers=headers)
        assert response.status == 403, path
    refusals = [
        r
        async for r in client.app[STORE].audit_records(patient_id=people.patient_1.id)
        if r.event.outcome is Outcome.DENIED and r.event.actor_id == people.doctor_b.id
    ]
    assert len(refusals) == 7
    assert (await client.app[STORE].get_visit(visit_id)).state.value == "scheduled"

    for email, page in ((people.admin.email, "/admin"), (people.patient_1.email, "/me")):
        headers = await as_user(client, email, page)  # not clinicians
        status, _ = await book(client, headers, patient_id=people.patient_1.id)
        assert status == 403
    await client.post("/logout", headers=headers)
    anonymous = await client.post("/api/visits", json={"patient_id": people.patient_1.id})
    assert anonymous.status in (401, 403)


async def test_a_new_link_kills_the_old_one_and_cancel_kills_both(
    client: Client, people: People
) -> None:
    headers = await as_user(client, people.nurse_a.email)
    _, booked = await book(
        client, headers, patient_id=people.patient_1.id, doctor_id=people.doctor_a.id
    )
    old = booked["join_url"].rsplit("/v/", 1)[1]
    relinked = await (
        await client.post(f"/api/visits/{booked['visit_id']}/link", headers=headers)
    ).json()
    new = relinked["join_url"].rsplit("/v/", 1)[1]
    assert new != old
    assert (await client.get(f"/v/{old}")).status == 404
    assert (await client.get(f"/v/{new}")).status == 200
    cancelled = await client.post(f"/api/visits/{booked['visit_id']}/cancel", headers=headers)
    assert (await cancelled.json())["state"] == "cancelled"
    assert (await client.get(f"/v/{new}")).status == 410
    again = await client.post(f"/api/visits/{booked['visit_id']}/cancel", headers=headers)
    assert again.status == 400
    assert "cannot become cancelled" in (await again.json())["error"]
    relink = await client.post(f"/api/visits/{booked['visit_id']}/link", headers=headers)
    assert relink.status == 400


async def test_no_show_is_recorded_and_audited(client: Client, people: People) -> None:
    headers = await as_user(client, people.doctor_a.email)
    _, booked = await book(client, headers, patient_id=people.patient_1.id)
    answer = await client.post(f"/api/visits/{booked['visit_id']}/no-show", headers=headers)
    body = await answer.json()
    assert body["state"] == "no_show"
    assert [t["state"] for t in body["transitions"]] == ["scheduled", "no_show"]
    actions = [
        r.event.action
        async for r in client.app[STORE].audit_records(patient_id=people.patient_1.id)
    ]
    assert "visit.create" in actions
    assert "visit.no_show" in actions


async def test_the_call_view_shows_the_patient_to_their_care_team(
    client: Client, people: People
) -> None:
    headers = await as_user(client, people.doctor_a.email)
    _, booked = await book(client, headers, patient_id=people.patient_1.id)
    page = await client.get(f"/visits/{booked['visit_id']}")
    assert page.status == 200
    text = await page.text()
    assert people.patient_1.name in text
    assert 'data-testid="remote-video"' in text
    assert (await client.get("/visits/nosuchvisit")).status == 404


async def test_the_admin_sets_the_waiting_room_message(client: Client, people: People) -> None:
    await login(client, people.admin.email)
    token = await page_csrf(client, "/admin")
    saved = await client.post(
        "/admin/waiting-message",
        data={"message": "  Dr Ana is running\n10 minutes late. ", "csrf_token": token},
        allow_redirects=False,
    )
    assert saved.status == 303
    assert saved.headers["Location"] == "/admin?done=waiting_message"
    assert await client.app[RECEPTION].waiting_message() == "Dr Ana is running 10 minutes late."
    page = await (await client.get("/admin?done=waiting_message")).text()
    assert "Dr Ana is running 10 minutes late." in page
    assert "Waiting-room message saved." in page

    too_long = await client.post(
        "/admin/waiting-message", data={"message": "x" * 501, "csrf_token": token}
    )
    assert too_long.status == 400
    assert "message: is longer than 500 characters" in await too_long.text()

    await login(client, people.doctor_a.email)
    token = await page_csrf(client)
    refused = await client.post(
        "/admin/waiting-message", data={"message": "hello", "csrf_token": token}
    )
    assert refused.status == 403
    assert await client.app[RECEPTION].waiting_message() == "Dr Ana is running 10 minutes late."
