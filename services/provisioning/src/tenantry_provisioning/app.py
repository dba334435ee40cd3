"""Wiring of the provisioning service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from tenantry_projections.projections import standard_projections
from tenantry_provisioning.scim.api import SCIM_ROUTER
from tenantry_provisioning.scim.errors import scim_error_response
from tenantry_provisioning.scim.intents import finish_stale_intents
from tenantry_provisioning.settings import ProvisioningSettings
from tenantry_service.app import ServiceSpec

SPEC = ServiceSpec(
    name="provisioning",
    description="SCIM 2.0 for Okta and Microsoft Entra ID: users, groups, memberships.",
    root_route_handlers=[SCIM_ROUTER],
    consumer_handlers=standard_projections(),
    migration_packages=["tenantry_provisioning"],
    settings_cls=ProvisioningSettings,
    # SCIM user writes whose request died between identity's write and the directory's.
    worker_tasks=[finish_stale_intents],
    error_renderers={"/scim/v2": scim_error_response},
)
