"""Identity rules: pure, no I/O. The account and API key aggregates (their streams fold
into the state their rows hold), and the rules on emails, passwords, scopes and email
verification."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from tenantry_events.aggregates import UnfoldableStream, first_payload, state_from
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.identity import (
    AccountCreated,
    AccountDisabled,
    AccountEnabled,
    AccountRoleChanged,
    ApiKeyCreated,
    ApiKeyRevoked,
    EmailVerified,
)
from tenantry_events.sealing import ERASED

Role = Literal["owner", "admin", "member"]
TENANT_ROLES: tuple[Role, ...] = ("owner", "admin", "member")
ADMIN_ROLES = ("owner", "admin")
# Scopes an API key may carry (resource:action).
KNOWN_SCOPES = frozenset(
    {
        "tenant:read",
        "tenant:write",
        "tenant:export",  # the tenant's data export (GDPR Art. 20), issue 17
        "audit:read",  # the tenant's audit log (tenancy), issue 19
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


# Notice subscriptions (issue 19 §2): the kinds of operational notice a person opts in to,
# and the roles that may. "legal-notices": announced changes of the tenant's data
# processing terms (legal.subprocessor_changed), for whoever may object for the tenant.
Topic = Literal["legal-notices"]
LEGAL_NOTICES: Topic = "legal-notices"
TOPIC_ROLES: dict[Topic, tuple[str, ...]] = {LEGAL_NOTICES: ADMIN_ROLES}


def known_topic(topic: str) -> Topic:
    """The topic named (IdentityRuleBroken, 404 unknown-topic, if there is none)."""
    for known in TOPIC_ROLES:
        if known == topic:
            return known
    topics = ", ".join(sorted(TOPIC_ROLES))
    raise IdentityRuleBroken("unknown-topic", f"no such topic; the topics are: {topics}", 404)


def check_subscriber(topic: Topic, role: str) -> None:
    """Whether an account of `role` may subscribe to `topic` (403 topic-not-for-role)."""
    allowed = TOPIC_ROLES[topic]
    if role not in allowed:
        raise IdentityRuleBroken(
            "topic-not-for-role",
            f"only {' and '.join(f'{r}s' for r in allowed)} may subscribe to {topic}",
            403,
        )


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


def erased_email(account_id: UUID) -> str:
    """What an erased person's account row holds instead of their email: made of the id
    alone (nothing of the person), unique per account as the email index needs, and in a
    reserved domain (.invalid, RFC 2606) so that no mail is ever sent to it."""
    return f"erased+{account_id}@erased.invalid"


# ---------------------------------------------------------------- the aggregates
# An account of a tenant (operators, who belong to no tenant, have no stream) and an API key
# are event-sourced: their stream's first event starts them and `apply` folds each later
# one (tenantry_events.aggregates). The store writes each state row with its event, in one
# transaction; the row is the fold's snapshot plus what no event carries (a password hash,
# when a key was last used), and `tenantry-identity verify-state` compares the two.


@dataclass(frozen=True)
class Account:
    """What an account's stream says of it: account-<account_id>."""

    account_id: UUID
    tenant_id: UUID
    email: str
    role: str
    status: str  # active | disabled
    email_verified: bool
    version: int

    @staticmethod
    def start(event: Envelope[Any]) -> Account:
        created = first_payload(event, AccountCreated, "an account")
        account = state_from(
            created, Account, tenant_id=event.tenant_id, version=event.aggregate_version
        )
        if account.email == ERASED:  # the person was erased: their row holds the placeholder
            return replace(account, email=erased_email(account.account_id))
        return account

    def apply(self, event: Envelope[Any]) -> Account:
        match event.payload:
            case AccountDisabled():
                state = replace(self, status="disabled")
            case AccountEnabled():
                state = replace(self, status="active")
            case AccountRoleChanged(role=role):
                state = replace(self, role=role)
            case EmailVerified():
                state = replace(self, email_verified=True)
            case _:
                raise UnfoldableStream.unexpected(event, self)
        return replace(state, version=event.aggregate_version)


@dataclass(frozen=True)
class ApiKey:
    """What an API key's stream says of it: apikey-<key_id>. Created, then perhaps revoked
    (when is the row's `revoked_at`; the event says that and why)."""

    key_id: str
    tenant_id: UUID
    key_sha256: str  # hex
    display_prefix: str
    name: str
    kind: str  # service | personal
    owner_account_id: UUID | None
    scopes: tuple[str, ...]
    expires_at: datetime | None
    created_by: str
    revoked: bool
    version: int

    @staticmethod
    def start(event: Envelope[Any]) -> ApiKey:
        created = first_payload(event, ApiKeyCreated, "an API key")
        return state_from(
            created,
            ApiKey,
            tenant_id=event.tenant_id,
            scopes=tuple(created.scopes),
            revoked=False,
            version=event.aggregate_version,
        )

    def apply(self, event: Envelope[Any]) -> ApiKey:
        if not isinstance(event.payload, ApiKeyRevoked) or self.revoked:
            raise UnfoldableStream.unexpected(event, self)
        return replace(self, revoked=True, version=event.aggregate_version)
