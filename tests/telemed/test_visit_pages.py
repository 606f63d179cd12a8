"""The patient's HTTP routes of a video visit (docs/visit-protocol.md): the room page, the
claim and its pass cookie, the network check, dead links, CSRF, the language, and the
compressed static files. Against the real app on aiohttp's test server."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from telemed.clinic import OPERATOR
from telemed.reception import Reception
from telemed.visits import VISIT_COOKIE, parse_visit_cookie
from telemed.web.keys import CLINIC, RECEPTION
from telemed.web.middleware import LOGIN_CSRF_COOKIE
from telemed.web.visit_pages import REFUSALS, UPLOAD_LIMIT
from tests.conftest import FakeClock, People

Client = TestClient  # type: ignore[type-arg]
ROOT = Path(__file__).resolve().parents[2]

_DATA_CSRF = re.compile(r'data-csrf="([^"]+)"')
_I18N = re.compile(r'<script type="application/json" id="visit-i18n">(.*?)</script>', re.S)


@dataclass
class Link:
    visit_id: str
    token: str

    @property
    def page(self) -> str:
        return f"/v/{self.token}"

    @property
    def claim(self) -> str:
        return f"/v/{self.token}/claim"


async def book(client: Client, patient_id: str, clinician_id: str) -> Link:
    reception: Reception = client.app[RECEPTION]
    booking = await reception.book(OPERATOR, patient_id=patient_id, clinician_id=clinician_id)
    return Link(booking.visit.id, booking.token)


@pytest.fixture
async def link(client: Client, people: People) -> Link:
    return await book(client, people.patient_1.id, people.doctor_a.id)


async def patient_speaking(client: Client, people: People, language: str, email: str) -> str:
    clinic = client.app[CLINIC]
    user = await clinic.add_user(
        OPERATOR, role="patient", email=email, name="Lucía", password=None, language=language
    )
    await clinic.add_care_team_member(OPERATOR, user.id, people.doctor_a.id)
    return user.id


async def open_page(client: Client, link: Link, **headers: str) -> str:
    """Open the room like a browser; the page's CSRF token."""
    response = await client.get(link.page, headers=headers)
    assert response.status == 200, await response.text()
    match = _DATA_CSRF.search(await response.text())
    assert match, "the room has no data-csrf"
    return match.group(1)


async def claim(client: Client, link: Link, csrf: str) -> ClientResponse:
    return await client.post(link.claim, headers={"X-CSRF-Token": csrf})


def set_cookie(response: ClientResponse, name: str) -> SimpleCookie:
    cookie = SimpleCookie()
    for header in response.headers.getall("Set-Cookie", []):
        cookie.load(header)
    assert name in cookie, f"no {name} cookie was set"
    return cookie


def held_cookie(client: Client) -> str | None:
    for cookie in client.session.cookie_jar:
        if cookie.key == VISIT_COOKIE:
            return cookie.value
    return None


@pytest.fixture
async def claimed(client: Client, link: Link) -> str:
    """The link claimed by this client; the page's CSRF token."""
    csrf = await open_page(client, link)
    response = await claim(client, link, csrf)
    assert response.status == 200, await response.text()
    return csrf


# the room page ----------------------------------------------------------------------------
async def test_opening_the_link_renders_the_room_without_claiming(
    client: Client, link: Link
) -> None:
    response = await client.get(link.page)
    assert response.status == 200
    html = await response.text()
    assert 'data-testid="join"' in html
    assert 'data-testid="remote-video"' in html
    assert '<html lang="en">' in html
    assert f'data-claim="/v/{link.token}/claim"' in html
    assert LOGIN_CSRF_COOKIE in response.cookies  # the double-submit cookie
    assert _DATA_CSRF.search(html).group(1) == response.cookies[LOGIN_CSRF_COOKIE].value  # type: ignore[union-attr]
    assert VISIT_COOKIE not in response.cookies
    visit = await client.app[RECEPTION].store.get_visit(link.visit_id)
    assert visit is not None
    assert visit.link_claimed_at is None
    # Scripts only from files: the one inline script element is JSON data.
    scripts = re.findall(r"<script([^>]*)>", html)
    assert all("src=" in s or 'type="application/json"' in s for s in scripts), scripts
    assert not re.search(r"<[^>]+\son[a-z]+=", html), "an inline event handler"
    assert "style=" not in html


