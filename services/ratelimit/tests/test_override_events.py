"""What ratelimit's tenant-scoped writes tell the audit log: PUT .../rate-policies and PUT
.../api-keys/{key_id}/rate-policies each append ratelimit.overrides_changed (subject: the
tenant, or the key) and ratelimit.policies_changed (subject: the tenant) in the change's
transaction; a request that fails appends none and stores nothing.

The route handlers are called as the app calls them, minus the HTTP pipeline, on a scratch
database (real Postgres). The first test needs no database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast
from uuid import UUID, uuid4

import msgspec
import pytest
import pytest_asyncio

from tenantry_events.envelope import Envelope
from tenantry_events.kafka_codec import from_record
from tenantry_events.payloads.ratelimit import RateOverridesChanged, RatePolicy
from tenantry_events.pg import Database, package_migrations
from tenantry_events.storage import PostgresOutbox
from tenantry_http.auth import STATE_KEY, Principal
from tenantry_http.problems import Problem
from tenantry_ratelimit.api import KeyPolicySet, PolicySet, TenantPoliciesController
from tenantry_ratelimit.store import PolicyStore
from tenantry_service.runtime import Runtime
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.plans import FREE_LIMITS
from tenantry_testkit.stack import Stack

pytestmark = pytest.mark.timeout(30)

FREE = FREE_LIMITS
NARROW = RatePolicy(name="requests", limit=5, period_seconds=1, burst=5)
OPERATOR = SimpleNamespace(
    state={STATE_KEY: Principal(kind="operator", subject="op-1", tenant_id=None)}
)


@dataclass
class World:
    scratch: ScratchDatabase
    policy_store: PolicyStore
    outbox: PostgresOutbox
    tenant_id: UUID
    key_id: str

    @property
    def runtime(self) -> Runtime:
        return cast(Runtime, SimpleNamespace(db=self.scratch.db))


@pytest_asyncio.fixture
async def world(stack: Stack) -> AsyncIterator[World]:
    scratch = await create_scratch_database(stack, package_migrations("tenantry_ratelimit"))
    outbox = PostgresOutbox(scratch.db)
    tenant_id, key_id = uuid4(), f"key_{uuid4().hex[:12]}"
    try:
        async with scratch.db.transaction(platform=True) as tx:
            await tx.execute(
                """INSERT INTO api_key_projection (key_sha256, key_id, tenant_id, scopes)
                   VALUES ($1, $2, $3, '{}')""",
                uuid4().bytes,
                key_id,
                tenant_id,
            )
        yield World(
            scratch=scratch,
            policy_store=PolicyStore(outbox, source="/tenantry/ratelimit", region="local"),
            outbox=outbox,
            tenant_id=tenant_id,
            key_id=key_id,
        )
    finally:
        await drop_scratch_database(stack, scratch)


async def limits_arrive(world: World) -> None:
    async with world.scratch.db.transaction(platform=True) as tx:
        await tx.execute(
            "INSERT INTO tenant_limits (tenant_id, plan, limits, plans, limits_version)"
            " VALUES ($1, 'free', $2, '[]', 1)",
            world.tenant_id,
            msgspec.to_builtins(FREE),
        )


async def appended(world: World) -> list[Envelope[Any]]:
    return [from_record(e.record.headers, e.record.value) for e in await world.outbox.fetch(100)]


async def override(world: World, policies: list[RatePolicy], max_in_flight: int | None) -> Any:
    return await TenantPoliciesController.override.fn(
        None,
        request=OPERATOR,
        tenant_id=world.tenant_id,
        data=PolicySet(policies=policies, max_in_flight=max_in_flight),
        runtime=world.runtime,
        policy_store=world.policy_store,
    )


async def set_key(world: World, key_id: str, policies: list[RatePolicy]) -> Any:
    return await TenantPoliciesController.set_key_policies.fn(
        None,
        request=OPERATOR,
        tenant_id=world.tenant_id,
        key_id=key_id,
        data=KeyPolicySet(policies=policies),
        runtime=world.runtime,
        policy_store=world.policy_store,
    )


async def test_invalid_policies_are_refused_before_any_transaction() -> None:
    class Untouchable:
        def transaction(self, **_: Any) -> Any:
            raise AssertionError("a refused body must not reach the database")

    runtime = cast(Runtime, SimpleNamespace(db=cast(Database, Untouchable())))
    bad = [RatePolicy(name="requests", limit=0, period_seconds=1, burst=5)]
    with pytest.raises(Problem) as problem:
        await TenantPoliciesController.override.fn(
            None,
            request=OPERATOR,
            tenant_id=uuid4(),
            data=PolicySet(policies=bad),
            runtime=runtime,
            policy_store=cast(PolicyStore, None),
        )
    assert problem.value.status == 422


async def test_both_writes_append_their_events_in_the_changes_transaction(world: World) -> None:
    await limits_arrive(world)
    await override(world, [NARROW], 3)
    await set_key(world, world.key_id, [NARROW])
    await set_key(world, world.key_id, [])  # removed: told as well

    events = await appended(world)
    assert all(e.tenant_id == world.tenant_id for e in events)
    assert [(e.type, e.subject) for e in events] == [
        ("ratelimit.overrides_changed", str(world.tenant_id)),
        ("ratelimit.policies_changed", str(world.tenant_id)),
        ("ratelimit.overrides_changed", world.key_id),
        ("ratelimit.policies_changed", str(world.tenant_id)),
        ("ratelimit.overrides_changed", world.key_id),
        ("ratelimit.policies_changed", str(world.tenant_id)),
    ]
    assert [e.payload for e in events if e.type == "ratelimit.overrides_changed"] == [
        RateOverridesChanged(scope="tenant", policies=[NARROW], max_in_flight=3),
        RateOverridesChanged(scope="api_key", policies=[NARROW], api_key_id=world.key_id),
        RateOverridesChanged(scope="api_key", policies=[], api_key_id=world.key_id),
    ]


async def test_a_write_that_fails_stores_nothing_and_appends_nothing(world: World) -> None:
    # Before tenancy's limits arrive: 404, and the override is not kept either.
    for call in (override(world, [NARROW], None), set_key(world, world.key_id, [NARROW])):
        with pytest.raises(Problem) as early:
            await call
        assert early.value.status == 404
    await limits_arrive(world)
    with pytest.raises(Problem) as unknown_key:
        await set_key(world, "key_nope", [NARROW])
    assert unknown_key.value.status == 404

    assert await appended(world) == []
    async with world.scratch.db.transaction(platform=True) as tx:
        kept = await tx.fetchval(
            "SELECT (SELECT count(*) FROM tenant_rate_policies)"
            " + (SELECT count(*) FROM key_rate_policies)"
        )
    assert kept == 0
