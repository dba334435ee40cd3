"""The rules of rate policies, pure (no I/O): what a valid policy set is, and how a
tenant's effective policies follow from its plan, its overrides and its keys' policies."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from tenantry_events.payloads.ratelimit import KeyPolicies, RatePolicy

MAX_POLICIES = 8
MAX_PERIOD_SECONDS = 86_400.0
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_ROUTE_CLASS = re.compile(r"^(\*|[a-z][a-z0-9_-]{0,31})$")


class InvalidPolicies(ValueError):
    """A policy set an operator or admin sent is not acceptable; the message says why."""


def validate(policies: Sequence[RatePolicy]) -> None:
    if len(policies) > MAX_POLICIES:
        raise InvalidPolicies(f"at most {MAX_POLICIES} policies")
    seen: set[str] = set()
    for p in policies:
        if not _NAME.match(p.name):
            raise InvalidPolicies(f"policy name {p.name!r}: lowercase letters, digits, - and _")
        if p.name in seen:
            raise InvalidPolicies(f"policy {p.name!r} appears twice")
        seen.add(p.name)
        if not _ROUTE_CLASS.match(p.route_class):
            raise InvalidPolicies(f"policy {p.name!r}: route_class must be * or a class name")
        if p.limit < 1 or p.burst < 1:
            raise InvalidPolicies(f"policy {p.name!r}: limit and burst must be at least 1")
        if not 0 < p.period_seconds <= MAX_PERIOD_SECONDS:
            raise InvalidPolicies(f"policy {p.name!r}: period_seconds must be in (0, 86400]")


def validate_in_flight(max_in_flight: int | None) -> None:
    if max_in_flight is not None and not 1 <= max_in_flight <= 100_000:
        raise InvalidPolicies("max_in_flight must be between 1 and 100000")


@dataclass(frozen=True)
class PolicyInputs:
    """Everything a tenant's resolved policies depend on."""

    plan: str
    plan_rate: RatePolicy | None  # from tenancy's limits; None until they are known
    plan_policies: Sequence[RatePolicy]
    plan_max_in_flight: int | None
    tenant_policies: Sequence[RatePolicy]
    tenant_max_in_flight: int | None
    key_policies: Sequence[KeyPolicies]


@dataclass(frozen=True)
class Resolved:
    plan: str
    policies: list[RatePolicy]
    key_policies: list[KeyPolicies]
    max_in_flight: int | None


def resolve(inputs: PolicyInputs) -> Resolved:
    """Plan rate, then the plan's extra policies, then the tenant's overrides: a later
    policy replaces an earlier one of the same name (an override of "requests" replaces
    the plan's rate). Key policies only ever add limits: they apply on top."""
    by_name: dict[str, RatePolicy] = {}
    for p in [
        *([inputs.plan_rate] if inputs.plan_rate else []),
        *inputs.plan_policies,
        *inputs.tenant_policies,
    ]:
        by_name[p.name] = p
    in_flight = (
        inputs.tenant_max_in_flight
        if inputs.tenant_max_in_flight is not None
        else inputs.plan_max_in_flight
    )
    return Resolved(
        plan=inputs.plan,
        policies=list(by_name.values()),
        key_policies=sorted(inputs.key_policies, key=lambda k: k.api_key_id),
        max_in_flight=in_flight,
    )
