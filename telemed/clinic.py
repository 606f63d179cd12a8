"""What people do with accounts, patients, care teams and tokens; each act audited.

The web handlers and the CLI both call these, so the rules (who may, what is valid, what
is written to the audit log) live in one place.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import date

from telemed.accounts import (
    Patient,
    Role,
    User,
    check_password_strength,
    clean_email,
    clean_language,
    clean_name,
    clean_role,
    may_see_patient,
    new_id,
)
from telemed.audit import AuditEvent, Outcome
from telemed.clock import Clock
from telemed.errors import Conflict, Forbidden, NotFound, ValidationError
from telemed.passwords import ahash_password
from telemed.store import Store
from telemed.throttle import ThrottlePolicy, account_key, second_factor_key
from telemed.tokens import ApiToken, new_token, token_hash

log = logging.getLogger(__name__)

REQUIRE_2FA = "require_2fa_for_clinicians"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting, as the audit log records it."""

    id: str
    role: str
    source: str  # client address, or "cli"
    user: User | None = None  # None for the operator at the command line

    @classmethod
    def of(cls, user: User, source: str) -> Actor:
        return cls(user.id, user.role.value, source, user)

    @property
    def is_operator(self) -> bool:
        """The command line: whoever can run it already holds the database."""
        return self.user is None

    @property
    def is_admin(self) -> bool:
        return self.is_operator or (self.user is not None and self.user.role is Role.ADMIN)


OPERATOR = Actor("cli", "operator", "cli")


