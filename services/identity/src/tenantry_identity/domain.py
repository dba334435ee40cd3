"""Identity rules: pure, no I/O."""

from __future__ import annotations

import re
from typing import Literal

Role = Literal["owner", "admin", "member"]
TENANT_ROLES: tuple[Role, ...] = ("owner", "admin", "member")
ADMIN_ROLES = ("owner", "admin")
# Scopes an API key may carry (resource:action).
KNOWN_SCOPES = frozenset(
    {
        "tenant:read",
        "tenant:write",
        "accounts:read",
        "accounts:write",
        "apikeys:read",
        "apikeys:write",
        "webhooks:read",
        "webhooks:write",
        "scim:write",
        "sso:read",
        "sso:write",
    }
)
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,63}$")
MIN_PASSWORD = 12
MAX_PASSWORD = 256


class IdentityRuleBroken(Exception):
    def __init__(self, slug: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.slug = slug
        self.status = status


def normalise_email(email: str) -> str:
    email = email.strip()
    if not _EMAIL.match(email):
        raise IdentityRuleBroken("invalid-email", "not an email address")
    local, _, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}"


def check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise IdentityRuleBroken(
            "weak-password", f"passwords are {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )


def check_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - KNOWN_SCOPES)
    if unknown:
        raise IdentityRuleBroken("unknown-scope", f"unknown scopes: {', '.join(unknown)}")
    if not scopes:
        raise IdentityRuleBroken("unknown-scope", "an API key needs at least one scope")
    return sorted(set(scopes))


# Email verification: links live a day; resends are spaced and capped so the endpoint
# cannot be used to flood someone's mailbox.
VERIFICATION_TTL_SECONDS = 24 * 3600
RESEND_MIN_INTERVAL_SECONDS = 60
RESEND_MAX_PER_DAY = 5


def resend_wait(previous_sends: list[float], now: float) -> float:
    """Seconds until another verification email may go out (0: now). `previous_sends` are
    the epoch times of earlier sends for the same account."""
    recent = sorted(t for t in previous_sends if now - t < 24 * 3600)
    waits = [0.0]
    if recent:
        waits.append(recent[-1] + RESEND_MIN_INTERVAL_SECONDS - now)
    if len(recent) >= RESEND_MAX_PER_DAY:
        waits.append(recent[-RESEND_MAX_PER_DAY] + 24 * 3600 - now)
    return max(waits)
