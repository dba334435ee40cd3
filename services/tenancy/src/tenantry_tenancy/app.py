"""Wiring of the tenancy service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from tenantry_events.consumer import merge_handlers
from tenantry_projections.projections import standard_projections
from tenantry_service.app import ServiceSpec
from tenantry_tenancy.api import (
    LifecycleController,
    LimitsController,
    PlanController,
    TenantsController,
    list_plans,
    update_plan,
)
from tenantry_tenancy.consumers import tenancy_consumers
from tenantry_tenancy.store import TENANTS

SPEC = ServiceSpec(
    name="tenancy",
    description="Tenants, plans and limits, lifecycle state, home region.",
    route_handlers=[
        TenantsController,
        LifecycleController,
        LimitsController,
        PlanController,
        list_plans,
        update_plan,
    ],
    consumer_handlers=merge_handlers(standard_projections(), tenancy_consumers()),
    migration_packages=["tenantry_tenancy"],
    aggregates=[TENANTS],
)
