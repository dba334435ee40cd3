"""Wiring of the tenancy service: the one place that puts domain, store and edges together.

Routes receive what they use by name through Litestar's dependency injection, typed: the
stores from `ROUTE_DEPENDENCIES`, the database (`db`) and the settings from the app factory.
(The providers name `runtime` explicitly: Litestar 3 stops inferring dependencies.)"""

from __future__ import annotations

from litestar import Router
from litestar.di import NamedDependency, Provide

from tenantry_events.consumer import merge_handlers
from tenantry_projections.projections import standard_projections
from tenantry_service.app import ServiceSpec
from tenantry_service.runtime import Runtime
from tenantry_tenancy.api import (
    LifecycleController,
    LimitsController,
    PlanController,
    TenantsController,
    list_plans,
    update_plan,
)
from tenantry_tenancy.consumers import tenancy_consumers
from tenantry_tenancy.store import TENANTS, PlanStore, TenantRepository


def tenant_repository(runtime: NamedDependency[Runtime]) -> TenantRepository:
    return TenantRepository(runtime.events, source=runtime.source, region=runtime.settings.region)


def plan_store(runtime: NamedDependency[Runtime]) -> PlanStore:
    return PlanStore(runtime.outbox, source=runtime.source, region=runtime.settings.region)


ROUTE_DEPENDENCIES = {
    "tenant_repository": Provide(tenant_repository, sync_to_thread=False),
    "plan_store": Provide(plan_store, sync_to_thread=False),
}


SPEC = ServiceSpec(
    name="tenancy",
    description="Tenants, plans and limits, lifecycle state, home region.",
    route_handlers=[
        Router(
            path="/",
            route_handlers=[
                TenantsController,
                LifecycleController,
                LimitsController,
                PlanController,
                list_plans,
                update_plan,
            ],
            dependencies=ROUTE_DEPENDENCIES,
        )
    ],
    consumer_handlers=merge_handlers(standard_projections(), tenancy_consumers()),
    migration_packages=["tenantry_tenancy"],
    aggregates=[TENANTS],
)
