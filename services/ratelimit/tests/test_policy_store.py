"""ratelimit's policy store on real Postgres: resolution and the publication race."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import msgspec
import pytest_asyncio

from tenantry_events.kafka_codec import from_record
from tenantry_events.payloads.ratelimit import RatePoliciesChanged, RatePolicy
from tenantry_events.pg import package_migrations
from tenantry_events.storage import PostgresOutbox
from tenantry_ratelimit.store import PolicyStore
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.plans import FREE_LIMITS
from tenantry_testkit.stack import Stack

FREE = FREE_LIMITS


@pytest_asyncio.fixture
async def db(stack: Stack) -> AsyncIterator[ScratchDatabase]:
    scratch = await create_scratch_database(stack, package_migrations("tenantry_ratelimit"))
    try:
        yield scratch
    finally:
        await drop_scratch_database(stack, scratch)


async def published(outbox: PostgresOutbox) -> list[RatePoliciesChanged]:
    events = [from_record(e.record.headers, e.record.value) for e in await outbox.fetch(100)]
    return [e.payload for e in events if isinstance(e.payload, RatePoliciesChanged)]


async def test_the_highest_version_carries_the_latest_policies_under_a_race(
    db: ScratchDatabase,
) -> None:
    """A publisher that read its inputs before an override committed must not publish a
    higher version than the override's own publication (the version lock comes first)."""
    tenant_id = uuid4()
    outbox = PostgresOutbox(db.db)
    store = PolicyStore(outbox, source="/tenantry/ratelimit", region="local")
    async with db.db.transaction(platform=True) as tx:
        await tx.execute(
            "INSERT INTO tenant_limits (tenant_id, plan, limits, plans, limits_version)"
            " VALUES ($1, 'free', $2, '[]', 1)",
            tenant_id,
            msgspec.to_builtins(FREE),
        )
    async with db.db.transaction(tenant_id=tenant_id) as tx:
        await store.publish(tx, tenant_id)  # version 1

    async def consumer_republish() -> None:  # e.g. tenant.limits_changed arriving
        async with db.db.transaction(tenant_id=tenant_id) as tx:
            await store.publish(tx, tenant_id)

    async with db.db.transaction(tenant_id=tenant_id) as tx:  # the operator's override
        narrow = RatePolicy(name="requests", limit=1, period_seconds=60, burst=5)
        await store.set_tenant(tx, tenant_id, [narrow], 1, "operator:test")
        await store.publish(tx, tenant_id)
        # Before this commits, a concurrent publisher starts: it must not read the
        # inputs as they were before the override and then take the higher version.
        racing = asyncio.create_task(consumer_republish())
        await asyncio.sleep(0.3)
        assert not racing.done(), "it waits for the version lock"
    await racing
    changes = await published(outbox)
    latest = max(changes, key=lambda c: c.version)
    assert latest.max_in_flight == 1
    assert {p.name: p.burst for p in latest.policies}["requests"] == 5


async def test_plan_policies_and_overrides_resolve_by_name(db: ScratchDatabase) -> None:
    tenant_id = uuid4()
    outbox = PostgresOutbox(db.db)
    store = PolicyStore(outbox, source="/tenantry/ratelimit", region="local")
    async with db.db.transaction(platform=True) as tx:
        await tx.execute(
            "INSERT INTO tenant_limits (tenant_id, plan, limits, plans, limits_version)"
            " VALUES ($1, 'free', $2, '[]', 1)",
            tenant_id,
            msgspec.to_builtins(FREE),
        )
    async with db.db.transaction(tenant_id=tenant_id) as tx:
        resolved = await store.publish(tx, tenant_id)
    assert resolved is not None
    by_name = {p.name: p for p in resolved.policies}
    assert (by_name["requests"].limit, by_name["requests"].burst) == (20, 40)
    assert by_name["hourly"].limit == 20000  # the seeded plan policy
    assert resolved.max_in_flight == 10
    async with db.db.transaction(platform=True) as tx:
        assert await store.inputs(tx, uuid4()) is None, "no limits known: nothing to resolve"
