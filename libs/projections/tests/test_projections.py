"""Tenant projection: highest aggregate version wins, whatever the arrival order; the
offboarding and purge events move it too (`purging` being its own local state)."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime
from typing import Any

import pytest
from uuid_utils.compat import uuid4

from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.tenancy import (
    TenantCreated,
    TenantOffboardingCancelled,
    TenantOffboardingStarted,
    TenantPurged,
    TenantPurgeRequested,
    TenantReactivated,
    TenantState,
    TenantSuspended,
)
from tenantry_projections.projections import PostgresTenantStatus, tenant_projection_handlers
from tenantry_testkit.fixtures import ScratchDatabase


def state(status: str) -> TenantState:
    return TenantState(name="n", slug="s", status=status, plan="free", home_region="local")  # type: ignore[arg-type]


def history() -> list[Envelope[Any]]:
    return versioned(
        [
            TenantCreated(tenant=state("active"), created_by="op"),
            TenantSuspended(tenant=state("suspended"), reason="r", by="op"),
            TenantReactivated(tenant=state("active"), reason="r", by="op"),
            TenantSuspended(tenant=state("suspended"), reason="r2", by="op"),
        ]
    )


PURGE_AT = datetime(2027, 1, 6, tzinfo=UTC)


def offboarding_history() -> list[Envelope[Any]]:
    """Suspended, offboarded, called off (back to suspended), offboarded again, purged."""
    purge_id, certificate_id = uuid4(), uuid4()
    started = TenantOffboardingStarted(
        tenant=state("offboarding"),
        previous_status="suspended",
        purge_at=PURGE_AT,
        reason="contract ended",
        by="owner",
        certificate_id=certificate_id,
    )
    return versioned(
        [
            TenantCreated(tenant=state("active"), created_by="op"),
            TenantSuspended(tenant=state("suspended"), reason="r", by="op"),
            started,
            TenantOffboardingCancelled(tenant=state("suspended"), reason="stay", by="owner"),
            started,
            TenantPurgeRequested(purge_id=purge_id, early=False, reason="due", by="tenancy"),
            TenantPurged(tenant=state("purged"), purge_id=purge_id, certificate_id=certificate_id),
        ]
    )


def versioned(payloads: list[Any]) -> list[Envelope[Any]]:
    tenant = uuid4()
    return [
        new_event(
            p,
            tenant_id=tenant,
            subject=str(tenant),
            aggregate_version=i + 1,
            source="/tenantry/tenancy",
            region="local",
        )
        for i, p in enumerate(payloads)
    ]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4)))[::5])
async def test_any_arrival_order_ends_in_the_latest_state(
    scratch_db: ScratchDatabase, order: tuple[int, ...]
) -> None:
    events = history()
    handlers = tenant_projection_handlers()
    for i in order:
        async with scratch_db.db.transaction() as tx:
            await handlers[events[i].type](tx, events[i])
    status = await PostgresTenantStatus(scratch_db.db).status(events[0].tenant_id)
    assert status == "suspended"
    version = await scratch_db.db.pool.fetchval(
        "SELECT version FROM tenant_projection WHERE tenant_id = $1", events[0].tenant_id
    )
    assert version == 4


async def projected(scratch: ScratchDatabase, events: list[Envelope[Any]]) -> tuple[Any, ...]:
    handlers = tenant_projection_handlers()
    for event in events:
        async with scratch.db.transaction() as tx:
            await handlers[event.type](tx, event)
    row = await scratch.db.pool.fetchrow(
        "SELECT status, name, slug, version FROM tenant_projection WHERE tenant_id = $1",
        events[0].tenant_id,
    )
    assert row is not None
    return tuple(row)


async def test_offboarding_moves_the_projection_and_cancelling_restores_the_previous_state(
    scratch_db: ScratchDatabase,
) -> None:
    events = offboarding_history()
    assert await projected(scratch_db, events[:3]) == ("offboarding", "n", "s", 3)
    assert await projected(scratch_db, events[3:4]) == ("suspended", "n", "s", 4)
    assert await projected(scratch_db, events[4:5]) == ("offboarding", "n", "s", 5)
    # purging is local: the request moves it, and a redelivered older event cannot undo it
    assert await projected(scratch_db, events[5:6]) == ("purging", "n", "s", 6)
    assert await projected(scratch_db, events[2:5]) == ("purging", "n", "s", 6)
    # the tombstone keeps no name or slug
    assert await projected(scratch_db, events[6:]) == ("purged", "", "", 7)
    assert await projected(scratch_db, events[5:6]) == ("purged", "", "", 7)


@pytest.mark.parametrize("seed", range(6))
async def test_any_arrival_order_of_an_offboarding_ends_purged(
    scratch_db: ScratchDatabase, seed: int
) -> None:
    events = offboarding_history()
    shuffled = events[1:]
    random.Random(seed).shuffle(shuffled)
    # The creating event first: the purge request updates a row that must exist.
    assert await projected(scratch_db, [events[0], *shuffled]) == ("purged", "", "", 7)
