"""Wiring of the tenancy service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from tenantry_servicekit.app import ServiceSpec
from tenantry_tenancy.api import TenantsController

SPEC = ServiceSpec(
    name="tenancy",
    description="Tenants, plans and limits, lifecycle state, home region.",
    route_handlers=[TenantsController],
    migration_packages=["tenantry_tenancy"],
)
