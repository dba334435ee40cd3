"""Postgres edge of tenancy: the tenant repository (events + state table, one transaction)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.envelope import new_event
from tenantry_events.payloads.tenancy import TenantCreated
from tenantry_events.storage import PostgresEventStore


class TenantRow(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    name: str
    slug: str
    status: str
    plan: str
    home_region: str
    version: int
    created_at: datetime
    updated_at: datetime


class SlugTaken(Exception):
    pass


_COLUMNS = "tenant_id, name, slug, status, plan, home_region, version, created_at, updated_at"


class TenantRepository:
    def __init__(self, events: PostgresEventStore, *, source: str, region: str) -> None:
        self._events = events
        self._source = source
        self._region = region

    @staticmethod
    def stream(tenant_id: UUID) -> str:
        return f"tenant-{tenant_id}"

    async def add(
        self, tx: asyncpg.Connection, tenant_id: UUID, created: TenantCreated
    ) -> TenantRow:
        try:
            async with tx.transaction():
                row = await tx.fetchrow(
                    f"""INSERT INTO tenants
                            (tenant_id, name, slug, status, plan, home_region, version)
                        VALUES ($1, $2, $3, $4, $5, $6, 1) RETURNING {_COLUMNS}""",
                    tenant_id,
                    created.tenant.name,
                    created.tenant.slug,
                    created.tenant.status,
                    created.tenant.plan,
                    created.tenant.home_region,
                )
        except asyncpg.UniqueViolationError as exc:
            raise SlugTaken(created.tenant.slug) from exc
        event = new_event(
            created,
            tenant_id=tenant_id,
            subject=str(tenant_id),
            aggregate_version=1,
            source=self._source,
            region=self._region,
        )
        await self._events.append(tx, self.stream(tenant_id), 0, [event])
        assert row is not None
        return TenantRow(**dict(row))

    async def get(self, tx: asyncpg.Connection, tenant_id: UUID) -> TenantRow | None:
        row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM tenants WHERE tenant_id = $1", tenant_id)
        return TenantRow(**dict(row)) if row else None

    async def list(
        self, tx: asyncpg.Connection, *, after: tuple[datetime, UUID] | None, limit: int
    ) -> list[TenantRow]:
        if after is None:
            rows = await tx.fetch(
                f"SELECT {_COLUMNS} FROM tenants ORDER BY created_at, tenant_id LIMIT $1", limit
            )
        else:
            rows = await tx.fetch(
                f"""SELECT {_COLUMNS} FROM tenants WHERE (created_at, tenant_id) > ($1, $2)
                    ORDER BY created_at, tenant_id LIMIT $3""",
                after[0],
                after[1],
                limit,
            )
        return [TenantRow(**dict(r)) for r in rows]
