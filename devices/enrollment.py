"""Enrolling a wearable for one patient: a broker credential, a role, a record, an audit.

The order keeps the two sides consistent: the broker client is created first and removed
again if the store refuses the record; on revocation the broker forgets the device (and
drops its connection) before the record is marked revoked.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from typing import Any

from devices.broker import BrokerAccess
from devices.dynsec import Dynsec, topic
from telemed.accounts import Role, may_see_patient, new_id
from telemed.audit import Outcome
from telemed.clinic import Actor, Clinic
from telemed.errors import Forbidden, NotFound, ValidationError
from telemed.monitoring import Device

log = logging.getLogger(__name__)

_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Enrolled:
    """What the person enrolling the device is shown once (the password is not kept)."""

    device: Device
    password: str
    host: str
    port: int
    tls: bool

    def as_json(self) -> dict[str, Any]:
        d = self.device
        return {
            "device_id": d.id,
            "username": d.id,
            "password": self.password,
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "topic": topic(d.id, "vitals"),
            "status_topic": topic(d.id, "status"),
            "errors_topic": topic(d.id, "errors"),
            "qos": 1,
            "patient_id": d.patient_id,
            "kind": d.kind,
        }


def device_json(d: Device) -> dict[str, Any]:
    return {
        "device_id": d.id,
        "patient_id": d.patient_id,
        "kind": d.kind,
        "created_at": d.created_at.isoformat(),
        "revoked_at": d.revoked_at.isoformat() if d.revoked_at else None,
        "active": d.active,
    }


class Enrollment:
    def __init__(self, clinic: Clinic, broker: BrokerAccess) -> None:
        self.clinic = clinic
        self.broker = broker

    async def _require_care(self, actor: Actor, patient_id: str, action: str) -> None:
        """An admin (or the command line), or a clinician on the patient's care team."""
        user = actor.user
        allowed = actor.is_operator
        if user is not None and user.role is not Role.PATIENT:
            team = await self.clinic.store.care_team(patient_id)
            allowed = may_see_patient(user, patient_id, team)
        if not allowed:
            await self.clinic.audit(
                actor,
                action,
                Outcome.DENIED,
                patient_id=patient_id,
                entity=f"Patient/{patient_id}",
                detail="not on the care team",
            )
            raise Forbidden("this patient is not in your care")

    async def enroll(self, actor: Actor, patient_id: str, kind: str) -> Enrolled:
        kind = kind.strip()
        if not _KIND.match(kind):
            raise ValidationError(
                "kind", "1 to 64 letters, digits, spaces, dots, dashes or underscores"
            )
        if await self.clinic.store.get_patient(patient_id) is None:
            raise ValidationError("patient", f"no patient has id {patient_id}")
        await self._require_care(actor, patient_id, "device.enroll")
        device = Device(
            id=new_id(), patient_id=patient_id, kind=kind, created_at=self.clinic.clock()
        )
        password = secrets.token_urlsafe(24)
        b = self.broker
        async with Dynsec.connect(b.host, b.port, b.username, b.password, tls=b.tls) as dynsec:
            await dynsec.create_device(device.id, password)
            try:
                await self.clinic.store.add_device(device)
            except BaseException:
                await dynsec.delete_device(device.id)
                raise
        await self.clinic.audit(
            actor,
            "device.enroll",
            patient_id=patient_id,
            entity=f"Device/{device.id}",
            detail=f"kind={kind}",
        )
        log.info("device enrolled id=%s", device.id)
        return Enrolled(device, password, b.host, b.port, b.tls)

    async def list(self, actor: Actor, patient_id: str | None = None) -> list[Device]:
        if patient_id is None:
            if not actor.is_admin:
                raise Forbidden("only an admin may list every patient's devices")
            devices = await self.clinic.store.list_devices()
        else:
            await self._require_care(actor, patient_id, "device.list")
            devices = await self.clinic.store.list_devices(patient_id)
        await self.clinic.audit(
            actor,
            "device.list",
            patient_id=patient_id or "",
            entity="Device",
            detail=f"count={len(devices)}",
        )
        return devices

    async def revoke(self, actor: Actor, device_id: str) -> Device:
        device = await self.clinic.store.get_device(device_id)
        if device is None:
            raise NotFound(f"no device has id {device_id}")
        await self._require_care(actor, device.patient_id, "device.revoke")
        b = self.broker
        async with Dynsec.connect(b.host, b.port, b.username, b.password, tls=b.tls) as dynsec:
            await dynsec.delete_device(device.id)
        await self.clinic.store.revoke_device(device.id, self.clinic.clock())
        await self.clinic.audit(
            actor, "device.revoke", patient_id=device.patient_id, entity=f"Device/{device.id}"
        )
        log.info("device revoked id=%s", device.id)
        revoked = await self.clinic.store.get_device(device.id)
        assert revoked is not None
        return revoked
