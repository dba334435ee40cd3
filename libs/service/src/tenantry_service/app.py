"""The app factory every service uses: same routes layout, errors, health, telemetry,
pipeline and lifecycle in all five."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import asyncpg
import httpx
from litestar import Litestar, Request, Router, get
from litestar.di import NamedDependency, Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Server
from litestar.response import Response
from litestar.types import ControllerRouterHandler
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tenantry_credentials.tokens import AccessTokenVerifier, JwksCache
from tenantry_events.consumer import Handler, merge_handlers
from tenantry_events.payloads.ratelimit import RatePolicy
from tenantry_events.state_check import AggregateKind
from tenantry_guardrails.admission import (
    AdmissionController,
    AdmissionGate,
    AdmissionSettings,
    LoopLagMonitor,
    RouteTable,
)
from tenantry_guardrails.rate_limits import (
    REDIS_BREAKER,
    LocalLimiter,
    PolicyCache,
    RateLimiter,
    RateLimitStep,
    RedisDecider,
    requests_policy,
)
from tenantry_http.api_docs import document_security_and_errors
from tenantry_http.asgi import ASGIApp
from tenantry_http.auth import Authenticator, Principal, TenantGuard, principal_of
from tenantry_http.idempotency import IdempotencyMiddleware
from tenantry_http.input_guard import InputGuardMiddleware
from tenantry_http.pipeline import PipelineMiddleware, PipelineStep, RequestIdMiddleware
from tenantry_http.problems import problem_response
from tenantry_platform.settings import ServiceSettings
from tenantry_projections.projections import (
    PostgresAccountStatus,
    PostgresApiKeyLookup,
    PostgresTenantStatus,
)
from tenantry_resilience import CircuitBreaker
from tenantry_service.erasure import ERASURE_REQUESTED, ErasureRules, SubjectEraser
from tenantry_service.export import (
    EXPORT_REQUESTED,
    ExportSource,
    TenantExporter,
    worker_object_store,
)
from tenantry_service.internal import move_api
from tenantry_service.move import MoveShare, Resealed
from tenantry_service.purge import (
    PURGE_REQUESTED,
    PurgeRules,
    TenantPurger,
    skipping_purged_tenants,
)
from tenantry_service.residency import home_region_step
from tenantry_service.runtime import DataKeysFactory, Runtime

API_PREFIX = "/v1"
# Event types a worker consumes in groups of their own (see worker.py): access-cutting
# events never queue behind bulk traffic, and bulk usage reports (key use, counts from the
# owners' reconciliation sweeps) behind nothing important.
# Safe because projections converge whatever the order across topics.
CRITICAL_TOPICS = frozenset(
    {"tenant.suspended", "tenant.reactivated", "apikey.revoked", "account.disabled"}
)
BACKGROUND_TOPICS = frozenset({"apikey.used", "usage.reported"})
Hook = Callable[[Runtime], Awaitable[None]]
WorkerTask = Callable[[Runtime, asyncio.Event], Awaitable[None]]
ErrorRenderer = Callable[[Request[Any, Any, Any], Exception], Response[bytes]]


@dataclass
class Pipeline:
    """The steps of one service's pipeline, outermost first (see tenantry_http.pipeline)."""

    admission: AdmissionController | None = None
    # Before anything reads tenant data: another region's tenant is sent home (307).
    home_region: PipelineStep | None = None
    authentication: PipelineStep | None = None
    tenant_guard: PipelineStep | None = None
    rate_limit: PipelineStep | None = None
    extra: Sequence[PipelineStep] = field(default_factory=tuple)

    def inner_steps(self) -> list[PipelineStep]:
        steps = [
            self.home_region,
            self.authentication,
            self.tenant_guard,
            self.rate_limit,
            *self.extra,
        ]
        return [s for s in steps if s is not None]


