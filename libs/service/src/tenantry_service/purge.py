"""What every service does when tenancy asks it to purge a tenant (issue 17, the purge
saga): delete every row of the tenant from its database in one transaction, its Redis
keys, its copy of the tenant's data key, and answer `tenant.purged_by` with the counts.

Which tables: every table of the schema with a `tenant_id` column, found by introspection
(a table added next year is purged without anyone remembering), in foreign-key order. A
table without that column must be named below, with what it holds and how it is purged;
the purge refuses to run while one is not (tests/test_purge_classification.py fails
first), so no table is skipped silently.

Idempotent and resumable: the deletes, the purge record (`tenant_purges`: the service's
tombstone, counts only, never deleted) and the `tenant.purged_by` outbox row commit
together. A crash rolls everything back and the redelivered request runs the purge
again; a request for a tenant already purged is answered with the recorded report.
Afterwards the worker drops the tenant's late events (`skipping_purged_tenants`), so
nothing recreates its rows.
"""

from __future__ import annotations

import graphlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from redis.asyncio import Redis

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.tenancy import PurgedRows, TenantPurgedBy, TenantPurgeRequested
from tenantry_events.purged import lock_for_purge, purged_or_held
from tenantry_events.storage import PostgresOutbox
from tenantry_guardrails.rate_limits import tenant_tag
from tenantry_platform.clock import Clock, SystemClock, utc

log = logging.getLogger("tenantry.purge")

PURGE_REQUESTED = "tenant.purge_requested"
# The saga's own messages must still flow after a service's purge: tenancy collects the
# reports of a tenant whose rows it has purged, and tenant.purged leaves every service's
# tenant projection a tombstone (id and status `purged`, no name or slug: projections.py)
# so its guard refuses the tenant's leftover tokens at once. They carry no personal data;
# they are neither dropped as late events nor deleted from the outbox.
SAGA_EVENTS = frozenset({PURGE_REQUESTED, "tenant.purged_by", "tenant.purged"})
PURGE_RECORD = "tenant_purges"

# Tables without a tenant_id column, each with why its rows are not the tenant's.
NOT_TENANT_DATA: Mapping[str, str] = {
    "schema_migrations": "the migrator's bookkeeping: file names and checksums",
    "dead_letter_replays": "which dead letters were replayed: event ids and types",
    "plans": "tenancy's plan catalog, shared by every tenant",
    "plan_rate_policies": "ratelimit's rate policies per plan, shared by every tenant",
    "signing_keys": "identity's token signing keys, the platform's own",
    "document_signing_keys": "tenancy's keys for certificates and manifests, the platform's",
    PURGE_RECORD: "the purge's tombstone: counts only, kept on purpose",
    "directory_replica_cursor": "how far this replica has read the directory's change feed",
    "legal_notices": "tenancy's announced changes of the processing terms, the platform's",
}
# Tables without a tenant_id column whose rows belong to a tenant's rows of another
# table: deleted through their foreign key to it, before those rows go.
PURGED_THROUGH: Mapping[str, str] = {
    "email_verifications": "accounts",
    "refresh_tokens": "accounts",
}
# Tables without a tenant_id column that hold tenant data, each purged by a rule of its
# own (`_purge_special`).
PURGED_BY_RULE: Mapping[str, str] = {
    "outbox": "events waiting for Kafka, keyed by the tenant id (the record key)",
    "idempotency_keys": "stored responses, by principal ('kind:subject:tenant_id')",
}

# The service's copies of the tenant's data key (tenantry_projections' migrations): a row
# of the tenant deleted there is its key destroyed in this service.
DATA_KEY_COPIES = "data_key_copies"

PurgeStep = Callable[[asyncpg.Connection, UUID], Awaitable[None]]


@dataclass(frozen=True)
class PurgeRules:
    """What one service's purge does beyond the introspected deletes.

    keep: tables whose rows of the tenant stay (tenancy keeps its `tenants` row, and its
      master `tenant_data_keys` row, as tombstones; it deletes everything else of its own).
    data_key_table: the table of the service's copies of the tenant's data key; the report
      says key_destroyed when the purge deleted a row of the tenant there.
    extra_steps: run in the purge's transaction after the deletes (evicting the data key
      from a process cache: harmless if the transaction then rolls back, the key is
      fetched again).
    """

    keep: frozenset[str] = frozenset()
    data_key_table: str | None = DATA_KEY_COPIES
    extra_steps: Sequence[PurgeStep] = field(default_factory=tuple)


class UnclassifiedTables(Exception):
    """Tables that might hold tenant data and that the purge does not know how to purge."""


