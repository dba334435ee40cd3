"""The global directory's store: claims, facts and the change feed, in the directory's
own database (tenantry_regions.directory has the protocol, docs/residency.md the model).

Every write takes one transaction-scoped advisory lock first. That one lock makes three
things true at once: two claims of the same value (from any regions) are decided one after
the other, so exactly one wins; feed numbers are taken in commit order, so a replica that
reads past its cursor misses nothing; and a fact set and its claims change together.
Directory writes are rare (tenant creation, a status change), so one lock costs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tenantry_events.faults import is_transient_db_error
from tenantry_events.pg import Database
from tenantry_regions.directory import (
    FACT_COLUMNS,
    ClaimAnswer,
    ClaimKind,
    ClaimRequest,
    DirectoryUnavailable,
    FeedPage,
    HomeRegionMismatch,
    TenantFacts,
    facts_from_row,
    normalised,
)

_WRITE_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tenantry.directory.write'))"
_FACTS = FACT_COLUMNS
MAX_PAGE = 1000


class DirectoryStore:
    """The directory region's tenancy serves this; other regions reach it over HTTP."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @contextlib.asynccontextmanager
    async def _connection(
        self, *, write: bool
    ) -> AsyncIterator[PoolConnectionProxy[asyncpg.Record]]:
        """A connection (in a transaction holding the write lock, for `write`); the
        directory's database unreachable is DirectoryUnavailable, as over HTTP."""
        try:
            async with self._db.pool.acquire() as conn, conn.transaction():
                if write:
                    await conn.execute(_WRITE_LOCK)
                yield conn
        except Exception as exc:
            if is_transient_db_error(exc):
                raise DirectoryUnavailable(f"directory database: {type(exc).__name__}") from exc
            raise

    async def claim(self, request: ClaimRequest) -> ClaimAnswer:
        value = normalised(request.kind, request.value)
        async with self._connection(write=True) as conn:
            holder = await conn.fetchrow(
                """SELECT c.tenant_id, t.home_region FROM directory_claims c
                   JOIN directory_tenants t USING (tenant_id)
                   WHERE c.kind = $1 AND c.value = $2""",
                request.kind,
                value,
            )
            if holder is not None:
                if holder["tenant_id"] == request.tenant_id:
                    return ClaimAnswer(granted=True)
                return ClaimAnswer(granted=False, held_by_region=holder["home_region"])
            existing = await conn.fetchrow(
                "SELECT home_region FROM directory_tenants WHERE tenant_id = $1",
                request.tenant_id,
            )
            if existing is not None and existing["home_region"] != request.home_region:
                # A tenant lives in one region; a claim naming another is a caller's bug.
                return ClaimAnswer(granted=False, held_by_region=existing["home_region"])
            await conn.execute(
                """INSERT INTO directory_tenants (tenant_id, home_region, status, seq)
                   VALUES ($1, $2, $3, nextval('directory_seq'))
                   ON CONFLICT (tenant_id) DO NOTHING""",
                request.tenant_id,
                request.home_region,
                request.status,
            )
            await conn.execute(
                "INSERT INTO directory_claims (kind, value, tenant_id) VALUES ($1, $2, $3)",
                request.kind,
                value,
                request.tenant_id,
            )
            await self._renumber(conn, request.tenant_id)
            return ClaimAnswer(granted=True)

    async def release(self, kind: ClaimKind, value: str, tenant_id: UUID) -> bool:
        """Give a value back (a tenant whose create failed after its claim); True when it
        was this tenant's."""
        async with self._connection(write=True) as conn:
            deleted = await conn.execute(
                "DELETE FROM directory_claims WHERE kind = $1 AND value = $2 AND tenant_id = $3",
                kind,
                normalised(kind, value),
                tenant_id,
            )
            if deleted == "DELETE 0":
                return False
            await self._renumber(conn, tenant_id)
            return True

    async def record(self, facts: TenantFacts) -> TenantFacts:
        """The tenant's current home region and status, from its home region's tenancy. A
        fact set without a slug releases the slug (the end of a purged tenant's
        quarantine); it cannot take one (only a claim can), and it leaves domains and
        connections alone (identity claims and releases those)."""
        async with self._connection(write=True) as conn:
            home = await conn.fetchval(
                "SELECT home_region FROM directory_tenants WHERE tenant_id = $1",
                facts.tenant_id,
            )
            if home is not None and home != facts.home_region:
                # Only a move switches a tenant's region (`move`); a region pushing facts
                # of another region's tenant is a bug, not a move.
                raise HomeRegionMismatch(facts.tenant_id, home)
            await conn.execute(
                """INSERT INTO directory_tenants
                       (tenant_id, home_region, status, seq, recorded_at_first)
                   VALUES ($1, $2, $3, nextval('directory_seq'), now())
                   ON CONFLICT (tenant_id) DO UPDATE
                       SET status = EXCLUDED.status,
                           recorded_at_first = coalesce(directory_tenants.recorded_at_first,
                                                        now())""",
                facts.tenant_id,
                facts.home_region,
                facts.status,
            )
            if facts.slug is None:
                await conn.execute(
                    "DELETE FROM directory_claims WHERE tenant_id = $1 AND kind = 'slug'",
                    facts.tenant_id,
                )
            return await self._renumber(conn, facts.tenant_id)

    async def move(self, tenant_id: UUID, from_region: str, to_region: str) -> TenantFacts:
        """The directory's switch of a tenant moving between regions: from now on every
        region routes it to `to_region`, with its slug, domains and connections. The move
        around it (export, import, purge in the old region, the tenant suspended meanwhile)
        is the caller's; a switch whose `from_region` is not the tenant's current home is
        refused, so a repeated or stale switch changes nothing."""
        async with self._connection(write=True) as conn:
            home = await conn.fetchval(
                "SELECT home_region FROM directory_tenants WHERE tenant_id = $1 FOR UPDATE",
                tenant_id,
            )
            if home is None:
                raise LookupError(f"no tenant {tenant_id} in the directory")
            if home != from_region:
                raise HomeRegionMismatch(tenant_id, home)
            await conn.execute(
                "UPDATE directory_tenants SET home_region = $2 WHERE tenant_id = $1",
                tenant_id,
                to_region,
            )
            return await self._renumber(conn, tenant_id)

    async def sweep_unrecorded(self, older_than: timedelta) -> int:
        """Give back what tenants that were never created hold: a tenant the directory
        knows only by its claims, whose home region never recorded its facts within
        `older_than` of the claim (a create that failed after claiming, its release lost
        with a crashed process). They are marked purged: no region routes to them."""
        unrecorded = """SELECT tenant_id FROM directory_tenants
                        WHERE recorded_at_first IS NULL AND claimed_at < now() - $1::interval"""
        async with self._connection(write=False) as conn:
            if not await conn.fetch(unrecorded, older_than):
                return 0  # the usual case, without taking the write lock
        async with self._connection(write=True) as conn:
            gone = await conn.fetch(unrecorded, older_than)
            for row in gone:
                await conn.execute(
                    "DELETE FROM directory_claims WHERE tenant_id = $1", row["tenant_id"]
                )
                # Marked gone like a purged tenant (and renumbered), so replicas that
                # copied the claim drop it too; recorded_at_first stops a second sweep.
                await conn.execute(
                    """UPDATE directory_tenants SET status = 'purged', recorded_at_first = now()
                       WHERE tenant_id = $1""",
                    row["tenant_id"],
                )
                await self._renumber(conn, row["tenant_id"])
            return len(gone)

    async def _renumber(
        self, conn: PoolConnectionProxy[asyncpg.Record], tenant_id: UUID
    ) -> TenantFacts:
        """The tenant's row takes its claimed slug, domains and connections and the next
        feed number."""
        row = await conn.fetchrow(
            f"""UPDATE directory_tenants t SET
                    slug = (SELECT value FROM directory_claims
                            WHERE tenant_id = t.tenant_id AND kind = 'slug'),
                    domains = ARRAY(SELECT value FROM directory_claims
                                    WHERE tenant_id = t.tenant_id AND kind = 'domain'
                                    ORDER BY value),
                    connection_ids = ARRAY(SELECT value::uuid FROM directory_claims
                                           WHERE tenant_id = t.tenant_id AND kind = 'connection'
                                           ORDER BY value),
                    seq = nextval('directory_seq'), recorded_at = now()
                WHERE tenant_id = $1 RETURNING {_FACTS}""",
            tenant_id,
        )
        assert row is not None
        return facts_from_row(row)

    async def changes(self, after: int, limit: int) -> FeedPage:
        limit = max(1, min(limit, MAX_PAGE))
        async with self._connection(write=False) as conn:
            rows = await conn.fetch(
                f"SELECT {_FACTS} FROM directory_tenants WHERE seq > $1 ORDER BY seq LIMIT $2",
                after,
                limit,
            )
        facts = [facts_from_row(r) for r in rows]
        return FeedPage(
            facts=facts,
            next_after=facts[-1].seq if facts else after,
            complete=len(facts) < limit,
        )

    async def lookup(self, tenant_id: UUID) -> TenantFacts | None:
        async with self._connection(write=False) as conn:
            row = await conn.fetchrow(
                f"SELECT {_FACTS} FROM directory_tenants WHERE tenant_id = $1", tenant_id
            )
        return facts_from_row(row) if row is not None else None

    async def holder(self, kind: ClaimKind, value: str) -> TenantFacts | None:
        """Whose a slug or domain is (home realm discovery asks by domain)."""
        async with self._connection(write=False) as conn:
            row = await conn.fetchrow(
                f"""SELECT {", ".join("t." + c.strip() for c in _FACTS.split(","))}
                    FROM directory_claims c JOIN directory_tenants t USING (tenant_id)
                    WHERE c.kind = $1 AND c.value = $2""",
                kind,
                normalised(kind, value),
            )
        return facts_from_row(row) if row is not None else None
