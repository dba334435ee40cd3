"""Plans are data: each plan is a row of typed limits; a tenant's effective limits are its
plan's limits with the operator's per-tenant overrides on top. Pure (no I/O)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from tenantry_events.payloads.tenancy import Limits

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
