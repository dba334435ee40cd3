"""Plan limits enforced where the thing is created, from the local projection.

`guard_quantity` runs inside the creating transaction and locks the tenant's limits row,
so concurrent creates in one tenant serialise: with one seat left, two concurrent invites
give exactly one success. The usage count comes from the creating service's own rows.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.tenancy import Limits, PlanOffer, TenantLimitsChanged
from tenantry_http.auth import ProjectionWait, tenant_not_found
from tenantry_http.problems import Problem

LIMITS_WAIT = ProjectionWait()


class TenantLimits(msgspec.Struct, frozen=True, kw_only=True):
    plan: str
    limits: Limits
    plans: list[PlanOffer]


async def _on_limits_changed(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    payload: TenantLimitsChanged = event.payload
    await tx.execute(
        """INSERT INTO tenant_limits AS l (tenant_id, plan, limits, plans, limits_version)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id) DO UPDATE
               SET plan = EXCLUDED.plan, limits = EXCLUDED.limits, plans = EXCLUDED.plans,
                   limits_version = EXCLUDED.limits_version, updated_at = now()
               WHERE l.limits_version < EXCLUDED.limits_version""",
        event.tenant_id,
        payload.plan,
        msgspec.to_builtins(payload.limits),
        msgspec.to_builtins(payload.plans),
        payload.limits_version,
    )


def limits_projection_handlers() -> dict[str, Handler[asyncpg.Connection]]:
    return {"tenant.limits_changed": _on_limits_changed}


async def load_limits(
    tx: asyncpg.Connection, tenant_id: UUID, *, for_update: bool = False
) -> TenantLimits | None:
    row = await tx.fetchrow(
        "SELECT plan, limits, plans FROM tenant_limits WHERE tenant_id = $1"
        + (" FOR UPDATE" if for_update else ""),
        tenant_id,
    )
    if row is None:
        return None
    return msgspec.convert(dict(row), TenantLimits)


def _would_allow(offer: PlanOffer, name: str, usage: int) -> bool:
    value = getattr(offer.limits, name)
    return bool(value) if isinstance(value, bool) else value is None or usage < value


def upgrade_for(current: TenantLimits, name: str, usage: int) -> str | None:
    ranks = {p.plan_id: p.rank for p in current.plans}
    here = ranks.get(current.plan, -1)
    for offer in sorted(current.plans, key=lambda p: p.rank):
        if offer.rank > here and _would_allow(offer, name, usage):
            return offer.plan_id
    return None


async def known_limits(
    tx: asyncpg.Connection,
    tenant_id: UUID,
    *,
    for_update: bool = False,
    wait: ProjectionWait = LIMITS_WAIT,
) -> TenantLimits:
    """The tenant's limits, waiting a bounded time for a new tenant's first
    tenant.limits_changed. Still none: 404 tenant-not-found if this service has not heard
    of the tenant at all (no such tenant, or not yet: either way a retry loop would never
    end), else 503 limits-unknown (the tenant is known, its limits are on their way)."""
    current = await wait.until_known(lambda: load_limits(tx, tenant_id, for_update=for_update))
    if current is not None:
        return current
    if await tx.fetchval("SELECT 1 FROM tenant_projection WHERE tenant_id = $1", tenant_id):
        raise Problem(
            503,
            "limits-unknown",
            "This tenant's limits are not known here yet",
            "Retry in a moment",
            headers={"Retry-After": "1"},
        )
    raise tenant_not_found()


async def guard_quantity(
    tx: asyncpg.Connection, tenant_id: UUID, name: str, usage_sql: str
) -> None:
    """Refuse (403 plan-limit-exceeded) when one more `name` would pass the limit.
    `usage_sql` counts the current usage for $1 = tenant id, in this transaction."""
    current = await known_limits(tx, tenant_id, for_update=True)
    usage = int(await tx.fetchval(usage_sql, tenant_id))
    allowed = getattr(current.limits, name)
    if allowed is not None and usage >= allowed:
        raise Problem(
            403,
            "plan-limit-exceeded",
            "Your plan's limit is reached",
            f"the {current.plan} plan allows {allowed} {name}",
            limit=name,
            usage=usage,
            allowed=allowed,
            plan=current.plan,
            upgrade_to=upgrade_for(current, name, usage),
        )


async def guard_feature(tx: asyncpg.Connection, tenant_id: UUID, name: str) -> None:
    current = await known_limits(tx, tenant_id)
    if not getattr(current.limits, name):
        raise Problem(
            403,
            "feature-not-in-plan",
            "Your plan does not include this",
            f"{name} is not in the {current.plan} plan",
            feature=name,
            plan=current.plan,
            upgrade_to=upgrade_for(current, name, 0),
        )
