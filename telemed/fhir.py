"""FHIR R4 shapes of the server's data, and the searches that read them.

Patient, AuditEvent, Observation (vital signs), Device, Encounter (a video visit), the
consultation record as Composition, Condition and MedicationRequest, Bundle,
CapabilityStatement; the parameters of `GET /fhir/Observation` and `GET /fhir/Device`,
the paged walk over the store that answers an Observation search, and the access rule
of an Encounter search.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import html
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from telemed import __version__
from telemed.accounts import Patient, may_see_patient
from telemed.audit import AuditRecord, Outcome
from telemed.clinic import Actor, Clinic
from telemed.clock import iso
from telemed.errors import Forbidden, ValidationError
from telemed.monitoring import Device, Observation
from telemed.records import Chart, Note, Prescription, Version
from telemed.store import Store
from telemed.visits import Visit, VisitState

FHIR_VERSION = "4.0.1"
MEDIA_TYPE = "application/fhir+json"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

BP_PANEL = "85354-9"
SYSTOLIC = "8480-6"
DIASTOLIC = "8462-4"

# LOINC's own display names (the long common names the FHIR R4 vital-signs profile and
# its examples use) for the codes the wearables report; see /work/shared/CLINICAL.md.
LOINC_DISPLAY: Mapping[str, str] = {
    "8867-4": "Heart rate",
    "2708-6": "Oxygen saturation in Arterial blood",
    "9279-1": "Respiratory rate",
    "8310-5": "Body temperature",
    BP_PANEL: "Blood pressure panel with all children optional",
    SYSTOLIC: "Systolic blood pressure",
    DIASTOLIC: "Diastolic blood pressure",
    "29463-7": "Body weight",
    "41653-7": "Glucose [Mass/volume] in Capillary blood by Glucometer",
}

# Observation.category: every code is a vital sign (R4 vital-signs value set) except
# capillary glucose, which the profile does not list: a glucometer reading is a
# point-of-care laboratory result.
_CATEGORY: Mapping[str, tuple[str, str]] = {"41653-7": ("laboratory", "Laboratory")}
_VITAL_SIGNS = ("vital-signs", "Vital Signs")

# How a person reads the canonical UCUM units (Quantity.unit); Quantity.code is UCUM's.
_UNIT_TEXT: Mapping[str, str] = {"mm[Hg]": "mmHg", "Cel": "°C"}

# R4 AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure
_OUTCOME = {Outcome.SUCCESS: "0", Outcome.FAILURE: "4", Outcome.DENIED: "4"}
# R4 AuditEvent.action: C create, R read, U update, D delete, E execute
_ACTION_VERBS = {
    "create": "C",
    "add": "C",
    "read": "R",
    "list": "R",
    "search": "R",
    "update": "U",
    "revoke": "U",
    "remove": "D",
    "delete": "D",
}

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
XHTML = "http://www.w3.org/1999/xhtml"
EVERYTHING = "http://hl7.org/fhir/OperationDefinition/Encounter-everything"
CONSULT_NOTE = "11488-4"

# R4 Encounter.status for each visit state. The waiting room is "arrived" (R4: "the
# patient is present for the encounter, however is not currently meeting with a
# practitioner"). R4 Encounter has no no-show status (only Appointment has "noshow"); a
# missed visit is "cancelled", which R4 defines as "the Encounter has ended before it
# has begun" -- what a no-show is.
ENCOUNTER_STATUS: Mapping[VisitState, str] = {
    VisitState.SCHEDULED: "planned",
    VisitState.WAITING: "arrived",
    VisitState.IN_CALL: "in-progress",
    VisitState.ENDED: "finished",
    VisitState.CANCELLED: "cancelled",
    VisitState.NO_SHOW: "cancelled",
}
assert set(ENCOUNTER_STATUS) == set(VisitState)

# The SOAP parts of a note as Composition sections: the LOINC section codes of the FHIR
# doc-section-codes value set (those C-CDA uses), with LOINC's display names.
SOAP_SECTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("subjective", "Subjective", "61150-9", "Subjective Narrative"),
    ("objective", "Objective", "61149-1", "Objective Narrative"),
    ("assessment", "Assessment", "51848-0", "Evaluation note"),
    ("plan", "Plan", "18776-5", "Plan of care note"),
)
# FHIR strings hold no control characters but tab, CR and LF (and XHTML none at all)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


def patient(p: Patient, base_url: str) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": p.id,
        "meta": {"lastUpdated": iso(p.created_at)},
        "active": True,
        "name": [{"use": "official", "text": p.name}],
        "communication": [
            {
                "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": p.language}]},
                "preferred": True,
            }
        ],
    }
    if p.birth_date:
        resource["birthDate"] = p.birth_date.isoformat()
    return resource


def audit_event(record: AuditRecord, base_url: str) -> dict[str, Any]:
    e = record.event
    verb = e.action.rsplit(".", 1)[-1]
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(record.seq),
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [{"system": f"{base_url}/fhir/CodeSystem/telemed-actions", "code": e.action}],
        "action": _ACTION_VERBS.get(verb, "E"),
        "recorded": iso(e.at),
        "outcome": _OUTCOME[e.outcome],
        "agent": [
            {
                "type": {"text": e.actor_role},
                "who": {"reference": f"Practitioner/{e.actor_id}"}
                if e.actor_role in ("doctor", "nurse")
                else {"display": f"{e.actor_role} {e.actor_id}"},
                "requestor": True,
                "network": {"address": e.source, "type": "2"},
            }
        ],
        "source": {"observer": {"display": f"telemed {__version__} at {base_url}"}},
        "entity": [],
        "extension": [
            {
                "url": f"{base_url}/fhir/StructureDefinition/audit-chain",
                "extension": [
                    {"url": "seq", "valueInteger": record.seq},
                    {"url": "hash", "valueString": record.hash},
                    {"url": "prevHash", "valueString": record.prev_hash},
                ],
            }
        ],
    }
    if e.outcome is not Outcome.SUCCESS or e.detail:
        resource["outcomeDesc"] = f"{e.outcome.value}: {e.detail}".rstrip(": ")
    if e.patient_id:
        resource["entity"].append(
            {
                "what": {"reference": f"Patient/{e.patient_id}"},
                "role": {"code": "1", "display": "Patient"},
            }
        )
    if e.entity and e.entity != f"Patient/{e.patient_id}":
        resource["entity"].append(
            {"what": {"reference": e.entity}} if "/" in e.entity else {"name": e.entity}
        )
    if not resource["entity"]:
        del resource["entity"]
    return resource


@dataclass(frozen=True, slots=True)
class VitalSign:
    """One FHIR Observation made of stored observations of one device at one instant.

    A systolic and a diastolic taken together are one blood pressure panel (code
    85354-9, one component each); every other observation stands alone.
    """

    code: str  # LOINC: the panel's, or the single observation's
    parts: tuple[Observation, ...]  # the single observation, or (systolic, diastolic)

    @property
    def taken_at(self) -> datetime:
        return self.parts[0].taken_at

    @property
    def device_id(self) -> str:
        return self.parts[0].device_id

    @property
    def patient_id(self) -> str:
        return self.parts[0].patient_id

    @property
    def key(self) -> tuple[datetime, str, str]:
        """Unique per patient, and the order of a search's results: time, device, code."""
        return (self.taken_at, self.device_id, self.code)

    @property
    def id(self) -> str:
        return observation_id(self.device_id, self.code, self.taken_at)


