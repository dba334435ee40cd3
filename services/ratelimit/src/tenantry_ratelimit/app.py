"""Wiring of the ratelimit service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from tenantry_servicekit.app import ServiceSpec
from tenantry_servicekit.projections import tenant_projection_handlers

SPEC = ServiceSpec(
    name="ratelimit",
    description="Rate and quota policies, counters and decisions.",
    consumer_handlers=tenant_projection_handlers(),
)
