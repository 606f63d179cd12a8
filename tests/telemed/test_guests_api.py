"""Guests over HTTP, through the real app: the clinic's invite and remove routes, the
visit's JSON listing its guests, and the guest's own room page and claim (the same
`/v/{token}` routes as the patient's, in guest mode)."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from typing import Any

from aiohttp.test_utils import TestClient

from telemed.audit import Outcome
from telemed.clinic import OPERATOR
from telemed.visits import GUEST_COOKIE, VISIT_COOKIE, GuestState, parse_guest_cookie
from telemed.web.keys import RECEPTION, SETTINGS, STORE
from tests.conftest import People
from tests.telemed.test_visit_pages import page_messages
from tests.telemed.test_visits_api import as_user, book

Client = TestClient  # type: ignore[type-arg]
_DATA_CSRF = re.compile(r'data-csrf="([^"]+)"')


async def visit_of_doctor_a(client: Client, people: People) -> tuple[str, dict[str, str]]:
    headers = await as_user(client, people.doctor_a.email)
    status, booked = await book(client, headers, patient_id=people.patient_1.id)
    assert status == 201
    return booked["visit_id"], headers


async def invite(
    client: Client, visit_id: str, headers: dict[str, str], body: Any
) -> tuple[int, Any]:
    response = await client.post(f"/api/visits/{visit_id}/guests", json=body, headers=headers)
    return response.status, await response.json()


def token_of(join_url: str) -> str:
    return join_url.rsplit("/v/", 1)[1]


async def test_a_doctor_invites_a_guest_and_gets_their_link_once(
    client: Client, people: People
) -> None:
    visit_id, headers = await visit_of_doctor_a(client, people)
    status, made = await invite(
        client, visit_id, headers, {"role": "interpreter", "name": "  Ines  Ortiz "}
    )
    assert status == 201, made
    assert made["role"] == "interpreter"
    assert made["name"] == "Ines Ortiz"
    assert made["state"] == "invited"
    assert made["join_url"].startswith(f"{client.app[SETTINGS].base_url}/v/")
    token = token_of(made["join_url"])
    assert len(token) >= 43
    shown = await (await client.get(f"/api/visits/{visit_id}")).json()
    assert made["expires_at"] == shown["link_expires_at"]
    [listed] = shown["guests"]
    assert listed["guest_id"] == made["guest_id"]
    assert (listed["role"], listed["name"], listed["state"]) == (
        "interpreter",
        "Ines Ortiz",
        "invited",
    )
    assert listed["link_claimed"] is False
    assert token not in str(shown)  # the link is shown once; its hash never
    assert all("hash" not in key for g in shown["guests"] for key in g)
    assert (await client.get(f"/v/{token}")).status == 200


async def test_bad_input_is_a_400_naming_the_field(client: Client, people: People) -> None:
    visit_id, headers = await visit_of_doctor_a(client, people)
    cases = [
        ({"name": "Ana"}, "role: is required"),
        ({"role": "interpreter"}, "name: is required"),
        ({"role": "plumber", "name": "Ana"}, "role: must be one of interpreter, family"),
        ({"role": 3, "name": "Ana"}, "role: must be one of"),
        ({"role": "family", "name": ""}, "name: is required"),
        ({"role": "family", "name": "x" * 81}, "name: is longer than 80 characters"),
        ({"role": "family", "name": ["Ana"]}, "name: must be a string"),
        ({"role": "family", "name": "Ana", "email": "a@b"}, "email: is not accepted here"),
        (["family"], "body: must be a JSON object"),
    ]
    for body, error in cases:
        status, answer = await invite(client, visit_id, headers, body)
        assert status == 400, (body, answer)
        assert error in answer["error"], (body, answer)
    stored = await client.app[STORE].get_visit(visit_id)
    assert stored is not None
    assert stored.guests == ()  # nothing was invited


async def test_beyond_max_participants_the_invite_is_refused_plainly(
    client: Client, people: People
) -> None:
    visit_id, headers = await visit_of_doctor_a(client, people)
    for name in ("One", "Two"):
        assert (await invite(client, visit_id, headers, {"role": "family", "name": name}))[0] == 201
    status, answer = await invite(client, visit_id, headers, {"role": "colleague", "name": "Three"})
    assert status == 400
    assert answer["error"].startswith("guests: a call has at most 4 participants")


async def test_only_the_care_team_invites_or_removes_and_unknown_ids_are_404(
    client: Client, people: People
) -> None:
    visit_id, headers = await visit_of_doctor_a(client, people)
    status, made = await invite(client, visit_id, headers, {"role": "family", "name": "Fran"})
    assert status == 201
    guest_url = f"/api/visits/{visit_id}/guests/{made['guest_id']}"
    assert (await invite(client, "nosuchvisit", headers, {"role": "family", "name": "F"}))[0] == 404
    missing = await client.delete(f"/api/visits/{visit_id}/guests/nosuchguest", headers=headers)
    assert missing.status == 404

    other = await as_user(client, people.doctor_b.email)  # not on patient_1's care team
    assert (await invite(client, visit_id, other, {"role": "family", "name": "F"}))[0] == 403
    assert (await client.delete(guest_url, headers=other)).status == 403
    patient = await as_user(client, people.patient_1.email, "/me")
    assert (await invite(client, visit_id, patient, {"role": "family", "name": "F"}))[0] == 403
    records = [r async for r in client.app[STORE].audit_records(patient_id=people.patient_1.id)]
    denied = {
        (r.event.actor_id, r.event.action) for r in records if r.event.outcome is Outcome.DENIED
    }
    assert {
        (people.doctor_b.id, "visit.guest.invite"),
        (people.doctor_b.id, "visit.guest.remove"),
    } <= denied
    stored = await client.app[STORE].get_visit(visit_id)
    assert stored is not None
    assert [g.state for g in stored.guests] == [GuestState.INVITED]


async def test_removing_a_guest_kills_their_link(client: Client, people: People) -> None:
    visit_id, headers = await visit_of_doctor_a(client, people)
    _, made = await invite(client, visit_id, headers, {"role": "family", "name": "Fran"})
    token = token_of(made["join_url"])
    removed = await client.delete(
        f"/api/visits/{visit_id}/guests/{made['guest_id']}", headers=headers
    )
    assert removed.status == 200
    assert (await removed.json())["state"] == "removed"
    page = await client.get(f"/v/{token}", headers={"Accept-Language": "en"})
    assert page.status == 410
    assert "The clinic removed you from this visit." in await page.text()
    # in the guest's words (the browser's), not the patient's record's (English)
    spanish = await client.get(f"/v/{token}", headers={"Accept-Language": "es"})
    assert spanish.status == 410
    assert "La clínica le retiró de esta consulta." in await spanish.text()
    again = await client.delete(
        f"/api/visits/{visit_id}/guests/{made['guest_id']}", headers=headers
    )
    assert again.status == 400
    assert "guest: a guest who is removed" in (await again.json())["error"]


# the guest's room -------------------------------------------------------------------------------
async def guest_link(client: Client, people: People, role: str = "interpreter") -> tuple[str, str]:
    """A visit of patient_1 with a guest invited by the operator; (visit_id, token)."""
    reception = client.app[RECEPTION]
    booking = await reception.book(
        OPERATOR, patient_id=people.patient_1.id, clinician_id=people.doctor_a.id
    )
    invitation = await reception.invite(OPERATOR, booking.visit.id, role=role, name="Ines")
    return booking.visit.id, invitation.token


async def test_the_guests_link_opens_the_room_in_guest_mode(client: Client, people: People) -> None:
    _, token = await guest_link(client, people)
    response = await client.get(f"/v/{token}", headers={"Accept-Language": "en"})
    assert response.status == 200
    html = await response.text()
    assert 'data-guest-role="interpreter"' in html
    assert "You are joining as the interpreter." in html
    assert 'data-testid="place-line"' not in html  # a guest has no place in line
    assert 'data-testid="guest-in-call"' in html
    stored_cookies = [c.key for c in client.session.cookie_jar]
    assert GUEST_COOKIE not in stored_cookies  # opening the link claims nothing


async def test_the_guests_page_speaks_the_guests_language(client: Client, people: People) -> None:
    _, token = await guest_link(client, people, "family")
    html = await (await client.get(f"/v/{token}", headers={"Accept-Language": "es-MX"})).text()
    assert '<html lang="es">' in html
    assert "Se une como familiar del paciente." in html
    messages = page_messages(html)["messages"]
    assert isinstance(messages, dict)
    assert messages["Interpreter"] == "Intérprete"
    assert messages["The clinic removed you from this visit. The link no longer works."] == (
        "La clínica le retiró de esta consulta. El enlace ya no funciona."
    )


async def claim_guest(client: Client, token: str) -> Any:
    page = await client.get(f"/v/{token}")
    match = _DATA_CSRF.search(await page.text())
    assert match
    return await client.post(f"/v/{token}/claim", headers={"X-CSRF-Token": match.group(1)})


async def test_the_guests_claim_sets_the_guest_pass_and_a_second_browser_is_refused(
    client: Client, people: People
) -> None:
    visit_id, token = await guest_link(client, people)
    response = await claim_guest(client, token)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["visit_id"] == visit_id
    assert body["guest"]["role"] == "interpreter"
    assert body["guest"]["state"] == "invited"
    cookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        cookie.load(header)
    assert GUEST_COOKIE in cookie
    assert VISIT_COOKIE not in cookie  # the patient's pass is not touched
    morsel = cookie[GUEST_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    parsed = parse_guest_cookie(morsel.value)
    assert parsed is not None
    assert parsed[:2] == (visit_id, body["guest"]["guest_id"])

    # the same browser again: a new pass; the page knows it is returning
    assert (await claim_guest(client, token)).status == 200
    page = await (await client.get(f"/v/{token}")).text()
    assert 'data-returning="true"' in page
    ping = await client.get("/v/net/ping")  # the guest's pass opens the network check too
    assert ping.status == 200

    client.session.cookie_jar.clear()  # another browser: no pass
    refused = await claim_guest(client, token)
    assert refused.status == 403
    assert "already opened on another device" in (await refused.json())["error"]