def observation_id(device_id: str, code: str, taken_at: datetime) -> str:
    """A stable resource id from the reading's own key (device, code, time).

    Hex, because a FHIR id allows only letters, digits, "-" and "." (no "_" of
    base64url); 128 bits of SHA-256, so no two readings share one.
    """
    key = f"{device_id}\n{code}\n{_ms(taken_at)}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def vital_signs(observations: Iterable[Observation]) -> list[VitalSign]:
    """FHIR's view of stored observations, ordered by `VitalSign.key`.

    Give every observation of a (device, time) together, or a panel may be missed.
    """
    signs: list[VitalSign] = []
    ordered = sorted(observations, key=lambda o: (o.taken_at, o.device_id, o.code))
    for _, group in itertools.groupby(ordered, key=lambda o: (o.taken_at, o.device_id)):
        by_code = {o.code: o for o in group}
        systolic, diastolic = by_code.get(SYSTOLIC), by_code.get(DIASTOLIC)
        if systolic is not None and diastolic is not None:
            signs.append(VitalSign(BP_PANEL, (systolic, diastolic)))
            del by_code[SYSTOLIC], by_code[DIASTOLIC]
        signs.extend(VitalSign(code, (o,)) for code, o in by_code.items())
    signs.sort(key=lambda s: s.key)
    return signs


