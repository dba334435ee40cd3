"""A service's share of a tenant's purge on a scratch database and the real Redis: every
row of the tenant goes (tables found by introspection, in foreign-key order, row-level
security and missing DELETE grants notwithstanding), the neighbour's stay, the report is
recorded and answered again on redelivery, a table nobody classified stops the purge, and
late events of a purged tenant are dropped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from uuid_utils.compat import uuid4

from tenantry_events.envelope import Envelope, new_event
from tenantry_events.kafka_codec import from_record
from tenantry_events.payloads.tenancy import (
    TenantPurged,
    TenantPurgedBy,
    TenantPurgeRequested,
    TenantState,
    TenantSuspended,
)
from tenantry_events.storage import PostgresEventStore, PostgresInbox, PostgresOutbox
from tenantry_service.purge import (
    PURGE_RECORD,
    PurgeRules,
    Schema,
    TenantPurger,
    UnclassifiedTables,
    read_schema,
    skipping_purged_tenants,
)
from tenantry_testkit.fixtures import ScratchDatabase
from tenantry_testkit.stack import Stack

# Tables as a service writes them: forced row-level security, no DELETE for the app role,
# a child whose foreign key cascades (its rows must be counted as its own, not vanish
# with the parent's), and a table without tenant_id reached through a foreign key.
SERVICE_TABLES = """
CREATE TABLE accounts (
    account_id uuid PRIMARY KEY, tenant_id uuid NOT NULL, email text NOT NULL);
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON accounts USING (
    tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
    OR current_setting('app.platform', true) = 'on');
CREATE TABLE sessions (
    session_id uuid PRIMARY KEY, tenant_id uuid NOT NULL,
    account_id uuid NOT NULL REFERENCES accounts ON DELETE CASCADE);
CREATE TABLE refresh_tokens (
    token text PRIMARY KEY, account_id uuid NOT NULL REFERENCES accounts);
