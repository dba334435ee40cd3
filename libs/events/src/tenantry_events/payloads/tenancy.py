"""Events owned by the tenancy service.

Each tenant event carries the tenant's full current state (status, plan, region,
aggregate version on the envelope), so a projection applying "highest version wins"
ends right whatever the arrival order across topics.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from tenantry_events.catalog import event

TenantStatus = Literal["active", "suspended", "offboarding", "purged"]


class TenantState(msgspec.Struct, frozen=True, kw_only=True):
    """The part of a tenant every service projects."""

    name: str
    slug: str
    status: TenantStatus
    plan: str
    home_region: str


@event("tenant.created", owner="tenancy", public=True, personal=("owner_email",))
class TenantCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant was created; it starts active on its plan in its home region."""

    tenant: TenantState
    created_by: str
    # identity creates the owner's account from it and mails the invitation.
    owner_email: str | None = None


@event("tenant.suspended", owner="tenancy", public=True)
class TenantSuspended(msgspec.Struct, frozen=True, kw_only=True):
    """An operator suspended the tenant: every service refuses its requests."""

    tenant: TenantState
    reason: str
    by: str


@event("tenant.reactivated", owner="tenancy", public=True)
class TenantReactivated(msgspec.Struct, frozen=True, kw_only=True):
    """An operator lifted a suspension: access is restored."""

    tenant: TenantState
    reason: str
    by: str


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's resolved limits. Three kinds: feature switches (bool), quantities (int,
    None = unlimited) and rates (requests per second with a burst)."""

    sso: bool
    scim: bool
    data_export: bool
    seats: int | None
    webhook_endpoints: int | None
    api_keys: int | None
    requests_per_second: float
    burst: int


class PlanOffer(msgspec.Struct, frozen=True, kw_only=True):
    plan_id: str
    rank: int
    limits: Limits


@event("tenant.limits_changed", owner="tenancy", public=True)
class TenantLimitsChanged(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant's effective limits (plan plus overrides) changed. `limits_version` grows
    with every change, so a projection keeps the highest. `plans` lists every plan, so the
    service that refuses a creation can name the plan that would allow it."""

    plan: str
    limits: Limits
    limits_version: int
    plans: list[PlanOffer]


@event("tenant.plan_changed", owner="tenancy", public=True)
class TenantPlanChanged(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant moved to another plan (an owner's self-service change or an operator's)."""

    tenant: TenantState
    previous_plan: str
    by: str
