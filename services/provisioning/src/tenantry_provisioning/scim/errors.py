"""SCIM Error responses (RFC 7644 §3.12) for everything under /scim/v2, 401 and unknown
URLs included: the error renderer of the SCIM mount."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response

from tenantry_http.problems import log_unexpected, problem_from_exception
from tenantry_provisioning.domain import ScimError
from tenantry_provisioning.scim.messages import MessageError
from tenantry_provisioning.scim.schema import ERROR_URN

SCIM_JSON = "application/scim+json"
_ENCODER = msgspec.json.Encoder()

# problem types that have a SCIM scimType of their own
_SCIM_TYPES = {
    "validation-error": "invalidSyntax",
    "malformed-request": "invalidSyntax",
    "email-taken": "uniqueness",
    # the shared input guard (tenantry_http.input_guard)
    "invalid-encoding": "invalidSyntax",
    "json-too-deep": "invalidSyntax",
    "duplicate-json-key": "invalidSyntax",
    "nul-character": "invalidValue",
    "number-out-of-range": "invalidValue",
}


def scim_error_body(status: int, detail: str, scim_type: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"schemas": [ERROR_URN], "status": str(status), "detail": detail}
    if scim_type:
        body["scimType"] = scim_type
    return body


def scim_error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Any exception on the SCIM mount as a SCIM Error: our own ScimErrors and refused
    messages (messages.py, resources.py) as they are, problems (401 from the pipeline, 403
    plan limits, 404, 429, ...) translated."""
    if isinstance(exc, ScimError):
        status, detail, scim_type, headers = exc.status, exc.detail, exc.scim_type, exc.headers
    elif isinstance(exc, MessageError):
        status, detail, scim_type, headers = exc.status, exc.detail, exc.scim_type, {}
    else:
        problem = problem_from_exception(exc)
        log_unexpected(request, exc, problem)  # a bug with its traceback; an outage in a line
        status, headers = problem.status, problem.headers
        detail = problem.detail or problem.title
        scim_type = _SCIM_TYPES.get(problem.slug)
    return Response(
        content=_ENCODER.encode(scim_error_body(status, detail, scim_type)),
        status_code=status,
        media_type=SCIM_JSON,
        headers=headers,
    )
