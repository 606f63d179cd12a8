"""The pages: the clinician dashboard, the patient's own page, and the admin page."""

from __future__ import annotations

from aiohttp import web

from telemed.accounts import Role
from telemed.backup_schedule import backup_status
from telemed.errors import ValidationError
from telemed.monitoring import ACTIVE_STATES
from telemed.records_office import RecordUnreadable
from telemed.web.auth import landing, render, require
from telemed.web.keys import (
    CLINIC,
    CLOCK,
    ENROLLMENT,
    MONITOR,
    RECEPTION,
    RECORDS,
    SETTINGS,
    STORE,
    THROTTLE_POLICY,
)
from telemed.web.middleware import USER, actor
from telemed.web.monitoring_pages import CONSCIOUSNESS
from telemed.web.vitals_view import COLUMNS, DASHBOARD

routes = web.RouteTableDef()
ADMIN_GRANTS_SHOWN = 20  # the newest break-glass grants listed on the admin page


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    user = request.get(USER)
    raise web.HTTPFound(landing(user) if user else "/login")


@routes.get("/dashboard")
async def dashboard(request: web.Request) -> web.Response:
    await require(request, Role.DOCTOR, Role.NURSE)
    clinic, store, who = request.app[CLINIC], request.app[STORE], actor(request)
    monitor = request.app[MONITOR]
    patients = await clinic.patients_for(who)
    rows = []
    for p in patients:
        await clinic.clinical_access(who, p.id, "observation.read")
        devices = [d for d in await store.list_devices(p.id) if d.active]
        presence = await store.list_device_presence([d.id for d in devices])
        rows.append(
            {
                "patient": p,
                "latest": {o.code: o for o in await store.latest_observations(p.id)},
                "news2": await monitor.news2(who, p.id),
                "alerts": await monitor.alerts(who, p.id, states=ACTIVE_STATES),
                "devices": len(devices),
                "online": sum(1 for x in presence if x.online),
            }
        )
    return render(
        request,
        "dashboard.html",
        {"patients": patients, "rows": rows, "columns": DASHBOARD},
    )


@routes.get("/patients/{patient_id}")
async def patient_page(request: web.Request) -> web.Response:
    """Demographics for the care team and admins; vitals and devices for the care team."""
    user = await require(request, Role.DOCTOR, Role.NURSE, Role.ADMIN)
    who = actor(request)
    patient = await request.app[CLINIC].read_patient(who, request.match_info["patient_id"])
    context: dict[str, object] = {"patient": patient, "clinical": False, "columns": COLUMNS}
    if user.role.is_clinician:
        await request.app[CLINIC].clinical_access(who, patient.id, "observation.read")
        latest = await request.app[STORE].latest_observations(patient.id)
        monitor = request.app[MONITOR]
        context.update(
            clinical=True,
            latest={o.code: o for o in latest},
            devices=await request.app[ENROLLMENT].list(who, patient.id),
            alerts=await monitor.alerts(who, patient.id, states=ACTIVE_STATES),
            news2=await monitor.news2(who, patient.id),
            plan=await monitor.plan(who, patient.id),
            consciousness=CONSCIOUSNESS,
        )
    # break-glass: the care team (and the admins) see who opened the records, and why
    context["break_glass"] = await _break_glass_rows(request, patient.id)
    return render(request, "patient.html", context)


async def _break_glass_rows(request: web.Request, patient_id: str) -> list[dict[str, object]]:
    grants = await request.app[RECORDS].break_glass_grants(actor(request), patient_id)
    now = request.app[CLOCK]()
    store = request.app[STORE]
    rows: list[dict[str, object]] = []
    for grant in grants:
        admin = await store.get_user(grant.admin_id)
        rows.append(
            {
                "grant": grant,
                "admin": admin.name if admin is not None else grant.admin_id,
                "active": grant.active(now),
            }
        )
    return rows


