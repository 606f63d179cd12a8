"""The domain's own exceptions. Boundaries (HTTP, CLI) decide what the user is told."""

from __future__ import annotations


class TelemedError(Exception):
    """Base of every error the domain raises on purpose."""


class ValidationError(TelemedError):
    """Input refused; `field` names what was wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(TelemedError):
    """The thing asked for does not exist."""


class Conflict(TelemedError):
    """The write would break a uniqueness rule."""


class Unauthenticated(TelemedError):
    """The caller must sign in (or send a bearer token) first."""


class Forbidden(TelemedError):
    """The caller may not do this."""


class StoreUnavailable(TelemedError):
    """The store cannot be reached or refused the operation."""
