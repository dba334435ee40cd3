"""Wiring of the tenancy service: the one place that puts domain, store and edges together.

Routes receive what they use by name through Litestar's dependency injection, typed: the
stores from `ROUTE_DEPENDENCIES`, the database (`db`) and the settings from the app factory.
(The providers name `runtime` explicitly: Litestar 3 stops inferring dependencies.)"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
from litestar import Router
from litestar.di import NamedDependency, Provide

from tenantry_credentials.crypto import SecretBox
from tenantry_events.consumer import Handler, merge_handlers
from tenantry_objectstore.factory import open_object_store
from tenantry_platform.clock import SystemClock
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
from tenantry_tenancy.consumers import export_consumers, purge_consumers, usage_consumers
from tenantry_tenancy.data_keys import TenancyDataKeys
from tenantry_tenancy.documents import DocumentSigner
from tenantry_tenancy.erasure_api import ErasuresController
from tenantry_tenancy.erasures import ErasureStore, erasure_consumers
from tenantry_tenancy.export_api import Archives, ExportsController, download
from tenantry_tenancy.export_sources import TENANCY_EXPORTS
from tenantry_tenancy.export_store import ExportStore
from tenantry_tenancy.export_worker import ExportWorker
from tenantry_tenancy.internal_api import INTERNAL_KEY_API
from tenantry_tenancy.lifecycle import LifecycleScheduler
from tenantry_tenancy.offboarding_api import (
    OffboardingController,
    deletion_certificate,
    document_jwks,
)
from tenantry_tenancy.purges import TENANCY_PURGE, PurgeStore
from tenantry_tenancy.settings import TenancySettings
from tenantry_tenancy.store import TENANTS, PlanStore, TenantRepository


def tenant_repository(runtime: NamedDependency[Runtime]) -> TenantRepository:
    return TenantRepository(runtime.events, source=runtime.source, region=runtime.settings.region)


def plan_store(runtime: NamedDependency[Runtime]) -> PlanStore:
    return PlanStore(runtime.outbox, source=runtime.source, region=runtime.settings.region)


def purge_store(runtime: NamedDependency[Runtime]) -> PurgeStore:
    return PurgeStore(runtime.outbox, source=runtime.source, region=runtime.settings.region)


def erasure_store(runtime: NamedDependency[Runtime]) -> ErasureStore:
    keys = runtime.data_keys
    assert isinstance(keys, TenancyDataKeys)  # tenancy keeps the keys (SPEC.data_keys)
    return ErasureStore(runtime.outbox, keys, source=runtime.source, region=runtime.settings.region)


def export_store(runtime: NamedDependency[Runtime]) -> ExportStore:
    return ExportStore(runtime.outbox, source=runtime.source, region=runtime.settings.region)


def archives(runtime: NamedDependency[Runtime]) -> Archives:
    """The object store, opened once per api process (open_objects, at startup)."""
    found = runtime.extras["archives"]
    assert isinstance(found, Archives)
    return found


async def open_objects(runtime: Runtime) -> None:
    stack = contextlib.AsyncExitStack()
    runtime.extras["archives"] = Archives(
        await stack.enter_async_context(open_object_store(runtime.settings))
    )
    runtime.extras["object_store_stack"] = stack


async def close_objects(runtime: Runtime) -> None:
    stack = runtime.extras.pop("object_store_stack", None)
    if isinstance(stack, contextlib.AsyncExitStack):
        await stack.aclose()


def document_signer(runtime: NamedDependency[Runtime]) -> DocumentSigner:
    """One per process: it keeps the region's document key once loaded."""
    signer = runtime.extras.get("document_signer")
    if not isinstance(signer, DocumentSigner):
        box = SecretBox.from_base64(runtime.settings_as(TenancySettings).master_key)
        signer = runtime.extras["document_signer"] = DocumentSigner(runtime.db, box)
    return signer


ROUTE_DEPENDENCIES = {
    "tenant_repository": Provide(tenant_repository, sync_to_thread=False),
    "plan_store": Provide(plan_store, sync_to_thread=False),
    "purge_store": Provide(purge_store, sync_to_thread=False),
    "document_signer": Provide(document_signer, sync_to_thread=False),
    "export_store": Provide(export_store, sync_to_thread=False),
    "erasure_store": Provide(erasure_store, sync_to_thread=False),
    "archives": Provide(archives, sync_to_thread=False),
}


def worker_consumers(runtime: Runtime) -> dict[str, Handler[asyncpg.Connection]]:
    settings = runtime.settings_as(TenancySettings)
    return merge_handlers(
        standard_projections(),
        usage_consumers(),
        export_consumers(export_store(runtime)),
        erasure_consumers(erasure_store(runtime), SystemClock()),
        purge_consumers(
            purge_store(runtime),
            document_signer(runtime),
            settings,
            quarantine=settings.slug_quarantine,
        ),
    )


async def lifecycle_scheduler(runtime: Runtime, stop: asyncio.Event) -> None:
    """Due purges, reminders and purges missing reports (lifecycle.py), in the worker."""
    settings = runtime.settings_as(TenancySettings)
    scheduler = LifecycleScheduler(
        runtime.db,
        tenant_repository(runtime),
        purge_store(runtime),
        clock=SystemClock(),
        resend_after=settings.purge_resend_after,
        erasures=erasure_store(runtime),
    )
    await scheduler.run(stop, settings.lifecycle_scan_seconds)


async def export_worker(runtime: Runtime, stop: asyncio.Event) -> None:
    """Assembles, re-requests and expires exports (export_worker.py), in the worker."""
    settings = runtime.settings_as(TenancySettings)
    async with open_object_store(settings) as objects:
        worker = ExportWorker(
            runtime.db,
            export_store(runtime),
            objects,
            document_signer(runtime).sign,
            clock=SystemClock(),
            region=settings.region,
            resend_after=settings.export_resend_after,
            keep=settings.export_keep,
        )
        await worker.run(stop, settings.export_scan_seconds)


SPEC = ServiceSpec(
    name="tenancy",
    description="Tenants, plans and limits, lifecycle state, home region.",
    route_handlers=[
        Router(
            path="/",
            route_handlers=[
                TenantsController,
                LifecycleController,
                OffboardingController,
                ExportsController,
                ErasuresController,
                LimitsController,
                PlanController,
                list_plans,
                update_plan,
                deletion_certificate,
                download,
            ],
            dependencies=ROUTE_DEPENDENCIES,
        )
    ],
    root_route_handlers=[
        Router(path="/", route_handlers=[document_jwks], dependencies=ROUTE_DEPENDENCIES),
        INTERNAL_KEY_API,
    ],
    consumer_factory=worker_consumers,
    migration_packages=["tenantry_tenancy"],
    data_keys=TenancyDataKeys.from_settings,
    settings_cls=TenancySettings,
    on_startup=[open_objects],
    on_shutdown=[close_objects],
    worker_tasks=[lifecycle_scheduler, export_worker],
    aggregates=[TENANTS],
    purge=TENANCY_PURGE,
    exports=TENANCY_EXPORTS,
)