@dataclass
class ServiceSpec:
    """Everything that makes one service different from the others."""

    name: str
    description: str
    route_handlers: Sequence[ControllerRouterHandler] = ()  # mounted under /v1
    root_route_handlers: Sequence[ControllerRouterHandler] = ()  # e.g. /.well-known/...
    consumer_handlers: Mapping[str, Handler[asyncpg.Connection]] = field(default_factory=dict)
    # Handlers that need the runtime (a mailer, settings): built once per worker.
    consumer_factory: Callable[[Runtime], Mapping[str, Handler[asyncpg.Connection]]] | None = None
    migration_packages: Sequence[str] = ()
    # The event-sourced aggregates whose state rows `tenantry-<service> verify-state` checks
    # against their streams (and rebuilds with --rebuild).
    aggregates: Sequence[AggregateKind[Any, asyncpg.Connection]] = ()
    settings_cls: type[ServiceSettings] = ServiceSettings
    pipeline: Callable[[Runtime], Pipeline] = lambda runtime: default_pipeline(runtime)
    # ASGI layers in front of the general pipeline, inside admission control: data-plane
    # routes that answer well-formed requests themselves and hand the rest on (ratelimit's
    # decision API, tenantry_ratelimit.fast_path).
    fast_paths: Sequence[Callable[[ASGIApp, Runtime, Pipeline], ASGIApp]] = ()
    on_startup: Sequence[Hook] = ()
    on_shutdown: Sequence[Hook] = ()
    # Loops the worker process runs beside its consumers and relay (webhooks' dispatcher,
    # retention jobs), each until `stop` is set.
    worker_tasks: Sequence[WorkerTask] = ()
    # Error renderers by path prefix, for mounts that speak another protocol than
    # problem+json (SCIM Errors under /scim/v2), unknown URLs there included.
    error_renderers: Mapping[str, ErrorRenderer] = field(default_factory=dict)
    # Where the service gets the keys that seal events' personal fields, when not from
    # tenancy's key API (the default, ServiceDataKeys): tenancy, which keeps them.
    data_keys: DataKeysFactory | None = None
    # Migrations of databases beyond the service's own, run by `migrate` after those
    # (tenancy: the global directory's, in the region hosting it); returns what it applied.
    more_migrations: Callable[[ServiceSettings], Awaitable[list[str]]] | None = None
    # What the service's share of a tenant's purge keeps or does beyond deleting every
    # row with the tenant's id (tenantry_service.purge): tenancy keeps its tombstones.
    purge: PurgeRules = field(default_factory=PurgeRules)
    # The files of the service's share of a tenant's export (tenantry_service.export);
    # a service that declares none answers no export request.
    exports: Sequence[ExportSource] = ()
    # Columns the service encrypts with its master key, opened and sealed again for the
    # trip when a tenant moves to another region (tenantry_service.move).
    resealed: Sequence[Resealed] = ()
    # What is one person's here, erased on request (tenantry_service.erasure); a service
    # that declares nothing still forgets its copy of their key and answers.
    erasure: ErasureRules = field(default_factory=ErasureRules)
    version: str = "0.1.0"

    @property
    def consumer_group(self) -> str:
        return f"tenantry-{self.name}"

    @property
    def background_group(self) -> str:
        return f"tenantry-{self.name}.background"

    @property
    def critical_group(self) -> str:
        return f"tenantry-{self.name}.critical"

    def handlers(self, runtime: Runtime) -> dict[str, Handler[asyncpg.Connection]]:
        """The static handlers, then the built ones; an event type named by both runs
        both, in that order, in one transaction (projection first, reaction after).
        Every service also purges a tenant on request, and drops the late events of a
        tenant it has purged (tenantry_service.purge)."""
        built = self.consumer_factory(runtime) if self.consumer_factory else {}
        purger = TenantPurger(
            service=self.name,
            source=runtime.source,
            region=runtime.settings.region,
            outbox=runtime.outbox,
            redis=runtime.redis,
            # ... and drops the tenant's data keys from this process's cache (data_keys.py).
            rules=replace(
                self.purge, extra_steps=(*self.purge.extra_steps, runtime.data_keys.forget)
            ),
        )
        purging = {PURGE_REQUESTED: purger.handle}
        erasing = {ERASURE_REQUESTED: self.eraser(runtime).handle}
        exporting = {EXPORT_REQUESTED: self.exporter(runtime).handle} if self.exports else {}
        return skipping_purged_tenants(
            merge_handlers(self.consumer_handlers, built, purging, erasing, exporting)
        )

    def eraser(self, runtime: Runtime) -> SubjectEraser:
        """The service's `subject.erasure_requested` handler, erasing `erasure`."""
        return SubjectEraser(
            service=self.name,
            source=runtime.source,
            region=runtime.settings.region,
            outbox=runtime.outbox,
            statements=self.erasure.statements,
            steps=[build(runtime) for build in self.erasure.steps],
            forget_subject_key=runtime.data_keys.forget_subject,
        )

    def exporter(self, runtime: Runtime) -> TenantExporter:
        """The service's `tenant.export_requested` handler, writing `exports`."""
        return TenantExporter(
            service=self.name,
            sources=self.exports,
            db=runtime.db,
            store=worker_object_store(runtime.extras, runtime.settings),
            settings=runtime.settings,
            outbox=runtime.outbox,
            source=runtime.source,
            moving=MoveShare(
                service=self.name, db=runtime.db, settings=runtime.settings, resealed=self.resealed
            ).sources,
        )


