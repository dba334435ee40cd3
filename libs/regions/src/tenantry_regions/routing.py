"""The home-region step of the request pipeline: a request for another region's tenant is
answered 307 with the same path on that region, before any tenant data is read
(docs/residency.md, "Routing").

What the step routes by:
1. what the path names: a tenant (`/v1/tenants/{tenant_id}/...`), else an SSO connection
   (`/sso/saml/{connection_id}/acs`); routes that declare `REGION_BY_QUERY` (the start of an
   SSO login) also by their query's `tenant_id`, `connection_id` or `email` (its domain).
   This service's replica of the directory answers, and for what it does not know yet (it
   lags, or the thing is new) the directory itself. When neither can answer, 503 with
   Retry-After: never a guess, never another region's answer.
2. otherwise the credential: an API key names its region in its prefix
   (`tnty_live_eu_...`, checked by its checksum first, so an edited prefix is not
   believed), an access token in its issuer (read unverified: only the home region can
   verify it, and a redirect trusts nothing).
The path wins because it names where the data is: a us operator's token on an eu tenant's
path is sent to eu (where it is refused: operators are per region), never back to us,
so no request is ever sent round in circles.

The step only runs in a deployment of several regions: with one, every tenant is home.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from uuid import UUID

from litestar import Request

from tenantry_credentials.apikeys import is_well_formed, looks_like_api_key, region_of
from tenantry_credentials.tokens import unverified_issuer
from tenantry_http.problems import Problem
from tenantry_regions.directory import ClaimKind, DirectoryUnavailable, TenantFacts
from tenantry_regions.regions import RegionMap

REGION_HEADER = "Tenantry-Region"
# A route's opt that keeps it out of routing: it answers for this region whatever tenant it
# names (the directory's and the key API's internal routes, which regions and services
# call on purpose).
REGION_LOCAL = "region_local"
# A route's opt that routes it by its query too (`tenant_id`, `connection_id`, `email`):
# anonymous entry points such as the start of an SSO login.
REGION_BY_QUERY = "region_by_query"
RETRY_UNLISTED_SECONDS = 30


def _uuid(value: object) -> UUID | None:
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            return None
    return None


class ReplicaLookup(Protocol):
    async def tenant(self, tenant_id: UUID) -> TenantFacts | None: ...

    async def by_connection(self, connection_id: UUID) -> TenantFacts | None: ...

    async def by_domain(self, domain: str) -> TenantFacts | None: ...


class DirectoryLookups(Protocol):
    """What routing asks of the directory: the lookups, never a write."""

    async def lookup(self, tenant_id: UUID) -> TenantFacts | None: ...

    async def holder(self, kind: ClaimKind, value: str) -> TenantFacts | None: ...


class TenantRouter:
    """Where a tenant lives: this service's replica, else the directory (misses are
    remembered briefly, so a flood of made-up tenant ids costs the directory little)."""

    def __init__(
        self,
        replica: ReplicaLookup,
        directory: DirectoryLookups,
        *,
        miss_ttl_seconds: float = 2.0,
        max_misses: int = 10_000,
    ) -> None:
        self._replica = replica
        self._directory = directory
        self._miss_ttl = miss_ttl_seconds
        self._max_misses = max_misses
        self._misses: OrderedDict[tuple[str, str], float] = OrderedDict()

    async def home_region(self, tenant_id: UUID) -> str | None:
        """The tenant's home region, or None when no region knows it. Raises
        DirectoryUnavailable when the replica does not know it and the directory cannot
        be asked."""
        return await self._place(
            ("tenant", str(tenant_id)),
            lambda: self._replica.tenant(tenant_id),
            lambda: self._directory.lookup(tenant_id),
        )

    async def home_region_of_connection(self, connection_id: UUID) -> str | None:
        """Where the tenant of an SSO connection lives (an SSO login names only that)."""
        value = str(connection_id)
        return await self._place(
            ("connection", value),
            lambda: self._replica.by_connection(connection_id),
            lambda: self._directory.holder("connection", value),
        )

    async def home_region_of_domain(self, domain: str) -> str | None:
        """Where the tenant that verified an email domain lives (home realm discovery)."""
        value = domain.strip().lower()
        return await self._place(
            ("domain", value),
            lambda: self._replica.by_domain(value),
            lambda: self._directory.holder("domain", value),
        )

    async def _place(
        self,
        key: tuple[str, str],
        replicated: Callable[[], Awaitable[TenantFacts | None]],
        asked: Callable[[], Awaitable[TenantFacts | None]],
    ) -> str | None:
        facts = await replicated()
        if facts is not None:
            return facts.home_region
        missed_at = self._misses.get(key)
        if missed_at is not None and time.monotonic() - missed_at < self._miss_ttl:
            return None
        facts = await asked()
        if facts is None:
            self._misses[key] = time.monotonic()
            self._misses.move_to_end(key)
            while len(self._misses) > self._max_misses:
                self._misses.popitem(last=False)
            return None
        self._misses.pop(key, None)
        return facts.home_region


def wrong_region(
    regions: RegionMap, service: str, request: Request[Any, Any, Any], home: str
) -> Problem:
    """307 to the same request on `home` (clients follow it, keeping method and body)."""
    location = regions.redirect_url(home, service, request.url.path, request.url.query)
    return Problem(
        307,
        "wrong-region",
        "This tenant lives in another region",
        f"Send this request to region {home}: {location}",
        headers={"Location": location, REGION_HEADER: home},
        region=home,
    )


def region_unknown(retry_after: int) -> Problem:
    return Problem(
        503,
        "region-unknown",
        "The tenant's region cannot be told yet",
        "This region does not know the tenant yet and the directory cannot be asked; retry",
        headers={"Retry-After": str(retry_after)},
    )


class HomeRegionStep:
    def __init__(self, regions: RegionMap, service: str, router: TenantRouter) -> None:
        self._regions = regions
        self._service = service
        self._router = router

    async def __call__(self, request: Request[Any, Any, Any]) -> None:
        opt = request.route_handler.opt
        if opt.get(REGION_LOCAL):
            return
        try:
            home = await self._home_of_named(request.path_params)
            if home is None and opt.get(REGION_BY_QUERY):
                home = await self._home_of_named(request.query_params)
        except DirectoryUnavailable as exc:
            raise region_unknown(exc.retry_after_seconds) from None
        if home is None and not self._names_anything(request):
            home = self.credential_region(request.headers.get("authorization", ""))
        if home is None or self._regions.is_own(home):
            return
        if home not in self._regions.regions:
            # The directory names a region this one's list lacks (a region being added,
            # this one not yet redeployed with it): no URL to send the request to.
            raise region_unknown(RETRY_UNLISTED_SECONDS)
        raise wrong_region(self._regions, self._service, request, home)

    async def _home_of_named(self, params: Mapping[str, Any]) -> str | None:
        """The home region of what the parameters name: a tenant, else an SSO connection,
        else an email address's domain."""
        tenant_id = _uuid(params.get("tenant_id"))
        if tenant_id is not None:
            return await self._router.home_region(tenant_id)
        connection_id = _uuid(params.get("connection_id"))
        if connection_id is not None:
            return await self._router.home_region_of_connection(connection_id)
        email = params.get("email")
        if isinstance(email, str) and "@" in email:
            return await self._router.home_region_of_domain(email.rpartition("@")[2])
        return None

    @staticmethod
    def _names_anything(request: Request[Any, Any, Any]) -> bool:
        """The path names a tenant or a connection: that decides, not the credential (a
        thing of this region no region knows is this region's 404)."""
        return any(k in request.path_params for k in ("tenant_id", "connection_id"))

    def foreign_credential_region(self, authorization: str) -> str | None:
        """The region a bearer credential names when it is another region than this one."""
        named = self.credential_region(authorization)
        return None if named is None or self._regions.is_own(named) else named

    def credential_region(self, authorization: str) -> str | None:
        """The region a bearer credential names (a listed one), or None."""
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            return None
        if looks_like_api_key(credential):
            named = region_of(credential) if is_well_formed(credential) else None
        else:
            issuer = unverified_issuer(credential)
            named = self._regions.region_of_issuer(issuer) if issuer else None
        return named if named in self._regions.regions else None