@routes.get("/me")
async def my_page(request: web.Request) -> web.Response:
    user = await require(request, Role.PATIENT)
    patient = await request.app[CLINIC].read_patient(actor(request), user.id)
    # the patient's signed records, newest first, each with its summary (page and PDF)
    erased = False
    summaries: list[dict[str, object]] = []
    try:
        charts = await request.app[RECORDS].charts_of_patient(actor(request), user.id)
    except RecordUnreadable as exc:
        if not exc.erased:
            raise  # a key or the store is wrong: the operator's problem, said as such
        erased, charts = True, []
    store = request.app[STORE]
    for chart in reversed(charts):
        signed = chart.signed_note
        doctor = await store.get_user(chart.header.signed_by)
        summaries.append(
            {
                "visit_id": chart.header.id,
                "signed_at": chart.header.signed_at,
                "doctor": doctor.name if doctor is not None else "",
                "diagnoses": [d.display for d in signed.note.diagnoses]
                if signed is not None and signed.note is not None
                else [],
            }
        )
    return render(
        request,
        "me.html",
        {
            "patient": patient,
            "checked_in": request.query.get("checked_in") == "1",
            "summaries": summaries,
            "erased": erased,
        },
    )


async def _admin_context(request: web.Request) -> dict[str, object]:
    clinic = request.app[CLINIC]
    who = actor(request)
    users = await clinic.list_users(who)
    patients = [u for u in users if u.role is Role.PATIENT]
    clinicians = [u for u in users if u.role.is_clinician]
    names = {u.id: u.name for u in users}
    teams = []
    for patient in patients:
        members = await clinic.store.care_team(patient.id)
        teams.append((patient, sorted((names.get(m, m), m) for m in members)))
    default = request.app[SETTINGS].security.require_2fa_for_clinicians
    policy = request.app[THROTTLE_POLICY].account
    locked = {u.id for u in users if await clinic.is_locked_out(u, policy)}
    office, now = request.app[RECORDS], request.app[CLOCK]()
    grants = [g for p in patients for g in await office.break_glass_grants(who, p.id)]
    grants.sort(key=lambda g: g.opened_at, reverse=True)
    return {
        "break_glass": [
            {
                "grant": g,
                "patient": names.get(g.patient_id, g.patient_id),
                "admin": names.get(g.admin_id, g.admin_id),
                "active": g.active(now),
            }
            for g in grants[:ADMIN_GRANTS_SHOWN]
        ],
        "break_glass_minutes": int(office.policy.break_glass.total_seconds() // 60),
        "users": users,
        "locked": locked,
        "clinicians": clinicians,
        "patients": patients,
        "teams": teams,
        "roles": [r.value for r in Role],
        "require_2fa": await clinic.require_2fa(default),
        "waiting_message": await request.app[RECEPTION].waiting_message(),
        "backup": await backup_status(clinic.store),
        "backup_hours": request.app[SETTINGS].backup.interval_hours,
        "error": "",
        "notice": "",
        "form": {},
    }


@routes.get("/admin")
async def admin_page(request: web.Request) -> web.Response:
    await require(request, Role.ADMIN)
    context = await _admin_context(request)
    context["notice"] = {
        "deactivate": "User deactivated: their sessions and tokens stopped working.",
        "reactivate": "User reactivated.",
        "set_password": "Password set; the user's sessions were ended.",
        "reset_2fa": "Two-factor sign-in reset: the user enrols again at the next sign-in.",
        "unlock": "Sign-in unlocked for that user.",
        "user": "User added.",
        "team": "Care team updated.",
        "settings": "Settings saved.",
        "waiting_message": "Waiting-room message saved.",
        "break_glass": "Emergency access opened. It is audited and shown to the patient's "
        "care team; it ends by itself.",
        "erased": "The patient's data was erased: their records and attachments can no "
        "longer be opened, by anyone.",
    }.get(request.query.get("done", ""), "")
    return render(request, "admin.html", context)


async def _admin_error(
    request: web.Request, exc: ValidationError, form: dict[str, str]
) -> web.Response:
    context = await _admin_context(request)
    context["error"] = str(exc)
    context["form"] = form
    return render(request, "admin.html", context, status=400)


@routes.post("/admin/users")
async def admin_add_user(request: web.Request) -> web.Response:
    await require(request, Role.ADMIN)
    form = {k: str(v) for k, v in (await request.post()).items() if k != "csrf_token"}
    try:
        await request.app[CLINIC].add_user(
            actor(request),
            role=form.get("role", ""),
            email=form.get("email", ""),
            name=form.get("name", ""),
            password=_staff_password(form),
            language=form.get("language", "en"),
            birth_date=form.get("birth_date", ""),
        )
    except ValidationError as exc:
        form.pop("password", None)
        return await _admin_error(request, exc, form)
    raise web.HTTPSeeOther("/admin?done=user")


def _staff_password(form: dict[str, str]) -> str | None:
    """Staff sign in with a password; a patient may have none (they join visits by link)."""
    password = form.get("password", "")
    if not password and form.get("role") != "patient":
        raise ValidationError("password", "is required for staff accounts")
    return password or None


@routes.post("/admin/care-teams")
async def admin_care_team(request: web.Request) -> web.Response:
    await require(request, Role.ADMIN)
    form = {k: str(v) for k, v in (await request.post()).items() if k != "csrf_token"}
    clinic = request.app[CLINIC]
    patient_id, clinician_id = form.get("patient", ""), form.get("clinician", "")
    try:
        if not patient_id:
            raise ValidationError("patient", "choose a patient")
        if not clinician_id:
            raise ValidationError("clinician", "choose a clinician")
        if form.get("action") == "remove":
            await clinic.remove_care_team_member(actor(request), patient_id, clinician_id)
        else:
            await clinic.add_care_team_member(actor(request), patient_id, clinician_id)
    except ValidationError as exc:
        return await _admin_error(request, exc, form)
    raise web.HTTPSeeOther("/admin?done=team")


@routes.post("/admin/users/{user_id}")
async def admin_change_user(request: web.Request) -> web.Response:
    """One user's row: deactivate, reactivate, set a password, reset two-factor."""
    await require(request, Role.ADMIN)
    form = {k: str(v) for k, v in (await request.post()).items() if k != "csrf_token"}
    clinic, who, user_id = request.app[CLINIC], actor(request), request.match_info["user_id"]
    action = form.get("action", "")
    try:
        if action == "deactivate":
            await clinic.set_user_active(who, user_id, False)
        elif action == "reactivate":
            await clinic.set_user_active(who, user_id, True)
        elif action == "reset_2fa":
            await clinic.reset_two_factor(who, user_id)
        elif action == "unlock":
            await clinic.unlock(who, user_id)
        else:
            raise ValidationError("action", "choose deactivate, reactivate, reset_2fa or unlock")
    except ValidationError as exc:
        return await _admin_error(request, exc, {})
    raise web.HTTPSeeOther("/admin?done=" + action)


@routes.post("/admin/passwords")
async def admin_set_password(request: web.Request) -> web.Response:
    await require(request, Role.ADMIN)
    form = await request.post()
    user_id, password = str(form.get("user_id", "")), str(form.get("password", ""))
    try:
        if not user_id:
            raise ValidationError("user", "choose a user")
        await request.app[CLINIC].set_password(actor(request), user_id, password)
    except ValidationError as exc:
        return await _admin_error(request, exc, {})
    raise web.HTTPSeeOther("/admin?done=set_password")


@routes.post("/admin/break-glass")
async def admin_break_glass(request: web.Request) -> web.Response:
    """Emergency read access to one patient's records: a stated reason, for a while."""
    await require(request, Role.ADMIN)
    form = {k: str(v) for k, v in (await request.post()).items() if k != "csrf_token"}
    patient_id = form.get("patient", "")
    try:
        if not patient_id:
            raise ValidationError("patient", "choose a patient")
        await request.app[RECORDS].break_glass(actor(request), patient_id, form.get("reason", ""))
    except ValidationError as exc:
        return await _admin_error(request, exc, form)
    raise web.HTTPSeeOther("/admin?done=break_glass")


@routes.post("/admin/erase")
async def admin_erase(request: web.Request) -> web.Response:
    """Erase a patient's records (crypto-shredding), on a valid erasure request, once the
    admin has typed the patient's id."""
    await require(request, Role.ADMIN)
    form = {k: str(v) for k, v in (await request.post()).items() if k != "csrf_token"}
    patient_id = form.get("patient", "")
    try:
        if not patient_id:
            raise ValidationError("patient", "choose a patient")
        if form.get("confirm", "").strip() != patient_id:
            raise ValidationError(
                "confirm", "type the chosen patient's id exactly, to confirm the erasure"
            )
        office = request.app[RECORDS]
        await office.erase_patient(actor(request), patient_id, form.get("request", ""))
    except ValidationError as exc:
        form.pop("confirm", None)
        return await _admin_error(request, exc, form)
    raise web.HTTPSeeOther("/admin?done=erased")


@routes.post("/admin/settings")
async def admin_settings(request: web.Request) -> web.Response:
    await require(request, Role.ADMIN)
    form = await request.post()
    await request.app[CLINIC].set_require_2fa(actor(request), form.get("require_2fa") == "on")
    raise web.HTTPSeeOther("/admin?done=settings")
