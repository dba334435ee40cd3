"""What the provisioning worker consumes: the standard projections (tenants, API keys,
accounts, limits; provisioning consumes no event of its own). Its one other task, the sweep
that finishes SCIM user writes whose request died (scim/intents.py), is wired in app.py."""

from __future__ import annotations

import asyncpg

from tenantry_events.consumer import Handler
from tenantry_projections.projections import standard_projections


def provisioning_consumers() -> dict[str, Handler[asyncpg.Connection]]:
    return standard_projections()
