"""The authentication step of the pipeline, and what routes declare they need.

Every route needs an authenticated principal unless it says `opt={"auth": PUBLIC}`;
a route may demand roles or scopes with `opt={"auth": Requires(...)}`. Credentials travel
as `Authorization: Bearer`: an API key is recognised by its `tnty_` prefix, anything else
is an access token. Both are checked locally (API keys against this service's projection
of apikey.* events, tokens against identity's JWKS): no call to identity per request.

401 (with WWW-Authenticate) when the credential is missing or bad; 403 when it is good but
lacks the role or scope the route needs.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

import msgspec
from litestar import Request

from tenantry_servicekit.apikeys import is_well_formed, key_hash, looks_like_api_key
from tenantry_servicekit.clock import Clock, SystemClock, utc
from tenantry_servicekit.problems import Problem
from tenantry_servicekit.tokens import AccessTokenVerifier, InvalidToken

PrincipalKind = Literal["user", "operator", "api_key"]
STATE_KEY = "principal"


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    kind: PrincipalKind
    subject: str  # account id, or API key id
    tenant_id: UUID | None  # None for operators
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    email_verified: bool = True
    credential_id: str = ""  # session family (tokens) or key id

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    def can_act_on(self, tenant_id: UUID) -> bool:
        return self.is_operator or self.tenant_id == tenant_id


class Requires(msgspec.Struct, frozen=True):
    """What a route needs. `scopes` apply to API keys, `roles` to users; operators pass
    both unless `operator=False`."""

    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    operator_only: bool = False
    public: bool = False
    verified_email: bool = False


PUBLIC = Requires(public=True)
AUTHENTICATED = Requires()


def requires(
    *,
    roles: tuple[str, ...] = (),
    scopes: tuple[str, ...] = (),
    operator_only: bool = False,
    verified_email: bool = False,
) -> dict[str, Any]:
    """The route `opt` that declares its requirement: `@get(..., opt=requires(scopes=...))`."""
    return {
        "auth": Requires(
            roles=frozenset(roles),
            scopes=frozenset(scopes),
            operator_only=operator_only,
            verified_email=verified_email,
        )
    }


class ApiKeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    tenant_id: UUID
    scopes: frozenset[str]
    owner_account_id: UUID | None
    expires_at: datetime | None
    revoked: bool


class ApiKeyLookup(Protocol):
    async def by_hash(self, digest: bytes) -> ApiKeyRecord | None: ...


class AccountStatus(Protocol):
    async def is_disabled(self, account_id: UUID) -> bool: ...


class UsageRecorder(Protocol):
    def note(self, key_id: str, tenant_id: UUID) -> None: ...


def unauthenticated(detail: str, error: str = "invalid_token") -> Problem:
    return Problem(
        401,
        "unauthenticated",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": f'Bearer realm="tenantry", error="{error}"'},
    )


def forbidden(detail: str) -> Problem:
    return Problem(403, "forbidden", "Not allowed", detail)


class Authenticator:
    """PipelineStep: resolve the credential to a Principal and check the route's needs."""

    def __init__(
        self,
        tokens: AccessTokenVerifier,
        api_keys: ApiKeyLookup,
        accounts: AccountStatus,
        *,
        usage: UsageRecorder | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._usage = usage
        self._tokens = tokens
        self._api_keys = api_keys
        self._accounts = accounts
        self._clock = clock or SystemClock()

    async def __call__(self, request: Request[Any, Any, Any]) -> None:
        requirement: Requires = request.route_handler.opt.get("auth", AUTHENTICATED)
        if requirement.public:
            return
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Problem(
                401,
                "unauthenticated",
                "Authentication required",
                "Send a bearer access token or API key",
                headers={"WWW-Authenticate": 'Bearer realm="tenantry"'},
            )
        credential = credential.strip()
        if looks_like_api_key(credential):
            principal = await self._api_key_principal(credential)
        else:
            principal = await self._token_principal(credential)
        # Another tenant's resource is "not found" before anything else is said about it
        # (not even that the route needs a role the caller lacks).
        path_tenant: object = request.scope.get("path_params", {}).get("tenant_id")
        if path_tenant is not None and (
            not isinstance(path_tenant, UUID) or not principal.can_act_on(path_tenant)
        ):
            raise Problem(404, "not-found", "Not found", "No resource at this URL")
        check(principal, requirement)
        request.state[STATE_KEY] = principal

    async def _api_key_principal(self, key: str) -> Principal:
        if not is_well_formed(key):
            raise unauthenticated("malformed API key")
        record = await self._api_keys.by_hash(key_hash(key))
        if record is None or record.revoked:
            raise unauthenticated("unknown or revoked API key")
        if record.expires_at is not None and record.expires_at <= utc(self._clock):
            raise unauthenticated("expired API key")
        if self._usage is not None:
            self._usage.note(record.key_id, record.tenant_id)
        return Principal(
            kind="api_key",
            subject=record.key_id,
            tenant_id=record.tenant_id,
            scopes=record.scopes,
            credential_id=record.key_id,
        )

    async def _token_principal(self, token: str) -> Principal:
        try:
            claims = await self._tokens.verify(token)
        except InvalidToken as exc:
            raise unauthenticated(str(exc)) from None
        kind = claims.get("kind")
        tid = claims.get("tid")
        if kind not in ("user", "operator") or (kind == "user" and not tid):
            raise unauthenticated("token has no principal")
        try:
            account_id = UUID(claims["sub"])
        except ValueError:
            raise unauthenticated("token has no principal") from None
        if kind == "user" and await self._accounts.is_disabled(account_id):
            raise unauthenticated("the account is disabled")
        return Principal(
            kind=kind,
            subject=claims["sub"],
            tenant_id=UUID(tid) if tid else None,
            roles=frozenset(claims.get("roles", [])),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            email_verified=bool(claims.get("ev", False)),
            credential_id=str(claims.get("sid", "")),
        )


def check(principal: Principal, requirement: Requires) -> None:
    if principal.is_operator:
        return
    if requirement.operator_only:
        raise forbidden("operators only")
    if principal.kind == "api_key":
        missing = requirement.scopes - principal.scopes
        if missing:
            raise forbidden(f"the API key lacks scope {', '.join(sorted(missing))}")
        return
    if requirement.roles and not (requirement.roles & principal.roles):
        raise forbidden(f"needs one of the roles {', '.join(sorted(requirement.roles))}")
    if requirement.verified_email and not principal.email_verified:
        raise Problem(403, "email-not-verified", "Verify your email address first")


def principal_of(request: Request[Any, Any, Any]) -> Principal:
    principal: Principal | None = request.state.get(STATE_KEY)
    if principal is None:
        raise unauthenticated("no principal")
    return principal


class TenantStatus(Protocol):
    async def status(self, tenant_id: UUID) -> str | None: ...


def tenant_suspended() -> Problem:
    return Problem(
        403,
        "tenant-suspended",
        "This tenant is suspended",
        "Contact the platform operator to restore access",
    )


class TenantGuard:
    """PipelineStep after authentication.

    (The Authenticator already answered 404 to another tenant's credential on
    /v1/tenants/{tenant_id}/..., before the route reads its body.)

    - Every request of a suspended tenant gets 403 tenant-suspended, whatever credential it
      carries (token or API key, issued before the suspension or not), from this service's
      own projection of tenant.* events. Operators pass: they reactivate.
    """

    def __init__(self, tenants: TenantStatus) -> None:
        self._tenants = tenants

    async def __call__(self, request: Request[Any, Any, Any]) -> None:
        principal: Principal | None = request.state.get(STATE_KEY)
        if principal is None:
            return
        if (
            principal.tenant_id is not None
            and not principal.is_operator
            and await self._tenants.status(principal.tenant_id) == "suspended"
        ):
            raise tenant_suspended()
