"""Consultation records through the real app: write, edit, sign, addenda, history and
attachments; who may read and write (each refusal audited); break-glass; erasure."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient

from telemed.accounts import Role, User
from telemed.audit import Outcome
from telemed.clinic import OPERATOR
from telemed.settings import Settings
from telemed.web.keys import RECEPTION, STORE
from tests.conftest import FakeClock, People, login, make_settings, page_csrf

Client = TestClient  # type: ignore[type-arg]

LIMIT_KIB = 2048  # above the app's 1 MiB client_max_size, to show uploads stream past it
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
NOTE: dict[str, Any] = {
    "subjective": "Sore throat for three days.",
    "objective": "Temperature 38.1 C, red pharynx, no exudate.",
    "assessment": "Viral pharyngitis is most likely.",
    "plan": "Rest and drink plenty. Come back if not better in five days.",
    "diagnoses": [{"code": "j02.9", "display": "Acute pharyngitis, unspecified"}],
    "prescriptions": [
        {
            "medication": "Paracetamol",
            "dose": "500 mg",
            "route": "oral",
            "frequency": "every 6 hours when needed",
            "duration": "5 days",
            "instructions": "No more than 4 doses in 24 hours.",
        }
    ],
    "chat": [{"sender": "patient", "at": "2026-11-29T09:01:00Z", "text": "Hello doctor"}],
}
LANDING = {Role.PATIENT: "/me", Role.ADMIN: "/admin"}


def record_settings(tmp_path: Path, broker_port: int) -> Settings:
    """The shared settings with a 2 MiB attachment limit and the keys in tmp_path."""
    return make_settings(
        tmp_path,
        broker_port,
        TELEMED_RECORDS_ATTACHMENT_MAX_KIB=str(LIMIT_KIB),
        TELEMED_RECORDS_KEY_FILE=str(tmp_path / "keys" / "record-keys.json"),
    )


@pytest.fixture
def settings(tmp_path: Path, mosquitto: int) -> Settings:
    return record_settings(tmp_path, mosquitto)


async def sign_in(client: Client, user: User) -> dict[str, str]:
    """Sign in through the form; the headers a browser script sends with a change."""
    answer = await login(client, user.email)
    assert answer.status == 302, await answer.text()
    return {"X-CSRF-Token": await page_csrf(client, LANDING.get(user.role, "/account/2fa"))}


async def book(client: Client, patient: User, doctor: User) -> str:
    booking = await client.app[RECEPTION].book(
        OPERATOR, patient_id=patient.id, clinician_id=doctor.id
    )
    return booking.visit.id


async def answer(response: Any) -> tuple[int, Any]:
    return response.status, await response.json()


async def denials(client: Client, actor_id: str) -> int:
    return len(
        [
            r
            async for r in client.app[STORE].audit_records()
            if r.event.outcome is Outcome.DENIED and r.event.actor_id == actor_id
        ]
    )


async def refused(
    client: Client, who: User, method: str, path: str, status: int = 403, **kwargs: Any
) -> None:
    """The call is refused with `status`, and the refusal is in the audit log."""
    before = await denials(client, who.id)
    response = await client.request(method, path, **kwargs)
    assert response.status == status, (method, path, await response.text())
    assert await denials(client, who.id) == before + 1, (method, path)


def upload(content: bytes, content_type: str, name: str = "file.bin") -> FormData:
    """A file as a browser sends it (the name in UTF-8, not percent-encoded)."""
    form = FormData(quote_fields=False)
    form.add_field("file", io.BytesIO(content), filename=name, content_type=content_type)
    return form


async def write_and_sign(client: Client, headers: dict[str, str], visit_id: str) -> Any:
    saved = await client.post(f"/api/visits/{visit_id}/record", json=NOTE, headers=headers)
    assert saved.status == 201, await saved.text()
    version = (await saved.json())["version"]
    signed = await client.post(
        f"/api/visits/{visit_id}/record/sign", json={"version": version}, headers=headers
    )
    assert signed.status == 200, await signed.text()
    return await signed.json()


async def test_the_doctor_writes_edits_signs_and_adds_to_a_record(
    client: Client, people: People
) -> None:
    visit_id = await book(client, people.patient_1, people.doctor_a)
    record = f"/api/visits/{visit_id}/record"
    headers = await sign_in(client, people.doctor_a)

    empty = await client.get(record)
    status, body = await answer(empty)
    assert status == 200
    assert empty.headers["Cache-Control"] == "no-store"
    assert (body["version"], body["note"], body["signed"]) == (0, None, False)

    saved = await client.post(record, json=NOTE, headers=headers)
    status, body = await answer(saved)
    assert status == 201
    assert saved.headers["Cache-Control"] == "no-store"
    assert body["version"] == 1
    assert body["note"]["diagnoses"] == [
        {"code": "J02.9", "display": "Acute pharyngitis, unspecified"}
    ]
    assert body["note"]["prescriptions"][0]["dose"] == "500 mg"

    edited = {**NOTE, "plan": "Rest. Salt-water gargles.", "base_version": 1}
    status, body = await answer(await client.post(record, json=edited, headers=headers))
    assert (status, body["version"], body["note"]["plan"]) == (
        201,
        2,
        "Rest. Salt-water gargles.",
    )
    # an edit begun from version 1 would overwrite version 2 unseen
    status, body = await answer(await client.post(record, json=edited, headers=headers))
    assert status == 409
    assert "is at version 2, not 1" in body["error"]

    for wrong, expected in [
        ({**NOTE, "base_version": "2"}, "base_version: must be a whole number"),
        ({**NOTE, "base_version": True}, "base_version: must be a whole number"),
        ({**NOTE, "colour": "red"}, "colour: is not accepted here"),
        ({**NOTE, "diagnoses": [{"code": "flu", "display": "Flu"}]}, "diagnoses[0].code"),
        ({**NOTE, "attachments": ["nosuchfile"]}, "attachments: nosuchfile is not"),
    ]:
        status, body = await answer(await client.post(record, json=wrong, headers=headers))
        assert status == 400, wrong
        assert expected in body["error"], body
    for data, expected in [
        (b"{not json", "body: must be JSON"),
        (b"[1, 2]", "body: must be a JSON object"),
        (b'{"plan": "' + b"x" * (1024 * 1024) + b'"}', "body: is larger than 1024 KiB"),
    ]:
        sent = {**headers, "Content-Type": "application/json"}
        response = await client.post(record, data=io.BytesIO(data), headers=sent)
        status, body = await answer(response)
        assert (status, body["error"]) == (400, expected)

    sign = f"{record}/sign"
    status, body = await answer(await client.post(sign, json={"version": 1}, headers=headers))
    assert status == 409  # what the doctor read is what is signed
    status, body = await answer(await client.post(sign, json={"version": "2"}, headers=headers))
    assert (status, body["error"]) == (400, "version: must be a whole number")
    status, body = await answer(await client.post(sign, json={}, headers=headers))
    assert status == 400
    assert body["error"].startswith("version: is required")
    status, body = await answer(await client.post(sign, json={"version": 2}, headers=headers))
    assert status == 200
    assert (body["signed"], body["signed_version"], body["signed_by"]) == (
        True,
        2,
        people.doctor_a.id,
    )

    status, body = await answer(await client.post(record, json=NOTE, headers=headers))
    assert (status, body["error"]) == (400, "record: is signed: add an addendum instead")
    status, body = await answer(await client.post(sign, json={"version": 2}, headers=headers))
    assert status == 400

    addenda = f"{record}/addenda"
    status, body = await answer(await client.post(addenda, json={"text": " "}, headers=headers))
    assert (status, body["error"]) == (400, "text: is required")
    added = await client.post(addenda, json={"text": "Swab negative."}, headers=headers)
    status, body = await answer(added)
    assert status == 201
    assert [a["text"] for a in body["addenda"]] == ["Swab negative."]
    assert body["note"]["plan"] == "Rest. Salt-water gargles."  # the signed note stays

    history = await client.get(f"{record}/history")
    status, body = await answer(history)
    assert status == 200
    assert history.headers["Cache-Control"] == "no-store"
    assert [(v["version"], v["kind"]) for v in body["history"]] == [
        (1, "note"),
        (2, "note"),
        (3, "addendum"),
    ]
    assert body["history"][0]["note"]["plan"] == NOTE["plan"]  # every version kept
    actions = [
        r.event.action
        async for r in client.app[STORE].audit_records(patient_id=people.patient_1.id)
        if r.event.outcome is Outcome.SUCCESS
    ]
    for action in ("record.write", "record.sign", "record.addendum", "record.history"):
        assert action in actions


async def test_attachments_upload_download_and_refusals(client: Client, people: People) -> None:
    visit_id = await book(client, people.patient_1, people.doctor_a)
    record = f"/api/visits/{visit_id}/record"
    files = f"{record}/attachments"
    headers = await sign_in(client, people.doctor_a)
    store = client.app[STORE]
    assert (await client.post(record, json=NOTE, headers=headers)).status == 201

    sent = await client.post(
        files, data=upload(PDF, "application/pdf", "résultat labo.pdf"), headers=headers
    )
    status, pdf = await answer(sent)
    assert status == 201, pdf
    assert sent.headers["Cache-Control"] == "no-store"
    assert (pdf["name"], pdf["content_type"], pdf["size"]) == (
        "résultat labo.pdf",
        "application/pdf",
        len(PDF),
    )
    status, png = await answer(
        await client.post(files, data=upload(PNG, "image/png", "throat.png"), headers=headers)
    )
    assert status == 201, png
    # larger than the app's 1 MiB body limit, within the 2 MiB attachment limit
    big = PNG + bytes(1536 * 1024)
    status, large = await answer(
        await client.post(files, data=upload(big, "image/png", "big.png"), headers=headers)
    )
    assert (status, large["size"]) == (201, len(big))

    status, body = await answer(await client.get(record))
    assert body["version"] == 4  # each file came as a new version of the note
    assert {a["id"] for a in body["attachments"]} == {pdf["id"], png["id"], large["id"]}
    assert body["note"]["plan"] == NOTE["plan"]

    download = await client.get(f"/api/attachments/{pdf['id']}")
    assert download.status == 200
    assert await download.read() == PDF
    assert download.headers["Content-Type"] == "application/pdf"
    assert (
        download.headers["Content-Disposition"]
        == "attachment; filename*=UTF-8''r%C3%A9sultat%20labo.pdf"
    )
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert download.headers["Cache-Control"] == "no-store"
    assert await (await client.get(f"/api/attachments/{large['id']}")).read() == big

    stored = len(await store.list_attachments(visit_id))
    too_large = PNG + bytes(LIMIT_KIB * 1024)
    for form, expected in [
        (upload(b"hello", "text/plain", "a.txt"), "content_type: 'text/plain' is not one of"),
        (upload(PDF, "image/png", "fake.png"), "file: its content is not image/png"),
        (upload(PNG, "application/pdf", "fake.pdf"), "file: its content is not application/pdf"),
        (upload(too_large, "image/png", "huge.png"), f"file: is larger than {LIMIT_KIB} KiB"),
    ]:
        status, body = await answer(await client.post(files, data=form, headers=headers))
        assert status == 400, body
        assert body["error"].startswith(expected), body
    other = FormData(default_to_multipart=True)
    other.add_field("note", "no file here")
    status, body = await answer(await client.post(files, data=other, headers=headers))
    assert (status, body["error"]) == (400, "file: is missing: send one multipart part named file")
    status, body = await answer(await client.post(files, json={"file": "x"}, headers=headers))
    assert status == 400
    assert body["error"].startswith("body: must be multipart/form-data")
    # the token as a form field makes the CSRF check read the body as a form: refused
    with_field = upload(PNG, "image/png", "throat.png")
    with_field.add_field("csrf_token", headers["X-CSRF-Token"])
    status, body = await answer(await client.post(files, data=with_field))
    assert status == 400
    assert "X-CSRF-Token header" in body["error"]
    assert len(await store.list_attachments(visit_id)) == stored  # nothing kept
    assert (await (await client.get(record)).json())["version"] == 4

    # the note keeps the files it lists
    kept = {**NOTE, "attachments": [pdf["id"]], "base_version": 4}
    status, body = await answer(await client.post(record, json=kept, headers=headers))
    assert status == 201
    assert [a["id"] for a in body["attachments"]] == [pdf["id"]]
    status, body = await answer(
        await client.post(record, json={**NOTE, "attachments": "x"}, headers=headers)
    )
    assert (status, body["error"]) == (400, "attachments: must be a list of attachment ids")

    await write_and_sign(client, headers, visit_id)
    status, body = await answer(
        await client.post(files, data=upload(PNG, "image/png"), headers=headers)
    )
    assert (status, body["error"]) == (400, "record: is signed: attachments go on before signing")


async def test_the_care_team_reads_and_writes_others_are_refused_and_audited(
    client: Client, people: People
) -> None:
    visit_id = await book(client, people.patient_1, people.doctor_a)
    record = f"/api/visits/{visit_id}/record"
    headers = await sign_in(client, people.doctor_a)
    assert (await client.post(record, json=NOTE, headers=headers)).status == 201
    status, file = await answer(
        await client.post(f"{record}/attachments", data=upload(PNG, "image/png"), headers=headers)
    )
    assert status == 201

    # a doctor of another team: refused everywhere, each refusal audited
    outsider = people.doctor_b
    headers = await sign_in(client, outsider)
    patient = people.patient_1.id
    for method, path, kwargs in [
        ("GET", record, {}),
        ("GET", f"{record}/history", {}),
        ("POST", record, {"json": NOTE}),
        ("POST", f"{record}/sign", {"json": {"version": 2}}),
        ("POST", f"{record}/addenda", {"json": {"text": "x"}}),
        ("POST", f"{record}/attachments", {"data": upload(PNG, "image/png")}),
        ("GET", f"/api/attachments/{file['id']}", {}),
        ("GET", f"/api/patients/{patient}/records", {}),
        ("GET", f"/api/patients/{patient}/break-glass", {}),
        ("POST", f"/api/patients/{patient}/break-glass", {"json": {"reason": "x" * 20}}),
        (
            "POST",
            f"/api/patients/{patient}/erase",
            {"json": {"request": "GDPR-1", "confirm": patient}},
        ),
    ]:
        await refused(client, outsider, method, path, headers=headers, **kwargs)
    assert len(await client.app[STORE].list_attachments(visit_id)) == 1

    # a nurse of the team reads and writes, but only a doctor signs
    headers = await sign_in(client, people.nurse_a)
    status, body = await answer(await client.get(record))
    assert (status, body["version"]) == (200, 2)
    nursed = {**NOTE, "objective": "Pulse 88.", "base_version": 2}
    status, body = await answer(await client.post(record, json=nursed, headers=headers))
    assert (status, body["version"]) == (201, 3)
    assert (await client.get(f"{record}/history")).status == 200
    await refused(
        client, people.nurse_a, "POST", f"{record}/sign", json={"version": 3}, headers=headers
    )

    # the patient: a draft is not found for them; writing is refused
    headers = await sign_in(client, people.patient_1)
    status, body = await answer(await client.get(record))
    assert status == 404
    assert "no signed record yet" in body["error"]
    await refused(client, people.patient_1, "POST", record, json=NOTE, headers=headers)
    # the patient sees the files of their signed records only
    assert (await client.get(f"/api/attachments/{file['id']}")).status == 404

    headers = await sign_in(client, people.doctor_a)
    await write_and_sign(client, headers, visit_id)
    assert (await client.post(f"{record}/addenda", json={"text": "Seen."}, headers=headers)).ok
    draft_visit = await book(client, people.patient_1, people.doctor_a)
    draft = {**NOTE, "plan": "Draft plan, not for the patient yet."}
    assert (
        await client.post(f"/api/visits/{draft_visit}/record", json=draft, headers=headers)
    ).status == 201
    other_visit = await book(client, people.patient_2, people.doctor_b)

    headers = await sign_in(client, people.patient_1)
    status, body = await answer(await client.get(record))
    assert status == 200
    assert (body["signed"], body["note"]["plan"]) == (True, NOTE["plan"])
    assert [a["text"] for a in body["addenda"]] == ["Seen."]
    status, listed = await answer(await client.get(f"/api/patients/{patient}/records"))
    assert status == 200
    assert [r["id"] for r in listed["records"]] == [visit_id]  # not the draft
    assert "Draft plan" not in json.dumps(listed)
    await refused(client, people.patient_1, "GET", f"{record}/history")
    await refused(client, people.patient_1, "GET", f"/api/visits/{other_visit}/record")
    await refused(client, people.patient_1, "GET", f"/api/patients/{people.patient_2.id}/records")
    await refused(
        client, people.patient_1, "POST", f"{record}/addenda", json={"text": "x"}, headers=headers
    )

    # signed out: asked to sign in
    client.session.cookie_jar.clear()
    for path in (record, f"{record}/history", f"/api/patients/{patient}/records"):
        response = await client.get(path)
        assert response.status == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.post(record, json=NOTE)).status in (401, 403)


async def test_an_admin_reads_only_through_break_glass_which_the_care_team_sees(
    client: Client, people: People, clock: FakeClock
) -> None:
    visit_id = await book(client, people.patient_1, people.doctor_a)
    record = f"/api/visits/{visit_id}/record"
    patient = people.patient_1.id
    headers = await sign_in(client, people.doctor_a)
    await write_and_sign(client, headers, visit_id)

    admin = people.admin
    headers = await sign_in(client, admin)
    await refused(client, admin, "GET", record)
    await refused(client, admin, "GET", f"{record}/history")
    await refused(client, admin, "GET", f"/api/patients/{patient}/records")
    glass = f"/api/patients/{patient}/break-glass"
    status, body = await answer(await client.post(glass, json={"reason": "why"}, headers=headers))
    assert (status, body["error"]) == (400, "reason: state why (at least 10 characters)")
    status, body = await answer(await client.post(glass, json={"reason": 42}, headers=headers))
    assert (status, body["error"]) == (400, "reason: must be a string")
    opened = await client.post(
        glass, json={"reason": "Patient unconscious in A&E, GP unreachable"}, headers=headers
    )
    status, grant = await answer(opened)
    assert status == 201
    assert (grant["admin_id"], grant["active"]) == (admin.id, True)

    status, body = await answer(await client.get(record))
    assert (status, body["note"]["plan"]) == (200, NOTE["plan"])
    status, body = await answer(await client.get(f"{record}/history"))
    assert (status, len(body["history"])) == (200, 1)
    assert (await client.get(f"/api/patients/{patient}/records")).status == 200
    # break-glass reads; it never writes
    await refused(client, admin, "POST", f"{record}/addenda", json={"text": "x"}, headers=headers)
    reads = [
        r.event.detail
        async for r in client.app[STORE].audit_records(patient_id=patient)
        if r.event.actor_id == admin.id and r.event.action == "record.read"
    ]
    assert reads[-1] == f"break-glass {grant['id']}"

    headers = await sign_in(client, people.doctor_a)  # the care team sees it
    status, body = await answer(await client.get(glass))
    assert status == 200
    assert [(g["id"], g["reason"], g["active"]) for g in body["break_glass"]] == [
        (grant["id"], "Patient unconscious in A&E, GP unreachable", True)
    ]
    await refused(
        client, people.doctor_a, "POST", glass, json={"reason": "x" * 20}, headers=headers
    )
    headers = await sign_in(client, people.nurse_a)
    assert (await client.get(glass)).status == 200
    headers = await sign_in(client, people.patient_1)
    await refused(client, people.patient_1, "GET", glass)

    clock.advance(minutes=61)  # the grant lasts 60 minutes
    headers = await sign_in(client, admin)
    await refused(client, admin, "GET", record)
    await refused(client, admin, "GET", f"{record}/history")
    status, body = await answer(await client.get(glass))
    assert (status, body["break_glass"][0]["active"]) == (200, False)


async def test_erasure_leaves_the_records_unreadable_for_everyone(
    client: Client, people: People
) -> None:
    visit_id = await book(client, people.patient_1, people.doctor_a)
    record = f"/api/visits/{visit_id}/record"
    patient = people.patient_1.id
    headers = await sign_in(client, people.doctor_a)
    assert (await client.post(record, json=NOTE, headers=headers)).status == 201
    status, file = await answer(
        await client.post(
            f"{record}/attachments", data=upload(PDF, "application/pdf"), headers=headers
        )
    )
    assert status == 201
    await write_and_sign(client, headers, visit_id)
    erase = f"/api/patients/{patient}/erase"
    await refused(
        client,
        people.doctor_a,
        "POST",
        erase,
        json={"request": "GDPR-2026-17", "confirm": patient},
        headers=headers,
    )

    headers = await sign_in(client, people.admin)
    for body, expected in [
        ({"request": "GDPR-2026-17", "confirm": people.patient_2.id}, "confirm: must repeat"),
        ({"request": "GDPR-2026-17"}, "confirm: must repeat"),
        ({"request": "x", "confirm": patient}, "request: name the erasure request"),
        ({"request": "GDPR-2026-17", "confirm": patient, "why": "x"}, "why: is not accepted"),
    ]:
        status, answered = await answer(await client.post(erase, json=body, headers=headers))
        assert status == 400, body
        assert answered["error"].startswith(expected), answered
    assert (await client.get(record)).status == 403  # nothing was erased
    store = client.app[STORE]
    keys_before = sum((await store.count_data_keys()).values())  # this patient's only
    assert keys_before > 0
    erased = await client.post(
        erase, json={"request": "GDPR-2026-17", "confirm": patient}, headers=headers
    )
    status, body = await answer(erased)
    assert status == 200
    assert body["patient_id"] == patient
    assert body["data_keys_destroyed"] == keys_before
    assert await store.count_data_keys() == {}

    headers = await sign_in(client, people.doctor_a)
    for path in (
        record,
        f"{record}/history",
        f"/api/attachments/{file['id']}",
        f"/api/patients/{patient}/records",
    ):
        response = await client.get(path)
        assert response.status == 410, path
        assert "erased" in (await response.json())["error"]
    headers = await sign_in(client, people.patient_1)
    assert (await client.get(record)).status == 410
    assert (await client.get(f"/visits/{visit_id}/summary.pdf")).status == 410
    erasures = [
        r.event
        async for r in client.app[STORE].audit_records(patient_id=patient)
        if r.event.action == "patient.erase" and r.event.outcome is Outcome.SUCCESS
    ]
    assert [e.actor_id for e in erasures] == [people.admin.id]


async def test_a_session_post_without_its_csrf_header_is_told_what_to_send(
    client: Client, people: People
) -> None:
    visit_id = await book(client, people.patient_1, people.doctor_a)
    await sign_in(client, people.doctor_a)
    refused = await client.post(f"/api/visits/{visit_id}/record", json=NOTE)
    assert refused.status == 403
    error = (await refused.json())["error"]
    assert "X-CSRF-Token" in error
    assert "bearer token" in error
