"""The global directory's HTTP API, served by tenancy in the region that hosts it
(tenantry_regions.directory describes the protocol). Under /internal/v1/directory, out of
the OpenAPI document, answering only `Authorization: Tenantry-Directory <secret>` (the
deployment's directory secret, shared by its regions), never a tenant's or an operator's
token. In any other region these routes answer 404: that region has no directory.

    POST   /internal/v1/directory/claims                     200 granted | 409 taken
    DELETE /internal/v1/directory/claims/{kind}/{value}?tenant_id=   204 | 404
    PUT    /internal/v1/directory/tenants/{tenant_id}         the tenant's current facts
    POST   /internal/v1/directory/tenants/{tenant_id}/move    switch its home region
    GET    /internal/v1/directory/tenants/{tenant_id}         its facts | 404
    GET    /internal/v1/directory/claims/{kind}/{value}       the holder's facts | 404
    GET    /internal/v1/directory/changes?after=&limit=       the change feed
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from litestar import Request, Response, Router, delete, get, post, put
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody

from tenantry_http.auth import PUBLIC
from tenantry_http.problems import Problem
from tenantry_regions.directory import (
    AUTH_SCHEME,
    BASE_PATH,
    ClaimAnswer,
    ClaimKind,
    ClaimRequest,
    FeedPage,
    HomeRegionMismatch,
    TenantFacts,
)
from tenantry_regions.regions import UnknownRegion
from tenantry_regions.routing import REGION_LOCAL
from tenantry_service.internal import shared_secret_guard
from tenantry_service.runtime import Runtime
from tenantry_tenancy.directory.store import MAX_PAGE, DirectoryStore

# Public to the pipeline's authenticator; the guard checks the directory secret instead.
# Critical: a region's tenant creation waits on a claim.
_ROUTE_OPT: dict[str, Any] = {"auth": PUBLIC, "priority": "critical", REGION_LOCAL: True}

directory_caller = shared_secret_guard(
    AUTH_SCHEME,
    lambda settings: settings.directory_secret,
    "The directory answers the deployment's regions only",
)


def directory_store(runtime: NamedDependency[Runtime]) -> DirectoryStore:
    store = runtime.extras.get("directory_store")
    if not isinstance(store, DirectoryStore):
        raise Problem(404, "not-found", "Not found", "This region does not host the directory")
    return store


def _known_region(runtime: Runtime, region: str) -> None:
    try:
        runtime.regions.require(region)
    except UnknownRegion as exc:
        raise Problem(422, "unknown-region", "Unknown region", str(exc)) from None


@post("/claims", opt=_ROUTE_OPT, include_in_schema=False, status_code=200)
async def claim(
    request: Request[Any, Any, Any],
    data: JSONBody[ClaimRequest],
    directory_store: DirectoryStore,
) -> Response[ClaimAnswer]:
    _known_region(request.app.state.runtime, data.home_region)
    answer = await directory_store.claim(data)
    return Response(answer, status_code=200 if answer.granted else 409)


@delete("/claims/{kind:str}/{value:str}", opt=_ROUTE_OPT, include_in_schema=False)
async def release(
    kind: FromPath[ClaimKind],
    value: FromPath[str],
    tenant_id: FromQuery[UUID],
    directory_store: DirectoryStore,
) -> None:
    if not await directory_store.release(kind, value, tenant_id):
        raise Problem(404, "not-found", "Not found", "The tenant holds no such claim")


@put("/tenants/{tenant_id:uuid}", opt=_ROUTE_OPT, include_in_schema=False)
async def record(
    request: Request[Any, Any, Any],
    tenant_id: FromPath[UUID],
    data: JSONBody[TenantFacts],
    directory_store: DirectoryStore,
) -> TenantFacts:
    if data.tenant_id != tenant_id:
        raise Problem(422, "tenant-mismatch", "Tenant mismatch", "Body and path differ")
    _known_region(request.app.state.runtime, data.home_region)
    try:
        return await directory_store.record(data)
    except HomeRegionMismatch as exc:
        raise _mismatch(exc) from None


class MoveRequest(msgspec.Struct, frozen=True, kw_only=True):
    from_region: str
    to_region: str


@post("/tenants/{tenant_id:uuid}/move", opt=_ROUTE_OPT, include_in_schema=False, status_code=200)
async def move(
    request: Request[Any, Any, Any],
    tenant_id: FromPath[UUID],
    data: JSONBody[MoveRequest],
    directory_store: DirectoryStore,
) -> TenantFacts:
    for region in (data.from_region, data.to_region):
        _known_region(request.app.state.runtime, region)
    try:
        return await directory_store.move(tenant_id, data.from_region, data.to_region)
    except LookupError:
        raise Problem(404, "not-found", "Not found", "No region knows this tenant") from None
    except HomeRegionMismatch as exc:
        raise _mismatch(exc) from None


def _mismatch(exc: HomeRegionMismatch) -> Problem:
    return Problem(
        409, "home-region-mismatch", "The tenant lives elsewhere", str(exc), region=exc.home_region
    )


@get("/tenants/{tenant_id:uuid}", opt=_ROUTE_OPT, include_in_schema=False)
async def lookup(tenant_id: FromPath[UUID], directory_store: DirectoryStore) -> TenantFacts:
    facts = await directory_store.lookup(tenant_id)
    if facts is None:
        raise Problem(404, "not-found", "Not found", "No region knows this tenant")
    return facts


@get("/claims/{kind:str}/{value:str}", opt=_ROUTE_OPT, include_in_schema=False)
async def holder(
    kind: FromPath[ClaimKind], value: FromPath[str], directory_store: DirectoryStore
) -> TenantFacts:
    facts = await directory_store.holder(kind, value)
    if facts is None:
        raise Problem(404, "not-found", "Not found", "No tenant holds this claim")
    return facts


@get("/changes", opt=_ROUTE_OPT, include_in_schema=False)
async def changes(
    directory_store: DirectoryStore, after: FromQuery[int] = 0, limit: FromQuery[int] = 500
) -> FeedPage:
    if after < 0 or not 1 <= limit <= MAX_PAGE:
        raise Problem(400, "bad-cursor", "Bad cursor", f"after >= 0, 1 <= limit <= {MAX_PAGE}")
    return await directory_store.changes(after, limit)


DIRECTORY_API = Router(
    path=BASE_PATH,
    route_handlers=[claim, release, record, move, lookup, holder, changes],
    guards=[directory_caller],
    dependencies={"directory_store": Provide(directory_store, sync_to_thread=False)},
    response_headers={"Cache-Control": "no-store"},
)
