"""The tenant aggregate: pure rules, no I/O.

A command returns the events it causes; `apply` folds events into state. The repository
(store.py) loads, calls, and appends with the version it loaded (optimistic concurrency).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from uuid import UUID

import msgspec

from tenantry_events.payloads.tenancy import (
    TenantCreated,
    TenantPlanChanged,
    TenantReactivated,
    TenantState,
    TenantSuspended,
)

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

    @staticmethod
    def from_created(tenant_id: UUID, event: TenantCreated, version: int) -> Tenant:
        return Tenant(tenant_id=tenant_id, state=event.tenant, version=version)

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


def _reason(reason: str) -> str:
    reason = reason.strip()
    if not reason:
        raise DomainError("invalid-transition", "a reason is required", 400)
    return reason