def observation(sign: VitalSign, base_url: str, texts: Mapping[str, str]) -> dict[str, Any]:
    """The R4 Observation for `sign`; `texts` gives each code the project's plain name."""
    category, category_display = _CATEGORY.get(sign.code, _VITAL_SIGNS)
    updated = iso(max(o.received_at for o in sign.parts))
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": sign.id,
        "meta": {"lastUpdated": updated},
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": OBSERVATION_CATEGORY,
                        "code": category,
                        "display": category_display,
                    }
                ],
                "text": category_display,
            }
        ],
        "code": _concept(sign.code, texts),
        "subject": {"reference": f"Patient/{sign.patient_id}"},
        "effectiveDateTime": iso(sign.taken_at),
        "issued": updated,
        "device": {"reference": f"Device/{sign.device_id}"},
    }
    if sign.code == BP_PANEL:
        resource["component"] = [
            {"code": _concept(o.code, texts), "valueQuantity": _quantity(o)} for o in sign.parts
        ]
    else:
        resource["valueQuantity"] = _quantity(sign.parts[0])
    return resource


def _concept(code: str, texts: Mapping[str, str]) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": LOINC, "code": code}
    if code in LOINC_DISPLAY:
        coding["display"] = LOINC_DISPLAY[code]
    concept: dict[str, Any] = {"coding": [coding]}
    text = texts.get(code) or LOINC_DISPLAY.get(code)
    if text:
        concept["text"] = text
    return concept


def _quantity(o: Observation) -> dict[str, Any]:
    value: float | int = int(o.value) if o.value.is_integer() else o.value
    return {
        "value": value,
        "unit": _UNIT_TEXT.get(o.unit, o.unit),
        "system": UCUM,
        "code": o.unit,
    }


def device(d: Device, base_url: str) -> dict[str, Any]:
    """An enrolled wearable; inactive once revoked."""
    return {
        "resourceType": "Device",
        "id": d.id,
        "meta": {"lastUpdated": iso(d.revoked_at or d.created_at)},
        "identifier": [{"system": f"{base_url}/fhir/sid/device-id", "value": d.id}],
        "status": "active" if d.active else "inactive",
        "type": {"text": d.kind},
        "patient": {"reference": f"Patient/{d.patient_id}"},
    }


# Encounters and consultation records ---------------------------------------------------
def encounter(visit: Visit, base_url: str) -> dict[str, Any]:
    """A video visit: who, when, and where it stands. Administrative only: no reason,
    diagnosis or note (those are the record's, read through the records office)."""
    history = visit.transitions
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": visit.id,
        "meta": {"lastUpdated": iso(history[-1].at if history else visit.created_at)},
        "identifier": [{"system": f"{base_url}/fhir/sid/visit-id", "value": visit.id}],
        "status": ENCOUNTER_STATUS[visit.state],
        "class": {"system": ACT_CODE, "code": "VR", "display": "virtual"},
        "subject": {"reference": f"Patient/{visit.patient_id}"},
        "participant": [
            {
                "type": [
                    {
                        "coding": [
                            {"system": PARTICIPATION_TYPE, "code": "ATND", "display": "attender"}
                        ]
                    }
                ],
                "individual": {"reference": f"Practitioner/{visit.clinician_id}"},
            }
        ],
    }
    if history:
        resource["statusHistory"] = [
            {
                "status": ENCOUNTER_STATUS[t.state],
                "period": {
                    "start": iso(t.at),
                    **({"end": iso(history[n + 1].at)} if n + 1 < len(history) else {}),
                },
            }
            for n, t in enumerate(history)
        ]
    period = _encounter_period(visit)
    if period:
        resource["period"] = period
    return resource


def _encounter_period(visit: Visit) -> dict[str, str]:
    """When the call was: from admission to the end. Before a call, the planned start;
    a visit that became final without a call (cancelled, missed, ended from the waiting
    room) has no period, as it never took place."""
    if visit.admitted_at is not None:
        period = {"start": iso(visit.admitted_at)}
        if visit.state.final and visit.ended_at is not None:
            period["end"] = iso(visit.ended_at)
        return period
    if visit.open:
        return {"start": iso(visit.scheduled_at)}
    return {}


def shown_note(chart: Chart) -> Version | None:
    """The note version a reader is shown: the signed one, else the latest draft (a
    patient's chart holds only the signed one and what came after it)."""
    return chart.signed_note if chart.header.signed else chart.latest_note


