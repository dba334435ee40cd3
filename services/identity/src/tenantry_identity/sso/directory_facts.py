"""Identity's routing facts in the global directory (docs/residency.md): each tenant's
verified email domains (home realm discovery: one tenant per domain across every region)
and its SSO connection ids (an SSO login names only its connection).

A domain is claimed in the directory when it is verified, and released before it is
forgotten, in the request (admin_api.py): refused (409) or failed closed (503) there.
Connections are registered after they are created and unregistered after they are
deleted; a directory that does not answer then is not the customer's problem, so those
steps only log, and `DirectoryReconciler` (a worker task) makes the directory agree with
this region's tables on its next pass. It also repairs any domain step a crash cut short.
"""

from __future__ import annotations

import asyncio
import logging
from uuid import UUID

from tenantry_regions.directory import ClaimKind, ClaimRequest, Directory, DirectoryUnavailable
from tenantry_service.periodic import Counted, run_periodically
from tenantry_service.residency import directory_of
from tenantry_service.runtime import Runtime

log = logging.getLogger("tenantry.identity.directory")
Claim = tuple[ClaimKind, str, UUID]  # kind, value, tenant


async def register_connection(runtime: Runtime, tenant_id: UUID, connection_id: UUID) -> None:
    try:
        await directory_of(runtime).claim(
            ClaimRequest(
                kind="connection",
                value=str(connection_id),
                tenant_id=tenant_id,
                home_region=runtime.regions.own.id,
            )
        )
    except DirectoryUnavailable as exc:
        log.warning(
            "connection %s not in the directory yet (%s): reconciled later", connection_id, exc
        )


async def unregister_connection(runtime: Runtime, tenant_id: UUID, connection_id: UUID) -> None:
    try:
        await directory_of(runtime).release("connection", str(connection_id), tenant_id)
    except DirectoryUnavailable as exc:
        log.warning(
            "connection %s still in the directory (%s): reconciled later", connection_id, exc
        )


class DirectoryReconciler:
    """One pass: what this region's tables hold against what the directory says of this
    region's tenants (this service's replica of it). Missing claims are made; a claim the
    tables do not back is released only when two passes in a row find it so (a domain is
    claimed in the directory a moment before its verification commits here)."""

    def __init__(self, runtime: Runtime, directory: Directory) -> None:
        self._runtime = runtime
        self._directory = directory
        self._suspects: set[Claim] = set()

    async def run_once(self) -> Counted:
        local = await self._local_claims()
        listed = await self._listed_claims()
        changed = 0
        try:
            for kind, value, tenant_id in sorted(local - listed, key=str):
                answer = await self._directory.claim(
                    ClaimRequest(
                        kind=kind,
                        value=value,
                        tenant_id=tenant_id,
                        home_region=self._runtime.regions.own.id,
                    )
                )
                if answer.granted:
                    changed += 1
                else:
                    log.error(
                        "%s %s of tenant %s is held in region %s: not routed here",
                        kind,
                        value,
                        tenant_id,
                        answer.held_by_region,
                    )
            extra = listed - local
            for kind, value, tenant_id in sorted(extra & self._suspects, key=str):
                await self._directory.release(kind, value, tenant_id)
                changed += 1
            self._suspects = extra - self._suspects
        except DirectoryUnavailable as exc:
            log.warning("directory reconciliation postponed: %s", exc)
        return Counted(changed, "domain and connection claim(s) reconciled with the directory")

    async def _local_claims(self) -> set[Claim]:
        async with self._runtime.db.transaction(platform=True) as tx:
            connections = await tx.fetch("SELECT tenant_id, connection_id FROM sso_connections")
            domains = await tx.fetch(
                "SELECT tenant_id, domain FROM sso_domains WHERE verified_at IS NOT NULL"
            )
        return {("connection", str(r["connection_id"]), r["tenant_id"]) for r in connections} | {
            ("domain", r["domain"], r["tenant_id"]) for r in domains
        }

    async def _listed_claims(self) -> set[Claim]:
        rows = await self._runtime.db.pool.fetch(
            """SELECT tenant_id, domains, connection_ids FROM directory_replica
               WHERE home_region = $1""",
            self._runtime.regions.own.id,
        )
        claims: set[Claim] = set()
        for row in rows:
            claims |= {("domain", d, row["tenant_id"]) for d in row["domains"]}
            claims |= {("connection", str(c), row["tenant_id"]) for c in row["connection_ids"]}
        return claims


async def directory_reconciliation(runtime: Runtime, stop: asyncio.Event) -> None:
    """Identity's worker task; with one region there is no replica to compare with."""
    if not runtime.regions.is_multi_region:
        await stop.wait()
        return
    reconciler = DirectoryReconciler(runtime, directory_of(runtime))
    await run_periodically(
        reconciler.run_once,
        stop,
        max(5.0, runtime.settings.directory_pull_seconds * 5),
        log=log,
        what="directory reconciliation",
    )