# the claim ----------------------------------------------------------------------------------
async def test_the_first_claim_sets_the_pass_cookie(
    client: Client, link: Link, clock: FakeClock
) -> None:
    csrf = await open_page(client, link)
    response = await claim(client, link, csrf)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body == {
        "visit_id": link.visit_id,
        "state": "scheduled",
        "language": "en",
        "media": {
            "low_bandwidth_kbps": 150,
            "low_bandwidth_height": 240,
            "audio_only_below_kbps": 100,
        },
    }
    morsel = set_cookie(response, VISIT_COOKIE)[VISIT_COOKIE]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert not morsel["secure"]  # plain HTTP in this test
    visit = await client.app[RECEPTION].store.get_visit(link.visit_id)
    assert visit is not None
    assert int(morsel["max-age"]) == int((visit.link_expires_at - clock()).total_seconds())
    parsed = parse_visit_cookie(morsel.value)
    assert parsed is not None
    assert parsed[0] == link.visit_id
    assert (await client.app[RECEPTION].visit_for_pass(*parsed)).id == link.visit_id


async def test_the_same_browser_claims_again_and_gets_a_new_pass(
    client: Client, link: Link, claimed: str
) -> None:
    first = held_cookie(client)
    response = await claim(client, link, claimed)  # a reload, or the link opened again
    assert response.status == 200, await response.text()
    second = held_cookie(client)
    assert first
    assert second
    assert first != second
    reception = client.app[RECEPTION]
    old, new = parse_visit_cookie(first), parse_visit_cookie(second)
    assert old
    assert new
    assert (await reception.visit_for_pass(*new)).id == link.visit_id
    with pytest.raises(Exception, match="no longer valid"):
        await reception.visit_for_pass(*old)


async def test_reopening_the_link_with_the_pass_marks_the_page_as_returning(
    client: Client, link: Link, claimed: str
) -> None:
    html = await (await client.get(link.page)).text()
    assert 'data-returning="true"' in html
    client.session.cookie_jar.clear(lambda c: c.key == VISIT_COOKIE)
    html = await (await client.get(link.page)).text()
    assert 'data-returning="false"' in html


async def test_another_browser_is_refused_in_plain_words(
    client: Client, link: Link, claimed: str
) -> None:
    client.session.cookie_jar.clear()  # another phone: no pass, no CSRF cookie yet
    csrf = await open_page(client, link)
    response = await claim(client, link, csrf)
    assert response.status == 403
    body = await response.json()
    assert body["error"].startswith("This link was already opened on another device.")
    assert held_cookie(client) is None


async def test_a_claim_without_the_csrf_token_is_refused(client: Client, link: Link) -> None:
    await open_page(client, link)
    response = await client.post(link.claim)
    assert response.status == 403
    assert "did not come from this site" in await response.text()
    response = await client.post(link.claim, headers={"X-CSRF-Token": "forged"})
    assert response.status == 403
    visit = await client.app[RECEPTION].store.get_visit(link.visit_id)
    assert visit is not None
    assert visit.link_claimed_at is None


# dead links ---------------------------------------------------------------------------------
async def test_an_unknown_link_is_a_plain_404(client: Client) -> None:
    response = await client.get("/v/" + "x" * 43)
    assert response.status == 404
    html = await response.text()
    assert "This link is not valid. Ask the clinic to send a new one." in html
    assert 'data-testid="visit-gone"' in html
    response = await client.get("/v/" + "y" * 500)
    assert response.status == 404


