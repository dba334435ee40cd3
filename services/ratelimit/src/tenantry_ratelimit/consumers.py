"""What ratelimit does with events (the worker's consumers), besides the standard
projections: republishing a tenant's resolved policies when its limits change."""

from __future__ import annotations

from typing import Any

import asyncpg

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_ratelimit.store import PolicyStore


def publishing_handlers(policy_store: PolicyStore) -> dict[str, Handler[asyncpg.Connection]]:
    """tenant.limits_changed (a plan change, an override, a plan's new definition) changes
    the plan rate: republish the tenant's resolved policies. Runs after the projection of
    tenant_limits, in the same transaction (merge_handlers chains them in order)."""

    async def on_limits_changed(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        await policy_store.publish(tx, event.tenant_id)

    return {"tenant.limits_changed": on_limits_changed}