@dataclass(frozen=True)
class Schema:
    """The public schema as the purge sees it: each table, whether it has a tenant_id
    column, and the foreign keys between tables (child, parent)."""

    tenant_tables: frozenset[str]
    other_tables: frozenset[str]
    foreign_keys: frozenset[tuple[str, str]]

    def unclassified(self) -> list[str]:
        known = NOT_TENANT_DATA.keys() | PURGED_THROUGH.keys() | PURGED_BY_RULE.keys()
        return sorted(self.other_tables - known)

    def deletion_order(self, keep: Iterable[str] = ()) -> list[str]:
        """The tables with a tenant_id column (but the kept ones and the purge record),
        each after every table that references it, so no foreign key is violated and no
        ON DELETE CASCADE deletes rows that the count of their own table would miss."""
        purged = self.tenant_tables - set(keep) - {PURGE_RECORD}
        order = graphlib.TopologicalSorter[str]({table: set() for table in purged})
        for child, parent in self.foreign_keys:
            if child in purged and parent in purged and child != parent:
                order.add(parent, child)
        return list(order.static_order())


async def read_schema(conn: asyncpg.Connection) -> Schema:
    # pg_catalog, not information_schema: the latter hides tables the role cannot read.
    rows = await conn.fetch(
        """SELECT c.relname AS name,
                  EXISTS (SELECT 1 FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                            AND NOT a.attisdropped) AS has_tenant
           FROM pg_class c
           WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p')
             AND NOT c.relispartition"""
    )
    keys = await conn.fetch(
        """SELECT child.relname AS child, parent.relname AS parent
           FROM pg_constraint f
           JOIN pg_class child ON child.oid = f.conrelid
           JOIN pg_class parent ON parent.oid = f.confrelid
           WHERE f.contype = 'f' AND f.connamespace = 'public'::regnamespace"""
    )
    return Schema(
        tenant_tables=frozenset(r["name"] for r in rows if r["has_tenant"]),
        other_tables=frozenset(r["name"] for r in rows if not r["has_tenant"]),
        foreign_keys=frozenset((k["child"], k["parent"]) for k in keys),
    )


async def delete_tenant_rows(
    tx: asyncpg.Connection, tenant_id: UUID, keep: Iterable[str] = ()
) -> list[PurgedRows]:
    """Every row of the tenant in this database, but those of `keep`: the count per table.
    The caller's transaction must hold the tenant's purge record (the SQL functions
    refuse otherwise; see migrations/0003_tenant_purge.sql in tenantry_events)."""
    schema = await read_schema(tx)
    if missing := schema.unclassified():
        raise UnclassifiedTables(
            f"no purge rule for {', '.join(missing)}: give each a tenant_id column or an "
            "entry in tenantry_service.purge"
        )
    counts: dict[str, int] = {}
    for table, parent in sorted(PURGED_THROUGH.items()):
        if table in schema.other_tables and parent not in keep:
            counts[table] = await tx.fetchval(
                "SELECT purge_tenant_rows_through($1::regclass, $2::regclass, $3)",
                table,
                parent,
                tenant_id,
            )
    counts |= await _purge_special(tx, tenant_id, schema)
    for table in schema.deletion_order(keep):
        counts[table] = await tx.fetchval(
            "SELECT purge_tenant_rows($1::regclass, $2)", table, tenant_id
        )
    return [PurgedRows(table=t, rows=n) for t, n in sorted(counts.items())]


async def _purge_special(tx: asyncpg.Connection, tenant_id: UUID, schema: Schema) -> dict[str, int]:
    counts: dict[str, int] = {}
    if "outbox" in schema.other_tables:
        counts["outbox"] = _deleted(
            await tx.execute(
                "DELETE FROM outbox WHERE key = $1 AND NOT topic = ANY($2::text[])",
                str(tenant_id).encode(),
                sorted(SAGA_EVENTS),
            )
        )
    if "idempotency_keys" in schema.other_tables:
        # The tenant's principals' keys (the scope ends with their tenant,
        # tenantry_http.idempotency), and an operator's whose stored response names the
        # tenant (a created tenant, an account made for it): a scan of at most a day's rows.
        counts["idempotency_keys"] = _deleted(
            await tx.execute(
                """DELETE FROM idempotency_keys
                   WHERE scope LIKE '%:' || $1::text OR position($2::bytea IN body) > 0""",
                str(tenant_id),
                str(tenant_id).encode(),
            )
        )
    return counts


def _deleted(status: str) -> int:
    """The row count of a `DELETE n` command status."""
    return int(status.rsplit(" ", 1)[-1])


async def unlink_redis_keys(redis: Redis, tenant_id: UUID, *, batch: int = 500) -> int:
    """Every Redis key of the tenant (rate-limit counters, in-flight slots, refusal
    counts: all carry its hash tag, tenantry_guardrails.rate_limits), SCAN then UNLINK."""
    unlinked = 0
    found: list[bytes] = []
    async for key in redis.scan_iter(match=f"{tenant_tag(tenant_id)}*", count=batch):
        found.append(key)
        if len(found) >= batch:
            unlinked += int(await redis.unlink(*found))
            found.clear()
    if found:
        unlinked += int(await redis.unlink(*found))
    return unlinked


