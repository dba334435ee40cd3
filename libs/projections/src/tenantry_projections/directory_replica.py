"""This service's replica of the global directory (docs/residency.md): the routing facts
of every region's tenants, in the service's own database, fed by the directory's change
feed (tenantry_regions.directory) and read by the home-region step.

A page of the feed and the cursor past it are applied in one transaction, so a crash
between the two re-reads the page (upserts by tenant id: harmless) and never skips one.
A purged tenant leaves the replica: its facts say nothing a request needs beyond "no such
tenant", which the directory answers when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tenantry_events.pg import Database
from tenantry_regions.directory import FACT_COLUMNS, FeedPage, TenantFacts, facts_from_row

_FACTS = FACT_COLUMNS
PURGED = "purged"


@dataclass(frozen=True)
class ReplicaState:
    seq: int
    caught_up_at: datetime | None


class DirectoryReplica:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def state(self) -> ReplicaState:
        row = await self._db.pool.fetchrow("SELECT seq, caught_up_at FROM directory_replica_cursor")
        assert row is not None  # the migration inserts the one row
        return ReplicaState(seq=row["seq"], caught_up_at=row["caught_up_at"])

    async def apply(self, page: FeedPage, now: datetime) -> None:
        async with self._db.pool.acquire() as conn, conn.transaction():
            for facts in page.facts:
                await self._apply_one(conn, facts)
            await conn.execute(
                """UPDATE directory_replica_cursor
                   SET seq = greatest(seq, $1),
                       caught_up_at = CASE WHEN $2 THEN $3 ELSE caught_up_at END""",
                page.next_after,
                page.complete,
                now,
            )

    async def _apply_one(
        self, conn: PoolConnectionProxy[asyncpg.Record], facts: TenantFacts
    ) -> None:
        if facts.status == PURGED:
            await conn.execute(
                "DELETE FROM directory_replica WHERE tenant_id = $1", facts.tenant_id
            )
            return
        await conn.execute(
            f"""INSERT INTO directory_replica ({_FACTS}) VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (tenant_id) DO UPDATE
                    SET home_region = EXCLUDED.home_region, status = EXCLUDED.status,
                        slug = EXCLUDED.slug, domains = EXCLUDED.domains,
                        connection_ids = EXCLUDED.connection_ids, seq = EXCLUDED.seq
                    WHERE directory_replica.seq < EXCLUDED.seq""",
            facts.tenant_id,
            facts.home_region,
            facts.status,
            facts.slug,
            facts.domains,
            facts.connection_ids,
            facts.seq,
        )

    async def tenant(self, tenant_id: UUID) -> TenantFacts | None:
        row = await self._db.pool.fetchrow(
            f"SELECT {_FACTS} FROM directory_replica WHERE tenant_id = $1", tenant_id
        )
        return facts_from_row(row) if row is not None else None

    async def by_connection(self, connection_id: UUID) -> TenantFacts | None:
        row = await self._db.pool.fetchrow(
            f"SELECT {_FACTS} FROM directory_replica WHERE connection_ids @> ARRAY[$1::uuid]",
            connection_id,
        )
        return facts_from_row(row) if row is not None else None

    async def by_domain(self, domain: str) -> TenantFacts | None:
        row = await self._db.pool.fetchrow(
            f"SELECT {_FACTS} FROM directory_replica WHERE domains @> ARRAY[$1::text]",
            domain.lower(),
        )
        return facts_from_row(row) if row is not None else None


async def record_arrival(tx: asyncpg.Connection, tenant_id: UUID, home_region: str) -> None:
    """A tenant moved to this region (tenant.moved, from its new home's own stream): route
    it here at once, not one feed pull later. The feed brings the same fact (the
    directory's switch came first); this only saves its lag, in the region that knows."""
    await tx.execute(
        "UPDATE directory_replica SET home_region = $2 WHERE tenant_id = $1",
        tenant_id,
        home_region,
    )