def record_resources(chart: Chart, base_url: str) -> list[dict[str, Any]]:
    """The record as FHIR: a Composition (the note, its SOAP sections and addenda), a
    Condition per diagnosis and a MedicationRequest per prescription; nothing when no
    note was written yet. Ids derive from the visit id and the item's place in the note
    (`<visit>-dx-1`, `<visit>-rx-1`): stable once the record is signed."""
    version = shown_note(chart)
    if version is None or version.note is None:
        return []
    conditions = [
        _condition(chart, version, n, d.code, d.display)
        for n, d in enumerate(version.note.diagnoses, start=1)
    ]
    requests = [
        _medication_request(chart, version, n, p)
        for n, p in enumerate(version.note.prescriptions, start=1)
    ]
    composition = _composition(chart, version, version.note, conditions, requests)
    return [composition, *conditions, *requests]


def _composition(
    chart: Chart,
    version: Version,
    note: Note,
    conditions: Sequence[dict[str, Any]],
    requests: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    h = chart.header
    addenda = chart.addenda if h.signed else []
    # R4 "amended": changed or added to after it was released as final
    status = ("amended" if addenda else "final") if h.signed else "preliminary"
    changed = max([version.created_at, *(a.created_at for a in addenda)])
    authors = dict.fromkeys([version.author_id, *(a.author_id for a in addenda)])
    entries = {
        "assessment": (
            [_reference(c) for c in conditions],
            [f"{d.code}: {d.display}" for d in note.diagnoses],
        ),
        "plan": (
            [_reference(r) for r in requests],
            [f"{p.medication}: {_dosage_text(p)}" for p in note.prescriptions],
        ),
    }
    sections: list[dict[str, Any]] = []
    for part, title, code, display in SOAP_SECTIONS:
        text: str = getattr(note, part)
        refs, items = entries.get(part, ([], []))
        if not text and not refs:
            continue  # R4 cmp-1: a section holds text, entries or sections
        blocks = [_paragraph(text)] if text else []
        if items:
            blocks.append("<ul>" + "".join(f"<li>{_xhtml(i)}</li>" for i in items) + "</ul>")
        section: dict[str, Any] = {
            "title": title,
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "text": _narrative(blocks),
        }
        if refs:
            section["entry"] = refs
        sections.append(section)
    for addendum in addenda:
        sections.append(
            {
                "title": f"Addendum, {addendum.created_at:%Y-%m-%d %H:%M} UTC",
                "author": [{"reference": f"Practitioner/{addendum.author_id}"}],
                "text": _narrative([_paragraph(addendum.addendum)]),
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Composition",
        "id": h.id,
        "meta": {"lastUpdated": iso(max(changed, h.signed_at or changed))},
        "status": status,
        "type": {
            "coding": [{"system": LOINC, "code": CONSULT_NOTE, "display": "Consult note"}],
            "text": "Consult note",
        },
        "subject": {"reference": f"Patient/{h.patient_id}"},
        "encounter": {"reference": f"Encounter/{h.id}"},
        "date": iso(changed),
        "author": [{"reference": f"Practitioner/{a}"} for a in authors],
        "title": "Consult note",
    }
    if h.signed and h.signed_at is not None:
        resource["attester"] = [
            {
                "mode": "legal",
                "time": iso(h.signed_at),
                "party": {"reference": f"Practitioner/{h.signed_by}"},
            }
        ]
    if sections:  # FHIR JSON has no empty arrays
        resource["section"] = sections
    return resource


def _condition(chart: Chart, version: Version, n: int, code: str, display: str) -> dict[str, Any]:
    h = chart.header
    display = _plain(display)
    return {
        "resourceType": "Condition",
        "id": f"{h.id}-dx-{n}",
        "clinicalStatus": {
            "coding": [{"system": CONDITION_CLINICAL, "code": "active", "display": "Active"}]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": CONDITION_CATEGORY,
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    }
                ]
            }
        ],
        # the doctor's own wording is the display: ICD-10's titles are not shipped here
        "code": {"coding": [{"system": ICD10, "code": code, "display": display}], "text": display},
        "subject": {"reference": f"Patient/{h.patient_id}"},
        "encounter": {"reference": f"Encounter/{h.id}"},
        "recordedDate": iso(version.created_at),
        "recorder": {"reference": f"Practitioner/{version.author_id}"},
    }


def _medication_request(chart: Chart, version: Version, n: int, p: Prescription) -> dict[str, Any]:
    """A prescription: "active" once the record is signed; a draft's is "draft" (R4: not
    yet actionable), never an order anyone could act on."""
    h = chart.header
    dosage: dict[str, Any] = {
        "text": _dosage_text(p),
        "timing": {"code": {"text": _plain(p.frequency)}},  # R4 Timing.code: "or just text"
        "route": {"text": _plain(p.route)},
    }
    if p.instructions:
        dosage["patientInstruction"] = _plain(p.instructions)
    return {
        "resourceType": "MedicationRequest",
        "id": f"{h.id}-rx-{n}",
        "status": "active" if h.signed else "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": _plain(p.medication)},
        "subject": {"reference": f"Patient/{h.patient_id}"},
        "encounter": {"reference": f"Encounter/{h.id}"},
        "authoredOn": iso(version.created_at),
        "requester": {"reference": f"Practitioner/{h.signed_by or version.author_id}"},
        "dosageInstruction": [dosage],
    }


