"""The decision API's fast path: a gateway asks once per request of the SaaS product, so
`POST /v1/decisions` is this service's data plane, and the general pipeline (routing,
tracing spans, the input guard, Idempotency-Key, the inner steps) cost it about four times
the decision itself (py-spy: ~0.9 ms of CPU of ~1.2 ms per request).

This ASGI layer, inside admission control, answers a request itself only when it is
well formed in every way the route would check: the path and method (no query string, a
target of normal length), a JSON content type,
a small body that decodes as a `DecisionRequest`, a bearer credential of an operator, no
Idempotency-Key, and (with regions) a credential of this region. Anything else goes,
body replayed, to the full stack, which gives the route's own answer, errors included; so
the two cannot disagree about what is refused or how (tests/test_rate_limits.py compares
them). The answer is the route's: the same `decided` makes it and the same msgspec
encoding writes it, with the same X-Request-Id rule. What the fast path leaves out is a
tracing span per decision; the decisions counter (tenantry.ratelimit.decisions) still
counts each one.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import msgspec
from opentelemetry import metrics
from uuid_utils.compat import uuid7

from tenantry_guardrails.rate_limits import RateLimitStep
from tenantry_http.asgi import ASGIApp, Message, Receive, Scope, Send
from tenantry_http.auth import Authenticator, Requires, check
from tenantry_http.input_guard import URL_BYTES_KEY
from tenantry_http.problems import Problem
from tenantry_platform.telemetry import Tally, request_id_var
from tenantry_ratelimit.decisions import DECISIONS_ROUTE, DecisionRequest, decided

PATH = f"/v1{DECISIONS_ROUTE}"
MAX_BODY = 4096  # a decision request is under 200 bytes; bigger ones take the full path
OPERATOR = Requires(operator_only=True)
_JSON = re.compile(rb"^application/json\s*(;\s*charset=\"?utf-8\"?\s*)?$", re.IGNORECASE)
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")  # RequestIdMiddleware's rule
_answers = Tally(
    metrics.get_meter("tenantry.ratelimit"),
    "tenantry.ratelimit.decision_requests",
    description="Decision API requests by who answered: fast (the fast path) or full "
    "(handed to the general pipeline: refusals, unusual requests, the fast path off)",
)
_FAST, _FULL = {"answered_by": "fast"}, {"answered_by": "full"}
_decode = msgspec.json.Decoder(DecisionRequest).decode
_encode = msgspec.json.Encoder().encode


class DecisionFastPath:
    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        step: RateLimitStep,
        home_region_of: Callable[[str], str | None] = lambda _authorization: None,
    ) -> None:
        """`home_region_of(authorization)`: the region a credential names when it is not
        this one (None: this one, or no regions); such requests take the full path, which
        sends them home."""
        self.app = app
        self._authenticator = authenticator
        self._step = step
        self._home_region_of = home_region_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != PATH
            or scope["method"] != "POST"
            # A target the server had to cut short (past 64 KiB, http_server.py) or a query
            # string: the route refuses or ignores those in its own way.
            or URL_BYTES_KEY in scope
            or scope.get("query_string")
        ):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = dict(scope["headers"])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if (
            not _JSON.match(headers.get(b"content-type", b""))
            or b"idempotency-key" in headers
            or self._home_region_of(authorization) is not None
        ):
            _answers.add(1, _FULL)
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > MAX_BODY or not message.get("more_body", False):
                break
        answer = await self._answer(messages, size, authorization)
        if answer is None:
            _answers.add(1, _FULL)
            await self.app(scope, _replaying(messages, receive), send)
            return
        _answers.add(1, _FAST)
        incoming = headers.get(b"x-request-id", b"")
        request_id = incoming if _REQUEST_ID.match(incoming) else str(uuid7()).encode()
        token = request_id_var.set(request_id.decode())
        try:
            body, extra = answer
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        *((k.lower().encode(), v.encode()) for k, v in extra.items()),
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"x-request-id", request_id),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        finally:
            request_id_var.reset(token)

    async def _answer(
        self, messages: list[Message], size: int, authorization: str
    ) -> tuple[bytes, dict[str, str]] | None:
        """The answer's body and headers, or None: the full path decides what to say."""
        last = messages[-1]
        if last["type"] != "http.request" or last.get("more_body", False) or size > MAX_BODY:
            return None
        try:
            principal = await self._authenticator.principal(authorization)
            check(principal, OPERATOR)
            data = _decode(b"".join(m.get("body", b"") for m in messages))
        except (Problem, msgspec.DecodeError):
            return None
        body, extra = await decided(self._step, data)
        return _encode(body), extra


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives back what was already read, then defers to the real one."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
