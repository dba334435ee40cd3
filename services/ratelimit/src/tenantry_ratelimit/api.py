"""HTTP edge of ratelimit (under /v1): policies per plan, tenant and API key, and the
decision API for callers outside the suite (gateways).

Routes receive the policy store and the process's rate limiter by name, typed
(`policy_store`, `rate_limiter`: app.py provides them)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import httpx
import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import Response

from tenantry_events.payloads.ratelimit import RatePolicy
from tenantry_guardrails.rate_limits import RateLimitStep
from tenantry_http.api_docs import problems
from tenantry_http.auth import principal_of, requires
from tenantry_http.problems import Problem
from tenantry_ratelimit.decisions import (
    DECISIONS_ROUTE,
    DecisionRequest,
    DecisionResponse,
    decided,
)
from tenantry_ratelimit.domain import InvalidPolicies, validate, validate_in_flight
from tenantry_ratelimit.store import PlanPolicies, PolicyStore, TenantPolicies
from tenantry_service.runtime import Runtime

ADMINS = ("owner", "admin")


class PolicySet(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    policies: list[RatePolicy]
    max_in_flight: int | None = None


class KeyPolicySet(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    policies: list[RatePolicy]


def checked(policies: list[RatePolicy], max_in_flight: int | None = None) -> None:
    try:
        validate(policies)
        validate_in_flight(max_in_flight)
    except InvalidPolicies as exc:
        raise Problem(
            422, "invalid-rate-policy", "The rate policies are not valid", str(exc)
        ) from exc


def by(request: Request[Any, Any, Any]) -> str:
    principal = principal_of(request)
    return f"{principal.kind}:{principal.subject}"


class TenantPoliciesController(Controller):
    path = "/tenants/{tenant_id:uuid}"
    tags = ["rate limits"]

    @get(
        "/rate-policies",
        opt=requires(roles=ADMINS, scopes=("tenant:read",)),
        summary="The tenant's rate policies",
    )
    async def read(
        self,
        tenant_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
        policy_store: NamedDependency[PolicyStore],
    ) -> TenantPolicies:
        """The resolved policies every service enforces (plan rate, plan policies, the
        tenant's overrides, per-key policies) and the tenant's own overrides."""
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            view = await policy_store.view(tx, tenant_id)
        if view is None:
            raise Problem(404, "not-found", "Not found", "no limits known for this tenant yet")
        return view

    @put(
        "/rate-policies",
        opt=requires(operator_only=True),
        summary="Override the tenant's rate policies",
    )
    async def override(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[PolicySet],
        runtime: NamedDependency[Runtime],
        policy_store: NamedDependency[PolicyStore],
    ) -> TenantPolicies:
        """A policy named like one of the plan's replaces it ("requests" replaces the
        plan's rate); others are added. Every service enforces the change within seconds."""
        checked(data.policies, data.max_in_flight)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            await policy_store.set_tenant(
                tx, tenant_id, data.policies, data.max_in_flight, by(request)
            )
            await policy_store.publish(tx, tenant_id)
            view = await policy_store.view(tx, tenant_id)
            if view is None:  # inside the transaction: the override and its events are undone
                raise Problem(404, "not-found", "Not found", "no limits known for this tenant yet")
        return view

    @put(
        "/api-keys/{key_id:str}/rate-policies",
        opt=requires(roles=ADMINS, scopes=("apikeys:write",)),
        summary="Set an API key's own rate policies",
    )
    async def set_key_policies(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        key_id: FromPath[str],
        data: JSONBody[KeyPolicySet],
        runtime: NamedDependency[Runtime],
        policy_store: NamedDependency[PolicyStore],
    ) -> TenantPolicies:
        """Limits for one key, on top of the tenant's (they can only narrow, so tenant
        admins may set them). An empty list removes them."""
        checked(data.policies)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            if not await policy_store.has_api_key(tx, tenant_id, key_id):
                raise Problem(404, "not-found", "Not found", "no such API key in this tenant")
            await policy_store.set_key(tx, tenant_id, key_id, data.policies, by(request))
            await policy_store.publish(tx, tenant_id)
            view = await policy_store.view(tx, tenant_id)
            if view is None:  # before tenancy's limits arrive: undone, like the override
                raise Problem(404, "not-found", "Not found", "no limits known for this tenant yet")
        return view


class PlanPoliciesController(Controller):
    path = "/rate-plans"
    tags = ["rate limits"]

    @get("/", opt=requires(operator_only=True), summary="Rate policies of every plan")
    async def list_plans(
        self, runtime: NamedDependency[Runtime], policy_store: NamedDependency[PolicyStore]
    ) -> list[PlanPolicies]:
        async with runtime.db.transaction(platform=True) as tx:
            return await policy_store.plans(tx)

    @put(
        "/{plan_id:str}",
        opt=requires(operator_only=True),
        summary="Set a plan's rate policies",
        responses=problems(502),
    )
    async def set_plan(
        self,
        request: Request[Any, Any, Any],
        plan_id: FromPath[str],
        data: JSONBody[PolicySet],
        runtime: NamedDependency[Runtime],
        policy_store: NamedDependency[PolicyStore],
    ) -> PlanPolicies:
        """Policies every tenant on the plan gets besides the plan's request rate (which
        tenancy owns). Republishes the policies of every tenant on the plan. The plan must
        be one of tenancy's (404 `unknown-plan` otherwise)."""
        checked(data.policies, data.max_in_flight)
        await require_plan(runtime, plan_id, request.headers.get("authorization", ""))
        async with runtime.db.transaction(platform=True) as tx:
            tenants = await policy_store.set_plan(
                tx, plan_id, data.policies, data.max_in_flight, by(request)
            )
            for tenant_id in tenants:
                await policy_store.publish(tx, tenant_id)
            plans = await policy_store.plans(tx)
        return next(p for p in plans if p.plan_id == plan_id)

    @delete(
        "/{plan_id:str}",
        opt=requires(operator_only=True),
        summary="Remove a plan's rate policies (its tenants keep the plan's request rate)",
    )
    async def remove_plan(
        self,
        plan_id: FromPath[str],
        runtime: NamedDependency[Runtime],
        policy_store: NamedDependency[PolicyStore],
    ) -> None:
        """Tenants on the plan go back to the plan's request rate alone, republished."""
        async with runtime.db.transaction(platform=True) as tx:
            tenants = await policy_store.remove_plan(tx, plan_id)
            if tenants is None:
                raise Problem(
                    404, "not-found", "Not found", f"no rate policies are set for {plan_id!r}"
                )
            for tenant_id in tenants:
                await policy_store.publish(tx, tenant_id)


async def require_plan(runtime: Runtime, plan_id: str, authorization: str) -> None:
    """tenancy owns the plans: ask it (with the operator's own credential) whether
    `plan_id` is one, so no policy is ever stored for a plan that does not exist."""
    try:
        async with httpx.AsyncClient(
            base_url=runtime.settings.service_url("tenancy"), timeout=5
        ) as client:
            response = await client.get("/v1/plans", headers={"Authorization": authorization})
    except httpx.HTTPError as exc:
        raise Problem(
            503,
            "unavailable",
            "Service unavailable",
            f"tenancy, which owns the plans, is unreachable ({type(exc).__name__})",
            headers={"Retry-After": "5"},
        ) from exc
    if response.status_code != 200:
        raise Problem(
            502, "upstream-error", "Bad upstream answer", f"tenancy answered {response.status_code}"
        )
    known = {plan.get("plan_id") for plan in response.json()}
    if plan_id not in known:
        raise Problem(
            404,
            "unknown-plan",
            "No such plan",
            f"{plan_id!r} is not a plan (tenancy has: {', '.join(sorted(map(str, known)))})",
        )


@post(
    DECISIONS_ROUTE,
    status_code=200,
    opt={**requires(operator_only=True), "priority": "critical"},
    tags=["rate limits"],
    summary="Decide one request against a tenant's rate policies",
)
async def decide(
    data: JSONBody[DecisionRequest], rate_limiter: NamedDependency[RateLimitStep]
) -> Response[DecisionResponse]:
    """For gateways in front of the SaaS product: the same decision every Tenantry service
    makes in its pipeline (same Redis keys, so the product's traffic and Tenantry's share
    the tenant's limits). The answer is 200 either way; `allowed` says, and the RateLimit
    headers come with it."""
    body, headers = await decided(rate_limiter, data)
    return Response(body, headers=headers)