def _dosage_text(p: Prescription) -> str:
    """e.g. "500 mg, oral, three times a day, 7 days"."""
    return ", ".join(_plain(part) for part in (p.dose, p.route, p.frequency, p.duration) if part)


def _reference(resource: Mapping[str, Any]) -> dict[str, str]:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def _plain(text: str) -> str:
    return _CONTROL.sub("", text)


def _xhtml(text: str) -> str:
    return html.escape(_plain(text))


def _paragraph(text: str) -> str:
    """Text as one XHTML paragraph, escaped, its line breaks kept."""
    return "<p>" + "<br/>".join(_xhtml(line) for line in text.splitlines()) + "</p>"


def _narrative(blocks: Sequence[str]) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{"".join(blocks)}</div>'}


def encounter_everything(visit: Visit, chart: Chart, base_url: str) -> dict[str, Any]:
    """`Encounter/<id>/$everything`: a searchset (as the operation's definition says),
    the Encounter its match, the record's resources included."""
    return bundle(
        [encounter(visit, base_url)],
        base_url,
        included=record_resources(chart, base_url),
        links=[("self", f"{base_url}/fhir/Encounter/{visit.id}/$everything")],
    )


def bundle(
    resources: list[dict[str, Any]],
    base_url: str,
    kind: str = "searchset",
    *,
    included: Sequence[dict[str, Any]] = (),
    links: Sequence[tuple[str, str]] = (),
    total: bool = True,
) -> dict[str, Any]:
    """`links` are (relation, url) pairs; `total` False leaves it out (a paged search).
    In a searchset, `resources` are the matches and `included` come with them (search
    mode "include", not counted in `total`)."""
    entries = [
        {
            "fullUrl": f"{base_url}/fhir/{r['resourceType']}/{r['id']}",
            "resource": r,
            **({"search": {"mode": mode}} if kind == "searchset" else {}),
        }
        for mode, group in (("match", resources), ("include", included))
        for r in group
    ]
    out: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    if kind == "searchset" and total:
        out["total"] = len(resources)
    if links:
        out["link"] = [{"relation": relation, "url": url} for relation, url in links]
    if entries:  # FHIR JSON has no empty arrays
        out["entry"] = entries
    return out


def capability_statement(base_url: str, now: str) -> dict[str, Any]:
    def resource(
        kind: str,
        interactions: list[str],
        params: list[tuple[str, str, str]],
        operations: Sequence[tuple[str, str, str]] = (),
    ) -> dict[str, Any]:
        """`params` are (name, type, documentation); `operations` (name, definition,
        documentation)."""
        out: dict[str, Any] = {
            "type": kind,
            "interaction": [{"code": i} for i in interactions],
        }
        if params:  # FHIR JSON has no empty arrays
            out["searchParam"] = [
                {"name": n, "type": t, **({"documentation": d} if d else {})} for n, t, d in params
            ]
        if operations:
            out["operation"] = [
                {"name": n, "definition": u, "documentation": d} for n, u, d in operations
            ]
        return out

    patient = ("patient", "reference", "Required: a patient id or Patient/<id>.")
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": now,
        "kind": "instance",
        "software": {"name": "telemed", "version": __version__},
        "implementation": {"description": "Telemedicine server", "url": f"{base_url}/fhir"},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "Basic",
                                }
                            ],
                            "text": "Bearer API token, or the web session cookie",
                        }
                    ],
                    "description": "A clinician sees only the patients of their care teams; "
                    "vital signs are for the care team and the patient; "
                    "consultation records (Encounter/$everything) are for the care team, "
                    "for the patient once signed, and for an admin only through "
                    "break-glass; AuditEvent is for admins.",
                },
                "resource": [
                    resource("Patient", ["read", "search-type"], []),
                    resource(
                        "Observation",
                        ["search-type"],
                        [
                            patient,
                            (
                                "code",
                                "token",
                                f"LOINC, as {LOINC}|<code> or <code>; a comma-separated "
                                f"list matches any. Blood pressure is one Observation "
                                f"{BP_PANEL} with components {SYSTOLIC} and {DIASTOLIC}.",
                            ),
                            (
                                "date",
                                "date",
                                "effectiveDateTime with prefix eq, ge, gt, le or lt; a date "
                                "is a UTC day, a time needs its zone; repeat to combine.",
                            ),
                            (
                                "_count",
                                "number",
                                f"Page size, {DEFAULT_COUNT} by default, at most {MAX_COUNT}; "
                                "results are oldest first, the next page is the bundle's "
                                "next link.",
                            ),
                        ],
                    ),
                    resource("Device", ["search-type"], [patient]),
                    resource(
                        "Encounter",
                        ["search-type"],
                        [patient],
                        [
                            (
                                "everything",
                                EVERYTHING,
                                "GET Encounter/<id>/$everything: a searchset of the "
                                "Encounter (match) and its consultation record (include): "
                                f"a Composition (LOINC {CONSULT_NOTE}, one section per "
                                "SOAP part and per addendum), a Condition per diagnosis "
                                f"({ICD10}) and a MedicationRequest per prescription.",
                            )
                        ],
                    ),
                    resource("AuditEvent", ["search-type"], [("patient", "reference", "")]),
                ],
            }
        ],
    }


