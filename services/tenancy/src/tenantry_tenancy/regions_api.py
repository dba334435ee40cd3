"""The deployment's regions, and the global operator view (docs/residency.md).

    GET /v1/regions                 every region: id, jurisdiction, each service's URL
    GET /v1/regions/tenants         every tenant of every region, from the directory only

Operators are per region: an operator of any region may list every region's tenants, but
sees only the directory's facts (id, slug, home region, status, verified domains, SSO
connection ids), never a name or an address: those stay in the tenant's home region,
where that region's operators read them.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get
from litestar.params import FromQuery

from tenantry_http.api_docs import problems
from tenantry_http.auth import AUTHENTICATED, requires
from tenantry_http.pagination import Page, clamp_limit, decode_cursor, encode_cursor
from tenantry_http.problems import Problem
from tenantry_regions.directory import DirectoryUnavailable, TenantFacts
from tenantry_service.residency import directory_of, directory_unavailable
from tenantry_service.runtime import Runtime


class RegionView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    jurisdiction: str
    urls: dict[str, str]
    hosts_directory: bool
    current: bool  # the region that answered


@get("/regions", tags=["regions"], opt={"auth": AUTHENTICATED}, summary="The regions")
async def list_regions(request: Request[Any, Any, Any]) -> list[RegionView]:
    regions = request.app.state.runtime.regions
    return [
        RegionView(
            id=r.id,
            jurisdiction=r.jurisdiction,
            urls=r.urls,
            hosts_directory=r.id == regions.directory_region,
            current=regions.is_own(r.id),
        )
        for r in sorted(regions.regions.values(), key=lambda r: r.id)
    ]


@get(
    "/regions/tenants",
    tags=["regions"],
    opt=requires(operator_only=True),
    responses=problems(422),  # a region filter naming no region
    summary="Every region's tenants (directory facts only)",
)
async def list_directory_tenants(
    request: Request[Any, Any, Any],
    cursor: FromQuery[str | None] = None,
    limit: FromQuery[int | None] = None,
    region: FromQuery[str | None] = None,
    status: FromQuery[str | None] = None,
) -> Page[TenantFacts]:
    """Pages through the directory in the order it recorded facts (a cursor stays valid
    while facts change: a changed tenant moves to the end). Filters by home region and
    status apply within each page's read."""
    runtime: Runtime = request.app.state.runtime
    size = clamp_limit(limit)
    key = decode_cursor(cursor) or [0]
    if len(key) != 1 or not isinstance(key[0], int) or key[0] < 0:
        raise Problem(400, "invalid-cursor", "The cursor is not valid")
    after: int = key[0]
    if region is not None and region not in runtime.regions.regions:
        raise Problem(422, "unknown-region", "No such region", f"no region {region!r}")
    found: list[TenantFacts] = []
    try:
        while len(found) <= size:
            page = await directory_of(runtime).changes(after, 500)
            found += [
                f
                for f in page.facts
                if (region is None or f.home_region == region)
                and (status is None or f.status == status)
            ]
            after = page.next_after
            if page.complete:
                break
    except DirectoryUnavailable as exc:
        raise directory_unavailable(exc, "Listing every region's tenants") from None
    data = found[:size]
    more = len(found) > size
    return Page(data=data, next_cursor=encode_cursor([data[-1].seq]) if more and data else None)


REGION_ROUTES = [list_regions, list_directory_tenants]
