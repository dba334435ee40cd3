"""A tenant's purge against the writes that race it.

A service's share of a purge deletes every row of the tenant in one transaction and records
it in `tenant_purges` (tenantry_service.purge). A transaction that started before the purge
committed (a consumer's handler, a sweep of every tenant) could still write a row of the
tenant afterwards, which nothing would ever delete. So such a writer holds the tenant's
purge lock shared for its transaction and checks the record; the purge takes the lock
exclusively first. Either the writer commits before the purge starts deleting (and the
purge deletes what it wrote), or it sees the record and writes nothing.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg


def _lock_key(tenant_id: UUID) -> str:
    return f"tenantry.purge:{tenant_id}"


async def purged_or_held(tx: asyncpg.Connection, tenant_id: UUID) -> bool:
    """True if the tenant is purged here; otherwise no purge of it can start before this
    transaction ends."""
    await tx.execute(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))", _lock_key(tenant_id)
    )
    return bool(await tx.fetchval("SELECT true FROM tenant_purges WHERE tenant_id = $1", tenant_id))


async def lock_for_purge(tx: asyncpg.Connection, tenant_id: UUID) -> None:
    """Wait for the transactions writing the tenant's rows to end; keep new ones out until
    this one (the purge) ends."""
    await tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _lock_key(tenant_id))
