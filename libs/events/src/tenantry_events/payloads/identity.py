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


@event("sso.domain_changed", owner="identity", public=True)
class SsoDomainChanged(msgspec.Struct, frozen=True, kw_only=True):
    """An email domain of the tenant changed for single sign-on: claimed (its DNS TXT
    challenge issued), routed to a connection, checked (verified, or the check found no
    matching record), or released. `verified` and `connection_id` are the domain's state
    after the change; for a release, its state when it was released."""

    domain: str
    change: Literal["claimed", "released", "routed", "verified", "check_failed"]
    connection_id: UUID | None
    verified: bool


@event("sso.metadata_refreshed", owner="identity", public=True, opt_in=True)
class SsoMetadataRefreshed(msgspec.Struct, frozen=True, kw_only=True):
    """An admin had an SSO connection's IdP metadata fetched from its metadata URL now.
    `outcome` says whether the connection's IdP settings changed (updated: an
    sso.connection_changed follows), stayed as they were (unchanged), or the fetch failed
    and the last good settings were kept (failed, with the reason in `error`)."""

    connection_id: UUID
    outcome: Literal["updated", "unchanged", "failed"]
    error: str | None


@event("session.started", owner="identity", public=True, opt_in=True)
class SessionStarted(msgspec.Struct, frozen=True, kw_only=True):
    """A user signed in and a session began: with a password, or with a one-time SSO code
    the product exchanged (then `connection_id` names the SSO connection). `session_id`
    names the session in later session.refreshed and session.ended events."""

    account_id: UUID
    session_id: UUID
    method: Literal["password", "sso"]
    connection_id: UUID | None


@event("session.refreshed", owner="identity", public=True, opt_in=True)
class SessionRefreshed(msgspec.Struct, frozen=True, kw_only=True):
    """A session's refresh token was exchanged, once, for new tokens: the session goes on."""

    account_id: UUID
    session_id: UUID


@event("session.ended", owner="identity", public=True, opt_in=True)
class SessionEnded(msgspec.Struct, frozen=True, kw_only=True):
    """A session ended before its time: the user logged out (`logout`), the identity
    provider ended it with single logout (`idp_logout`), or a refresh token of the session
    was presented a second time, a sign that it was stolen, and the whole session was
    revoked (`refresh_token_reused`)."""

    account_id: UUID
    session_id: UUID
    reason: str


@event("user.sign_in_failed", owner="identity", public=True, opt_in=True)
class UserSignInFailed(msgspec.Struct, frozen=True, kw_only=True):
    """A sign-in to the tenant was refused. `method` is how it was tried; `reason` is why,
    as a code: for a password, unknown-account, wrong-password, account-disabled or the
    tenant's state (tenant-suspended, tenant-offboarding, tenant-not-active); for SSO, the
    code of the SSO login failure log (connection-disabled, bad-signature, replay,
    seat-limit, ...). `account_id` and `connection_id` are given when known. Carries no
    password and no email address."""

    method: Literal["password", "sso"]
    reason: str
    account_id: UUID | None
    connection_id: UUID | None


@event("user.sso_authenticated", owner="identity", public=True, opt_in=True)
class UserSsoAuthenticated(msgspec.Struct, frozen=True, kw_only=True):
    """A user's identity provider vouched for them through an SSO connection (a SAML
    response or an OIDC callback was accepted), and the product was handed a one-time code
    for them. `initiated_by` is `sp` when the login started at the product, `idp` for a
    SAML login the identity provider started. user.signed_in and session.started follow
    when the product exchanges the code."""

    account_id: UUID
    connection_id: UUID
    kind: Literal["saml", "oidc"]
    initiated_by: Literal["sp", "idp"]


@event("account.verification_sent", owner="identity", public=False)
class AccountVerificationSent(msgspec.Struct, frozen=True, kw_only=True):
    """A new email verification link was mailed to an account on request (a resend); the
    link works once, until `expires_at`."""

    account_id: UUID
    expires_at: datetime


@event("account.subscription_changed", owner="identity", public=False)
class AccountSubscriptionChanged(msgspec.Struct, frozen=True, kw_only=True):
    """An owner or admin subscribed to a kind of notice (`topic`: "legal-notices") or
    unsubscribed (`subscribed` false). Internal: the audit log records it."""

    account_id: UUID
    topic: str
    subscribed: bool
