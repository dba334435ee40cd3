"""SSO rules: pure, no I/O. The SSO connection aggregate, login refusals, the identity an
IdP asserts and how it maps to an account."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal
from uuid import UUID

import msgspec

from tenantry_events.aggregates import UnfoldableStream, first_payload, state_from
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.identity import SsoConnectionChanged
from tenantry_identity.domain import IdentityRuleBroken, normalise_email

ConnectionKind = Literal["saml", "oidc"]


@dataclass(frozen=True)
class SsoConnection:
    """What a connection's stream (sso-connection-<id>) says of it. Each
    sso.connection_changed carries the kind, name and enabled switch after the change; the
    IdP settings, attribute mapping and secrets are the row's alone (no event repeats them:
    events are public, and certificates and secrets have no place in them)."""

    connection_id: UUID
    tenant_id: UUID
    kind: str
    name: str
    enabled: bool
    deleted: bool
    version: int

    @staticmethod
    def start(event: Envelope[Any]) -> SsoConnection:
        created = first_payload(event, SsoConnectionChanged, "an SSO connection")
        if created.change != "created":
            raise UnfoldableStream(
                f"an SSO connection's stream starts with its creation, not {created.change!r}"
            )
        return state_from(
            created,
            SsoConnection,
            tenant_id=event.tenant_id,
            deleted=False,
            version=event.aggregate_version,
        )

    def apply(self, event: Envelope[Any]) -> SsoConnection:
        changed = event.payload
        if (
            not isinstance(changed, SsoConnectionChanged)
            or changed.change == "created"
            or self.deleted
        ):
            raise UnfoldableStream.unexpected(event, self)
        return replace(
            self,
            kind=changed.kind,
            name=changed.name,
            enabled=changed.enabled,
            deleted=changed.change == "deleted",
            version=event.aggregate_version,
        )

    def keeps_row(self) -> bool:
        return not self.deleted


# Why a login was refused. The code and the detail go to the tenant admin's failure log
# (GET .../sso/connections/{id}/login-failures); the user sees only USER_MESSAGES[code].
RefusalCode = Literal[
    "connection-disabled",
    "malformed",
    "idp-error",  # the IdP answered with an error status (SAML) or error= (OIDC)
    "unsigned",
    "bad-signature",
    "unknown-certificate",
    "deprecated-algorithm",
    "wrong-issuer",
    "wrong-audience",
    "wrong-destination",
    "wrong-recipient",
    "expired",
    "not-yet-valid",
    "replay",
    "unsolicited",  # IdP-initiated where the connection does not allow it
    "unknown-request",  # InResponseTo / state that we never sent, or that expired
    "wrong-nonce",
    "token-exchange-failed",
    "idp-unreachable",
    "missing-email",
    "email-domain-not-allowed",
    "account-disabled",
    "seat-limit",
    "tenant-suspended",
    "tenant-offboarding",  # only the owners and admins of an offboarding tenant sign in
    "not-encrypted",  # the connection wants encrypted assertions and got a plain one
    "undecryptable",  # an encrypted assertion or NameID our key cannot decrypt
    "sso-not-in-plan",  # the tenant's plan no longer includes SSO
    "temporarily-unavailable",  # identity cannot decide now (e.g. limits not known yet)
]

USER_MESSAGES: Mapping[str, str] = {
    "connection-disabled": "Single sign-on is turned off for this organisation.",
    "idp-error": "Your identity provider did not sign you in.",
    "unsolicited": "Start the sign-in from the application, not from your identity provider.",
    "unknown-request": "This sign-in attempt expired or was already used. Please start again.",
    "replay": "This sign-in attempt expired or was already used. Please start again.",
    "expired": "The sign-in took too long or the clocks disagree. Please start again.",
    "not-yet-valid": "The sign-in took too long or the clocks disagree. Please start again.",
    "idp-unreachable": "We could not reach your identity provider. Please try again shortly.",
    "missing-email": "Your identity provider did not send an email address for you.",
    "email-domain-not-allowed": "Your email domain is not allowed for this organisation.",
    "account-disabled": "Your account is disabled. Ask your administrator.",
    "seat-limit": "Your organisation has no free seats. Ask your administrator.",
    "tenant-suspended": "This organisation's account is suspended.",
    "tenant-offboarding": (
        "This organisation is leaving the service: only its administrators may sign in."
    ),
    "sso-not-in-plan": "Single sign-on is not part of this organisation's plan.",
    "temporarily-unavailable": "Sign-in is briefly unavailable. Please try again shortly.",
}
DEFAULT_USER_MESSAGE = (
    "Single sign-on failed. Your administrator can see the reason in the SSO login log."
)


class LoginRefused(Exception):
    """A login that must not succeed. `code` is for programs and admins, `detail` for the
    admin's failure log (never shown to the user: it may name certificates or claims)."""

    def __init__(self, code: RefusalCode, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code: RefusalCode = code
        self.detail = detail

    @property
    def user_message(self) -> str:
        return USER_MESSAGES.get(self.code, DEFAULT_USER_MESSAGE)


class IdpIdentity(msgspec.Struct, frozen=True, kw_only=True):
    """Who the IdP says signed in: its stable subject and the raw attributes or claims."""

    subject: str  # SAML NameID / OIDC sub
    attributes: dict[str, list[str]]  # every value as a list of strings
    session_index: str | None = None  # SAML SessionIndex, for single logout


def unstorable(identity: IdpIdentity) -> str | None:
    """Why the IdP's identity cannot be stored as it reads (a NUL, which Postgres text
    refuses, or a lone surrogate, which cannot be encoded), or None. The IdP's words reach
    us signed, past the input guard, so they are checked here."""
    texts = [("the subject", identity.subject), ("the session index", identity.session_index)]
    for name, values in identity.attributes.items():
        texts.append(("an attribute name", name))
        texts.extend((f"attribute {name[:64]!r}", value) for value in values)
    for where, text in texts:
        if text is None:
            continue
        if "\x00" in text:
            return f"{where} contains U+0000"
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return f"{where} contains an unpaired surrogate"
    return None


def as_attribute_lists(claims: Mapping[str, Any]) -> dict[str, list[str]]:
    """OIDC claims in the same shape as SAML attributes (lists of strings)."""
    out: dict[str, list[str]] = {}
    for name, value in claims.items():
        values: Sequence[Any] = value if isinstance(value, list) else [value]
        out[name] = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    return out


# ---------------------------------------------------------------------- attribute mapping

MappedRole = Literal["admin", "member"]  # an IdP group never makes an owner
_ROLE_RANK: Mapping[str, int] = {"member": 0, "admin": 1}
SUBJECT = "$subject"  # in an email mapping: the NameID / sub itself

# What Okta, Entra ID, Google, ADFS and OIDC providers call these, tried in order.
DEFAULT_EMAIL = [
    "email",
    "mail",
    "emailaddress",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
    "urn:oid:0.9.2342.19200300.100.1.3",
    "preferred_username",
    SUBJECT,
]
DEFAULT_GIVEN_NAME = [
    "given_name",
    "givenName",
    "firstName",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/givenname",
    "urn:oid:2.5.4.42",
]
DEFAULT_FAMILY_NAME = [
    "family_name",
    "sn",
    "surname",
    "lastName",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/surname",
    "urn:oid:2.5.4.4",
]
DEFAULT_GROUPS = [
    "groups",
    "memberOf",
    "http://schemas.microsoft.com/ws/2008/06/identity/claims/groups",
]


class AttributeMapping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which IdP attributes (SAML) or claims (OIDC) become the profile, configured per
    connection; each field lists names tried in order."""

    email: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_EMAIL))
    given_name: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_GIVEN_NAME))
    family_name: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_FAMILY_NAME))
    groups: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_GROUPS))
    # IdP group -> role; the highest role among the user's groups wins. Empty: roles are
    # managed in Tenantry, SSO never changes them.
    roles: dict[str, MappedRole] = msgspec.field(default_factory=dict)
    default_role: MappedRole = "member"  # for JIT accounts whose groups map to nothing


class MappedProfile(msgspec.Struct, frozen=True, kw_only=True):
    email: str
    given_name: str | None
    family_name: str | None
    groups: list[str]
    role: MappedRole | None  # None: the mapping does not manage roles
    # An `email_verified` claim (OIDC) or attribute when the IdP sends one; else None.
    email_verified_by_idp: bool | None


def _first(identity: IdpIdentity, names: Sequence[str]) -> str | None:
    for name in names:
        if name == SUBJECT:
            if "@" in identity.subject:
                return identity.subject
            continue
        values = identity.attributes.get(name)
        if values and values[0].strip():
            return values[0].strip()
    return None


def map_profile(identity: IdpIdentity, mapping: AttributeMapping) -> MappedProfile:
    """The profile an SSO login yields (LoginRefused if it has no email address)."""
    found = _first(identity, mapping.email)
    try:
        email = normalise_email(found or "")
    except IdentityRuleBroken:
        raise LoginRefused(
            "missing-email",
            f"none of the mapped email attributes {mapping.email} holds an address "
            f"(found {found!r}); received attributes: {sorted(identity.attributes)}",
        ) from None
    groups: list[str] = []
    for name in mapping.groups:
        groups.extend(v for v in identity.attributes.get(name, []) if v not in groups)
    role: MappedRole | None = None
    if mapping.roles:
        matched: list[MappedRole] = [mapping.roles[g] for g in groups if g in mapping.roles]
        role = sorted(matched, key=_ROLE_RANK.__getitem__)[-1] if matched else mapping.default_role
    verified = identity.attributes.get("email_verified")
    return MappedProfile(
        email=email,
        given_name=_first(identity, mapping.given_name),
        family_name=_first(identity, mapping.family_name),
        groups=groups,
        role=role,
        email_verified_by_idp=(verified[0] == "true") if verified else None,
    )
