"""Wiring of the identity service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from tenantry_servicekit.app import ServiceSpec
from tenantry_servicekit.projections import tenant_projection_handlers

SPEC = ServiceSpec(
    name="identity",
    description=(
        "Login accounts, SSO connections, sessions and tokens, API keys, email verification."
    ),
    consumer_handlers=tenant_projection_handlers(),
)