@pytest.mark.parametrize(
    ("how", "words"),
    [
        ("cancel", "This visit was cancelled."),
        ("end", "This visit has ended."),
        ("expire", "This link has expired."),
    ],
)
async def test_a_dead_link_is_a_plain_410(
    client: Client, link: Link, people: People, clock: FakeClock, how: str, words: str
) -> None:
    csrf = await open_page(client, link)
    reception: Reception = client.app[RECEPTION]
    if how == "cancel":
        await reception.cancel(OPERATOR, link.visit_id)
    elif how == "end":
        await reception.end(OPERATOR, link.visit_id)
    else:
        visit = await reception.store.get_visit(link.visit_id)
        assert visit is not None
        clock.now = visit.link_expires_at
    response = await client.get(link.page)
    assert response.status == 410
    assert words in await response.text()
    response = await claim(client, link, csrf)
    assert response.status == 410
    body = await response.json()
    assert body["error"].startswith(words)
    # a visit that is over says which way, for the page to show its own view
    assert body.get("state") == {"cancel": "cancelled", "end": "ended", "expire": None}[how]


async def test_an_unknown_link_cannot_be_claimed(client: Client, link: Link) -> None:
    csrf = await open_page(client, link)
    response = await client.post("/v/" + "z" * 43 + "/claim", headers={"X-CSRF-Token": csrf})
    assert response.status == 404
    assert (await response.json())["error"].startswith("This link is not valid.")


# the network check --------------------------------------------------------------------------
async def test_ping_needs_the_pass(client: Client, link: Link) -> None:
    response = await client.get("/v/net/ping")
    assert response.status == 403
    assert "error" in await response.json()


async def test_ping_answers_the_server_time_uncached(
    client: Client, claimed: str, clock: FakeClock
) -> None:
    response = await client.get("/v/net/ping")
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert await response.json() == {"t": int(clock().timestamp() * 1000)}


async def test_upload_counts_the_bytes(client: Client, claimed: str) -> None:
    headers = {"X-CSRF-Token": claimed, "Content-Type": "application/octet-stream"}
    for size in (0, 300 * 1024, UPLOAD_LIMIT):
        response = await client.post("/v/net/upload", data=b"\x01" * size, headers=headers)
        assert response.status == 200, await response.text()
        assert await response.json() == {"bytes": size}


async def test_upload_beyond_512_kib_is_413(client: Client, claimed: str) -> None:
    headers = {"X-CSRF-Token": claimed, "Content-Type": "application/octet-stream"}
    response = await client.post(
        "/v/net/upload", data=b"\x01" * (UPLOAD_LIMIT + 1), headers=headers
    )
    assert response.status == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(9):
            yield b"\x02" * (64 * 1024)

    response = await client.post("/v/net/upload", data=chunks(), headers=headers)
    assert response.status == 413


async def test_upload_needs_the_pass_and_the_csrf_token(
    client: Client, link: Link, claimed: str
) -> None:
    response = await client.post("/v/net/upload", data=b"abc")
    assert response.status == 403  # no CSRF token
    assert "did not come from this site" in await response.text()
    client.session.cookie_jar.clear(lambda c: c.key == VISIT_COOKIE)
    response = await client.post("/v/net/upload", data=b"abc", headers={"X-CSRF-Token": claimed})
    assert response.status == 403
    assert "error" in await response.json()


# the language -------------------------------------------------------------------------------
def page_messages(html: str) -> dict[str, object]:
    match = _I18N.search(html)
    assert match, "the room has no translations block"
    data: dict[str, object] = json.loads(match.group(1))
    return data


