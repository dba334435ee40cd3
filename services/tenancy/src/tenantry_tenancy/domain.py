"""Tenancy's pure rules, no I/O: the tenant aggregate, and plans with their limits.

A command returns the event it causes; `start` makes the tenant from its stream's first
event and `apply` folds each later one into state (tenantry_events.aggregates), so a
tenant's stream rebuilds it. The repository (store.py) loads the tenant from its state row
(the fold's snapshot), calls a command, appends the event with the version it loaded
(optimistic concurrency) and writes the row from `apply`, all in one transaction.

The tenant's stream holds tenant.created, tenant.suspended, tenant.reactivated and
tenant.plan_changed. tenant.limits_changed is not in it: it is the tenant's plan limits with
the operator's overrides on top, recomputed and emitted through the outbox whenever either
changes (store.PlanStore), a notification derived from those tables, not a tenant fact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import msgspec

from tenantry_events.aggregates import UnfoldableStream, first_payload
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.tenancy import (
    Limits,
    TenantCreated,
    TenantPlanChanged,
    TenantReactivated,
    TenantState,
    TenantSuspended,
)

# What a command on an existing tenant records (tenant.created starts the stream).
TenantChange = TenantSuspended | TenantReactivated | TenantPlanChanged

SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
DEFAULT_PLAN = "free"


class DomainError(Exception):
    """A rule said no; `slug` is the problem type the HTTP edge reports."""

    def __init__(self, slug: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.slug = slug
        self.status = status


@dataclass(frozen=True)
class Tenant:
    tenant_id: UUID
    state: TenantState
    version: int

    # ------------------------------------------------------------------ commands

    @staticmethod
    def create(
        tenant_id: UUID,
        *,
        name: str,
        slug: str,
        plan: str,
        home_region: str,
        created_by: str,
        owner_email: str | None = None,
    ) -> TenantCreated:
        name = name.strip()
        if not name:
            raise DomainError("invalid-tenant", "name must not be blank", 400)
        if not SLUG.match(slug):
            raise DomainError(
                "invalid-tenant",
                "slug must be 1-63 lowercase letters, digits or inner hyphens",
                400,
            )
        return TenantCreated(
            tenant=TenantState(
                name=name, slug=slug, status="active", plan=plan, home_region=home_region
            ),
            created_by=created_by,
            owner_email=owner_email,
        )

    def suspend(self, *, reason: str, by: str) -> TenantSuspended:
        if self.state.status != "active":
            raise DomainError(
                "illegal-transition", f"a tenant that is {self.state.status} cannot be suspended"
            )
        reason = _reason(reason)
        return TenantSuspended(
            tenant=msgspec.structs.replace(self.state, status="suspended"), reason=reason, by=by
        )

    def change_plan(self, plan: str, *, by: str) -> TenantPlanChanged:
        if plan == self.state.plan:
            raise DomainError("same-plan", f"the tenant is already on {plan}")
        if self.state.status != "active":
            raise DomainError(
                "illegal-transition", f"a {self.state.status} tenant cannot change plan"
            )
        return TenantPlanChanged(
            tenant=msgspec.structs.replace(self.state, plan=plan),
            previous_plan=self.state.plan,
            by=by,
        )

    def reactivate(self, *, reason: str, by: str) -> TenantReactivated:
        if self.state.status != "suspended":
            raise DomainError(
                "illegal-transition", f"a tenant that is {self.state.status} cannot be reactivated"
            )
        reason = _reason(reason)
        return TenantReactivated(
            tenant=msgspec.structs.replace(self.state, status="active"), reason=reason, by=by
        )

    # ------------------------------------------------------------------ the fold

    @staticmethod
    def start(event: Envelope[Any]) -> Tenant:
        """The tenant its stream's first event (tenant.created) makes."""
        created = first_payload(event, TenantCreated, "a tenant")
        return Tenant(
            tenant_id=event.tenant_id, state=created.tenant, version=event.aggregate_version
        )

    def apply(self, event: Envelope[Any]) -> Tenant:
        """The tenant after one more event of its stream. Each event says what it changed
        (suspended: the status; plan_changed: the plan); the full state it also carries is
        for projections elsewhere, and the tests check it agrees with this fold."""
        match event.payload:
            case TenantSuspended():
                state = msgspec.structs.replace(self.state, status="suspended")
            case TenantReactivated():
                state = msgspec.structs.replace(self.state, status="active")
            case TenantPlanChanged(tenant=changed):
                state = msgspec.structs.replace(self.state, plan=changed.plan)
            case _:
                raise UnfoldableStream.unexpected(event, self)
        return Tenant(tenant_id=self.tenant_id, state=state, version=event.aggregate_version)


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise DomainError("invalid-transition", "a reason is required", 400)
    return reason


# ---------------------------------------------------------------- plans and limits
# Plans are data: each plan is a row of typed limits; a tenant's effective limits are its
# plan's limits with the operator's per-tenant overrides on top.

LimitKind = Literal["feature", "quantity", "rate"]
KINDS: dict[str, LimitKind] = {
    "sso": "feature",
    "scim": "feature",
    "data_export": "feature",
    "seats": "quantity",
    "webhook_endpoints": "quantity",
    "api_keys": "quantity",
    "requests_per_second": "rate",
    "burst": "rate",
}


class InvalidOverride(ValueError):
    pass


def effective_limits(plan_limits: Limits, overrides: dict[str, Any]) -> Limits:
    """Apply overrides, each checked against its limit's kind."""
    values = msgspec.structs.asdict(plan_limits)
    for name, value in overrides.items():
        kind = KINDS.get(name)
        if kind is None:
            raise InvalidOverride(f"no limit is called {name!r}")
        if kind == "feature" and not isinstance(value, bool):
            raise InvalidOverride(f"{name} is a feature switch: true or false")
        if kind == "quantity" and not (
            value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)
        ):
            raise InvalidOverride(f"{name} is a quantity: a whole number >= 0, or null")
        if kind == "rate" and not (
            isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        ):
            raise InvalidOverride(f"{name} is a rate: a number > 0")
        values[name] = value
    return msgspec.convert(values, Limits)


def allows(limits: Limits, name: str, usage: int) -> bool:
    """Would one more of `name` fit (quantities), or is the feature on?"""
    value = getattr(limits, name)
    if KINDS[name] == "feature":
        return bool(value)
    return value is None or usage < value


def downgrade_blockers(limits: Limits, usage: dict[str, int]) -> list[dict[str, Any]]:
    """The quantity limits that current usage would break on `limits` (empty: it fits)."""
    blockers = []
    for name, used in sorted(usage.items()):
        allowed = getattr(limits, name)
        if KINDS.get(name) == "quantity" and allowed is not None and used > allowed:
            blockers.append({"limit": name, "usage": used, "allowed": allowed})
    return blockers