# Searches -----------------------------------------------------------------------------
# GET /fhir/Observation?patient=&code=&date=&_count=&_cursor= and GET /fhir/Device?patient=
# (R4 search.html). A refusal names the parameter: the HTTP boundary makes it a 400
# OperationOutcome.

DEFAULT_COUNT = 100
MAX_COUNT = 1000
MS = timedelta(milliseconds=1)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Query = Mapping[str, Sequence[str]]  # each parameter's values, in the order given

_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_LOINC_CODE = re.compile(r"\d{1,7}-\d")
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_SUPPORTED_PREFIXES = ("eq", "ge", "gt", "le", "lt")
# FHIR date search values: YYYY, YYYY-MM, YYYY-MM-DD, or a time to the minute, second
# or fraction of a second, which then needs its zone (Z or ±hh:mm).
_DATE = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,6}))?)?"
    r"(?P<zone>Z|[+\- ]\d{2}:\d{2}))?)?)?"
)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page of results ended: the key of its last resource (`VitalSign.key`).

    The next page starts strictly after it, so readings stored between two pages never
    shift the pages (no repeats, no gaps): one stored later in time than the position
    shows up on a later page, one earlier does not.
    """

    taken_at: datetime
    device_id: str
    code: str

    @property
    def key(self) -> tuple[datetime, str, str]:
        return (self.taken_at, self.device_id, self.code)

    def token(self) -> str:
        """Opaque and URL-safe: base64url of [unix ms, device id, code]."""
        raw = json.dumps([_ms(self.taken_at), self.device_id, self.code], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def from_token(cls, token: str) -> Position:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            ms, device_id, code = json.loads(raw)
            if not (isinstance(ms, int) and isinstance(device_id, str) and isinstance(code, str)):
                raise TypeError(token)
            taken_at = EPOCH + ms * MS
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, OverflowError):
            raise ValidationError(
                "_cursor", "is not a cursor this server gave: follow the bundle's next link"
            ) from None
        return cls(taken_at, device_id, code)


@dataclass(frozen=True, slots=True)
class ObservationSearch:
    """A validated `GET /fhir/Observation` query."""

    patient_id: str
    codes: frozenset[str] | None  # Observation.code values wanted; None: every code
    since: datetime | None  # taken_at bounds, both inclusive, to the millisecond
    until: datetime | None
    count: int
    after: Position | None = None
    code_values: tuple[str, ...] = ()  # as given, for the links
    date_values: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Whether the parameters exclude every observation (e.g. date=gtX&date=ltX)."""
        return self.codes == frozenset() or (
            self.since is not None and self.until is not None and self.since > self.until
        )

    def params(self, after: Position | None) -> list[tuple[str, str]]:
        """The query string of this search from `after` on: the parameters it applied."""
        out = [("patient", self.patient_id)]
        out += [("code", v) for v in self.code_values]
        out += [("date", v) for v in self.date_values]
        out.append(("_count", str(self.count)))
        if after is not None:
            out.append(("_cursor", after.token()))
        return out


@dataclass(frozen=True, slots=True)
class ObservationPage:
    signs: list[VitalSign]
    next: Position | None  # where the next page starts, if there may be more


