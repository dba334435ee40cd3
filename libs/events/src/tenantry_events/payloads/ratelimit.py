"""Events owned by the ratelimit service.

ratelimit resolves each tenant's rate policies (the plan's request rate from
tenant.limits_changed, the plan's extra policies, tenant and API key overrides) and
publishes the whole resolved set, so every service decides locally without asking it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from tenantry_events.catalog import event

PolicyScope = Literal["tenant", "api_key"]


class RatePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """A GCRA rate: `limit` requests per `period_seconds` on average, with up to `burst`
    requests at once. `route_class` "*" applies to every request; otherwise only to routes
    of that class (read, write, auth, scim, export, ...)."""

    name: str
    limit: int
    period_seconds: float
    burst: int
    route_class: str = "*"


class KeyPolicies(msgspec.Struct, frozen=True, kw_only=True):
    """Extra policies for one API key, on top of the tenant's (they can only narrow)."""

    api_key_id: str
    policies: list[RatePolicy]


@event("ratelimit.policies_changed", owner="ratelimit", public=False)
class RatePoliciesChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's resolved rate policies changed. `version` grows with every change, so a
    projection keeps the highest. `max_in_flight` caps the tenant's concurrent requests
    across the suite (None = no cap)."""

    plan: str
    policies: list[RatePolicy]
    key_policies: list[KeyPolicies]
    max_in_flight: int | None
    version: int


@event("ratelimit.throttled", owner="ratelimit", public=True)
class RateLimitThrottled(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant's requests were refused (429) by its rate limits during a window. Sampled:
    at most one event per tenant per window (TENANTRY_RATELIMIT_THROTTLE_WINDOW_SECONDS),
    counting the refusals by policy name ("in-flight" for the concurrency cap). Counts are
    the refusals decided in Redis: a service that refuses a key from its own cache, or
    decides locally while Redis is down, does not add to them, so they are a lower bound."""

    window_start: datetime
    window_end: datetime
    refusals: dict[str, int]
    total: int


@event("ratelimit.overrides_changed", owner="ratelimit", public=True, opt_in=True)
class RateOverridesChanged(msgspec.Struct, frozen=True, kw_only=True):
    """Rate policies were set through the API for the tenant (`scope` "tenant", by a
    Tenantry operator; the subject is the tenant's id) or for one of its API keys (`scope`
    "api_key", by a tenant admin; the subject and `api_key_id` are the key's id).
    `policies` are the overrides as they are now, an empty list meaning none;
    `max_in_flight` is the tenant's cap on concurrent requests (scope "tenant" only; null
    for no cap of its own). Every accepted request is one event, even one that sets what
    was already set. The limits every service then enforces follow from these and the
    plan's."""

    scope: PolicyScope
    policies: list[RatePolicy]
    api_key_id: str | None = None
    max_in_flight: int | None = None
