"""Usage against each quantity limit, as the services that hold the things report it.

identity reports `seats` and `api_keys`, webhooks `webhook_endpoints`, each an absolute
count with a version that grows per tenant and resource (usage.reported; see
tenantry_projections.usage_reports). A counter takes a report only if its version is higher
than the one it holds, so reports may arrive in any order, twice, or late, and the counter
still ends at the owner's newest count. tenancy counts nothing itself: a delta missed once
(an event type nobody counted) stayed wrong forever; a report is repaired by the next one.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.usage import UsageReported

COUNTED = ("seats", "api_keys", "webhook_endpoints")


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    seats: int = 0
    api_keys: int = 0
    webhook_endpoints: int = 0


async def _on_usage_reported(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    payload: UsageReported = event.payload
    column = payload.resource
    assert column in COUNTED  # the payload type allows nothing else; the name goes in SQL
    await tx.execute(
        f"""INSERT INTO tenant_usage AS u (tenant_id, {column}, {column}_version)
            VALUES ($1, $2, $3)
            ON CONFLICT (tenant_id) DO UPDATE
                SET {column} = EXCLUDED.{column}, {column}_version = EXCLUDED.{column}_version
                WHERE u.{column}_version < EXCLUDED.{column}_version""",
        event.tenant_id,
        payload.count,
        payload.version,
    )


def usage_handlers() -> dict[str, Handler[asyncpg.Connection]]:
    return {"usage.reported": _on_usage_reported}


async def usage_of(tx: asyncpg.Connection, tenant_id: UUID) -> Usage:
    row = await tx.fetchrow(
        "SELECT seats, api_keys, webhook_endpoints FROM tenant_usage WHERE tenant_id = $1",
        tenant_id,
    )
    if row is None:
        return Usage()
    return Usage(**dict(row))
