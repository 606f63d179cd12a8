"""FHIR R4 shapes of the server's data: Patient, AuditEvent, Bundle, CapabilityStatement."""

from __future__ import annotations

from typing import Any

from telemed import __version__
from telemed.accounts import Patient
from telemed.audit import AuditRecord, Outcome
from telemed.clock import iso

FHIR_VERSION = "4.0.1"
MEDIA_TYPE = "application/fhir+json"

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


def bundle(
    resources: list[dict[str, Any]], base_url: str, kind: str = "searchset"
) -> dict[str, Any]:
    entries = [
        {
            "fullUrl": f"{base_url}/fhir/{r['resourceType']}/{r['id']}",
            "resource": r,
            **({"search": {"mode": "match"}} if kind == "searchset" else {}),
        }
        for r in resources
    ]
    out: dict[str, Any] = {"resourceType": "Bundle", "type": kind, "entry": entries}
    if kind == "searchset":
        out["total"] = len(entries)
    return out


def capability_statement(base_url: str, now: str) -> dict[str, Any]:
    def resource(
        kind: str, interactions: list[str], params: list[tuple[str, str]]
    ) -> dict[str, Any]:
        return {
            "type": kind,
            "interaction": [{"code": i} for i in interactions],
            "searchParam": [{"name": n, "type": t} for n, t in params],
        }

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
                    "AuditEvent is for admins.",
                },
                "resource": [
                    resource("Patient", ["read", "search-type"], []),
                    resource("AuditEvent", ["search-type"], [("patient", "reference")]),
                ],
            }
        ],
    }
