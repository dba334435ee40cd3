"""Wiring of the ratelimit service: the one place that puts domain, store and edges together.

Routes receive what they use by name through Litestar's dependency injection
(`ROUTE_DEPENDENCIES`), typed."""

from __future__ import annotations

import asyncpg
from litestar import Router
from litestar.di import NamedDependency, Provide

from tenantry_events.consumer import Handler
from tenantry_guardrails.rate_limits import RateLimitStep
from tenantry_http.asgi import ASGIApp
from tenantry_http.auth import Authenticator
from tenantry_projections.projections import standard_projections
from tenantry_ratelimit.api import PlanPoliciesController, TenantPoliciesController, decide
from tenantry_ratelimit.consumers import publishing_handlers
from tenantry_ratelimit.export import RATELIMIT_EXPORTS
from tenantry_ratelimit.fast_path import DecisionFastPath
from tenantry_ratelimit.store import PolicyStore
from tenantry_ratelimit.throttles import report_throttles
from tenantry_regions.routing import HomeRegionStep
from tenantry_service.app import Pipeline, ServiceSpec, rate_limit_step
from tenantry_service.runtime import Runtime


def policy_store(runtime: NamedDependency[Runtime]) -> PolicyStore:
    return PolicyStore(runtime.outbox, source=runtime.source, region=runtime.settings.region)


def rate_limiter(runtime: NamedDependency[Runtime]) -> RateLimitStep:
    """The process's one rate limiter, the pipeline's: decisions made for gateways share
    its cache and its local fallback."""
    return rate_limit_step(runtime)


ROUTE_DEPENDENCIES = {
    "policy_store": Provide(policy_store, sync_to_thread=False),
    "rate_limiter": Provide(rate_limiter, sync_to_thread=False),
}


def decisions_fast_path(app: ASGIApp, runtime: Runtime, pipeline: Pipeline) -> ASGIApp:
    """The decision API's fast path (fast_path.py), unless settings turn it off."""
    authenticator = pipeline.authentication
    if not runtime.settings.ratelimit_decisions_fast_path or not isinstance(
        authenticator, Authenticator
    ):
        return app
    home = pipeline.home_region
    return DecisionFastPath(
        app,
        authenticator=authenticator,
        step=rate_limit_step(runtime),
        home_region_of=(
            home.foreign_credential_region
            if isinstance(home, HomeRegionStep)
            else lambda _authorization: None
        ),
    )


def worker_consumers(runtime: Runtime) -> dict[str, Handler[asyncpg.Connection]]:
    return publishing_handlers(policy_store(runtime))


SPEC = ServiceSpec(
    name="ratelimit",
    description="Rate policies per plan, tenant and API key; GCRA decisions in Redis.",
    route_handlers=[
        Router(
            path="/",
            route_handlers=[TenantPoliciesController, PlanPoliciesController, decide],
            dependencies=ROUTE_DEPENDENCIES,
        )
    ],
    consumer_handlers=standard_projections(),
    consumer_factory=worker_consumers,
    migration_packages=["tenantry_ratelimit"],
    exports=RATELIMIT_EXPORTS,
    worker_tasks=[report_throttles],
    fast_paths=[decisions_fast_path],
)
