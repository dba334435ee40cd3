"""Admission at the HTTP edge: classify a request (priority, fairness key, deadline), take
a slot or answer a fast 503 problem+json, and feed the handler's latency to the limit."""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, cast
from urllib.parse import parse_qsl

import msgspec
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from tenantry_guardrails.admission.controller import AdmissionController
from tenantry_guardrails.admission.priorities import Priority, Rejected, RejectReason
from tenantry_http.problems import PROBLEM_JSON, Problem

PRIORITY_HEADER = b"x-tenantry-priority"
TIMEOUT_HEADER = b"x-request-timeout-ms"
# Per-process key: fairness keys derived from credentials are not reversible or
# comparable across processes, and the credential itself is never kept.
_FAIRNESS_HASH_KEY = secrets.token_bytes(32)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def request_priority(
    scope: Scope, large_list_threshold: int, *, declared: Priority | None = None
) -> Priority:
    """The class of a request: what its route declares (`opt["priority"]`, from the routed
    handler or given as `declared`; default DEFAULT), demoted to sheddable for a large GET
    list (`?limit=` above the threshold), and demoted further if the client asks with
    X-Tenantry-Priority. Never promoted."""
    if declared is None:
        handler = scope.get("route_handler")
        opt: Mapping[str, Any] = getattr(handler, "opt", None) or {}
        declared = None if opt.get("priority") is None else Priority(opt["priority"])
    priority = Priority.DEFAULT if declared is None else declared
    if scope.get("method") == "GET":
        query = scope.get("query_string", b"").decode("latin-1")
        for name, value in parse_qsl(query):
            if name == "limit" and value.isdigit() and int(value) > large_list_threshold:
                priority = Priority.SHEDDABLE
    asked = Priority.parse(_header(scope, PRIORITY_HEADER))
    if asked is not None and asked.rank > priority.rank:
        priority = asked
    return priority


def fairness_key(scope: Scope) -> str:
    """Whose turn a request takes in the queue: the tenant in the path, else the caller's
    credential (hashed), else the client address."""
    path_params = scope.get("path_params") or {}
    tenant_id = path_params.get("tenant_id")
    if tenant_id is not None:
        return f"tenant:{tenant_id}"
    authorization = _header(scope, b"authorization")
    if authorization:
        digest = hashlib.blake2b(
            authorization.encode("latin-1"), key=_FAIRNESS_HASH_KEY, digest_size=16
        )
        return f"credential:{digest.hexdigest()}"
    client = scope.get("client")
    return f"client:{client[0]}" if client else "client:unknown"


def client_deadline(scope: Scope, now: float) -> float | None:
    """`now` plus the client's X-Request-Timeout-Ms, or None when absent or malformed."""
    raw = _header(scope, TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        millis = float(raw)
    except ValueError:
        return None
    if not math.isfinite(millis) or millis < 0:
        return None
    return now + millis / 1000.0


def rejection_problem(rejected: Rejected) -> Problem:
    """The 503 problem for a refused request, with its Retry-After header."""
    headers = {"retry-after": str(rejected.retry_after)}
    if rejected.reason is RejectReason.DEADLINE_EXCEEDED:
        return Problem(
            503,
            "deadline-exceeded",
            "Deadline exceeded",
            "The request waited past its deadline for capacity and was dropped unprocessed.",
            headers=headers,
            reason=rejected.reason.value,
        )
    return Problem(
        503,
        "overloaded",
        "Service overloaded",
        "The service is at capacity and did not process the request; retry later.",
        headers=headers,
        reason=rejected.reason.value,
    )


def _is_schema_path(scope: Scope) -> bool:
    path = scope.get("path", "")
    return path == "/schema" or path.startswith("/schema/")


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, Problem):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 500


