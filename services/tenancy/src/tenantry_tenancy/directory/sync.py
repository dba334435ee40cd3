"""Keeping the global directory told of this region's tenants (docs/residency.md).

Every change to a tenant's routing facts queues them in `directory_pending`, in the
transaction of the change (`queue_facts`); the worker pushes the queue to the directory
(`FactsPusher`) and deletes what it has pushed, unless a newer change replaced it
meanwhile. The directory down: the queue waits, nothing is lost, the next pass retries.
"""

from __future__ import annotations

import logging
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.pg import Database
from tenantry_regions.directory import (
    ClaimRequest,
    Directory,
    DirectoryUnavailable,
    HomeRegionMismatch,
    TenantFacts,
)
from tenantry_service.periodic import Counted

log = logging.getLogger("tenantry.tenancy.directory")
BATCH = 100


async def queue_facts(tx: asyncpg.Connection, facts: TenantFacts) -> None:
    await tx.execute(
        """INSERT INTO directory_pending (tenant_id, facts) VALUES ($1, $2)
           ON CONFLICT (tenant_id) DO UPDATE
               SET facts = EXCLUDED.facts, queued_at = clock_timestamp()""",
        facts.tenant_id,
        msgspec.to_builtins(facts),
    )


class FactsPusher:
    def __init__(self, db: Database, directory: Directory) -> None:
        self._db = db
        self._directory = directory
        self._unavailable = False

    async def push(self) -> Counted:
        async with self._db.transaction(platform=True) as tx:
            rows = await tx.fetch(
                "SELECT tenant_id, facts, queued_at FROM directory_pending"
                " ORDER BY queued_at LIMIT $1",
                BATCH,
            )
        pushed = 0
        try:
            for row in rows:
                facts = msgspec.convert(row["facts"], TenantFacts)
                try:
                    await self._push_one(facts)
                except HomeRegionMismatch as moved:
                    # The tenant moved to another region: what this region knew of it
                    # (its purge here, its slug's quarantine) is no longer the directory's.
                    log.info("directory: facts of tenant %s dropped: %s", facts.tenant_id, moved)
                async with self._db.transaction(platform=True) as tx:
                    await tx.execute(
                        "DELETE FROM directory_pending WHERE tenant_id = $1 AND queued_at = $2",
                        row["tenant_id"],
                        row["queued_at"],
                    )
                pushed += 1
        except DirectoryUnavailable as exc:
            if not self._unavailable:
                log.warning("directory: %s; tenant facts wait in directory_pending", exc)
            self._unavailable = True
        else:
            self._unavailable = False
        return Counted(pushed, "tenant(s) pushed to the directory")

    async def _push_one(self, facts: TenantFacts) -> None:
        if facts.slug is not None:
            # Claimed at creation already (idempotent then); tenants from before the
            # directory get their claim here.
            answer = await self._directory.claim(
                ClaimRequest(
                    kind="slug",
                    value=facts.slug,
                    tenant_id=facts.tenant_id,
                    home_region=facts.home_region,
                    status=facts.status,
                )
            )
            if not answer.granted:
                log.error(
                    "directory: slug %r of tenant %s is held in region %s; recorded without it",
                    facts.slug,
                    facts.tenant_id,
                    answer.held_by_region,
                )
        await self._directory.record(facts)


def facts_of(tenant_id: UUID, *, home_region: str, status: str, slug: str | None) -> TenantFacts:
    return TenantFacts(tenant_id=tenant_id, home_region=home_region, status=status, slug=slug)
