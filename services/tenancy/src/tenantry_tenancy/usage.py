"""Usage counted from events (the inbox makes each event count once)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope

COUNTED = ("seats", "api_keys", "webhook_endpoints")


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    seats: int = 0
    api_keys: int = 0
    webhook_endpoints: int = 0


async def _add(tx: asyncpg.Connection, tenant_id: UUID, column: str, delta: int) -> None:
    assert column in COUNTED
    await tx.execute(
        # No clamping at 0: a disable may arrive before its create (another topic), and
        # plain sums converge whatever the order.
        f"""INSERT INTO tenant_usage (tenant_id, {column}) VALUES ($1, $2)
            ON CONFLICT (tenant_id) DO UPDATE SET {column} = tenant_usage.{column} + $2""",
        tenant_id,
        delta,
    )


def _counter(column: str, delta: int) -> Handler[asyncpg.Connection]:
    async def handle(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        if column == "seats" and getattr(event.payload, "status", "active") != "active":
            return
        await _add(tx, event.tenant_id, column, delta)

    return handle


def usage_handlers() -> dict[str, Handler[asyncpg.Connection]]:
    return {
        "account.created": _counter("seats", +1),
        "account.disabled": _counter("seats", -1),
        "apikey.created": _counter("api_keys", +1),
        "apikey.revoked": _counter("api_keys", -1),
    }


async def usage_of(tx: asyncpg.Connection, tenant_id: UUID) -> Usage:
    row = await tx.fetchrow(
        "SELECT seats, api_keys, webhook_endpoints FROM tenant_usage WHERE tenant_id = $1",
        tenant_id,
    )
    if row is None:
        return Usage()
    return Usage(**{k: max(v, 0) for k, v in dict(row).items()})
