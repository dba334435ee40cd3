"""Wiring of the ratelimit service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from tenantry_servicekit.app import ServiceSpec
from tenantry_servicekit.projections import standard_projections

SPEC = ServiceSpec(
    name="ratelimit",
    description="Rate and quota policies, counters and decisions.",
    consumer_handlers=standard_projections(),
)
