"""Postgres access of ratelimit: the policy tables, and publishing a tenant's resolved set
through the outbox in the same transaction as the change that caused it.

Setting a tenant's or a key's overrides also appends ratelimit.overrides_changed, the
record of the request itself (policies_changed is republished for other causes too: a
plan's policies, tenancy's limits), in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.ratelimit import (
    KeyPolicies,
    RateOverridesChanged,
    RatePoliciesChanged,
    RatePolicy,
)
from tenantry_events.payloads.tenancy import Limits
from tenantry_events.storage import PostgresOutbox
from tenantry_guardrails.rate_limits import plan_rate
from tenantry_ratelimit.domain import PolicyInputs, Resolved, resolve


class PlanPolicies(msgspec.Struct, frozen=True, kw_only=True):
    plan_id: str
    policies: list[RatePolicy]
    max_in_flight: int | None
    updated_by: str
    updated_at: datetime


class Overrides(msgspec.Struct, frozen=True, kw_only=True):
    policies: list[RatePolicy]
    max_in_flight: int | None


class TenantPolicies(msgspec.Struct, frozen=True, kw_only=True):
    """What applies to a tenant and why: the resolved set as published, and the tenant's
    own overrides."""

    tenant_id: UUID
    plan: str
    policies: list[RatePolicy]
    key_policies: list[KeyPolicies]
    max_in_flight: int | None
    version: int
    overrides: Overrides


def _policies(raw: Any) -> list[RatePolicy]:
    return msgspec.convert(raw or [], list[RatePolicy])


class PolicyStore:
    def __init__(self, outbox: PostgresOutbox, *, source: str, region: str) -> None:
        self._outbox = outbox
        self._source = source
        self._region = region

    async def inputs(self, tx: asyncpg.Connection, tenant_id: UUID) -> PolicyInputs | None:
        """None while tenancy's limits for the tenant have not arrived here."""
        row = await tx.fetchrow(
            """SELECT l.plan, l.limits, p.policies AS plan_policies,
                      p.max_in_flight AS plan_in_flight, t.policies AS tenant_policies,
                      t.max_in_flight AS tenant_in_flight
               FROM tenant_limits l
               LEFT JOIN plan_rate_policies p ON p.plan_id = l.plan
               LEFT JOIN tenant_rate_policies t ON t.tenant_id = l.tenant_id
               WHERE l.tenant_id = $1""",
            tenant_id,
        )
        if row is None:
            return None
        keys = await tx.fetch(
            "SELECT api_key_id, policies FROM key_rate_policies WHERE tenant_id = $1",
            tenant_id,
        )
        return PolicyInputs(
            plan=row["plan"],
            plan_rate=plan_rate(msgspec.convert(row["limits"], Limits)),
            plan_policies=_policies(row["plan_policies"]),
            plan_max_in_flight=row["plan_in_flight"],
            tenant_policies=_policies(row["tenant_policies"]),
            tenant_max_in_flight=row["tenant_in_flight"],
            key_policies=[
                KeyPolicies(api_key_id=k["api_key_id"], policies=_policies(k["policies"]))
                for k in keys
            ],
        )

    async def publish(self, tx: asyncpg.Connection, tenant_id: UUID) -> Resolved | None:
        """Resolve the tenant's policies and emit them with the next version.

        The version row is locked *before* the inputs are read: of two concurrent
        publishers, the one that gets the higher version also reads after the other
        committed, so the highest version always carries the latest policies."""
        version = await tx.fetchval(
            """INSERT INTO rate_policy_versions AS v (tenant_id, version) VALUES ($1, 1)
               ON CONFLICT (tenant_id) DO UPDATE SET version = v.version + 1
               RETURNING version""",
            tenant_id,
        )
        inputs = await self.inputs(tx, tenant_id)
        if inputs is None:
            return None  # published when tenant.limits_changed arrives
        resolved = resolve(inputs)
        event: Envelope[RatePoliciesChanged] = new_event(
            RatePoliciesChanged(
                plan=resolved.plan,
                policies=resolved.policies,
                key_policies=resolved.key_policies,
                max_in_flight=resolved.max_in_flight,
                version=version,
            ),
            tenant_id=tenant_id,
            subject=str(tenant_id),
            aggregate_version=version,
            source=self._source,
            region=self._region,
        )
        await self._outbox.put(tx, [event])
        return resolved

    async def view(self, tx: asyncpg.Connection, tenant_id: UUID) -> TenantPolicies | None:
        inputs = await self.inputs(tx, tenant_id)
        if inputs is None:
            return None
        resolved = resolve(inputs)
        version = await tx.fetchval(
            "SELECT version FROM rate_policy_versions WHERE tenant_id = $1", tenant_id
        )
        return TenantPolicies(
            tenant_id=tenant_id,
            plan=resolved.plan,
            policies=resolved.policies,
            key_policies=resolved.key_policies,
            max_in_flight=resolved.max_in_flight,
            version=version or 0,
            overrides=Overrides(
                policies=list(inputs.tenant_policies),
                max_in_flight=inputs.tenant_max_in_flight,
            ),
        )

    async def set_tenant(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        policies: Sequence[RatePolicy],
        max_in_flight: int | None,
        by: str,
    ) -> None:
        await tx.execute(
            """INSERT INTO tenant_rate_policies (tenant_id, policies, max_in_flight, updated_by)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (tenant_id) DO UPDATE
                   SET policies = EXCLUDED.policies, max_in_flight = EXCLUDED.max_in_flight,
                       updated_by = EXCLUDED.updated_by, updated_at = now()""",
            tenant_id,
            msgspec.to_builtins(list(policies)),
            max_in_flight,
            by,
        )
        changed = RateOverridesChanged(
            scope="tenant", policies=list(policies), max_in_flight=max_in_flight
        )
        await self._tell(tx, tenant_id, str(tenant_id), changed)

    async def set_key(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        api_key_id: str,
        policies: Sequence[RatePolicy],
        by: str,
    ) -> None:
        if not policies:
            await tx.execute(
                "DELETE FROM key_rate_policies WHERE tenant_id = $1 AND api_key_id = $2",
                tenant_id,
                api_key_id,
            )
        else:
            await tx.execute(
                """INSERT INTO key_rate_policies (tenant_id, api_key_id, policies, updated_by)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (tenant_id, api_key_id) DO UPDATE
                       SET policies = EXCLUDED.policies, updated_by = EXCLUDED.updated_by,
                           updated_at = now()""",
                tenant_id,
                api_key_id,
                msgspec.to_builtins(list(policies)),
                by,
            )
        changed = RateOverridesChanged(
            scope="api_key", policies=list(policies), api_key_id=api_key_id
        )
        await self._tell(tx, tenant_id, api_key_id, changed)

    async def _tell(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        subject: str,
        payload: RateOverridesChanged,
    ) -> None:
        """Append the record of an override request, in its transaction."""
        event = new_event(
            payload,
            tenant_id=tenant_id,
            subject=subject,
            aggregate_version=0,  # overrides keep no stream of their own
            source=self._source,
            region=self._region,
        )
        await self._outbox.put(tx, [event])

    async def plans(self, tx: asyncpg.Connection) -> list[PlanPolicies]:
        rows = await tx.fetch("SELECT * FROM plan_rate_policies ORDER BY plan_id")
        return [msgspec.convert(dict(r), PlanPolicies) for r in rows]

    async def set_plan(
        self,
        tx: asyncpg.Connection,
        plan_id: str,
        policies: Sequence[RatePolicy],
        max_in_flight: int | None,
        by: str,
    ) -> list[UUID]:
        """Store a plan's policies; returns the tenants on the plan (to republish)."""
        await tx.execute(
            """INSERT INTO plan_rate_policies (plan_id, policies, max_in_flight, updated_by)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (plan_id) DO UPDATE
                   SET policies = EXCLUDED.policies, max_in_flight = EXCLUDED.max_in_flight,
                       updated_by = EXCLUDED.updated_by, updated_at = now()""",
            plan_id,
            msgspec.to_builtins(list(policies)),
            max_in_flight,
            by,
        )
        return await self._tenants_on(tx, plan_id)

    async def remove_plan(self, tx: asyncpg.Connection, plan_id: str) -> list[UUID] | None:
        """Forget a plan's policies; the tenants on it (to republish), None if none were set."""
        removed = await tx.fetchval(
            "DELETE FROM plan_rate_policies WHERE plan_id = $1 RETURNING plan_id", plan_id
        )
        return None if removed is None else await self._tenants_on(tx, plan_id)

    async def has_api_key(self, tx: asyncpg.Connection, tenant_id: UUID, api_key_id: str) -> bool:
        """Whether the key is one of the tenant's (as the API-key projection knows it)."""
        known = await tx.fetchval(
            "SELECT 1 FROM api_key_projection WHERE key_id = $1 AND tenant_id = $2",
            api_key_id,
            tenant_id,
        )
        return bool(known)

    async def _tenants_on(self, tx: asyncpg.Connection, plan_id: str) -> list[UUID]:
        rows = await tx.fetch("SELECT tenant_id FROM tenant_limits WHERE plan = $1", plan_id)
        return [r["tenant_id"] for r in rows]
