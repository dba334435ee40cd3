"""Wiring of the provisioning service: the one place that puts domain, store and edges together.

The api process builds the directory (directory.py: the database, the directory's events,
identity's client) once at startup; the SCIM routes receive it by name through Litestar's
dependency injection (`ROUTE_DEPENDENCIES`), typed. The worker's task builds what it uses
from the runtime."""

from __future__ import annotations

import asyncio

from litestar import Router

from tenantry_provisioning.api import SCIM_ROUTER
from tenantry_provisioning.consumers import provisioning_consumers
from tenantry_provisioning.directory import Directory
from tenantry_provisioning.erasure import PROVISIONING_ERASURE
from tenantry_provisioning.export import PROVISIONING_EXPORTS
from tenantry_provisioning.scim.accounts import IdentityAccounts
from tenantry_provisioning.scim.errors import scim_error_response
from tenantry_provisioning.scim.events import DirectoryEvents
from tenantry_provisioning.scim.intents import finish_stale_intents
from tenantry_provisioning.settings import ProvisioningSettings
from tenantry_service.app import ServiceSpec
from tenantry_service.components import StartupComponents
from tenantry_service.runtime import Runtime


def directory_events(runtime: Runtime) -> DirectoryEvents:
    return DirectoryEvents(runtime.outbox, source=runtime.source, region=runtime.settings.region)


async def build_directory(runtime: Runtime) -> Directory:
    return Directory(
        db=runtime.db,
        events=directory_events(runtime),
        identity=IdentityAccounts(runtime.settings.service_url("identity")),
    )


async def close_directory(directory: Directory) -> None:
    await directory.identity.aclose()


DIRECTORY = StartupComponents(Directory, build_directory, close=close_directory)
ROUTE_DEPENDENCIES = DIRECTORY.dependencies("directory")


async def finish_intents(runtime: Runtime, stop: asyncio.Event) -> None:
    """The worker's sweep of SCIM user writes whose request died between identity's
    write and the directory's (scim/intents.py)."""
    settings = runtime.settings_as(ProvisioningSettings)
    await finish_stale_intents(runtime.db, directory_events(runtime), settings, stop)


SPEC = ServiceSpec(
    name="provisioning",
    description="SCIM 2.0 for Okta and Microsoft Entra ID: users, groups, memberships.",
    root_route_handlers=[
        Router(path="/", route_handlers=[SCIM_ROUTER], dependencies=ROUTE_DEPENDENCIES)
    ],
    consumer_handlers=provisioning_consumers(),
    migration_packages=["tenantry_provisioning"],
    exports=PROVISIONING_EXPORTS,
    erasure=PROVISIONING_ERASURE,
    settings_cls=ProvisioningSettings,
    on_startup=[DIRECTORY.start],
    on_shutdown=[DIRECTORY.stop],
    worker_tasks=[finish_intents],
    error_renderers={"/scim/v2": scim_error_response},
)