async def admit(
    controller: AdmissionController,
    priority: Priority,
    key: str,
    scope: Scope,
    receive: Receive,
    send: Send,
    next_app: ASGIApp,
) -> None:
    """Take a slot (or answer 503 at once), run the request, and feed its latency back to
    the limit."""
    clock = controller.clock
    deadline = client_deadline(scope, clock())
    try:
        ticket = await controller.acquire(priority, key, deadline)
    except Rejected as rejected:
        await _send_problem(scope, send, rejection_problem(rejected))
        return

    started = clock()
    response_started: float | None = None
    status = 500

    async def timed_send(message: Message) -> None:
        nonlocal response_started, status
        if message["type"] == "http.response.start":
            response_started = clock()
            status = message["status"]
        await send(message)

    try:
        await next_app(scope, receive, timed_send)
    except asyncio.CancelledError:
        ticket.abandon()
        raise
    except BaseException as exc:
        # Escaped the app (Litestar renders its own, so rarely): its status decides "ok".
        ticket.release(clock() - started, ok=_status_of(exc) < 500)
        raise
    finished = response_started if response_started is not None else clock()
    ticket.release(finished - started, ok=status < 500)


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}")


class RouteTable:
    """Which priority each route declares, found without Litestar's router: the outer gate
    classifies a request before tracing, request ids and routing cost anything."""

    def __init__(self, routes: Sequence[tuple[str, Mapping[str, Priority | None]]]) -> None:
        self._routes: list[tuple[re.Pattern[str], Mapping[str, Priority | None]]] = []
        for path, by_method in routes:
            pattern = ""
            position = 0
            for match in _PARAM.finditer(path):
                pattern += re.escape(path[position : match.start()])
                kind = match.group(2)
                pattern += f"(?P<{match.group(1)}>" + (".*" if kind == "path" else "[^/]+") + ")"
                position = match.end()
            pattern += re.escape(path[position:])
            self._routes.append((re.compile(pattern + r"/?\Z"), by_method))

    @classmethod
    def of(cls, app: Any) -> RouteTable:
        """From a Litestar app's routes and each handler's `opt["priority"]`."""
        table: list[tuple[str, dict[str, Priority | None]]] = []
        for route in app.routes:
            by_method: dict[str, Priority | None] = {}
            for handler in getattr(route, "route_handlers", ()):
                declared = (getattr(handler, "opt", None) or {}).get("priority")
                for method in getattr(handler, "http_methods", ()):
                    by_method[method] = None if declared is None else Priority(declared)
            table.append((route.path, by_method))
        return cls(table)

    def match(self, method: str, path: str) -> tuple[Priority | None, dict[str, str]]:
        for pattern, by_method in self._routes:
            found = pattern.match(path)
            if found is not None:
                return by_method.get(method), found.groupdict()
        return None, {}


class AdmissionGate:
    """Admission control as the outermost ASGI layer: a refused request is answered before
    OpenTelemetry, request ids and Litestar's routing spend anything on it (under
    overload, the cost of saying no decides how much capacity is left for saying yes).
    Probes, /metrics and the OpenAPI document pass untouched."""

    BYPASS = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: ASGIApp, controller: AdmissionController, routes: RouteTable) -> None:
        self.app = app
        self.controller = controller
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != ScopeType.HTTP or path in self.BYPASS or _is_schema_path(scope):
            await self.app(scope, receive, send)
            return
        declared, params = self.routes.match(str(scope.get("method", "GET")), path)
        classified = cast(Scope, {**scope, "path_params": params})
        priority = request_priority(
            classified, self.controller.settings.large_list_threshold, declared=declared
        )
        await admit(
            self.controller, priority, fairness_key(classified), scope, receive, send, self.app
        )


async def _send_problem(scope: Scope, send: Send, problem: Problem) -> None:
    # Rendered here: the gate runs outside Litestar, so no exception handler would render a
    # raised Problem (and a refusal must stay cheap: no logging of an "unhandled" 5xx).
    body = problem.body(instance=scope.get("path"))
    request_id = (scope.get("state") or {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    content = msgspec.json.encode(body)
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(content)).encode()),
        (b"cache-control", b"no-store"),
        *((name.encode(), value.encode()) for name, value in problem.headers.items()),
    ]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})
