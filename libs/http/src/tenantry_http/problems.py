"""RFC 9457 problem details: the one error type of the HTTP edge.

Every error leaves as `application/problem+json` with a stable `type` URI under one
documented base. SCIM mounts swap the renderer for SCIM Error bodies (provisioning).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ValidationException,
)
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from tenantry_events.faults import is_transient_db_error
from tenantry_events.sealing import KeysUnavailable
from tenantry_events.storage import ConcurrencyConflict

PROBLEM_BASE = "https://tenantry.dev/problems/"
PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("tenantry.http")


class Problem(Exception):
    """Raise anywhere in a route to answer with problem+json."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


# Litestar's own HTTP errors mapped to stable problem types.
_SLUGS: dict[int, tuple[str, str]] = {
    400: ("malformed-request", "The request could not be read"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("unprocessable", "Unprocessable request"),
    429: ("rate-limited", "Too many requests"),
    503: ("unavailable", "Service unavailable"),
}


# How long a client should wait before retrying while the database is unreachable: about
# what a Postgres restart or failover takes.
DATABASE_RETRY_AFTER_SECONDS = 2


def database_unavailable() -> Problem:
    return Problem(
        503,
        "unavailable",
        "Service unavailable",
        "The service's database is unavailable; retry shortly",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def problem_from_exception(exc: Exception) -> Problem:
    if isinstance(exc, Problem):
        return exc
    if is_transient_db_error(exc):
        # An outage, a restart, a failover: the request is fine, try it again shortly.
        return database_unavailable()
    if isinstance(exc, KeysUnavailable):
        # tenancy's key API did not answer (docs/data-keys.md): the request is fine.
        return Problem(
            503,
            "unavailable",
            "Service unavailable",
            "The keys that protect personal data are unavailable; retry shortly",
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, ConcurrencyConflict):
        return Problem(
            409,
            "concurrency-conflict",
            "The resource changed since you read it",
            str(exc),
            current_version=exc.actual_version,
        )
    if isinstance(exc, ValidationException):
        errors = exc.extra if isinstance(exc.extra, list) else []
        return Problem(
            400,
            "validation-error",
            "The request is not valid",
            exc.detail,
            errors=[_clean_error(e) for e in errors],
        )
    if isinstance(exc, NotFoundException):
        return Problem(404, "not-found", "Not found", "No resource at this URL")
    if isinstance(exc, MethodNotAllowedException):
        return Problem(
            405,
            "method-not-allowed",
            "Method not allowed",
            exc.detail,
            headers=dict(exc.headers or {}),
        )
    if isinstance(exc, HTTPException):
        slug, title = _SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
        return Problem(exc.status_code, slug, title, exc.detail, headers=dict(exc.headers or {}))
    return Problem(HTTP_500_INTERNAL_SERVER_ERROR, "internal-error", "Internal server error")


def _clean_error(error: Any) -> Any:
    if isinstance(error, dict):
        return {k: v for k, v in error.items() if k in ("key", "message", "source")}
    return str(error)


_ENCODER = msgspec.json.Encoder()


def log_unexpected(request: Request[Any, Any, Any], exc: Exception, problem: Problem) -> None:
    """A 5xx that no code chose is a bug (logged with its traceback); a database outage is
    not (one warning line: the readiness probe and the database's own logs tell the rest)."""
    if problem.status < 500 or isinstance(exc, Problem):  # a Problem is deliberate
        return
    if is_transient_db_error(exc):
        log.warning(
            "database unavailable on %s %s: %s: %s",
            request.method,
            request.url.path,
            type(exc).__name__,
            exc,
        )
        return
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)


def problem_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    problem = problem_from_exception(exc)
    log_unexpected(request, exc, problem)
    request_id = request.scope.get("state", {}).get("request_id")
    body = problem.body(instance=request.url.path)
    if request_id:
        body["request_id"] = request_id
    return Response(
        content=_ENCODER.encode(body),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )
