"""The authentication step of the pipeline, and what routes declare they need.

Every route needs an authenticated principal unless it says `opt={"auth": PUBLIC}`;
a route may demand roles or scopes with `opt={"auth": Requires(...)}`. Credentials travel
as `Authorization: Bearer`: an API key is recognised by its `tnty_` prefix, anything else
is an access token. Both are checked locally (API keys against this service's projection
of apikey.* events, tokens against identity's JWKS): no call to identity per request.

401 (with WWW-Authenticate) when the credential is missing or bad; 403 when it is good but
lacks the role or scope the route needs.

After authentication the tenant guard admits a tenant's principal by the tenant's state
(this service's projection of tenant.* events). Operators pass in every state.

    state        admitted                                           otherwise
    active       every route                                        -
    suspended    routes declaring it in `tenant_states`             403 tenant-suspended
    offboarding  reads (GET, HEAD) by an owner or admin user, and   403 tenant-offboarding
                 routes declaring it (the export routes)
    purging      nowhere, whatever a route declares                 403 tenant-not-active
    purged       nowhere                                            404 tenant-not-found
    (unknown)    - (after a bounded wait for the projection)        404 tenant-not-found
    a new state  routes declaring it                                403 tenant-not-active

An API key is never an admin (it has scopes, not roles): during offboarding it reaches
only the routes that declare the state (SCIM's reads do). A purged tenant is answered
like one that never existed, 404 rather than 410: its projection row may be gone with the
rest of its data, and the answer must not depend on which service still had it.
Identity's sign-in applies the same table through `tenant_refusal(status,
admin_access=...)`: during offboarding only owners and admins get tokens.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar
from uuid import UUID

import msgspec
from litestar import Request

from tenantry_credentials.apikeys import is_well_formed, key_hash, looks_like_api_key
from tenantry_credentials.tokens import AccessTokenVerifier, InvalidToken
from tenantry_http.pipeline import route_class_of
from tenantry_http.problems import Problem
from tenantry_platform.clock import Clock, SystemClock, utc

T = TypeVar("T")

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
        principal = await self.principal(request.headers.get("authorization", ""))
        # Another tenant's resource is "not found" before anything else is said about it
        # (not even that the route needs a role the caller lacks).
        path_tenant: object = request.scope.get("path_params", {}).get("tenant_id")
        if path_tenant is not None and (
            not isinstance(path_tenant, UUID) or not principal.can_act_on(path_tenant)
        ):
            raise Problem(404, "not-found", "Not found", "No resource at this URL")
        check(principal, requirement)
        request.state[STATE_KEY] = principal

    async def principal(self, authorization: str) -> Principal:
        """Who an Authorization header's bearer credential is; a 401 `Problem` if nobody."""
        scheme, _, credential = authorization.partition(" ")
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
            return await self._api_key_principal(credential)
        return await self._token_principal(credential)

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


# A tenant's requests are admitted only in the states its route admits (DESIGN.md, "Data
# lifecycle"): `active` unless the route says more. A state added later is refused until a
# route or route class names it.
ACTIVE_ONLY: frozenset[str] = frozenset({"active"})
# The purge has begun or is over: no route may admit these, whatever it declares.
NEVER_ADMITTED: frozenset[str] = frozenset({"purging", "purged"})
# The roles that keep reading (and signing in) while their tenant is offboarding.
TENANT_ADMIN_ROLES: frozenset[str] = frozenset({"owner", "admin"})
READ_METHODS: frozenset[str] = frozenset({"GET", "HEAD"})


def tenant_suspended() -> Problem:
    return Problem(
        403,
        "tenant-suspended",
        "This tenant is suspended",
        "Contact the platform operator to restore access",
    )


def tenant_offboarding() -> Problem:
    return Problem(
        403,
        "tenant-offboarding",
        "This tenant is being offboarded",
        "The tenant is offboarding: until its data is purged, its owners and admins may"
        " sign in, read and export, and nothing can be changed. An owner can cancel the"
        " offboarding.",
        tenant_status="offboarding",
    )


def tenant_not_found() -> Problem:
    return Problem(
        404,
        "tenant-not-found",
        "There is no such tenant",
        "This service does not know the tenant (it may have been created moments ago:"
        " if so, retry shortly)",
    )


def tenant_refusal(
    status: str | None, admitted: frozenset[str] = ACTIVE_ONLY, *, admin_access: bool = False
) -> Problem | None:
    """Why a tenant in `status` may not do what admits `admitted` (None: it may).
    `admin_access`: the caller is a tenant owner or admin doing what admins may still do
    during offboarding (reading, signing in)."""
    if status is None or status == "purged":
        return tenant_not_found()
    if status in NEVER_ADMITTED:
        return tenant_not_active(status)
    if status in admitted or (status == "offboarding" and admin_access):
        return None
    if status == "suspended":
        return tenant_suspended()
    if status == "offboarding":
        return tenant_offboarding()
    return tenant_not_active(status)


def tenant_not_active(status: str) -> Problem:
    return Problem(
        403,
        "tenant-not-active",
        "This tenant cannot do this in its current state",
        f"the tenant is {status}",
        tenant_status=status,
    )


@dataclass(frozen=True, slots=True)
class ProjectionWait:
    """How long to wait for a projection to hear of a tenant it does not know yet (a new
    tenant whose events are on their way) before answering that there is none: bounded,
    so a tenant that does not exist gets a 404, never an endless 503."""

    timeout: float = 2.0
    interval: float = 0.05
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def until_known(self, probe: Callable[[], Awaitable[T | None]]) -> T | None:
        """`probe()` until it returns something, at most `timeout` (counted in intervals
        slept, so a test's sleep controls it); None if it never did."""
        found = await probe()
        for _ in range(math.ceil(self.timeout / self.interval)):
            if found is not None:
                break
            await self.sleep(self.interval)
            found = await probe()
        return found


class TenantGuard:
    """PipelineStep after authentication.

    (The Authenticator already answered 404 to another tenant's credential on
    /v1/tenants/{tenant_id}/..., before the route reads its body.)

    - A principal of a tenant passes only if the tenant's state (this service's own
      projection of tenant.* events) is one its route admits: the route's
      `opt={"tenant_states": [...]}`, else `admitted[route class]`, else `active` only;
      and, during offboarding, an owner's or admin's read (the module docstring's table).
      A suspended tenant gets 403 tenant-suspended, an offboarding one 403
      tenant-offboarding, whatever credential it carries (token or API key, issued before
      or not).
    - A tenant the projection has not heard of is waited for (`wait`), then 404
      tenant-not-found.
    - Operators pass: they reactivate, and act on tenants in any state.
    """

    def __init__(
        self,
        tenants: TenantStatus,
        *,
        admitted: Mapping[str, frozenset[str]] | None = None,
        wait: ProjectionWait | None = None,
    ) -> None:
        self._tenants = tenants
        self._admitted = dict(admitted or {})
        self._wait = wait or ProjectionWait()

    def admitted_for(self, request: Request[Any, Any, Any]) -> frozenset[str]:
        declared = request.route_handler.opt.get("tenant_states")
        if declared is not None:
            return frozenset(declared)
        return self._admitted.get(route_class_of(request), ACTIVE_ONLY)

    async def __call__(self, request: Request[Any, Any, Any]) -> None:
        principal: Principal | None = request.state.get(STATE_KEY)
        if principal is None or principal.tenant_id is None or principal.is_operator:
            return
        tenant_id = principal.tenant_id
        status = await self._wait.until_known(lambda: self._tenants.status(tenant_id))
        refusal = tenant_refusal(
            status, self.admitted_for(request), admin_access=admin_reading(principal, request)
        )
        if refusal is not None:
            raise refusal


def admin_reading(principal: Principal, request: Request[Any, Any, Any]) -> bool:
    """A tenant owner's or admin's read: what an offboarding tenant still allows."""
    return (
        principal.kind == "user"
        and bool(principal.roles & TENANT_ADMIN_ROLES)
        and request.method in READ_METHODS
    )
