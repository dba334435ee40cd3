"""The tenant projection every service keeps (see DESIGN.md: "Every service consumes what
it needs to enforce rules locally")."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.tenancy import TenantCreated, TenantState


class ProjectedTenant(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    name: str
    slug: str
    status: str
    plan: str
    home_region: str
    version: int


async def upsert_tenant(
    tx: asyncpg.Connection, tenant_id: UUID, state: TenantState, version: int
) -> None:
    """Highest version wins, so events arriving out of order across topics converge."""
    await tx.execute(
        """INSERT INTO tenant_projection AS p
               (tenant_id, name, slug, status, plan, home_region, version)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (tenant_id) DO UPDATE
               SET name = EXCLUDED.name, slug = EXCLUDED.slug, status = EXCLUDED.status,
                   plan = EXCLUDED.plan, home_region = EXCLUDED.home_region,
                   version = EXCLUDED.version, updated_at = now()
               WHERE p.version < EXCLUDED.version""",
        tenant_id,
        state.name,
        state.slug,
        state.status,
        state.plan,
        state.home_region,
        version,
    )


async def _on_tenant_created(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    payload: TenantCreated = event.payload
    await upsert_tenant(tx, event.tenant_id, payload.tenant, event.aggregate_version)


def tenant_projection_handlers() -> dict[str, Handler[asyncpg.Connection]]:
    return {"tenant.created": _on_tenant_created}


async def get_tenant(
    tx: asyncpg.Connection | asyncpg.Pool, tenant_id: UUID
) -> ProjectedTenant | None:
    row = await tx.fetchrow(
        """SELECT tenant_id, name, slug, status, plan, home_region, version
           FROM tenant_projection WHERE tenant_id = $1""",
        tenant_id,
    )
    return ProjectedTenant(**dict(row)) if row else None
