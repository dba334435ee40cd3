"""Tenancy's pure rules, no I/O: the tenant aggregate, and plans with their limits.

A command returns the event it causes; `start` makes the tenant from its stream's first
event and `apply` folds each later one into state (tenantry_events.aggregates), so a
tenant's stream rebuilds it. The repository (store.py) loads the tenant from its state row
(the fold's snapshot), calls a command, appends the event with the version it loaded
(optimistic concurrency) and writes the row from `apply`, all in one transaction.

The tenant's stream holds tenant.created, tenant.suspended, tenant.reactivated,
tenant.plan_changed, tenant.offboarding_started, tenant.offboarding_cancelled and
tenant.purge_requested. The purge deletes the stream itself (with every other row of the
tenant); what remains is a tombstone (store.py). tenant.limits_changed is not in it: it
is the tenant's plan limits with the operator's overrides on top, recomputed and emitted
through the outbox whenever either changes (store.PlanStore), a notification derived from
those tables, not a tenant fact.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import msgspec

from tenantry_events.aggregates import UnfoldableStream, first_payload
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.tenancy import (
    Limits,
    TenantCreated,
    TenantMoved,
    TenantOffboardingCancelled,
    TenantOffboardingStarted,
    TenantPlanChanged,
    TenantPurgedBy,
    TenantPurgeRequested,
    TenantReactivated,
    TenantState,
    TenantStatus,
    TenantSuspended,
)

# What a command on an existing tenant records (tenant.created starts the stream).
TenantChange = (
    TenantSuspended
    | TenantReactivated
    | TenantPlanChanged
    | TenantOffboardingStarted
    | TenantOffboardingCancelled
    | TenantMoved
    | TenantPurgeRequested
)

# Reminders before the purge, in days left (T-7 and T-1).
REMINDER_DAYS = (7, 1)
SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
DEFAULT_PLAN = "free"


class DomainError(Exception):
    """A rule said no; `slug` is the problem type the HTTP edge reports."""

    def __init__(self, slug: str, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.slug = slug
        self.status = status


@dataclass(frozen=True)
class Offboarding:
    """A tenant on its way out: when it started, what it was before (a cancellation goes
    back there), when the purge is due, and the purge once requested."""

    previous_status: TenantStatus
    started_at: datetime
    purge_at: datetime
    certificate_id: UUID
    purge_id: UUID | None = None


@dataclass(frozen=True)
class Tenant:
    tenant_id: UUID
    state: TenantState
    version: int
    offboarding: Offboarding | None = None

    @property
    def status(self) -> str:
        """The published status, or `purging` (local to tenancy and the services' own
        projections) once the purge was requested."""
        if self.offboarding is not None and self.offboarding.purge_id is not None:
            return "purging"
        return self.state.status

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

    # ------------------------------------------------------------------ offboarding

    def arrive(
        self, *, from_region: str, to_region: str, move_id: UUID, status: TenantStatus, by: str
    ) -> TenantMoved:
        """The tenant, imported from `from_region`, lives here now (moves.py), in the state
        it had before its move."""
        if self.state.home_region != from_region:
            raise DomainError(
                "illegal-transition", f"the tenant's home region is {self.state.home_region}"
            )
        if status not in ("active", "suspended"):
            raise DomainError("illegal-transition", f"a move does not restore {status}")
        return TenantMoved(
            tenant=msgspec.structs.replace(self.state, home_region=to_region, status=status),
            from_region=from_region,
            move_id=move_id,
            by=by,
        )

    def start_offboarding(
        self,
        *,
        now: datetime,
        grace: timedelta,
        certificate_id: UUID,
        reason: str,
        by: str,
        purge_at: datetime | None = None,
        moved_to: str | None = None,
    ) -> TenantOffboardingStarted:
        """Active or suspended tenants may leave; the purge is due after `grace` (the plan's
        grace period), or at `purge_at` when an operator set it. `moved_to`: the tenant
        moved to that region, and this region's copy leaves (moves.py)."""
        if self.state.status not in ("active", "suspended"):
            raise DomainError(
                "illegal-transition",
                f"a tenant that is {self.status} cannot start offboarding",
            )
        due = purge_at if purge_at is not None else now + grace
        if due < now:
            raise DomainError("invalid-transition", "purge_at must not be in the past", 400)
        return TenantOffboardingStarted(
            tenant=msgspec.structs.replace(self.state, status="offboarding"),
            previous_status=self.state.status,
            purge_at=due,
            reason=_reason(reason),
            by=by,
            certificate_id=certificate_id,
            moved_to=moved_to,
        )

    def cancel_offboarding(self, *, reason: str, by: str) -> TenantOffboardingCancelled:
        """During the grace period only: the tenant goes back to the state it left."""
        offboarding = self._offboarding("cancelled")
        if offboarding.purge_id is not None:
            raise DomainError("purge-started", "the purge has started: it cannot be undone")
        return TenantOffboardingCancelled(
            tenant=msgspec.structs.replace(self.state, status=offboarding.previous_status),
            reason=_reason(reason),
            by=by,
        )

    def request_purge(
        self, *, now: datetime, purge_id: UUID, reason: str, by: str, early: bool = False
    ) -> TenantPurgeRequested:
        """At purge_at (the scheduler), or before it when an operator says why (`early`)."""
        offboarding = self._offboarding("purged")
        if offboarding.purge_id is not None:
            raise DomainError("purge-started", "the purge was already requested")
        if not early and now < offboarding.purge_at:
            raise DomainError(
                "grace-period",
                f"the grace period runs until {offboarding.purge_at.isoformat()}",
            )
        return TenantPurgeRequested(purge_id=purge_id, early=early, reason=_reason(reason), by=by)

    def _offboarding(self, verb: str) -> Offboarding:
        if self.offboarding is None or self.state.status != "offboarding":
            raise DomainError(
                "illegal-transition", f"a tenant that is {self.status} cannot be {verb}"
            )
        return self.offboarding

    def reminders_due(self, now: datetime) -> list[int]:
        """The reminders (days before the purge: 7, then 1) whose time has come; the caller
        sends each once (the store remembers which were sent)."""
        if self.offboarding is None or self.offboarding.purge_id is not None:
            return []
        left = self.offboarding.purge_at - now
        return [days for days in REMINDER_DAYS if left <= timedelta(days=days)]

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
        offboarding = self.offboarding
        match event.payload:
            case TenantSuspended():
                state = msgspec.structs.replace(self.state, status="suspended")
            case TenantReactivated():
                state = msgspec.structs.replace(self.state, status="active")
            case TenantMoved(tenant=moved):
                state = msgspec.structs.replace(
                    self.state, home_region=moved.home_region, status=moved.status
                )
            case TenantPlanChanged(tenant=changed):
                state = msgspec.structs.replace(self.state, plan=changed.plan)
            case TenantOffboardingStarted() as started:
                state = msgspec.structs.replace(self.state, status="offboarding")
                offboarding = Offboarding(
                    previous_status=started.previous_status,
                    started_at=event.occurred_at,
                    purge_at=started.purge_at,
                    certificate_id=started.certificate_id,
                )
            case TenantOffboardingCancelled(tenant=restored):
                state = msgspec.structs.replace(self.state, status=restored.status)
                offboarding = None
            case TenantPurgeRequested(purge_id=purge_id) if offboarding is not None:
                state = self.state
                offboarding = replace(offboarding, purge_id=purge_id)
            case _:
                raise UnfoldableStream.unexpected(event, self)
        return Tenant(
            tenant_id=self.tenant_id,
            state=state,
            version=event.aggregate_version,
            offboarding=offboarding,
        )


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise DomainError("invalid-transition", "a reason is required", 400)
    return reason


