"""What webhooks does with events (the worker's consumers, beside the standard projections).

The fan-out: every public event (`public_event_types`) becomes one message (idempotent by
event id) and one delivery per subscribed endpoint of its tenant, in the consumer's
transaction. An opt-in type (the catalog's `opt_in`) goes only to endpoints that name it
exactly (`*` and wildcards leave it out), and one no endpoint of the tenant asked for does
not even become a message."""

from __future__ import annotations

from typing import Any

import asyncpg

from tenantry_events.catalog import CATALOG, Catalog
from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_webhooks.domain import (
    body_of,
    channels_of,
    is_opt_in,
    message_id_of,
    public_event_types,
    subscribed,
)
from tenantry_webhooks.store import (
    insert_deliveries,
    insert_message,
    notify_due,
    subscriptions,
)


async def fan_out(tx: asyncpg.Connection, event: Envelope[Any], catalog: Catalog = CATALOG) -> int:
    """Returns the number of deliveries created (0 for a duplicate event)."""
    message_id = message_id_of(event)
    channels = channels_of(event)
    opt_in = is_opt_in(event.type, catalog)
    targets = [
        endpoint_id
        for endpoint_id, types, endpoint_channels in await subscriptions(tx, event.tenant_id)
        if subscribed(types, endpoint_channels, event.type, channels, opt_in=opt_in)
    ]
    if opt_in and not targets:
        return 0  # nobody asked for it: not even a message
    created = await insert_message(
        tx,
        message_id=message_id,
        tenant_id=event.tenant_id,
        event_id=event.id,
        event_type=event.type,
        channels=channels,
        body=body_of(event),
    )
    if not created:
        return 0
    count = await insert_deliveries(tx, event.tenant_id, message_id, targets)
    if count:
        await notify_due(tx)
    return count


def webhooks_consumers() -> dict[str, Handler[asyncpg.Connection]]:
    async def handle(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        await fan_out(tx, event)

    return {name: handle for name in public_event_types()}
