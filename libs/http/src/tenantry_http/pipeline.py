"""The steps of the one request pipeline, and the middleware that runs them.

`tenantry_service.app.asgi_app` builds the same stack for every service, outermost first:

    admission control (`AdmissionGate`) -> tracing (OpenTelemetry) -> request id
    (`RequestIdMiddleware`, here) -> Litestar's routing -> the inner steps
    (`PipelineMiddleware`, here: authentication -> tenant status -> per-tenant rate and
    concurrency limits -> a service's extra steps) -> the input guard -> Idempotency-Key
    -> the route

Admission, tracing and the request id are plain ASGI wrappers around the Litestar app.
Admission is the outermost layer so that, under overload, a refusal costs nothing else:
it finds a request's priority class (`opt={"priority": ...}`) in a route table built once
from the app's routes, without Litestar's router, so a refused request has no span and no
request id. Everything from the inner steps on runs as Litestar middleware, after routing,
because the steps read what the route declares (`opt`); health probes and the OpenAPI
document skip them. Home-region routing is to join the tenant-status step.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from litestar import Request
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp as LitestarASGIApp
from litestar.types import Receive as LitestarReceive
from litestar.types import Scope as LitestarScope
from litestar.types import Send as LitestarSend
from uuid_utils.compat import uuid7

from tenantry_events.actors import Actor, ActorKind, acting_as, request_actor
from tenantry_http.asgi import ASGIApp, Message, Receive, Scope, Send
from tenantry_platform.telemetry import request_id_var

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Accept a sane X-Request-Id or mint a UUIDv7; echo it on the response and in logs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), ""
        )
        request_id = incoming if _REQUEST_ID.match(incoming) else str(uuid7())
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class PipelineStep(Protocol):
    """Inner slot: raise a `Problem` to stop the request, or return to let it through."""

    async def __call__(self, request: Request[Any, Any, Any]) -> None: ...


def route_class_of(request: Request[Any, Any, Any]) -> str:
    """A route names its class with `opt={"rate_class": ...}`; otherwise reads and writes."""
    declared = request.route_handler.opt.get("rate_class")
    if declared:
        return str(declared)
    return "read" if request.method in ("GET", "HEAD", "OPTIONS") else "write"


_RESPONSE_HEADERS = "tenantry.response_headers"
_AFTER_RESPONSE = "tenantry.after_response"
AfterResponse = Callable[[], Awaitable[None]]


def add_response_headers(scope: LitestarScope, headers: dict[str, str]) -> None:
    """Headers a step wants on the response, whatever the route answers (RateLimit...)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    state.setdefault(_RESPONSE_HEADERS, {}).update(headers)


def after_response(scope: LitestarScope, callback: AfterResponse) -> None:
    """Work a step needs done once the response is over, even if the route failed (give
    back an in-flight slot)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    state.setdefault(_AFTER_RESPONSE, []).append(callback)


class PipelineMiddleware(ASGIMiddleware):
    """Runs the inner steps in order; a raised Problem becomes the problem+json answer."""

    exclude_opt_key = "public_probe"  # health probes skip the pipeline
    exclude_path_pattern = ("^/schema",)  # the OpenAPI document and its viewers are public

    def __init__(self, steps: Sequence[PipelineStep]) -> None:
        self.steps = list(steps)

    async def handle(
        self,
        scope: LitestarScope,
        receive: LitestarReceive,
        send: LitestarSend,
        next_app: LitestarASGIApp,
    ) -> None:
        if not self.steps:
            await next_app(scope, receive, send)
            return
        try:
            request: Request[Any, Any, Any] = Request(scope, receive)
            for step in self.steps:
                await step(request)
            state: dict[str, Any] = scope.get("state", {})
            extra: dict[str, str] = state.get(_RESPONSE_HEADERS, {})
            forward = send
            if extra:
                encoded = [(k.lower().encode(), v.encode()) for k, v in extra.items()]

                async def send_with_headers(message: Any) -> None:
                    if message["type"] == "http.response.start":
                        message["headers"] = [*message.get("headers", []), *encoded]
                    await send(message)

                forward = send_with_headers
            # Every event the route makes names this request's actor (the audit log's who).
            with acting_as(actor_of(request)):
                await next_app(scope, receive, forward)
        finally:
            for callback in scope.get("state", {}).get(_AFTER_RESPONSE, ()):
                await callback()


def actor_of(request: Request[Any, Any, Any]) -> Actor:
    """The actor of a request: its principal once authenticated (a SCIM key on the SCIM
    routes, or on identity's provisioned-accounts that provisioning calls for them, is the
    identity provider's SCIM client), else anonymous (a sign-in route, whose
    events name the account they signed in)."""
    # Imported here: auth imports this module's step protocol.
    from tenantry_http.auth import STATE_KEY, Principal

    principal = request.scope.get("state", {}).get(STATE_KEY)
    kind: ActorKind = "anonymous"
    actor_id: str | None = None
    if isinstance(principal, Principal):
        actor_id = principal.subject
        kind = principal.kind
        path = request.scope["path"]
        scim_call = path.startswith("/scim/") or "/provisioned-accounts" in path
        if kind == "api_key" and "scim:write" in principal.scopes and scim_call:
            kind = "scim"
    return request_actor(
        kind,
        actor_id,
        request_id=request.scope.get("state", {}).get("request_id"),
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )
