"""Wiring of the tenancy service: the one place that puts domain, store and edges together.

Routes receive what they use by name through Litestar's dependency injection, typed: the
stores from `ROUTE_DEPENDENCIES`, the database (`db`) and the settings from the app factory.
(The providers name `runtime` explicitly: Litestar 3 stops inferring dependencies.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from urllib.parse import urlparse
from uuid import UUID

import asyncpg
from litestar import Router
from litestar.di import NamedDependency, Provide

from tenantry_credentials.crypto import SecretBox
from tenantry_events.consumer import Handler, merge_handlers
from tenantry_events.pg import Database, migrate, package_migrations
from tenantry_objectstore.factory import open_object_store
from tenantry_platform.clock import SystemClock
from tenantry_platform.settings import ServiceSettings, SettingsError
from tenantry_projections.projections import standard_projections
from tenantry_regions.client import DirectoryClient
from tenantry_regions.regions import RegionMap
from tenantry_service.app import ServiceSpec
from tenantry_service.move import Resealed
from tenantry_service.periodic import Counted, run_periodically
from tenantry_service.residency import DIRECTORY, directory_of
from tenantry_service.runtime import Runtime
from tenantry_tenancy.agreements_api import AgreementsController, acceptances
from tenantry_tenancy.api import (
    LifecycleController,
    LimitsController,
    PlanController,
    TenantsController,
    list_plans,
    update_plan,
)
from tenantry_tenancy.audit.api import AuditController
from tenantry_tenancy.audit.consumer import AuditRecorder, AuditRetention
from tenantry_tenancy.audit.store import AuditStore
from tenantry_tenancy.consumers import export_consumers, purge_consumers, usage_consumers
from tenantry_tenancy.data_keys import TenancyDataKeys, key_context
from tenantry_tenancy.directory.api import DIRECTORY_API
from tenantry_tenancy.directory.store import DirectoryStore
from tenantry_tenancy.directory.sync import FactsPusher
from tenantry_tenancy.documents import DocumentSigner
from tenantry_tenancy.erasure_api import ErasuresController
from tenantry_tenancy.erasures import ErasureStore, erasure_consumers
from tenantry_tenancy.export_api import Archives, ExportsController, download
from tenantry_tenancy.export_sources import TENANCY_EXPORTS
from tenantry_tenancy.export_store import ExportStore
from tenantry_tenancy.export_worker import ExportWorker
from tenantry_tenancy.internal_api import INTERNAL_KEY_API
from tenantry_tenancy.legal_api import legal_documents
from tenantry_tenancy.legal_notices_api import (
    LegalNoticesController,
    TenantLegalNoticesController,
    notice_store,
)
from tenantry_tenancy.lifecycle import LifecycleScheduler
from tenantry_tenancy.move_api import MOVES_API, MovesController
from tenantry_tenancy.move_driver import MoveDriver
from tenantry_tenancy.move_store import MoveStore
from tenantry_tenancy.offboarding_api import (
    OffboardingController,
    deletion_certificate,
    document_jwks,
)
from tenantry_tenancy.purges import TENANCY_PURGE, PurgeStore
from tenantry_tenancy.regions_api import REGION_ROUTES
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


DIRECTORY_DB = "directory_db"


async def open_directory(runtime: Runtime) -> None:
    """In the region hosting the directory, its store (its own database) serves this
    process's claims and the other regions' requests; elsewhere tenancy reaches it over
    HTTP like every service (tenantry_service.residency.directory_of)."""
    if not runtime.regions.hosts_directory or DIRECTORY_DB in runtime.extras:
        return
    settings = runtime.settings_as(TenancySettings)
    if not settings.directory_database_url:
        raise SettingsError(
            "TENANTRY_DIRECTORY_DATABASE_URL is required in the region hosting the directory"
            f" ({runtime.regions.directory_region})"
        )
    db = Database(settings.directory_database_url, max_size=5)
    await db.connect()
    runtime.extras[DIRECTORY_DB] = db
    runtime.extras[DIRECTORY] = runtime.extras["directory_store"] = DirectoryStore(db)


async def close_directory(runtime: Runtime) -> None:
    found = runtime.extras.pop(DIRECTORY, None)
    if isinstance(found, DirectoryClient):
        await found.aclose()
    db = runtime.extras.pop(DIRECTORY_DB, None)
    if isinstance(db, Database):
        await db.close()


async def migrate_directory(settings: ServiceSettings) -> list[str]:
    """The directory's database, in the region hosting it (`tenantry-tenancy migrate`)."""
    assert isinstance(settings, TenancySettings)
    if not RegionMap.from_settings(settings).hosts_directory:
        return []
    if not settings.directory_database_url:
        raise SettingsError("TENANTRY_DIRECTORY_DATABASE_URL is required to migrate it")
    dsn = settings.directory_migration_database_url or settings.directory_database_url
    app_role = urlparse(settings.directory_database_url).username
    return await migrate(dsn, package_migrations("tenantry_tenancy.directory"), app_role=app_role)


