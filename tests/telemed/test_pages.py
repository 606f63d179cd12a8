"""The pages: the admin forms, labels for every field, nothing the CSP would block."""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser

import pytest
from aiohttp.test_utils import TestClient

from telemed.accounts import Role
from telemed.web.keys import STORE
from tests.conftest import PASSWORD, People, login, page_csrf

Client = TestClient  # type: ignore[type-arg]

FIELDS = ("input", "select", "textarea")
NOT_LABELLED = ("hidden", "submit", "button", "reset", "image")
EVENT_ATTRIBUTE_PREFIX = "on"


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    inside_label: bool


class PageParts(HTMLParser):
    """What the checks below need from a page: fields, labels, scripts and attributes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self.label_for: set[str] = set()
        self.inline_scripts = 0
        self._open_labels = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.elements.append(Element(tag, values, self._open_labels > 0))
        if tag == "label":
            self._open_labels += 1
            if values.get("for"):
                self.label_for.add(values["for"])
        if tag == "script" and "src" not in values:
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._open_labels = max(0, self._open_labels - 1)


def parse(html: str) -> PageParts:
    parts = PageParts()
    parts.feed(html)
    parts.close()
    return parts


async def admin_form(client: Client, path: str, form: dict[str, str]):  # type: ignore[no-untyped-def]
    token = await page_csrf(client, "/admin")
    return await client.post(path, data={**form, "csrf_token": token})


# the admin page -----------------------------------------------------------------------
async def test_admin_adds_a_user_through_the_form(client: Client, people: People) -> None:
    await login(client, people.admin.email)
    response = await admin_form(
        client,
        "/admin/users",
        {
            "role": "nurse",
            "name": "Nurse Nora",
            "email": "Nora@Example.org",
            "password": PASSWORD,
            "language": "en",
            "birth_date": "",
        },
    )
    assert response.status == 200  # after the redirect to /admin?done=user
    assert response.url.path == "/admin"
    html = await response.text()
    assert "User added." in html
    assert "nora@example.org" in html
    user = await client.app[STORE].find_user_by_email("nora@example.org")
    assert user is not None
    assert user.role is Role.NURSE
    assert user.name == "Nurse Nora"
    assert PASSWORD not in html


async def test_admin_form_error_names_the_field_and_keeps_the_input(
    client: Client, people: People
) -> None:
    await login(client, people.admin.email)
    typed_password = "typed-password-never-echoed"
    response = await admin_form(
        client,
        "/admin/users",
        {
            "role": "doctor",
            "name": "Carol Typed",
            "email": "not an address",
            "password": typed_password,
            "language": "en",
            "birth_date": "",
        },
    )
    assert response.status == 400
    html = await response.text()
    parts = parse(html)
    errors = [e for e in parts.elements if e.attrs.get("data-testid") == "admin-error"]
    assert errors, "no error shown"
    assert "email: is not an e-mail address" in html
    fields = {e.attrs.get("id"): e.attrs for e in parts.elements if e.tag == "input"}
    assert fields["name"].get("value") == "Carol Typed"
    assert fields["email"].get("value") == "not an address"
    assert fields["password"].get("value", "") == ""
    assert typed_password not in html
    assert "User added." not in html
    assert await client.app[STORE].find_user_by_email("not an address") is None


async def test_admin_manages_care_teams_through_the_form(client: Client, people: People) -> None:
    await login(client, people.admin.email)
    store = client.app[STORE]
    patient, nurse = people.patient_2, people.nurse_a
    assert nurse.id not in await store.care_team(patient.id)

    added = await admin_form(
        client,
        "/admin/care-teams",
        {"patient": patient.id, "clinician": nurse.id, "action": "add"},
    )
    assert added.status == 200
    assert "Care team updated." in await added.text()
    assert nurse.id in await store.care_team(patient.id)

    removed = await admin_form(
        client,
        "/admin/care-teams",
        {"patient": patient.id, "clinician": nurse.id, "action": "remove"},
    )
    assert removed.status == 200
    assert "Care team updated." in await removed.text()
    assert nurse.id not in await store.care_team(patient.id)
    assert people.doctor_b.id in await store.care_team(patient.id)  # the rest of the team stays


@pytest.mark.parametrize(
    ("form", "named"),
    [
        pytest.param({"patient": "", "clinician": "", "action": "add"}, "patient", id="nothing"),
        pytest.param({"patient": "P", "clinician": "", "action": "add"}, "clinician", id="half"),
    ],
)
async def test_care_team_form_names_what_is_missing(
    client: Client, people: People, form: dict[str, str], named: str
) -> None:
    await login(client, people.admin.email)
    form = {**form, "patient": people.patient_1.id if form["patient"] else ""}
    response = await admin_form(client, "/admin/care-teams", form)
    assert response.status == 400
    assert f"{named}: choose a" in await response.text()


async def test_a_doctor_cannot_add_users(client: Client, people: People) -> None:
    await login(client, people.doctor_a.email)
    token = await page_csrf(client, "/dashboard")
    response = await client.post(
        "/admin/users",
        data={
            "csrf_token": token,
            "role": "admin",
            "name": "Mallory",
            "email": "mallory@example.org",
            "password": PASSWORD,
        },
    )
    assert response.status == 403
    assert await client.app[STORE].find_user_by_email("mallory@example.org") is None
    assert (await client.get("/admin", allow_redirects=False)).status == 403


# markup -------------------------------------------------------------------------------
async def pages(client: Client, people: People) -> dict[str, str]:
    """The HTML of the pages with forms, each fetched as someone who may open it."""
    found = {"/login": await (await client.get("/login")).text()}
    await login(client, people.admin.email)
    found["/admin"] = await (await client.get("/admin")).text()
    found["/account/2fa"] = await (await client.get("/account/2fa")).text()
    found["404"] = await (await client.get("/no/such/page")).text()
    await login(client, people.doctor_a.email)
    found["/dashboard"] = await (await client.get("/dashboard")).text()
    for name, html in found.items():
        assert "<form" in html or name in ("404", "/dashboard"), name
    return found


async def test_every_field_has_a_label(client: Client, people: People) -> None:
    for name, html in (await pages(client, people)).items():
        parts = parse(html)
        for element in parts.elements:
            if element.tag not in FIELDS:
                continue
            if element.attrs.get("type", "text") in NOT_LABELLED:
                continue
            labelled = element.attrs.get("id", "") in parts.label_for or element.inside_label
            assert labelled, f"{name}: <{element.tag} name={element.attrs.get('name')!r}>"
        ids = {e.attrs["id"] for e in parts.elements if "id" in e.attrs}
        assert parts.label_for <= ids, f"{name}: a label names a missing field"


async def test_pages_have_nothing_the_csp_blocks(client: Client, people: People) -> None:
    for name, html in (await pages(client, people)).items():
        parts = parse(html)
        assert parts.inline_scripts == 0, name
        for element in parts.elements:
            assert "style" not in element.attrs, f"{name}: style= on <{element.tag}>"
            handlers = [a for a in element.attrs if a.startswith(EVENT_ATTRIBUTE_PREFIX)]
            assert not handlers, f"{name}: {handlers} on <{element.tag}>"
            href = element.attrs.get("href", "")
            assert not href.lower().startswith("javascript:"), name
        assert "<style" not in html, name


async def test_login_page_is_small_and_same_origin(client: Client) -> None:
    response = await client.get("/login")
    body = await response.read()
    assert len(body) < 10 * 1024
    parts = parse(body.decode())
    loaded = [
        e.attrs[attr]
        for e in parts.elements
        for attr in ("src", "href")
        if attr in e.attrs and (e.tag != "a")
    ]
    assert loaded, "the page loads nothing, not even its stylesheet"
    for url in loaded:
        same_origin = url.startswith("/") and not url.startswith("//")
        assert same_origin or url.startswith("data:"), url
    for url in (u for u in loaded if u.startswith("/static/")):
        asset = await client.get(url)
        assert asset.status == 200, url
        text = await asset.text()
        assert "@import" not in text, url
        assert "http://" not in text, url
        assert "https://" not in text, url
        assert "url(//" not in text, url