async def test_the_page_speaks_the_patients_language(client: Client, people: People) -> None:
    patient = await patient_speaking(client, people, "es", "lucia@example.org")
    link = await book(client, patient, people.doctor_a.id)
    response = await client.get(link.page, headers={"Accept-Language": "en-GB,en;q=0.9"})
    html = await response.text()
    assert '<html lang="es">' in html
    assert "Antes de su consulta" in html
    assert "Entrar a la sala de espera" in html
    data = page_messages(html)
    assert data["lang"] == "es"
    messages = data["messages"]
    assert isinstance(messages, dict)
    assert messages["Everything works. Your connection is good enough for video."] == (
        "Todo funciona. Su conexión es suficiente para una videollamada."
    )
    csrf = _DATA_CSRF.search(html).group(1)  # type: ignore[union-attr]
    response = await claim(client, link, csrf)
    assert (await response.json())["language"] == "es"


async def test_the_profile_language_wins_over_the_browser(client: Client, link: Link) -> None:
    response = await client.get(link.page, headers={"Accept-Language": "es-MX,es;q=0.9"})
    html = await response.text()
    assert '<html lang="en">' in html  # patient_1's record says English
    assert page_messages(html) == {"lang": "en", "messages": {}}


async def test_an_unoffered_profile_language_falls_back_to_the_browser(
    client: Client, people: People
) -> None:
    patient = await patient_speaking(client, people, "fr", "francoise@example.org")
    link = await book(client, patient, people.doctor_a.id)
    spanish = await (await client.get(link.page, headers={"Accept-Language": "es-MX"})).text()
    assert '<html lang="es">' in spanish
    english = await (await client.get(link.page, headers={"Accept-Language": "de"})).text()
    assert '<html lang="en">' in english


async def test_a_dead_link_is_explained_in_the_browsers_language(client: Client) -> None:
    response = await client.get("/v/" + "x" * 43, headers={"Accept-Language": "es-AR,es;q=0.8"})
    assert response.status == 404
    html = await response.text()
    assert '<html lang="es">' in html
    assert "Este enlace no es válido. Pida a la clínica que le envíe uno nuevo." in html


def test_every_refusal_reception_says_is_in_the_catalogue() -> None:
    source = (ROOT / "telemed" / "reception.py").read_text(encoding="utf-8")
    said = set()
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Raise)
            and isinstance(node.exc, ast.Call)
            and isinstance(node.exc.func, ast.Name)
            and node.exc.func.id == "LinkRefused"
        ):
            argument = node.exc.args[0]
            assert isinstance(argument, ast.Constant | ast.JoinedStr)
            assert isinstance(argument, ast.Constant), "a LinkRefused message must be constant"
            said.add(argument.value)
    assert said, "no LinkRefused found in reception.py"
    assert said <= set(REFUSALS), said - set(REFUSALS)


# compressed static files ------------------------------------------------------------------------
async def test_static_scripts_and_styles_are_served_compressed(client: Client) -> None:
    for path in ("/static/js/visit.js", "/static/js/rtc.js", "/static/css/visit.css"):
        plain = (ROOT / path.lstrip("/")).read_bytes()
        response = await client.get(
            path, headers={"Accept-Encoding": "gzip"}, auto_decompress=False
        )
        assert response.status == 200
        assert response.headers.get("Content-Encoding") == "gzip", path
        assert "Accept-Encoding" in response.headers.get("Vary", "")
        compressed = await response.read()
        assert len(compressed) < len(plain) / 2, (path, len(compressed), len(plain))
        response = await client.get(path, headers={"Accept-Encoding": "gzip"})
        assert await response.read() == plain
        response = await client.get(path, headers={"Accept-Encoding": "identity"})
        assert "Content-Encoding" not in response.headers
        assert await response.read() == plain


async def test_a_byte_range_of_a_static_file_is_not_compressed(client: Client) -> None:
    response = await client.get(
        "/static/js/visit.js", headers={"Accept-Encoding": "gzip", "Range": "bytes=0-9"}
    )
    assert response.status == 206
    assert "Content-Encoding" not in response.headers
    assert await response.read() == (ROOT / "static/js/visit.js").read_bytes()[:10]
