"""A small clinic with a records office over any store, for the records tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from telemed.accounts import User
from telemed.clinic import OPERATOR, Actor, Clinic
from telemed.keyring import KeyFile
from telemed.reception import Reception, VisitPolicy
from telemed.records import note_from_json
from telemed.records_office import RecordPolicy, RecordsOffice
from telemed.sealing import Sealer
from telemed.store import Store
from tests.conftest import FakeClock

POLICY = RecordPolicy(
    attachment_max_bytes=64 * 1024,
    attachment_types=frozenset({"application/pdf", "image/png", "image/jpeg"}),
    break_glass=timedelta(minutes=60),
)
# words that appear nowhere but in the test record, to look for in raw dumps
NOTE = {
    "subjective": "Zebracough since Tuesday, worse at night",
    "objective": "Quokkawheeze on the left",
    "assessment": "Likely Narwhalitis",
    "plan": "Rest, fluids, Axolotlsteam twice a day",
    "diagnoses": [{"code": "J20.9", "display": "Wombatbronchitis acute"}],
    "prescriptions": [
        {
            "medication": "Capybaracillin",
            "dose": "500 mg",
            "route": "oral",
            "frequency": "three times a day",
            "duration": "7 days",
            "instructions": "Pangolinfood with meals",
        }
    ],
    "chat": [{"sender": "patient", "at": "2026-11-29T09:00:00Z", "text": "Okapihello doctor"}],
}
SECRET_WORDS = [
    b"Zebracough",
    b"Quokkawheeze",
    b"Narwhalitis",
    b"Axolotlsteam",
    b"Wombatbronchitis",
    b"Capybaracillin",
    b"Pangolinfood",
    b"Okapihello",
    b"Tapirscan",  # inside the attachment
    b"lemurxray",  # the attachment's file name
]
ATTACHMENT = b"%PDF-1.4\n% Tapirscan of the chest\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@dataclass
class Kit:
    store: Store
    clinic: Clinic
    reception: Reception
    office: RecordsOffice
    keys: KeyFile
    clock: FakeClock
    doctor: User
    nurse: User
    outsider: User
    patient: User
    other_patient: User
    admin: User

    def actor(self, user: User) -> Actor:
        return Actor.of(user, "test")

    async def visit(self, patient: User | None = None) -> str:
        patient = patient or self.patient
        booking = await self.reception.book(
            OPERATOR, patient_id=patient.id, clinician_id=self.doctor.id
        )
        return booking.visit.id

    async def signed_record(self, patient: User | None = None) -> str:
        """A visit whose record holds NOTE and ATTACHMENT, signed, with an addendum."""
        visit_id = await self.visit(patient)
        doctor = self.actor(self.doctor)
        await self.office.save_note(doctor, visit_id, note_from_json(NOTE))
        await self.office.attach(doctor, visit_id, "lemurxray.pdf", "application/pdf", ATTACHMENT)
        chart = await self.office.chart(doctor, visit_id)
        await self.office.sign(doctor, visit_id, chart.versions[-1].number)
        await self.office.add_addendum(doctor, visit_id, "Phoned: better")
        return visit_id


async def make_kit(store: Store, key_path: Path, clock: FakeClock | None = None) -> Kit:
    clock = clock or FakeClock()
    clinic = Clinic(store, clock)
    keys = KeyFile(key_path)
    keys.create(clock())
    office = RecordsOffice(clinic, Sealer(keys), POLICY)
    reception = Reception(clinic, VisitPolicy(link_valid_for=timedelta(hours=24)))

    async def user(role: str, name: str) -> User:
        email = f"{name}@clinic.test"
        return await clinic.add_user(OPERATOR, role=role, email=email, name=name, password=None)

    doctor, nurse, outsider = (
        await user("doctor", "doc"),
        await user("nurse", "nur"),
        await user("doctor", "out"),
    )
    patient, other = await user("patient", "pat"), await user("patient", "oth")
    admin = await user("admin", "adm")
    for member in (doctor, nurse):
        await clinic.add_care_team_member(OPERATOR, patient.id, member.id)
    await clinic.add_care_team_member(OPERATOR, other.id, doctor.id)
    return Kit(
        store,
        clinic,
        reception,
        office,
        keys,
        clock,
        doctor,
        nurse,
        outsider,
        patient,
        other,
        admin,
    )
