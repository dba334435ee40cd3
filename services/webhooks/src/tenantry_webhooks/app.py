"""Wiring of the webhooks service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from tenantry_servicekit.app import ServiceSpec
from tenantry_servicekit.projections import standard_projections

SPEC = ServiceSpec(
    name="webhooks",
    description=(
        "Customer endpoints, subscriptions, signing secrets, messages and delivery attempts."
    ),
    consumer_handlers=standard_projections(),
)