async def directory_facts(runtime: Runtime, stop: asyncio.Event) -> None:
    """Pushes this region's tenants' facts to the directory (directory/sync.py)."""
    await open_directory(runtime)
    pusher = FactsPusher(runtime.db, directory_of(runtime))
    store = runtime.extras.get("directory_store")
    grace = timedelta(seconds=runtime.settings_as(TenancySettings).directory_claim_grace_seconds)

    async def push_and_sweep() -> Counted:
        pushed = await pusher.push()
        # Where the directory lives, claims of tenants never created are given back.
        swept = await store.sweep_unrecorded(grace) if isinstance(store, DirectoryStore) else 0
        return Counted(pushed.count + swept, f"directory change(s) ({swept} claim(s) swept)")

    try:
        await run_periodically(
            push_and_sweep,
            stop,
            runtime.settings.directory_pull_seconds,
            log=logging.getLogger("tenantry.tenancy.directory"),
            what="directory facts",
        )
    finally:
        await close_directory(runtime)


ROUTE_DEPENDENCIES = {
    "tenant_repository": Provide(tenant_repository, sync_to_thread=False),
    "plan_store": Provide(plan_store, sync_to_thread=False),
    "purge_store": Provide(purge_store, sync_to_thread=False),
    "document_signer": Provide(document_signer, sync_to_thread=False),
    "export_store": Provide(export_store, sync_to_thread=False),
    "erasure_store": Provide(erasure_store, sync_to_thread=False),
    "archives": Provide(archives, sync_to_thread=False),
}


def audit_recorder(runtime: Runtime) -> AuditRecorder:
    return AuditRecorder(
        AuditStore(),
        runtime.outbox,
        source=runtime.source,
        region=runtime.settings.region,
        clock=SystemClock(),
        stream=runtime.settings_as(TenancySettings).audit_stream,
    )


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
        # Last: an event's entry is chained once its own effects are in.
        audit_recorder(runtime).handlers(),
    )


async def legal_notifier(runtime: Runtime, stop: asyncio.Event) -> None:
    """Tells every tenant of each announced change of the processing terms
    (legal_notices_store.py), in the worker."""
    settings = runtime.settings_as(TenancySettings)
    store = notice_store(runtime)

    async def fan_out() -> int:
        return await store.fan_out_once(runtime.db, SystemClock())

    await run_periodically(
        fan_out,
        stop,
        settings.legal_notice_scan_seconds,
        log=logging.getLogger("tenantry.tenancy.legal"),
        what="tenants told of a legal notice",
    )


async def audit_retention(runtime: Runtime, stop: asyncio.Event) -> None:
    """Prunes each tenant's audit log to its plan's retention (audit/consumer.py)."""
    settings = runtime.settings_as(TenancySettings)
    retention = AuditRetention(runtime.db, AuditStore(), plan_store(runtime), SystemClock())
    await run_periodically(
        retention.run_once,
        stop,
        settings.audit_retention_scan_seconds,
        log=logging.getLogger("tenantry.tenancy.audit"),
        what="audit entries past retention removed",
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


async def move_driver(runtime: Runtime, stop: asyncio.Event) -> None:
    """Takes each region's moves a step further (move_driver.py), in the worker."""
    settings = runtime.settings_as(TenancySettings)
    await open_directory(runtime)
    every = timedelta(seconds=settings.move_scan_seconds)
    async with open_object_store(settings) as objects:
        driver = MoveDriver(
            db=runtime.db,
            moves=MoveStore(),
            tenants=tenant_repository(runtime),
            exports=export_store(runtime),
            purges=purge_store(runtime),
            objects=objects,
            directory=directory_of(runtime),
            regions=runtime.regions,
            settings=settings,
            clock=SystemClock(),
            every=every,
        )
        try:
            await run_periodically(
                driver.run_once,
                stop,
                settings.move_scan_seconds,
                log=logging.getLogger("tenantry.tenancy.moves"),
                what="tenant moves",
            )
        finally:
            await driver.aclose()


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
                *REGION_ROUTES,
                MovesController,
                legal_documents,
                AgreementsController,
                acceptances,
                LegalNoticesController,
                TenantLegalNoticesController,
                AuditController,
            ],
            dependencies=ROUTE_DEPENDENCIES,
        )
    ],
    root_route_handlers=[
        Router(
            path="/", route_handlers=[document_jwks, MOVES_API], dependencies=ROUTE_DEPENDENCIES
        ),
        INTERNAL_KEY_API,
        DIRECTORY_API,
    ],
    consumer_factory=worker_consumers,
    migration_packages=["tenantry_tenancy"],
    data_keys=TenancyDataKeys.from_settings,
    settings_cls=TenancySettings,
    on_startup=[open_objects, open_directory],
    on_shutdown=[close_objects, close_directory],
    worker_tasks=[
        lifecycle_scheduler,
        export_worker,
        directory_facts,
        move_driver,
        audit_retention,
        legal_notifier,
    ],
    more_migrations=migrate_directory,
    aggregates=[TENANTS],
    purge=TENANCY_PURGE,
    exports=TENANCY_EXPORTS,
    # The tenant's data keys travel with it, so its sealed event fields open there.
    resealed=[
        Resealed(
            "tenant_data_keys", "wrapped_key", lambda row: key_context(UUID(row["tenant_id"]))
        ),
        Resealed(
            "subject_data_keys",
            "wrapped_key",
            lambda row: key_context(UUID(row["tenant_id"]), UUID(row["subject_id"])),
        ),
    ],
)
