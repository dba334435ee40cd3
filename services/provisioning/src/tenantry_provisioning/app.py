"""Wiring of the provisioning service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from tenantry_provisioning.api import SCIM_ROUTER
from tenantry_provisioning.consumers import WORKER_TASKS, provisioning_consumers
from tenantry_provisioning.scim.errors import scim_error_response
from tenantry_provisioning.settings import ProvisioningSettings
from tenantry_service.app import ServiceSpec

SPEC = ServiceSpec(
    name="provisioning",
    description="SCIM 2.0 for Okta and Microsoft Entra ID: users, groups, memberships.",
    root_route_handlers=[SCIM_ROUTER],
    consumer_handlers=provisioning_consumers(),
    migration_packages=["tenantry_provisioning"],
    settings_cls=ProvisioningSettings,
    worker_tasks=WORKER_TASKS,
    error_renderers={"/scim/v2": scim_error_response},
)