GRANT SELECT, INSERT ON accounts, sessions, refresh_tokens TO {app_role};
"""


@pytest_asyncio.fixture
async def service_db(stack: Stack, scratch_db: ScratchDatabase) -> ScratchDatabase:
    owner = await asyncpg.connect(scratch_db.owner_dsn)
    try:
        await owner.execute(SERVICE_TABLES.replace("{app_role}", stack.app_role))
    finally:
        await owner.close()
    return scratch_db


@pytest_asyncio.fixture
async def redis(stack: Stack) -> AsyncIterator[Redis]:
    client = Redis.from_url(stack.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def purger(db: ScratchDatabase, redis: Redis, rules: PurgeRules | None = None) -> TenantPurger:
    return TenantPurger(
        service="identity",
        source="/tenantry/identity",
        region="local",
        outbox=PostgresOutbox(db.db),
        redis=redis,
        rules=rules or PurgeRules(),
    )


def purge_request(tenant_id: UUID, purge_id: UUID | None = None) -> Envelope[Any]:
    payload = TenantPurgeRequested(
        purge_id=purge_id or uuid4(), early=False, reason="contract ended", by="operator"
    )
    return new_event(
        payload,
        tenant_id=tenant_id,
        subject=f"tenant/{tenant_id}",
        aggregate_version=9,
        source="/tenantry/tenancy",
        region="local",
    )


def tenant_state() -> TenantState:
    return TenantState(
        name="Acme", slug="acme", status="suspended", plan="free", home_region="local"
    )


def suspension(tenant_id: UUID) -> Envelope[Any]:
    return new_event(
        TenantSuspended(tenant=tenant_state(), reason="unpaid", by="operator"),
        tenant_id=tenant_id,
        subject=f"tenant/{tenant_id}",
        aggregate_version=2,
        source="/tenantry/tenancy",
        region="local",
    )


async def add_tenant_data(db: ScratchDatabase, redis: Redis, tenant_id: UUID) -> None:
    """Two accounts with a session and a refresh token each, an event in the store (and so
    in the outbox), an applied event in the inbox, a stored idempotent response, and two
    Redis keys."""
    events = PostgresEventStore(PostgresOutbox(db.db))
    async with db.db.transaction(tenant_id=tenant_id) as tx:
        for n in range(2):
            account = uuid4()
            await tx.execute(
                "INSERT INTO accounts VALUES ($1, $2, $3)", account, tenant_id, f"{n}@x.example"
            )
            await tx.execute(
                "INSERT INTO sessions VALUES ($1, $2, $3)", uuid4(), tenant_id, account
            )
            await tx.execute("INSERT INTO refresh_tokens VALUES ($1, $2)", uuid4().hex, account)
        await events.append(tx, f"tenant-{tenant_id}", 0, [suspension(tenant_id)])
        assert await PostgresInbox().claim(tx, "tenantry-identity", uuid4())
        # The tenant's admin's, and an operator's whose response names the tenant.
        await tx.executemany(
            """INSERT INTO idempotency_keys (scope, key, fingerprint, state, body)
               VALUES ($1, 'k', 'f', 'done', $2)""",
            [
                (f"account:{uuid4()}:{tenant_id}", b"{}"),
                (f"account:{uuid4()}:None", f'{{"tenant_id": "{tenant_id}"}}'.encode()),
            ],
        )
    await redis.set(f"rl:{{{tenant_id}}}:t:requests", 1, ex=60)
    await redis.set(f"rl:{{{tenant_id}}}:inflight", 1, ex=60)


async def rows_of(db: ScratchDatabase, tenant_id: UUID) -> dict[str, int]:
    """What the owner sees of the tenant, table by table (the owner is not held to the
    forced row-level security only inside the tenant's scope: scope it)."""
    owner = await asyncpg.connect(db.owner_dsn)
    try:
        async with owner.transaction():
            await owner.execute("SELECT set_config('app.platform', 'on', true)")
            counts = {}
            for table in ("accounts", "sessions", "events", "inbox"):
                counts[table] = await owner.fetchval(
                    f"SELECT count(*) FROM {table} WHERE tenant_id = $1", tenant_id
                )
            counts["refresh_tokens"] = await owner.fetchval(
                """SELECT count(*) FROM refresh_tokens r JOIN accounts a USING (account_id)
                   WHERE a.tenant_id = $1""",
                tenant_id,
            )
            counts["outbox"] = await owner.fetchval(
                "SELECT count(*) FROM outbox WHERE key = $1 AND topic <> 'tenant.purged_by'",
                str(tenant_id).encode(),
            )
            counts["idempotency_keys"] = await owner.fetchval(
                """SELECT count(*) FROM idempotency_keys
                   WHERE scope LIKE '%:' || $1 OR strpos(convert_from(body, 'UTF8'), $1) > 0""",
                str(tenant_id),
            )
            return counts
    finally:
        await owner.close()


async def reports(db: ScratchDatabase, tenant_id: UUID) -> list[TenantPurgedBy]:
    rows = await db.db.pool.fetch(
        "SELECT headers, value FROM outbox WHERE topic = 'tenant.purged_by' AND key = $1",
        str(tenant_id).encode(),
    )
    return [
        from_record([(k, v.encode()) for k, v in r["headers"]], r["value"]).payload for r in rows
    ]


async def purge(db: ScratchDatabase, redis: Redis, request: Envelope[Any]) -> None:
    async with db.db.transaction(tenant_id=request.tenant_id) as tx:
        await purger(db, redis).handle(tx, request)


async def test_every_row_of_the_tenant_goes_and_the_neighbours_stay(
    service_db: ScratchDatabase, redis: Redis
) -> None:
    tenant, neighbour = uuid4(), uuid4()
    await add_tenant_data(service_db, redis, tenant)
    await add_tenant_data(service_db, redis, neighbour)
    before = await rows_of(service_db, neighbour)
    assert before == await rows_of(service_db, tenant)
    assert all(before.values()), before

    await purge(service_db, redis, purge_request(tenant))

    assert set((await rows_of(service_db, tenant)).values()) == {0}
    assert await rows_of(service_db, neighbour) == before
    assert await redis.exists(f"rl:{{{tenant}}}:t:requests", f"rl:{{{tenant}}}:inflight") == 0
    assert await redis.exists(f"rl:{{{neighbour}}}:t:requests") == 1
    [report] = await reports(service_db, tenant)
    counted = {t.table: t.rows for t in report.tables}
    # sessions counted as their own rows, not gone with the accounts' cascade
    assert {k: counted[k] for k in before} == {
        "accounts": 2,
        "sessions": 2,
        "refresh_tokens": 2,
        "events": 1,
        "inbox": 1,
        "outbox": 1,
        "idempotency_keys": 2,
    }
    assert report.redis_keys == 2
    assert report.service == "identity"
    assert report.key_destroyed is False, "no copy of the data key existed here"


async def test_a_redelivered_request_is_answered_with_the_recorded_report(
    service_db: ScratchDatabase, redis: Redis
) -> None:
    tenant = uuid4()
    await add_tenant_data(service_db, redis, tenant)
    request = purge_request(tenant)
    await purge(service_db, redis, request)
    await purge(service_db, redis, request)
    first, again = await reports(service_db, tenant)
    assert again == first
    assert sum(t.rows for t in first.tables) > 0


async def test_a_table_nobody_classified_stops_the_purge_and_nothing_is_deleted(
    stack: Stack, service_db: ScratchDatabase, redis: Redis
) -> None:
    tenant = uuid4()
    await add_tenant_data(service_db, redis, tenant)
    owner = await asyncpg.connect(service_db.owner_dsn)
    try:
        await owner.execute("CREATE TABLE notes (body text)")
    finally:
        await owner.close()
    before = await rows_of(service_db, tenant)
    with pytest.raises(UnclassifiedTables, match="notes"):
        await purge(service_db, redis, purge_request(tenant))
    assert await rows_of(service_db, tenant) == before
    async with service_db.db.transaction() as tx:
        assert (await read_schema(tx)).unclassified() == ["notes"]


async def test_the_app_role_deletes_nothing_without_a_recorded_purge(
    service_db: ScratchDatabase, redis: Redis
) -> None:
    tenant = uuid4()
    await add_tenant_data(service_db, redis, tenant)
    with pytest.raises(asyncpg.RaiseError, match="no purge is recorded"):
        async with service_db.db.transaction(tenant_id=tenant) as tx:
            await tx.fetchval("SELECT purge_tenant_rows('accounts', $1)", tenant)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with service_db.db.transaction(tenant_id=tenant) as tx:
            await tx.execute("DELETE FROM tenant_purges")
    assert (await rows_of(service_db, tenant))["accounts"] == 2


async def test_a_kept_table_keeps_the_tenants_rows(
    service_db: ScratchDatabase, redis: Redis
) -> None:
    tenant = uuid4()
    await add_tenant_data(service_db, redis, tenant)
    async with service_db.db.transaction(tenant_id=tenant) as tx:
        rules = PurgeRules(keep=frozenset({"accounts", "sessions"}))
        await purger(service_db, redis, rules).handle(tx, purge_request(tenant))
    left = await rows_of(service_db, tenant)
    assert (left["accounts"], left["sessions"], left["refresh_tokens"]) == (2, 2, 2)
    assert left["events"] == 0


async def test_late_events_of_a_purged_tenant_are_dropped_with_their_inbox_mark(
    service_db: ScratchDatabase, redis: Redis
) -> None:
    tenant = uuid4()
    applied: list[str] = []

    async def project(tx: asyncpg.Connection, envelope: Envelope[Any]) -> None:
        applied.append(envelope.type)

    handlers = skipping_purged_tenants(
        {name: project for name in ("tenant.suspended", "tenant.purge_requested", "tenant.purged")}
    )
    request = purge_request(tenant)
    concluded = new_event(
        TenantPurged(
            tenant=tenant_state(), purge_id=request.payload.purge_id, certificate_id=uuid4()
        ),
        tenant_id=tenant,
        subject=f"tenant/{tenant}",
        aggregate_version=10,
        source="/tenantry/tenancy",
        region="local",
    )
    await purge(service_db, redis, request)
    for envelope in (suspension(tenant), request, concluded):
        async with service_db.db.transaction(tenant_id=tenant) as tx:
            assert await PostgresInbox().claim(tx, "tenantry-identity", envelope.id)
            await handlers[envelope.type](tx, envelope)
    # The saga's own events still flow (tenant.purged leaves the projection's tombstone),
    # and none leaves an inbox mark: the tombstone is the tenant's only row.
    assert applied == ["tenant.purge_requested", "tenant.purged"]
    marks = await service_db.db.pool.fetch("SELECT 1 FROM inbox WHERE tenant_id = $1", tenant)
    assert marks == []


@st.composite
def schemas(draw: st.DrawFn) -> tuple[Schema, frozenset[str]]:
    """Tables t0..tn, foreign keys only from a later table to an earlier one (a schema's
    keys form no cycle but a table's to itself), some tables kept."""
    count = draw(st.integers(min_value=1, max_value=12))
    tables = [f"t{i}" for i in range(count)]
    keys = draw(
        st.frozensets(
            st.tuples(st.integers(0, count - 1), st.integers(0, count - 1)).map(
                lambda pair: (tables[max(pair)], tables[min(pair)])
            )
        )
    )
    keep = draw(st.frozensets(st.sampled_from(tables)))
    schema = Schema(
        tenant_tables=frozenset(tables) | {PURGE_RECORD},
        other_tables=frozenset(),
        foreign_keys=keys,
    )
    return schema, keep


@given(schemas())
def test_the_deletion_order_puts_every_table_after_the_tables_that_reference_it(
    drawn: tuple[Schema, frozenset[str]],
) -> None:
    schema, keep = drawn
    order = schema.deletion_order(keep)
    assert sorted(order) == sorted(schema.tenant_tables - keep - {PURGE_RECORD})
    place = {table: i for i, table in enumerate(order)}
    for child, parent in schema.foreign_keys:
        if child in place and parent in place and child != parent:
            assert place[child] < place[parent], (child, parent, order)
