"""Data residency in every service (docs/residency.md): the directory as this process
reaches it, the home-region step of its pipeline, and the worker task that keeps its
replica of the directory.

With one region there is nothing to route and nothing to replicate: the step is left out
and the replication task waits for the worker to stop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

from litestar import Request

from tenantry_http.problems import Problem
from tenantry_platform.clock import Clock, SystemClock, utc
from tenantry_projections.directory_replica import DirectoryReplica
from tenantry_regions.client import DirectoryClient
from tenantry_regions.directory import ClaimKind, ClaimRequest, Directory, DirectoryUnavailable
from tenantry_regions.routing import HomeRegionStep, TenantRouter, region_unknown, wrong_region
from tenantry_service.periodic import Counted, run_periodically
from tenantry_service.runtime import Runtime

log = logging.getLogger("tenantry.residency")
DIRECTORY = "directory"
FEED_PAGE = 500


def directory_of(runtime: Runtime) -> Directory:
    """The directory, one per process: tenancy in the hosting region puts its store in
    `runtime.extras["directory"]` at start-up; every other process talks HTTP to it."""
    found = runtime.extras.get(DIRECTORY)
    if found is None:
        settings = runtime.settings
        url = settings.directory_url or runtime.regions.require(
            runtime.regions.directory_region
        ).url("tenancy")
        found = runtime.extras[DIRECTORY] = DirectoryClient(url, settings.directory_secret)
    return found  # type: ignore[return-value]


def tenant_router(runtime: Runtime) -> TenantRouter:
    """Where tenants, connections and domains live: one per process (its memory of misses
    is shared by the pipeline step and the routes that route by their body)."""
    found = runtime.extras.get("tenant_router")
    if not isinstance(found, TenantRouter):
        found = TenantRouter(DirectoryReplica(runtime.db), directory_of(runtime))
        runtime.extras["tenant_router"] = found
    return found


def home_region_step(runtime: Runtime) -> HomeRegionStep | None:
    if not runtime.regions.is_multi_region:
        return None
    return HomeRegionStep(runtime.regions, runtime.service, tenant_router(runtime))


async def send_home(
    request: Request[Any, Any, Any], *, region: str | None = None, tenant_id: UUID | None = None
) -> None:
    """For routes whose body says where they belong (a sign-in's tenant, a refresh token's
    or an SSO code's region), which the pipeline step cannot read: 307 to the home region
    when it is another one (a 307 keeps the method and the body)."""
    runtime: Runtime = request.app.state.runtime
    if not runtime.regions.is_multi_region:
        return
    if region is None and tenant_id is not None:
        try:
            region = await tenant_router(runtime).home_region(tenant_id)
        except DirectoryUnavailable as exc:
            raise region_unknown(exc.retry_after_seconds) from None
    if region in runtime.regions.regions and not runtime.regions.is_own(region or ""):
        raise wrong_region(runtime.regions, runtime.service, request, region or "")


class ReplicaPuller:
    """Reads the feed past the replica's cursor, a page at a time, to its end."""

    def __init__(self, replica: DirectoryReplica, directory: Directory, clock: Clock) -> None:
        self._replica = replica
        self._directory = directory
        self._clock = clock
        self._unavailable = False

    async def pull(self) -> Counted:
        applied = 0
        try:
            cursor = (await self._replica.state()).seq
            while True:
                page = await self._directory.changes(cursor, FEED_PAGE)
                await self._replica.apply(page, utc(self._clock))
                applied += len(page.facts)
                cursor = page.next_after
                if page.complete:
                    break
        except DirectoryUnavailable as exc:
            if not self._unavailable:  # one line per outage, not one per pass
                log.warning("directory replica: %s; routing continues from the replica", exc)
            self._unavailable = True
            return Counted(applied, "fact set(s) replicated before the directory went away")
        if self._unavailable:
            log.info("directory replica: the directory answers again")
            self._unavailable = False
        return Counted(applied, "fact set(s) replicated")


async def directory_replication(runtime: Runtime, stop: asyncio.Event) -> None:
    """Keeps this service's replica of the directory (a worker task of every service)."""
    if not runtime.regions.is_multi_region:
        await stop.wait()
        return
    puller = ReplicaPuller(DirectoryReplica(runtime.db), directory_of(runtime), SystemClock())
    await run_periodically(
        puller.pull,
        stop,
        runtime.settings.directory_pull_seconds,
        log=log,
        what="directory replica",
    )


def directory_unavailable(exc: DirectoryUnavailable, what: str) -> Problem:
    return Problem(
        503,
        "directory-unavailable",
        f"{what} cannot be done right now",
        "The global directory, which keeps slugs, domains and connections unique across"
        " regions, does not answer",
        headers={"Retry-After": str(exc.retry_after_seconds)},
    )


async def claim_or_refuse(
    runtime: Runtime,
    kind: ClaimKind,
    value: str,
    tenant_id: UUID,
    *,
    taken: Problem,
    what: str,
) -> None:
    """Claim `value` for a tenant of this region in the directory, or answer: `taken` when
    another tenant of any region holds it, 503 + Retry-After when the directory cannot be
    asked (claims fail closed)."""
    try:
        answer = await directory_of(runtime).claim(
            ClaimRequest(
                kind=kind, value=value, tenant_id=tenant_id, home_region=runtime.regions.own.id
            )
        )
    except DirectoryUnavailable as exc:
        raise directory_unavailable(exc, what) from None
    if not answer.granted:
        raise taken


async def release_or_refuse(
    runtime: Runtime, kind: ClaimKind, value: str, tenant_id: UUID, *, what: str
) -> None:
    """Give a claim back (nothing to do when the tenant did not hold it)."""
    try:
        await directory_of(runtime).release(kind, value, tenant_id)
    except DirectoryUnavailable as exc:
        raise directory_unavailable(exc, what) from None