# ---------------------------------------------------------------- the purge's outcome

# The services that each erase their share of a tenant and report it (tenant.purged_by).
PURGE_PARTICIPANTS = ("identity", "provisioning", "ratelimit", "tenancy", "webhooks")
CERTIFICATE_TYPE = "tenantry.deletion-certificate/v1"


@dataclass(frozen=True)
class DeletionFacts:
    """What the deletion certificate states: dates, and each service's report."""

    certificate_id: UUID
    tenant_id: UUID
    home_region: str
    tenant_created_at: datetime
    offboarding_started_at: datetime | None
    purge_requested_at: datetime
    purged_at: datetime
    early: bool
    reports: dict[str, TenantPurgedBy]


def deletion_certificate(facts: DeletionFacts) -> dict[str, Any]:
    """The certificate's claims (signed as a JWT by the region's document key). Counts and
    dates only: no name, slug, email or reason, so it can be kept and shown forever."""
    services = {
        name: {
            "tables": {t.table: t.rows for t in sorted(r.tables, key=lambda t: t.table)},
            "rows": sum(t.rows for t in r.tables),
            "redis_keys": r.redis_keys,
            "data_key_destroyed": r.key_destroyed,
            "completed_at": r.completed_at.isoformat(),
        }
        for name, r in sorted(facts.reports.items())
    }
    return {
        "type": CERTIFICATE_TYPE,
        "jti": str(facts.certificate_id),
        "sub": str(facts.tenant_id),
        "iat": int(facts.purged_at.timestamp()),
        "region": facts.home_region,
        "tenant_created_at": facts.tenant_created_at.isoformat(),
        "offboarding_started_at": (
            facts.offboarding_started_at.isoformat() if facts.offboarding_started_at else None
        ),
        "purge_requested_at": facts.purge_requested_at.isoformat(),
        "purged_at": facts.purged_at.isoformat(),
        "early": facts.early,
        "services": services,
        "rows_deleted": sum(s["rows"] for s in services.values()),
        "statement": (
            f"Every record of tenant {facts.tenant_id} held by Tenantry in region"
            f" {facts.home_region} was deleted from each service's database and cache, and"
            " every copy of the tenant's data keys was destroyed, so the personal data that"
            " append-only logs (event store, Kafka) still hold in encrypted form can no"
            " longer be read."
        ),
    }


# ---------------------------------------------------------------- plans and limits
# Plans are data: each plan is a row of typed limits; a tenant's effective limits are its
# plan's limits with the operator's per-tenant overrides on top.

LimitKind = Literal["feature", "quantity", "rate", "days"]
KINDS: dict[str, LimitKind] = {
    "offboarding_grace_days": "days",
    "audit_retention_days": "days",
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
        if kind == "days" and not (
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3650
        ):
            raise InvalidOverride(f"{name} is a period in whole days: 0 to 3650")
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
