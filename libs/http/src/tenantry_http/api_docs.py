"""What every operation's OpenAPI entry says about signing in and about errors.

Litestar documents a route's own success response and, for routes with parameters, a
400 in its own exception shape. Everything else a client can get comes from the shared
pipeline, so it is derived here from what the route declares, once for every service:

- `security`: one scheme, `bearer` (an access token or a `tnty_` API key, told apart by
  the prefix). Routes marked `opt={"auth": PUBLIC}` say `security: []`.
- error responses, each `application/problem+json` with the `Problem` schema:

  - 400 and 414, always: the input guard (URL and body) and validation;
  - 401, 403 and 429 where a credential is needed (authentication, roles and scopes, the
    tenant guard, plan features, the rate limit); 429 also where a public route charges a
    tenant (`rate_class`);
  - 404 where the path has parameters (another tenant's id, an unknown id);
  - 409 on POST (a concurrent request with the same Idempotency-Key), PUT, PATCH and DELETE
    (a concurrent change);
  - 413 and 415 where a body is taken (too large; not of the route's media type);
  - 422 where a body is taken (a well-formed body a rule refuses; on POST also an
    Idempotency-Key reused with another body);
  - 503, always: admission control (overload, deadlines) or a dependency that is down.

A route that answers another error of its own declares it with `responses=problems(...)`
on its handler, e.g. `@post(..., responses=problems(409, 422))`.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIType
from litestar.routes import HTTPRoute

from tenantry_http.auth import Requires
from tenantry_http.problems import PROBLEM_BASE, PROBLEM_JSON

BEARER = "bearer"
PROBLEM_SCHEMA = "Problem"

_DESCRIPTIONS = {
    400: "The request is malformed or invalid",
    401: "No valid credential",
    403: "The credential may not do this (role, scope, plan, tenant status)",
    404: "No such resource for this credential",
    409: "A conflicting concurrent request or change",
    413: "The request body is too large",
    414: "The URL is too long",
    415: "Unsupported media type",
    422: "The request is well-formed but cannot be processed",
    429: "Rate limited; retry after Retry-After",
    502: "An upstream service answered badly",
    503: "Overloaded or a dependency is down; retry after Retry-After",
}


class _ProblemBody:
    """Marker type: `problems()` documents these responses with the shared schema."""


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """A handler's own extra errors: `@post(..., responses=problems(409, 422))`."""
    return {
        status: ResponseSpec(
            data_container=_ProblemBody,
            media_type=PROBLEM_JSON,
            description=_DESCRIPTIONS.get(status, "Error"),
            generate_examples=False,
        )
        for status in statuses
    }


def _problem_schema() -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        description=f"RFC 9457 problem details; `type` is under {PROBLEM_BASE}",
        required=["type", "title", "status"],
        properties={
            "type": Schema(type=OpenAPIType.STRING, format="uri"),  # type: ignore[arg-type]
            "title": Schema(type=OpenAPIType.STRING),
            "status": Schema(type=OpenAPIType.INTEGER),
            "detail": Schema(type=OpenAPIType.STRING),
            "instance": Schema(type=OpenAPIType.STRING),
            "request_id": Schema(type=OpenAPIType.STRING),
        },
        additional_properties=True,  # problem types add their own members
    )


def _problem_response(status: int) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=_DESCRIPTIONS.get(status, "Error"),
        content={
            PROBLEM_JSON: OpenAPIMediaType(
                schema=Reference(ref=f"#/components/schemas/{PROBLEM_SCHEMA}")
            )
        },
    )


def pipeline_errors(method: str, opt: dict[str, Any], has_path_params: bool) -> set[int]:
    """The statuses the shared pipeline can answer for one operation (see the table)."""
    requirement = opt.get("auth")
    public = isinstance(requirement, Requires) and requirement.public
    statuses = {400, 414, 503}
    if not public:
        statuses |= {401, 403, 429}
    elif opt.get("rate_class"):
        statuses.add(429)
    if has_path_params:
        statuses.add(404)
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        statuses.add(409)
    if method in ("POST", "PUT", "PATCH"):
        statuses |= {413, 415, 422}
    return statuses


def document_security_and_errors(app: Litestar) -> None:
    """Complete the app's OpenAPI document (built now, then served as it is)."""
    openapi = app.openapi_schema
    components = openapi.components
    components.schemas = {**(components.schemas or {}), PROBLEM_SCHEMA: _problem_schema()}
    components.security_schemes = {
        BEARER: SecurityScheme(
            type="http",
            scheme="bearer",
            bearer_format="access token (EdDSA JWT) or API key (tnty_...)",
            description="`Authorization: Bearer <token>`: an access token from identity "
            "(POST /v1/sessions) or an API key, recognised by its `tnty_` prefix.",
        )
    }
    openapi.security = [{BEARER: []}]
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        item = (openapi.paths or {}).get(route.path_format or "/")
        if item is None:
            continue
        for handler in route.route_handlers:
            for method in handler.http_methods:
                operation = getattr(item, method.lower(), None)
                if not isinstance(operation, Operation):
                    continue
                _document(operation, method, dict(handler.opt), bool(route.path_parameters))


def _document(operation: Operation, method: str, opt: dict[str, Any], path_params: bool) -> None:
    requirement = opt.get("auth")
    public = isinstance(requirement, Requires) and requirement.public
    operation.security = [] if public else [{BEARER: []}]
    responses = dict(operation.responses or {})
    # The pipeline's errors (replacing Litestar's own 400 shape), and those the handler
    # declared with `problems()` (whose placeholder schema points at the shared one now).
    declared = {int(status) for status, response in responses.items() if _is_problem(response)}
    for status in sorted(pipeline_errors(method, opt, path_params) | declared):
        responses[str(status)] = _problem_response(status)
    operation.responses = responses


def _is_problem(response: Any) -> bool:
    return isinstance(response, OpenAPIResponse) and bool(
        response.content and PROBLEM_JSON in response.content
    )
