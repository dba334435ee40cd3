"""Wiring of the tenancy service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from tenantry_servicekit.app import ServiceSpec
from tenantry_servicekit.projections import standard_projections
from tenantry_tenancy.api import (
    LifecycleController,
    LimitsController,
    TenantsController,
    list_plans,
)

SPEC = ServiceSpec(
    name="tenancy",
    description="Tenants, plans and limits, lifecycle state, home region.",
    route_handlers=[TenantsController, LifecycleController, LimitsController, list_plans],
    consumer_handlers=standard_projections(),
    migration_packages=["tenantry_tenancy"],
)
