"""Wiring of the ratelimit service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from typing import Any

import asyncpg

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_projections.projections import standard_projections
from tenantry_ratelimit.api import PlanPoliciesController, TenantPoliciesController, decide
from tenantry_ratelimit.store import PolicyStore
from tenantry_ratelimit.throttles import report_throttles
from tenantry_service.app import ServiceSpec
from tenantry_service.runtime import Runtime


def publishing_handlers(runtime: Runtime) -> dict[str, Handler[asyncpg.Connection]]:
    """tenant.limits_changed (a plan change, an override, a plan's new definition) changes
    the plan rate: republish the tenant's resolved policies. Runs after the projection of
    tenant_limits, in the same transaction (merge_handlers chains them in order)."""
    policy_store = PolicyStore(
        runtime.outbox, source=runtime.source, region=runtime.settings.region
    )

    async def on_limits_changed(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        await policy_store.publish(tx, event.tenant_id)

    return {"tenant.limits_changed": on_limits_changed}


SPEC = ServiceSpec(
    name="ratelimit",
    description="Rate policies per plan, tenant and API key; GCRA decisions in Redis.",
    route_handlers=[TenantPoliciesController, PlanPoliciesController, decide],
    consumer_handlers=standard_projections(),
    consumer_factory=lambda runtime: publishing_handlers(runtime),
    migration_packages=["tenantry_ratelimit"],
    worker_tasks=[report_throttles],
)