def patient_param(query: Query) -> str:
    """The required `patient` parameter: an id, or a `Patient/id` reference."""
    values = set(query.get("patient", ()))
    if not values or values == {""}:
        raise ValidationError("patient", "is required, e.g. patient=<patient id>")
    if len(values) > 1:
        raise ValidationError("patient", "give one patient")
    value = values.pop().strip().removeprefix("Patient/")
    if not _ID.fullmatch(value):
        raise ValidationError("patient", "must be a patient id or Patient/<id>")
    return value


async def encounters_of_patient(clinic: Clinic, actor: Actor, patient_id: str) -> list[Visit]:
    """The patient's visits, for `GET /fhir/Encounter?patient=`, oldest first.

    An Encounter is the administrative record of a visit (who, when, its state), so
    its rule is the Patient resource's (`may_see_patient`): the care team, the patient
    themself, and admins. The clinical content of a visit is the records office's to
    give (`Encounter/<id>/$everything`). Audited as encounter.search, refusals too.
    """
    user = actor.user
    allowed = actor.is_operator
    if not allowed and user is not None:
        allowed = may_see_patient(user, patient_id, await clinic.store.care_team(patient_id))
    if not allowed:
        await clinic.audit(
            actor,
            "encounter.search",
            Outcome.DENIED,
            patient_id=patient_id,
            entity=f"Patient/{patient_id}",
            detail="not on the care team",
        )
        raise Forbidden("encounter.search: this patient is not in your care")
    visits = await clinic.store.list_visits(patient_id=patient_id)
    await clinic.audit(
        actor,
        "encounter.search",
        patient_id=patient_id,
        entity="Encounter",
        detail=f"count={len(visits)}",
    )
    return visits


def parse_observation_search(query: Query) -> ObservationSearch:
    """Validate the parameters of an Observation search; unknown ones are ignored (R4
    lenient handling) and left out of the bundle's links, which list what was applied."""
    for name in query:
        base, _, modifier = name.partition(":")
        if modifier and base in ("patient", "code", "date", "_count", "_cursor"):
            raise ValidationError(name, f"the :{modifier} modifier is not supported")
    patient_id = patient_param(query)

    code_values = tuple(query.get("code", ()))
    codes: frozenset[str] | None = None
    for value in code_values:  # repeated parameters AND, a comma-separated list ORs
        wanted = frozenset(_loinc_code(token) for token in value.split(","))
        codes = wanted if codes is None else codes & wanted

    date_values = tuple(query.get("date", ()))
    since: datetime | None = None
    until: datetime | None = None
    for value in date_values:
        low, high = _date_bounds(value)
        if low is not None:
            since = low if since is None else max(since, low)
        if high is not None:
            until = high if until is None else min(until, high)

    return ObservationSearch(
        patient_id=patient_id,
        codes=codes,
        since=since,
        until=until,
        count=_count(query.get("_count", ())),
        after=_cursor(query.get("_cursor", ())),
        code_values=code_values,
        date_values=date_values,
    )


def _loinc_code(token: str) -> str:
    system, bar, code = token.strip().rpartition("|")
    if bar and system != LOINC:
        raise ValidationError("code", f"only LOINC codes ({LOINC}|<code>) are searchable")
    if not _LOINC_CODE.fullmatch(code):
        raise ValidationError("code", f"{code!r} is not a LOINC code such as 8867-4")
    return code


def _count(values: Sequence[str]) -> int:
    if not values:
        return DEFAULT_COUNT
    text = values[0]
    if len(values) > 1 or not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValidationError(
            "_count", f"must be one whole number, at least 1 (pages hold at most {MAX_COUNT})"
        )
    return min(int(text), MAX_COUNT)  # a server may return fewer than asked (R4 search, _count)


def _cursor(values: Sequence[str]) -> Position | None:
    if not values:
        return None
    if len(values) > 1:
        raise ValidationError("_cursor", "give one cursor")
    return Position.from_token(values[0])


def _date_bounds(value: str) -> tuple[datetime | None, datetime | None]:
    """The inclusive [since, until] of taken_at that `value` (prefix and date) allows.

    A search date stands for the range its precision implies, in UTC for a date without
    a time: 2026-11-29 is that whole day, 2026-11-29T09:00:00Z that whole second (R4
    search.html, "date" and "prefixes"). For a range [low, high): eq keeps low <= t < high, ge
    t >= low, gt t >= high, le t < high, lt t < low. Stored times are whole
    milliseconds, so the bounds are rounded to the millisecond that keeps that meaning.
    """
    prefix = value[:2] if value[:2] in _PREFIXES else "eq"
    if prefix not in _SUPPORTED_PREFIXES:
        raise ValidationError(
            "date", f"the {prefix} prefix is not supported: use ge, gt, le, lt or eq"
        )
    text = value[2:] if value[:2] == prefix else value
    low, high = _date_range(text)
    since = {"eq": low, "ge": low, "gt": high}.get(prefix)
    before = {"eq": high, "le": high, "lt": low}.get(prefix)
    return (
        _ceil_ms(since) if since is not None else None,
        _ceil_ms(before) - MS if before is not None else None,
    )


