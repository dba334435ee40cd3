"""The fan-out: every public event becomes one message (idempotent by event id) and one
delivery per subscribed endpoint of its tenant, in the consumer's transaction."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from tenantry_events.catalog import CATALOG, Catalog, load_all
from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_webhooks.domain import subscribed
from tenantry_webhooks.store import (
    insert_deliveries,
    insert_message,
    notify_due,
    subscriptions,
)

_ENCODER = msgspec.json.Encoder()


def message_id_of(event: Envelope[Any]) -> str:
    """The webhook-id: derived from the event id, so a redelivered event is the same
    message, and a receiver can deduplicate on it."""
    return f"msg_{event.id.hex}"


def channels_of(event: Envelope[Any]) -> list[str]:
    """Labels an endpoint may filter on: where the event happened and which service
    emitted it."""
    return [f"region:{event.region}", f"source:{event.source.rsplit('/', 1)[-1]}"]


def body_of(event: Envelope[Any]) -> bytes:
    """Standard Webhooks' body: {type, timestamp, data}. `data` is the event's payload,
    with the tenant and the subject it is about."""
    data = {
        "tenant_id": str(event.tenant_id),
        "subject": event.subject,
        **msgspec.to_builtins(event.payload),
    }
    return _ENCODER.encode(
        {"type": event.type, "timestamp": event.occurred_at.isoformat(), "data": data}
    )


async def fan_out(tx: asyncpg.Connection, event: Envelope[Any]) -> int:
    """Returns the number of deliveries created (0 for a duplicate event)."""
    message_id = message_id_of(event)
    channels = channels_of(event)
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
    targets = [
        endpoint_id
        for endpoint_id, types, endpoint_channels in await subscriptions(tx, event.tenant_id)
        if subscribed(types, endpoint_channels, event.type, channels)
    ]
    count = await insert_deliveries(tx, event.tenant_id, message_id, targets)
    if count:
        await notify_due(tx)
    return count


def public_event_types(catalog: Catalog = CATALOG) -> list[str]:
    load_all()
    return [t.name for t in catalog if t.public]


def fanout_handlers() -> dict[str, Handler[asyncpg.Connection]]:
    async def handle(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        await fan_out(tx, event)

    return {name: handle for name in public_event_types()}
