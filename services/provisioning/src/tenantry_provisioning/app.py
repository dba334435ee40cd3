"""Wiring of the provisioning service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from tenantry_servicekit.app import ServiceSpec
from tenantry_servicekit.projections import standard_projections

SPEC = ServiceSpec(
    name="provisioning",
    description="The SCIM 2.0 directory: users, groups, memberships.",
    consumer_handlers=standard_projections(),
)
