"""Tenant projection: highest aggregate version wins, whatever the arrival order."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from uuid_utils.compat import uuid4

from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.tenancy import (
    TenantCreated,
    TenantReactivated,
    TenantState,
    TenantSuspended,
)
from tenantry_projections.projections import PostgresTenantStatus, tenant_projection_handlers
from tenantry_testkit.fixtures import ScratchDatabase


def history() -> list[Envelope[Any]]:
    tenant = uuid4()

    def state(status: str) -> TenantState:
        return TenantState(name="n", slug="s", status=status, plan="free", home_region="local")  # type: ignore[arg-type]

    payloads = [
        TenantCreated(tenant=state("active"), created_by="op"),
        TenantSuspended(tenant=state("suspended"), reason="r", by="op"),
        TenantReactivated(tenant=state("active"), reason="r", by="op"),
        TenantSuspended(tenant=state("suspended"), reason="r2", by="op"),
    ]
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
