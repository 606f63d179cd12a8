"""Two-factor sign-in: TOTP (RFC 6238, 30-second steps, 6 digits) and recovery codes."""

from __future__ import annotations

import hashlib
import hmac
import io
import secrets
from datetime import datetime

import pyotp
import segno

ISSUER = "Telemed"
STEP = 30
RECOVERY_CODES = 10


def new_secret() -> str:
    return pyotp.random_base32()  # 160 bits, as RFC 4226 recommends


def provisioning_uri(secret: str, email: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=ISSUER)


def qr_svg(uri: str) -> str:
    """An inline SVG QR code (no script, no external request: fits the CSP)."""
    out = io.BytesIO()
    segno.make(uri, error="m").save(
        out,
        kind="svg",
        scale=5,
        xmldecl=False,
        svgns=True,
        title="QR code for your authenticator app",
    )
    return out.getvalue().decode()


def accept_code(secret: str, code: str, last_step: int, now: datetime) -> int | None:
    """The time step `code` matches (±1 step for clock drift), if later than `last_step`.

    Returning the step lets the caller store it, so the same code cannot be used twice.
    """
    code = "".join(code.split())
    if not (secret and code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = int(now.timestamp()) // STEP
    for step in (current - 1, current, current + 1):
        if step > last_step and hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def new_recovery_codes() -> list[str]:
    """Codes shown once; 50 bits each, grouped for reading aloud."""
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = secrets.token_hex(5)
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def hash_recovery_code(code: str) -> str:
    return hashlib.sha256("".join(code.lower().split()).replace("-", "").encode()).hexdigest()


def use_recovery_code(hashes: tuple[str, ...], code: str) -> tuple[str, ...] | None:
    """The remaining hashes if `code` is one of them, else None."""
    wanted = hash_recovery_code(code)
    for stored in hashes:
        if hmac.compare_digest(stored, wanted):
            return tuple(h for h in hashes if h != stored)
    return None
