"""What the provisioning worker runs: the standard projections (tenants, API keys,
accounts, limits; provisioning consumes no event of its own) and the sweep that finishes
SCIM user writes whose request died between identity's write and the directory's
(scim/intents.py)."""

from __future__ import annotations

import asyncpg

from tenantry_events.consumer import Handler
from tenantry_projections.projections import standard_projections
from tenantry_provisioning.scim.intents import finish_stale_intents

WORKER_TASKS = (finish_stale_intents,)


def provisioning_consumers() -> dict[str, Handler[asyncpg.Connection]]:
    return standard_projections()