def admission_controller(runtime: Runtime) -> AdmissionController:
    """The process's admission controller, with the utilization shedder watching its loop."""
    settings = AdmissionSettings.from_prefixed(runtime.settings)
    return AdmissionController(
        settings,
        name=runtime.service,
        loop_lag=LoopLagMonitor(settings.loop_lag_sample_ms / 1000),
    )


def default_pipeline(runtime: Runtime) -> Pipeline:
    """Authentication for every service: tokens against identity's JWKS, API keys against
    the local projection; the tenant guard; per-tenant rate limits; admission control."""
    identity = runtime.settings.service_url("identity")

    async def fetch_jwks() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"{identity}/.well-known/jwks.json")
            response.raise_for_status()
            document: dict[str, Any] = response.json()
            return document

    verifier = AccessTokenVerifier(
        JwksCache(fetch_jwks, ttl=runtime.settings.jwks_ttl_seconds),
        issuer=runtime.regions.own.issuer,
    )
    settings = runtime.settings
    return Pipeline(
        admission=admission_controller(runtime) if settings.admission_enabled else None,
        home_region=home_region_step(runtime),
        authentication=Authenticator(
            verifier,
            PostgresApiKeyLookup(runtime.db),
            PostgresAccountStatus(runtime.db),
            usage=runtime.key_usage,
        ),
        tenant_guard=TenantGuard(PostgresTenantStatus(runtime.db)),
        rate_limit=rate_limit_step(runtime) if settings.ratelimit_enabled else None,
    )


def rate_limit_step(runtime: Runtime) -> RateLimitStep:
    """The process's one rate limiter (built once: its cache of refused keys and its local
    fallback state are per process), shared by the pipeline and ratelimit's decision API."""
    existing = runtime.extras.get("rate_limit_step")
    if isinstance(existing, RateLimitStep):
        return existing
    settings = runtime.settings
    step = RateLimitStep(
        RateLimiter(
            RedisDecider(
                runtime.redis,
                # Undrained refusal counters expire after ten sampling windows.
                throttle_ttl_seconds=10 * settings.ratelimit_throttle_window_seconds,
            ),
            LocalLimiter(divisor=settings.ratelimit_local_divisor),
            breaker=CircuitBreaker("redis-ratelimit", REDIS_BREAKER),
            slot_ttl_seconds=settings.ratelimit_slot_ttl_seconds,
        ),
        PolicyCache(
            runtime.db,
            ttl=settings.ratelimit_policy_ttl_seconds,
            default=default_rate(settings),
            default_max_in_flight=settings.ratelimit_max_in_flight or None,
        ),
    )
    runtime.extras["rate_limit_step"] = step
    return step


def default_rate(settings: ServiceSettings) -> RatePolicy:
    """What a tenant gets before anything is known about it here."""
    return requests_policy(settings.ratelimit_default_rps, settings.ratelimit_default_burst)


@get("/whoami", tags=["session"], summary="The principal behind the credential")
async def whoami(request: Request[Any, Any, Any]) -> Principal:
    """Every service answers it, from its own projections: handy to see how a credential
    resolves here (and how tests prove a revoked key is refused everywhere)."""
    return principal_of(request)


@get("/healthz", include_in_schema=False, opt={"public_probe": True}, sync_to_thread=False)
def liveness() -> dict[str, str]:
    return {"status": "ok"}


