"""Postgres edge of tenancy: the tenant repository (events + state row, one transaction), the
tenant state row as a registered aggregate kind, and the plan store."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.tenancy import (
    Limits,
    PlanOffer,
    TenantCreated,
    TenantLimitsChanged,
    TenantState,
)
from tenantry_events.state_check import AggregateKind, RowNotRebuildable, rewriting_row
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_tenancy.directory.sync import facts_of, queue_facts
from tenantry_tenancy.domain import Offboarding, Tenant, TenantChange, effective_limits


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
    # While offboarding: the state a cancellation restores and when the purge is due.
    previous_status: str | None = None
    purge_at: datetime | None = None


class SlugTaken(Exception):
    pass


_STREAM = "tenant-"  # a tenant's stream is tenant-<tenant_id>
_COLUMNS = (
    "tenant_id, name, slug, status, plan, home_region, version, created_at, updated_at,"
    " previous_status, purge_at"
)


class TenantRepository:
    def __init__(self, events: PostgresEventStore, *, source: str, region: str) -> None:
        self._events = events
        self._source = source
        self._region = region

    @staticmethod
    def stream(tenant_id: UUID) -> str:
        return f"{_STREAM}{tenant_id}"

    async def add(
        self, tx: asyncpg.Connection, tenant_id: UUID, created: TenantCreated
    ) -> TenantRow:
        event = self._event(tenant_id, created, 1)
        try:
            row = await _write(tx, Tenant.start(event))
        except asyncpg.UniqueViolationError as exc:
            raise SlugTaken(created.tenant.slug) from exc
        await self._events.append(tx, self.stream(tenant_id), 0, [event])
        return row

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

    async def load(self, tx: asyncpg.Connection, tenant_id: UUID) -> Tenant | None:
        """The aggregate from its state row, locked for this transaction."""
        return await read_tenant(tx, self.stream(tenant_id))

    async def record(
        self,
        tx: asyncpg.Connection,
        tenant: Tenant,
        change: TenantChange,
        *,
        occurred_at: datetime | None = None,
    ) -> TenantRow:
        """Append the change after the loaded version and write the state row from the
        tenant the change makes (the fold of its stream, one event further). `occurred_at`:
        the time the command computed with (offboarding's purge_at counts from it)."""
        event = self._event(tenant.tenant_id, change, tenant.version + 1, occurred_at)
        await self._events.append(tx, self.stream(tenant.tenant_id), tenant.version, [event])
        return await _write(tx, tenant.apply(event))

    def _event(
        self,
        tenant_id: UUID,
        payload: TenantCreated | TenantChange,
        version: int,
        occurred_at: datetime | None = None,
    ) -> Envelope[Any]:
        return new_event(
            payload,
            tenant_id=tenant_id,
            subject=str(tenant_id),
            aggregate_version=version,
            source=self._source,
            region=self._region,
            occurred_at=occurred_at,
        )

    async def history(self, tx: asyncpg.Connection, tenant_id: UUID) -> builtins.list[Transition]:
        events = await self._events.load(tx, self.stream(tenant_id))
        return [
            Transition(
                version=e.aggregate_version,
                type=e.type,
                status=_status_after(e),
                reason=getattr(e.payload, "reason", None),
                by=getattr(e.payload, "by", None) or getattr(e.payload, "created_by", None),
                occurred_at=e.occurred_at,
            )
            for e in events
        ]


def _status_after(event: Envelope[Any]) -> str:
    tenant: TenantState | None = getattr(event.payload, "tenant", None)
    return tenant.status if tenant is not None else "purging"


# ---------------------------------------------------------------- the tenant's state row
# A snapshot of the fold of the tenant's stream, written with each event; `TENANTS` tells
# the ops command (tenantry-tenancy verify-state) how to check and rebuild it.


async def _write(tx: asyncpg.Connection, tenant: Tenant) -> TenantRow:
    """Insert or update the tenant's row to hold `tenant` (a savepoint keeps the caller's
    transaction usable after a taken slug)."""
    off = tenant.offboarding
    async with tx.transaction():
        row = await tx.fetchrow(
            f"""INSERT INTO tenants (tenant_id, name, slug, status, plan, home_region, version,
                                     previous_status, offboarding_started_at, purge_at,
                                     certificate_id, purge_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                ON CONFLICT (tenant_id) DO UPDATE
                    SET name = EXCLUDED.name, slug = EXCLUDED.slug, status = EXCLUDED.status,
                        plan = EXCLUDED.plan, home_region = EXCLUDED.home_region,
                        version = EXCLUDED.version, previous_status = EXCLUDED.previous_status,
                        offboarding_started_at = EXCLUDED.offboarding_started_at,
                        purge_at = EXCLUDED.purge_at, certificate_id = EXCLUDED.certificate_id,
                        purge_id = EXCLUDED.purge_id, updated_at = now()
                RETURNING {_COLUMNS}""",
            tenant.tenant_id,
            tenant.state.name,
            tenant.state.slug,
            tenant.status,
            tenant.state.plan,
            tenant.state.home_region,
            tenant.version,
            off.previous_status if off else None,
            off.started_at if off else None,
            off.purge_at if off else None,
            off.certificate_id if off else None,
            off.purge_id if off else None,
        )
    assert row is not None
    await queue_facts(
        tx,
        facts_of(
            tenant.tenant_id,
            home_region=tenant.state.home_region,
            status=tenant.status,
            slug=tenant.state.slug,
        ),
    )
    return TenantRow(**dict(row))


async def read_tenant(tx: asyncpg.Connection, stream_id: str) -> Tenant | None:
    """The tenant its state row holds, the row locked for this transaction."""
    tenant_id = UUID(stream_id.removeprefix(_STREAM))
    row = await tx.fetchrow(
        """SELECT name, slug, status, plan, home_region, version, previous_status,
                  offboarding_started_at, purge_at, certificate_id, purge_id
           FROM tenants WHERE tenant_id = $1 FOR UPDATE""",
        tenant_id,
    )
    if row is None:
        return None
    offboarding = None
    if row["purge_at"] is not None:
        offboarding = Offboarding(
            previous_status=row["previous_status"],
            started_at=row["offboarding_started_at"],
            purge_at=row["purge_at"],
            certificate_id=row["certificate_id"],
            purge_id=row["purge_id"],
        )
    # `purging` is the row's word for an offboarding tenant whose purge was requested.
    status = "offboarding" if row["status"] == "purging" else row["status"]
    state = msgspec.convert(
        {
            "name": row["name"],
            "slug": row["slug"],
            "status": status,
            "plan": row["plan"],
            "home_region": row["home_region"],
        },
        TenantState,
    )
    return Tenant(tenant_id=tenant_id, state=state, version=row["version"], offboarding=offboarding)


async def rebuild_tenant(tx: asyncpg.Connection, stream_id: str, tenant: Tenant | None) -> None:
    if tenant is None:
        raise RowNotRebuildable(f"{stream_id} has a row but no events to rebuild it from")
    async with rewriting_row(tx, stream_id):  # a slug another row holds: reported, not raised
        await _write(tx, tenant)


async def tenant_row_streams(tx: asyncpg.Connection) -> builtins.list[str]:
    """The streams the state rows stand for. A purging tenant's row is left out, as is
    any whose share tenancy has purged (tenant_purges): that share deletes the stream while
    the row stays for the saga until it concludes, so "row present, events missing" is
    then the purge, not drift."""
    rows = await tx.fetch(
        """SELECT tenant_id FROM tenants t
           WHERE status <> 'purging'
             AND NOT EXISTS (SELECT 1 FROM tenant_purges p WHERE p.tenant_id = t.tenant_id)
           ORDER BY tenant_id"""
    )
    return [TenantRepository.stream(r["tenant_id"]) for r in rows]


TENANTS: AggregateKind[Tenant, asyncpg.Connection] = AggregateKind(
    name="tenant",
    stream_prefix=_STREAM,
    start=Tenant.start,
    read_row=read_tenant,
    write_row=rebuild_tenant,
    row_streams=tenant_row_streams,
)


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """One line of a tenant's audit trail."""

    version: int
    type: str
    status: str
    reason: str | None
    by: str | None
    occurred_at: datetime


class PlanRow(msgspec.Struct, frozen=True, kw_only=True):
    plan_id: str
    name: str
    rank: int
    limits: Limits


class LimitsView(msgspec.Struct, frozen=True, kw_only=True):
    plan: str
    limits: Limits
    overrides: dict[str, Any]
    limits_version: int


class PlanStore:
    """Plans, overrides and the tenant.limits_changed event that carries the result."""

    def __init__(self, outbox: PostgresOutbox, *, source: str, region: str) -> None:
        self._outbox = outbox
        self._source = source
        self._region = region

    async def plans(self, tx: asyncpg.Connection) -> builtins.list[PlanRow]:
        rows = await tx.fetch("SELECT plan_id, name, rank, limits FROM plans ORDER BY rank")
        return [msgspec.convert(dict(r), PlanRow) for r in rows]

    async def plan(self, tx: asyncpg.Connection, plan_id: str) -> PlanRow | None:
        row = await tx.fetchrow(
            "SELECT plan_id, name, rank, limits FROM plans WHERE plan_id = $1", plan_id
        )
        return msgspec.convert(dict(row), PlanRow) if row else None

    async def update_plan(
        self, tx: asyncpg.Connection, plan_id: str, limits: Limits
    ) -> builtins.list[UUID]:
        """Change a plan's definition; returns the tenants on it (their limits follow)."""
        await tx.execute(
            "UPDATE plans SET limits = $2, updated_at = now() WHERE plan_id = $1",
            plan_id,
            msgspec.to_builtins(limits),
        )
        rows = await tx.fetch("SELECT tenant_id FROM tenants WHERE plan = $1", plan_id)
        return [r["tenant_id"] for r in rows]

    async def overrides(self, tx: asyncpg.Connection, tenant_id: UUID) -> dict[str, Any]:
        rows = await tx.fetch(
            "SELECT limit_name, value FROM tenant_limit_overrides WHERE tenant_id = $1",
            tenant_id,
        )
        return {r["limit_name"]: r["value"] for r in rows}

    async def set_overrides(
        self, tx: asyncpg.Connection, tenant_id: UUID, overrides: dict[str, Any], set_by: str
    ) -> None:
        for name, value in overrides.items():
            await tx.execute(
                """INSERT INTO tenant_limit_overrides (tenant_id, limit_name, value, set_by)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (tenant_id, limit_name)
                   DO UPDATE SET value = EXCLUDED.value, set_by = EXCLUDED.set_by,
                                 set_at = now()""",
                tenant_id,
                name,
                value,
                set_by,
            )

    async def clear_override(self, tx: asyncpg.Connection, tenant_id: UUID, name: str) -> bool:
        status = await tx.execute(
            "DELETE FROM tenant_limit_overrides WHERE tenant_id = $1 AND limit_name = $2",
            tenant_id,
            name,
        )
        return bool(status.endswith(" 1"))

    async def view(self, tx: asyncpg.Connection, tenant_id: UUID) -> LimitsView | None:
        row = await tx.fetchrow(
            "SELECT plan, limits_version FROM tenants WHERE tenant_id = $1", tenant_id
        )
        if row is None:
            return None
        plan = await self.plan(tx, row["plan"])
        assert plan is not None
        overrides = await self.overrides(tx, tenant_id)
        return LimitsView(
            plan=plan.plan_id,
            limits=effective_limits(plan.limits, overrides),
            overrides=overrides,
            limits_version=row["limits_version"],
        )

    async def publish(self, tx: asyncpg.Connection, tenant_id: UUID) -> LimitsView:
        """Bump the tenant's limits version and emit its effective limits (same tx)."""
        await tx.execute(
            "UPDATE tenants SET limits_version = limits_version + 1 WHERE tenant_id = $1",
            tenant_id,
        )
        view = await self.view(tx, tenant_id)
        assert view is not None
        offers = [
            PlanOffer(plan_id=p.plan_id, rank=p.rank, limits=p.limits) for p in await self.plans(tx)
        ]
        event = new_event(
            TenantLimitsChanged(
                plan=view.plan, limits=view.limits, limits_version=view.limits_version, plans=offers
            ),
            tenant_id=tenant_id,
            subject=str(tenant_id),
            aggregate_version=view.limits_version,
            source=self._source,
            region=self._region,
        )
        await self._outbox.put(tx, [event])
        return view


# ---------------------------------------------------------------- usage (consumers.py)

COUNTED = ("seats", "api_keys", "webhook_endpoints")


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    seats: int = 0
    api_keys: int = 0
    webhook_endpoints: int = 0


async def record_usage(
    tx: asyncpg.Connection, tenant_id: UUID, resource: str, count: int, version: int
) -> None:
    """Take an owner's count of `resource` unless the counter holds a newer report."""
    column = resource
    assert column in COUNTED  # the payload type allows nothing else; the name goes in SQL
    await tx.execute(
        f"""INSERT INTO tenant_usage AS u (tenant_id, {column}, {column}_version)
            VALUES ($1, $2, $3)
            ON CONFLICT (tenant_id) DO UPDATE
                SET {column} = EXCLUDED.{column}, {column}_version = EXCLUDED.{column}_version
                WHERE u.{column}_version < EXCLUDED.{column}_version""",
        tenant_id,
        count,
        version,
    )


async def usage_of(tx: asyncpg.Connection, tenant_id: UUID) -> Usage:
    row = await tx.fetchrow(
        "SELECT seats, api_keys, webhook_endpoints FROM tenant_usage WHERE tenant_id = $1",
        tenant_id,
    )
    if row is None:
        return Usage()
    return Usage(**dict(row))
