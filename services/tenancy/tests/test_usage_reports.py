"""tenancy's usage counters take the owners' reports: the highest version wins, whatever
the order of arrival, duplicates included, and each resource keeps its own version."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from uuid_utils.compat import uuid4

from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.usage import CountedResource, UsageReported
from tenantry_tenancy.consumers import usage_consumers
from tenantry_tenancy.store import Usage, usage_of
from tenantry_testkit.fixtures import ScratchDatabase


def report(tenant: UUID, resource: CountedResource, count: int, version: int) -> Envelope[Any]:
    return new_event(
        UsageReported(
            resource=resource, count=count, version=version, counted_at=datetime.now(UTC)
        ),
        tenant_id=tenant,
        subject=resource,
        aggregate_version=version,
        source="/tenantry/identity",
        region="local",
    )


async def apply(db: ScratchDatabase, events: list[Envelope[Any]]) -> None:
    handle = usage_consumers()["usage.reported"]
    for event in events:
        async with db.db.transaction() as tx:
            await handle(tx, event)


async def usage(db: ScratchDatabase, tenant: UUID) -> Usage:
    async with db.db.transaction() as tx:
        return await usage_of(tx, tenant)


async def test_any_order_with_duplicates_ends_at_the_newest_report(
    tenancy_db: ScratchDatabase,
) -> None:
    tenant = uuid4()
    seats = [report(tenant, "seats", count, v) for v, count in enumerate([1, 4, 2, 3], 1)]
    keys = [report(tenant, "api_keys", count, v) for v, count in enumerate([1, 0], 1)]
    hooks = [report(tenant, "webhook_endpoints", 5, 9)]
    orders = list(itertools.permutations(seats))[::4]
    for order in orders:
        mixed = [*order, *keys, *hooks, *order[:2], *hooks]  # duplicates, interleaved
        random.Random(len(mixed)).shuffle(mixed)
        await apply(tenancy_db, mixed)
        assert await usage(tenancy_db, tenant) == Usage(seats=3, api_keys=0, webhook_endpoints=5)


async def test_a_report_replaces_a_counter_left_by_delta_counting(
    tenancy_db: ScratchDatabase,
) -> None:
    """Rows counted from events before the reports (version 0) give way to the first one."""
    tenant = uuid4()
    await tenancy_db.db.pool.execute(
        "INSERT INTO tenant_usage (tenant_id, seats, api_keys) VALUES ($1, 7, -1)", tenant
    )
    await apply(tenancy_db, [report(tenant, "seats", 2, 1), report(tenant, "api_keys", 1, 1)])
    assert await usage(tenancy_db, tenant) == Usage(seats=2, api_keys=1, webhook_endpoints=0)


async def test_an_unknown_tenant_has_no_usage(tenancy_db: ScratchDatabase) -> None:
    assert await usage(tenancy_db, uuid4()) == Usage()