@get("/metrics", include_in_schema=False, opt={"public_probe": True}, sync_to_thread=False)
def prometheus_metrics() -> Response[bytes]:
    """Every OpenTelemetry instrument of the process (rate-limit decision paths, breaker
    states, admission) in the Prometheus text format, for the cluster's scraper."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@get("/readyz", include_in_schema=False, opt={"public_probe": True})
async def readiness(runtime: NamedDependency[Runtime]) -> Response[dict[str, Any]]:
    checks = {"postgres": await runtime.db.ping(), "kafka": await runtime.kafka.ok()}
    # Only the database gates readiness: an api writes events to its outbox, never to Kafka,
    # and keeps serving through a broker outage (the chaos suite proves it). Gating on Kafka
    # would take every api pod out of its Service for as long as the broker is away.
    ready = checks["postgres"]
    return Response(
        {"status": "ready" if ready else "not-ready", "checks": checks},
        status_code=200 if ready else 503,
    )


def renderer_for(mounts: Mapping[str, ErrorRenderer]) -> ErrorRenderer:
    """problem+json everywhere, except under the prefixes that name their own renderer."""
    if not mounts:
        return problem_response

    def render(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        path = request.url.path
        for prefix, renderer in mounts.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return renderer(request, exc)
        return problem_response(request, exc)

    return render


def create_app(spec: ServiceSpec, runtime: Runtime, pipeline: Pipeline | None = None) -> Litestar:
    """The Litestar app alone (routes, errors, health, lifecycle); `asgi_app` wraps it."""
    pipeline = pipeline or spec.pipeline(runtime)

    async def startup() -> None:
        await runtime.db.connect()
        runtime.key_usage.start()
        for hook in spec.on_startup:
            await hook(runtime)

    async def shutdown() -> None:
        for hook in spec.on_shutdown:
            await hook(runtime)
        await runtime.key_usage.stop()  # last flush of API key usage
        await runtime.data_keys.aclose()
        await runtime.kafka.close()
        await runtime.redis.aclose()
        await runtime.db.close()

    app = Litestar(
        route_handlers=[
            Router(path=API_PREFIX, route_handlers=[*spec.route_handlers, whoami]),
            *spec.root_route_handlers,
            move_api(spec.resealed),
            liveness,
            readiness,
            prometheus_metrics,
        ],
        dependencies={
            "runtime": Provide(lambda: runtime, use_cache=True, sync_to_thread=False),
            "db": Provide(lambda: runtime.db, use_cache=True, sync_to_thread=False),
            "event_store": Provide(lambda: runtime.events, use_cache=True, sync_to_thread=False),
            "settings": Provide(lambda: runtime.settings, use_cache=True, sync_to_thread=False),
        },
        # Idempotency runs after authentication, so a revoked credential can never replay
        # a stored response, and records are scoped to the principal, not to a header.
        middleware=[
            PipelineMiddleware(pipeline.inner_steps()),
            # Hostile input (bad encodings, NULs, deep or huge numbers) is refused here, in
            # each mount's error format, before the route or a stored response sees it.
            InputGuardMiddleware(runtime.settings.request_max_body_bytes),
            DefineMiddleware(
                IdempotencyMiddleware,  # type: ignore[arg-type]  # loose ASGI types (asgi.py)
                db=runtime.db,
                max_body=runtime.settings.request_max_body_bytes,
            ),
        ],
        exception_handlers={Exception: renderer_for(spec.error_renderers)},
        on_startup=[startup],
        on_shutdown=[shutdown],
        openapi_config=OpenAPIConfig(
            title=f"Tenantry {spec.name}",
            version=spec.version,
            description=spec.description,
            servers=[
                Server(url=f"http://{runtime.settings.http_host}:{runtime.settings.http_port}")
            ],
            use_handler_docstrings=True,
        ),
        request_max_body_size=runtime.settings.request_max_body_bytes,
        debug=False,
        logging_config=None,  # JSON logs are configured once per process (telemetry.py)
    )
    app.state.runtime = runtime
    document_security_and_errors(app)
    return app


def asgi_app(spec: ServiceSpec, runtime: Runtime) -> ASGIApp:
    """The full ASGI stack: admission, tracing and request id, then Litestar (whose own
    middleware runs the inner pipeline steps, then Idempotency-Key handling)."""
    pipeline = spec.pipeline(runtime)
    litestar_app = create_app(spec, runtime, pipeline)
    app: ASGIApp = litestar_app  # type: ignore[assignment]
    app = RequestIdMiddleware(app)
    app = OpenTelemetryMiddleware(app, exclude_spans=["receive", "send"])
    for fast_path in spec.fast_paths:
        app = fast_path(app, runtime, pipeline)
    if pipeline.admission is not None:
        # Outermost: a refusal must cost as little as possible (see AdmissionGate).
        gate = AdmissionGate(
            app,  # type: ignore[arg-type]  # loose ASGI types (asgi.py)
            pipeline.admission,
            RouteTable.of(litestar_app),
        )
        app = gate  # type: ignore[assignment]
    return app
