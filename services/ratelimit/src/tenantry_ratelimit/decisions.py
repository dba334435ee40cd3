"""The decision API's model and its one decision, shared by the route (api.py, where the
OpenAPI document and every error answer come from) and the fast path (fast_path.py, which
answers well-formed operator requests without the general pipeline)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec

from tenantry_guardrails.rate_limits import RateLimitStep, TenantRatePolicies, applicable

DECISIONS_ROUTE = "/decisions"  # under /v1


class DecisionRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    tenant_id: UUID
    api_key_id: str | None = None
    route_class: Annotated[str, msgspec.Meta(max_length=32)] = "*"
    cost: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1


class PolicyState(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    limit: int
    period_seconds: float
    burst: int
    allowed: bool
    remaining: int
    reset_seconds: float
    retry_after_seconds: float


class DecisionResponse(msgspec.Struct, frozen=True, kw_only=True):
    allowed: bool
    retry_after_seconds: float
    path: str  # redis, cached, or local (Redis unreachable: this instance's own limits)
    policies: list[PolicyState]


async def decided(
    step: RateLimitStep, data: DecisionRequest
) -> tuple[DecisionResponse, dict[str, str]]:
    """One decision for a gateway: the answer's body and its RateLimit headers."""
    book: TenantRatePolicies = await step.policies.get(data.tenant_id)
    decision = await step.limiter.decide(
        applicable(book, data.tenant_id, data.route_class, data.api_key_id), cost=data.cost
    )
    body = DecisionResponse(
        allowed=decision.allowed,
        retry_after_seconds=decision.retry_after_seconds,
        path=decision.path,
        policies=[
            PolicyState(
                name=o.applied.policy.name,
                limit=o.applied.policy.limit,
                period_seconds=o.applied.policy.period_seconds,
                burst=o.applied.policy.burst,
                allowed=o.allowed,
                remaining=max(0, o.remaining),
                reset_seconds=o.reset_seconds,
                retry_after_seconds=o.retry_after_seconds,
            )
            for o in decision.outcomes
        ],
    )
    return body, decision.headers()