def _date_range(text: str) -> tuple[datetime, datetime]:
    match = _DATE.fullmatch(text)
    if match is None:
        raise ValidationError(
            "date",
            f"{text!r} is not a date: use e.g. ge2026-11-29 or le2026-11-29T10:00:00Z "
            "(a time needs its zone, Z or +hh:mm written %2B in a URL)",
        )
    g = match.groupdict()
    try:
        if g["zone"] is None:  # a date without a time: the UTC calendar
            year, month, day = int(g["year"]), int(g["month"] or 1), int(g["day"] or 1)
            low = datetime(year, month, day, tzinfo=UTC)
            if g["day"]:
                return low, low + timedelta(days=1)
            if g["month"]:
                return low, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            return low, datetime(year + 1, 1, 1, tzinfo=UTC)
        zone = "+00:00" if g["zone"] == "Z" else g["zone"].replace(" ", "+")
        fraction = g["fraction"] or ""
        stamp = f"{g['year']}-{g['month']}-{g['day']}T{g['hour']}:{g['minute']}"
        stamp += f":{g['second'] or '00'}" + (f".{fraction.ljust(6, '0')}" if fraction else "")
        low = datetime.fromisoformat(stamp + zone).astimezone(UTC)
        if fraction:
            step = timedelta(microseconds=10 ** (6 - len(fraction)))
        else:
            step = timedelta(seconds=1) if g["second"] else timedelta(minutes=1)
        return low, low + step
    except (ValueError, OverflowError):
        raise ValidationError("date", f"{text!r} is not a valid date or time") from None


def _ceil_ms(moment: datetime) -> datetime:
    spare = moment.microsecond % 1000
    return moment + timedelta(microseconds=1000 - spare) if spare else moment


def _ms(moment: datetime) -> int:
    return (moment - EPOCH) // MS


async def search_vital_signs(store: Store, search: ObservationSearch) -> ObservationPage:
    """One page of the patient's vital signs in key order (time, device, code), after
    `search.after`.

    The store filters by time and a single code. A panel needs both its halves and a
    lone systolic needs to know that there is no diastolic, so blood pressure reads
    both codes, and several codes are read one by one and merged. The store is read in
    chunks; a chunk cut short (its limit reached) is trusted only before the time of
    its last row: that instant is read again whole, so no device's readings of one
    instant are ever split, and the next chunk starts just after it.
    """
    if search.empty:
        return ObservationPage([], None)
    stored_codes = _stored_codes(search.codes)
    since = search.since
    if search.after is not None:
        since = max(since or search.after.taken_at, search.after.taken_at)
    chunk = 2 * (search.count + 1)  # a resource holds at most two stored observations
    found: list[VitalSign] = []
    while since is None or search.until is None or since <= search.until:
        rows: list[Observation] = []
        cut: datetime | None = None  # rows at or after this time are not all read yet
        for code in stored_codes:
            got = await store.observations(
                search.patient_id, code=code, since=since, until=search.until, limit=chunk
            )
            rows += got
            if len(got) == chunk:
                cut = got[-1].taken_at if cut is None else min(cut, got[-1].taken_at)
        if cut is not None:
            rows = [o for o in rows if o.taken_at < cut]
            for code in stored_codes:
                rows += await store.observations(search.patient_id, code=code, since=cut, until=cut)
        for sign in vital_signs(rows):
            if search.codes is not None and sign.code not in search.codes:
                continue
            if search.after is not None and sign.key <= search.after.key:
                continue
            found.append(sign)
        if len(found) > search.count:
            last = found[search.count - 1]
            return ObservationPage(found[: search.count], Position(*last.key))
        if cut is None:
            break
        since = cut + MS
    return ObservationPage(found, None)


def _stored_codes(codes: frozenset[str] | None) -> Sequence[str | None]:
    """The stored codes to read for these Observation codes; [None] reads every code."""
    if codes is None:
        return [None]
    stored = set(codes)
    if stored & {BP_PANEL, SYSTOLIC, DIASTOLIC}:
        stored = (stored - {BP_PANEL}) | {SYSTOLIC, DIASTOLIC}
    return sorted(stored)