@dataclass(frozen=True, kw_only=True)
class TenantPurger:
    """The `tenant.purge_requested` handler of one service."""

    service: str
    source: str
    region: str
    outbox: PostgresOutbox
    redis: Redis
    rules: PurgeRules
    clock: Clock = field(default_factory=SystemClock)

    async def handle(
        self, tx: asyncpg.Connection, envelope: Envelope[TenantPurgeRequested]
    ) -> None:
        tenant_id = envelope.tenant_id
        report = await self._recorded(tx, tenant_id, envelope.payload.purge_id)
        if report is None:
            report = await self._purge(tx, tenant_id, envelope.payload.purge_id)
        await self.outbox.put(
            tx,
            [
                new_event(
                    report,
                    tenant_id=tenant_id,
                    subject=f"tenant/{tenant_id}",
                    aggregate_version=0,
                    source=self.source,
                    region=self.region,
                )
            ],
        )

    async def _recorded(
        self, tx: asyncpg.Connection, tenant_id: UUID, purge_id: UUID
    ) -> TenantPurgedBy | None:
        """The report of an earlier purge of the tenant, for the request at hand (another
        purge id only if tenancy started the saga again: the rows went the first time)."""
        row = await tx.fetchrow(
            """SELECT tables, redis_keys, key_destroyed, completed_at
               FROM tenant_purges WHERE tenant_id = $1 FOR UPDATE""",
            tenant_id,
        )
        if row is None:
            return None
        log.info("tenant %s was purged already: answering with its report", tenant_id)
        return TenantPurgedBy(
            purge_id=purge_id,
            service=self.service,
            tables=msgspec.convert(row["tables"], list[PurgedRows]),
            redis_keys=row["redis_keys"],
            key_destroyed=row["key_destroyed"],
            completed_at=row["completed_at"],
        )

    async def _purge(
        self, tx: asyncpg.Connection, tenant_id: UUID, purge_id: UUID
    ) -> TenantPurgedBy:
        await lock_for_purge(tx, tenant_id)  # writers racing the purge finish first
        await tx.execute(
            "INSERT INTO tenant_purges (tenant_id, purge_id) VALUES ($1, $2)", tenant_id, purge_id
        )
        tables = await delete_tenant_rows(tx, tenant_id, self.rules.keep)
        for step in self.rules.extra_steps:
            await step(tx, tenant_id)
        # Redis is not in the transaction: a crash after this runs it again, finding fewer
        # keys (the rows are the record; the keys are counters that would expire anyway).
        redis_keys = await unlink_redis_keys(self.redis, tenant_id)
        key_table = self.rules.data_key_table
        report = TenantPurgedBy(
            purge_id=purge_id,
            service=self.service,
            tables=tables,
            redis_keys=redis_keys,
            key_destroyed=any(t.table == key_table and t.rows > 0 for t in tables),
            completed_at=utc(self.clock),
        )
        await tx.execute(
            """UPDATE tenant_purges
               SET tables = $2::jsonb, redis_keys = $3, key_destroyed = $4,
                   completed_at = $5
               WHERE tenant_id = $1""",
            tenant_id,
            tables,
            redis_keys,
            report.key_destroyed,
            report.completed_at,
        )
        log.info(
            "purged tenant %s: %d rows in %d tables, %d redis keys",
            tenant_id,
            sum(t.rows for t in tables),
            len(tables),
            redis_keys,
        )
        return report


def skipping_purged_tenants(
    handlers: Mapping[str, Handler[asyncpg.Connection]],
) -> dict[str, Handler[asyncpg.Connection]]:
    """The handlers, each first checking whether the event's tenant has a purge record
    here (one primary-key lookup). A late event of a purged tenant is dropped, so no row
    of the tenant comes back; the saga's own events are handled (their handlers answer a
    repeat as the first time). Either way an event of a purged tenant leaves no inbox
    mark: the tombstone stays the tenant's only row, and a redelivery is dropped, or
    answered, again."""

    def guarded(
        event_type: str, handler: Handler[asyncpg.Connection]
    ) -> Handler[asyncpg.Connection]:
        async def handle(tx: asyncpg.Connection, envelope: Envelope[Any]) -> None:
            if event_type in SAGA_EVENTS:  # the purge's own messages take no shared lock
                purged = await tx.fetchval(
                    "SELECT true FROM tenant_purges WHERE tenant_id = $1", envelope.tenant_id
                )
            else:
                purged = await purged_or_held(tx, envelope.tenant_id)
            if not purged or event_type in SAGA_EVENTS:
                await handler(tx, envelope)
            else:
                log.info("dropping %s %s: tenant purged", envelope.type, envelope.id)
            if purged:
                await tx.execute(
                    "DELETE FROM inbox WHERE event_id = $1 AND tenant_id = $2",
                    envelope.id,
                    envelope.tenant_id,
                )

        return handle

    return {event_type: guarded(event_type, handler) for event_type, handler in handlers.items()}