class Clinic:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def audit(
        self,
        actor: Actor,
        action: str,
        outcome: Outcome = Outcome.SUCCESS,
        *,
        patient_id: str = "",
        entity: str = "",
        detail: str = "",
    ) -> None:
        await self.store.append_audit(
            AuditEvent(
                at=self.clock(),
                actor_id=actor.id,
                actor_role=actor.role,
                action=action,
                outcome=outcome,
                source=actor.source,
                patient_id=patient_id,
                entity=entity,
                detail=detail,
            )
        )

    async def _require_admin(self, actor: Actor, action: str) -> None:
        if not actor.is_admin:
            await self.audit(actor, action, Outcome.DENIED, detail="admin only")
            raise Forbidden(f"{action}: only an admin may do this")

    # users ------------------------------------------------------------------
    async def add_user(
        self,
        actor: Actor,
        *,
        role: str,
        email: str,
        name: str,
        password: str | None,
        language: str = "en",
        birth_date: str = "",
    ) -> User:
        """Create a user; a patient also gets a patient record with the same id."""
        await self._require_admin(actor, "user.create")
        clean = clean_role(role)
        address = clean_email(email)
        full_name = clean_name(name)
        lang = clean_language(language)
        born = _clean_birth_date(birth_date)
        if password is not None:
            check_password_strength(password, email=address)
        if await self.store.find_user_by_email(address) is not None:
            raise ValidationError("email", "is already registered")
        user = User(
            id=new_id(),
            email=address,
            name=full_name,
            role=clean,
            password_hash=await ahash_password(password) if password else "",
            created_at=self.clock(),
        )
        try:
            await self.store.add_user(user)
        except Conflict:
            raise ValidationError("email", "is already registered") from None
        patient_id = ""
        if clean is Role.PATIENT:
            await self.store.add_patient(Patient(user.id, full_name, born, lang, user.created_at))
            patient_id = user.id
        await self.audit(
            actor,
            "user.create",
            patient_id=patient_id,
            entity=f"User/{user.id}",
            detail=f"role={clean.value}",
        )
        log.info("user created id=%s role=%s", user.id, clean.value)
        return user

    async def list_users(self, actor: Actor, role: Role | None = None) -> list[User]:
        await self._require_admin(actor, "user.list")
        users = await self.store.list_users(role)
        await self.audit(actor, "user.list", detail=f"count={len(users)}")
        return users

    async def set_user_active(self, actor: Actor, user_id: str, active: bool) -> User:
        """Deactivate (sign-in, sessions and tokens stop at once) or reactivate a user."""
        action = "user.reactivate" if active else "user.deactivate"
        await self._require_admin(actor, action)
        user = await self.user(user_id)
        if actor.user is not None and actor.user.id == user.id and not active:
            raise ValidationError("user", "you cannot deactivate your own account")
        updated = dataclasses.replace(user, active=active)
        await self.store.update_user(updated)
        if not active:
            await self.store.delete_user_sessions(user.id)
        await self.audit(actor, action, patient_id=_patient_of(user), entity=f"User/{user.id}")
        return updated

    async def set_password(self, actor: Actor, user_id: str, password: str) -> None:
        """An admin sets a new password; the user's sessions end."""
        await self._require_admin(actor, "user.password_reset")
        user = await self.user(user_id)
        check_password_strength(password, email=user.email)
        updated = dataclasses.replace(user, password_hash=await ahash_password(password))
        await self.store.update_user(updated)
        await self.store.delete_user_sessions(user.id)
        await self.store.delete_throttle(account_key(user.email))
        await self.audit(
            actor, "user.password_reset", patient_id=_patient_of(user), entity=f"User/{user.id}"
        )

    async def is_locked_out(self, user: User, policy: ThrottlePolicy) -> bool:
        """Whether failed sign-ins (password or code) hold the account back now."""
        now = self.clock()
        for key in (account_key(user.email), second_factor_key(user.id)):
            if policy.wait(await self.store.get_throttle(key), now):
                return True
        return False

    async def unlock(self, actor: Actor, user_id: str) -> None:
        """Forget the account's failed sign-ins (an address lock still runs its course)."""
        await self._require_admin(actor, "user.unlock")
        user = await self.user(user_id)
        for key in (account_key(user.email), second_factor_key(user.id)):
            await self.store.delete_throttle(key)
        await self.audit(actor, "user.unlock", entity=f"User/{user.id}")

    async def reset_two_factor(self, actor: Actor, user_id: str) -> None:
        """For a clinician who lost their phone: they enrol again at the next sign-in."""
        await self._require_admin(actor, "user.2fa_reset")
        user = await self.user(user_id)
        updated = dataclasses.replace(user, totp_secret="", totp_last_step=0, recovery_codes=())
        await self.store.update_user(updated)
        await self.store.delete_user_sessions(user.id)
        await self.audit(actor, "user.2fa_reset", entity=f"User/{user.id}")

    async def user(self, user_id: str) -> User:
        user = await self.store.get_user(user_id)
        if user is None:
            raise ValidationError("user", f"no user has id {user_id}")
        return user

    # care teams -------------------------------------------------------------
    async def add_care_team_member(self, actor: Actor, patient_id: str, clinician_id: str) -> bool:
        await self._require_admin(actor, "care_team.add")
        patient, clinician = await self._team_pair(patient_id, clinician_id)
        added = await self.store.add_care_team_member(patient.id, clinician.id)
        await self.audit(
            actor,
            "care_team.add",
            patient_id=patient.id,
            entity=f"User/{clinician.id}",
            detail="added" if added else "already a member",
        )
        return added

    async def remove_care_team_member(
        self, actor: Actor, patient_id: str, clinician_id: str
    ) -> bool:
        await self._require_admin(actor, "care_team.remove")
        removed = await self.store.remove_care_team_member(patient_id, clinician_id)
        await self.audit(
            actor,
            "care_team.remove",
            patient_id=patient_id,
            entity=f"User/{clinician_id}",
            detail="removed" if removed else "was not a member",
        )
        return removed

    async def _team_pair(self, patient_id: str, clinician_id: str) -> tuple[Patient, User]:
        patient = await self.store.get_patient(patient_id)
        if patient is None:
            raise ValidationError("patient", f"no patient has id {patient_id}")
        clinician = await self.store.get_user(clinician_id)
        if clinician is None:
            raise ValidationError("clinician", f"no user has id {clinician_id}")
        if not clinician.role.is_clinician:
            raise ValidationError(
                "clinician", f"user {clinician_id} is a {clinician.role.value}, not a clinician"
            )
        return patient, clinician

    # patients ---------------------------------------------------------------
    async def patients_for(self, actor: Actor) -> list[Patient]:
        """The patients the actor may see, each read audited."""
        user = actor.user
        if user is None or user.role is Role.ADMIN:
            patients = await self.store.list_patients()
        elif user.role is Role.PATIENT:
            patients = await self.store.list_patients([user.id])
        else:
            patients = await self.store.list_patients(sorted(await self.store.patients_of(user.id)))
        for patient in patients:
            await self.audit(
                actor, "patient.list", patient_id=patient.id, entity=f"Patient/{patient.id}"
            )
        return patients

    async def read_patient(self, actor: Actor, patient_id: str) -> Patient:
        """One patient's record, if the actor may see it; refusals are audited too."""
        patient = await self.store.get_patient(patient_id)
        allowed = actor.is_operator
        if not allowed and actor.user is not None:
            team = await self.store.care_team(patient_id)
            allowed = may_see_patient(actor.user, patient_id, team)
        if not allowed:
            await self.audit(
                actor,
                "patient.read",
                Outcome.DENIED,
                patient_id=patient_id,
                entity=f"Patient/{patient_id}",
                detail="not on the care team",
            )
            raise Forbidden("this patient is not in your care")
        if patient is None:
            await self.audit(
                actor,
                "patient.read",
                Outcome.FAILURE,
                patient_id=patient_id,
                entity=f"Patient/{patient_id}",
                detail="no such patient",
            )
            raise NotFound(f"patient {patient_id} does not exist")
        await self.audit(
            actor, "patient.read", patient_id=patient.id, entity=f"Patient/{patient.id}"
        )
        return patient

    async def clinical_access(self, actor: Actor, patient_id: str, action: str) -> Patient:
        """The patient, if the actor may see their clinical data (vitals, alerts, records):
        a clinician of their care team, or the patient themself; never an admin. The
        access is audited under `action`, refusals included."""
        user = actor.user
        allowed = False
        if user is not None and user.active:
            if user.role is Role.PATIENT:
                allowed = user.id == patient_id
            elif user.role.is_clinician:
                allowed = user.id in await self.store.care_team(patient_id)
        if not allowed:
            await self.audit(
                actor,
                action,
                Outcome.DENIED,
                patient_id=patient_id,
                entity=f"Patient/{patient_id}",
                detail="no clinical access",
            )
            raise Forbidden("this patient is not in your care")
        patient = await self.store.get_patient(patient_id)
        if patient is None:
            raise NotFound(f"patient {patient_id} does not exist")
        await self.audit(actor, action, patient_id=patient_id, entity=f"Patient/{patient_id}")
        return patient

    # API tokens -------------------------------------------------------------
    async def create_token(self, actor: Actor, email: str, name: str = "") -> tuple[ApiToken, str]:
        """A new bearer token for the user with `email`; the secret is returned once."""
        await self._require_admin(actor, "token.create")
        address = clean_email(email)
        user = await self.store.find_user_by_email(address)
        if user is None:
            raise ValidationError("email", f"no user has the e-mail address {address}")
        secret = new_token()
        token = ApiToken(
            id=new_id(),
            user_id=user.id,
            name=name.strip()[:100] or "integration",
            token_hash=token_hash(secret),
            created_at=self.clock(),
        )
        await self.store.add_token(token)
        await self.audit(actor, "token.create", entity=f"ApiToken/{token.id}")
        return token, secret

    async def revoke_token(self, actor: Actor, token_id: str) -> None:
        await self._require_admin(actor, "token.revoke")
        token = await self.store.get_token(token_id)
        if token is None:
            raise NotFound(f"no token has id {token_id}")
        revoked = await self.store.revoke_token(token_id, self.clock())
        await self.audit(
            actor,
            "token.revoke",
            entity=f"ApiToken/{token_id}",
            detail="revoked" if revoked else "was already revoked",
        )

    # clinic settings --------------------------------------------------------
    async def require_2fa(self, default: bool) -> bool:
        value = await self.store.get_setting(REQUIRE_2FA)
        return default if value is None else value == "true"

    async def set_require_2fa(self, actor: Actor, required: bool) -> None:
        await self._require_admin(actor, "settings.update")
        await self.store.put_setting(REQUIRE_2FA, "true" if required else "false")
        await self.audit(actor, "settings.update", detail=f"{REQUIRE_2FA}={required}")


def _patient_of(user: User) -> str:
    return user.id if user.role is Role.PATIENT else ""


def _clean_birth_date(value: str) -> date | None:
    value = value.strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValidationError("birth_date", "must be a date such as 1980-04-23") from None
