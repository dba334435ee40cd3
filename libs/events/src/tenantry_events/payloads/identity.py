"""Events owned by the identity service."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import msgspec

from tenantry_events.catalog import event

Role = Literal["owner", "admin", "member"]


@event(
    "account.created",
    owner="identity",
    public=True,
    personal=("email",),
    person="account_id",
)
class AccountCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A login account was created in a tenant (invite, tenant owner, SCIM or JIT)."""

    account_id: UUID
    email: str
    role: Role
    status: Literal["active", "disabled"]
    email_verified: bool
    created_by: str


@event("apikey.created", owner="identity", public=False)
class ApiKeyCreated(msgspec.Struct, frozen=True, kw_only=True):
    """An API key was created. Internal: it carries the key's SHA-256, which every service
    projects to verify keys locally (the secret itself is never in an event)."""

    key_id: str
    key_sha256: str
    display_prefix: str
    name: str
    kind: Literal["service", "personal"]
    owner_account_id: UUID | None
    scopes: list[str]
    expires_at: datetime | None
    created_by: str


@event("apikey.revoked", owner="identity", public=False)
class ApiKeyRevoked(msgspec.Struct, frozen=True, kw_only=True):
    """An API key was revoked; every service refuses it from the moment it applies this."""

    key_id: str
    key_sha256: str
    reason: str
    revoked_by: str


@event(
    "user.email_verified",
    owner="identity",
    public=True,
    personal=("email",),
    person="account_id",
)
class EmailVerified(msgspec.Struct, frozen=True, kw_only=True):
    """An account proved it controls its email address."""

    account_id: UUID
    email: str


@event("account.disabled", owner="identity", public=True)
class AccountDisabled(msgspec.Struct, frozen=True, kw_only=True):
    """An account was disabled: it cannot sign in, its sessions and personal API keys are
    revoked, and every service refuses its access tokens."""

    account_id: UUID
    reason: str
    disabled_by: str


@event("account.enabled", owner="identity", public=True)
class AccountEnabled(msgspec.Struct, frozen=True, kw_only=True):
    """A disabled account is active again (reprovisioned through SCIM, or an admin): it may
    sign in; sessions and keys revoked when it was disabled stay revoked."""

    account_id: UUID
    enabled_by: str


@event("apikey.used", owner="identity", public=False)
class ApiKeyUsed(msgspec.Struct, frozen=True, kw_only=True):
    """A service accepted this key recently. Each service batches its uses and reports at
    most one of these per key per flush interval; identity keeps the latest as last_used_at."""

    key_id: str
    last_used_at: datetime
    service: str


@event("sso.connection_changed", owner="identity", public=True)
class SsoConnectionChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's SSO connection was created, changed (settings, certificates, enabled) or
    deleted. Carries no secret and no certificate, only what changed hands."""

    connection_id: UUID
    kind: Literal["saml", "oidc"]
    name: str
    enabled: bool
    change: Literal["created", "updated", "deleted"]
    changed_by: str


@event(
    "user.jit_provisioned",
    owner="identity",
    public=True,
    personal=("email",),
    person="account_id",
)
class UserJitProvisioned(msgspec.Struct, frozen=True, kw_only=True):
    """The first SSO login of a user the tenant did not have created their account (just in
    time), with the role its IdP groups map to."""

    account_id: UUID
    email: str
    role: Role
    connection_id: UUID


@event("user.signed_in", owner="identity", public=True)
class UserSignedIn(msgspec.Struct, frozen=True, kw_only=True):
    """A user signed in through an SSO connection and a session was issued."""

    account_id: UUID
    method: Literal["sso"]
    connection_id: UUID


@event("account.role_changed", owner="identity", public=True)
class AccountRoleChanged(msgspec.Struct, frozen=True, kw_only=True):
    """An account's role changed (an SSO login mapped the user's IdP groups to another
    role)."""

    account_id: UUID
    role: Role
    previous_role: Role
    changed_by: str
