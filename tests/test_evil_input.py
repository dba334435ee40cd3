"""Hostile input to every route of every service (issue 14): bodies that are not UTF-8,
nested 5,000 deep, with NUL in strings and keys, numbers beyond 64 bits, overlong strings,
huge arrays, duplicate keys, wrong content types, non-object JSON, empty bodies; NUL,
invalid UTF-8 and overlong values in paths and queries; a 100 KB URL. Each must get a
clean 4xx (problem+json with a `type` on /v1, a SCIM Error on /scim/v2) and change no row
of the tenant in any service. Routes come from each service's served OpenAPI (plus the
SCIM mount), path values are the tenant's own ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.receiver import Receiver, running_receiver
from tenantry_testkit.stack import Stack

from .conftest import SERVICES
from .evil_corpus import (
    INTEGER_QUERY_VALUES,
    JSON,
    LONG_URL,
    PATH_VALUES,
    QUERY_VALUES,
    VALID_BODIES,
    Form,
    body_forms,
    scim_skeleton,
    skeleton,
)
from .fuzzing import (
    SHED_RETRIES,
    FuzzTenant,
    Route,
    changed_tables,
    failure_report,
    fuzz_tenant,
    openapi_document,
    raw_request,
    routes_of,
    run_rank,
    scim_routes,
    server_error,
    shed_delay,
    tenant_fingerprint,
)
from .test_scim import ERROR, SCIM_JSON

pytestmark = pytest.mark.kafka
PROBLEM_JSON = "application/problem+json"


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


def refusal_defect(route: Route, response: httpx.Response) -> str | None:
    """Why `response` is not a clean refusal, or None if it is one."""
    status = response.status_code
    content_type = response.headers.get("content-type", "")
    if route.is_scim and route.path.endswith("/Bulk") and status == 200:
        return bulk_defect(response)
    if not 400 <= status < 500:
        return f"answered {status}"
    try:
        body = response.json()
    except ValueError:
        return f"{status} with a body that is not JSON ({content_type}): {response.text[:80]!r}"
    if route.is_scim:
        if not content_type.startswith(SCIM_JSON):
            return f"{status} as {content_type!r}, not {SCIM_JSON}"
        if not isinstance(body, dict) or body.get("schemas") != [ERROR]:
            return f"{status} without the SCIM Error schema: {str(body)[:80]}"
        if body.get("status") != str(status):
            return f"{status} with SCIM status {body.get('status')!r}"
        return None
    if not content_type.startswith(PROBLEM_JSON):
        return f"{status} as {content_type!r}, not {PROBLEM_JSON}"
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        return f"{status} problem without a type: {str(body)[:80]}"
    return None


def bulk_defect(response: httpx.Response) -> str | None:
    """/Bulk answers 200 with a status per operation (RFC 7644 §3.7): a hostile operation
    is refused if its own status is a 4xx with a SCIM Error."""
    operations = response.json().get("Operations") or []
    statuses = [str(op.get("status")) for op in operations]
    refused = [
        s.isdigit() and 400 <= int(s) < 500 and op.get("response", {}).get("schemas") == [ERROR]
        for s, op in zip(statuses, operations, strict=True)
    ]
    if operations and all(refused):
        return None
    return f"answered 200 with operation statuses {statuses}"


def valid_body(route: Route, document: dict[str, Any], tenant: FuzzTenant) -> tuple[Any, str]:
    """A body the route would accept, and its media type."""
    if route.is_scim:
        return scim_skeleton(route.method, route.path, "evil@example.com"), SCIM_JSON
    by_hand = VALID_BODIES.get((route.method, route.path))
    if by_hand is not None:
        return by_hand(tenant.values), JSON
    content = route.operation["requestBody"]["content"]
    media_type = JSON if JSON in content else next(iter(content))
    schema = content[media_type].get("schema", {})
    return skeleton(schema, document, tenant.values), media_type


def integer_query(route: Route, name: str) -> bool:
    if route.is_scim:
        return name in ("startIndex", "count")
    for parameter in route.operation.get("parameters", []):
        if parameter.get("name") == name and parameter.get("in") == "query":
            return bool(parameter.get("schema", {}).get("type") == "integer")
    return False


def requests_for(
    route: Route, document: dict[str, Any], tenant: FuzzTenant
) -> list[tuple[str, str, bytes, str | None]]:
    """(form name, URL path and query, body, content type) for every form that applies to
    `route`: body forms if it takes a body, path forms per path parameter, query forms per
    declared query parameter, and the long URL for all."""
    values = tenant.values
    good_body, media_type = (b"", None)
    forms: list[Form] = []
    if route.takes_body:
        valid, media_type = valid_body(route, document, tenant)
        good_body = json.dumps(valid).encode()
        forms = body_forms(valid, media_type)
    out: list[tuple[str, str, bytes, str | None]] = [
        (f.name, route.url("", values), f.body, f.content_type) for f in forms
    ]
    for param in route.params:
        for name, value in PATH_VALUES:
            out.append(
                (
                    f"{name} ({param})",
                    route.url("", values, **{param: value}),
                    good_body,
                    media_type,
                )
            )
    for param in route.query_params:
        candidates = QUERY_VALUES + (INTEGER_QUERY_VALUES if integer_query(route, param) else ())
        for name, value in candidates:
            out.append(
                (
                    f"{name} ({param})",
                    f"{route.url('', values)}?{param}={value}",
                    good_body,
                    media_type,
                )
            )
    long_query = "pad=" + "a" * LONG_URL
    out.append(("a 100 KB URL", f"{route.url('', values)}?{long_query}", good_body, media_type))
    return out


async def settled(pools: dict[str, asyncpg.Pool], tenant_id: str) -> dict[str, str]:
    """The tenant's fingerprint once two reads a second apart agree (the setup's events
    and the test message's delivery have landed)."""
    previous: dict[str, str] = {}

    async def same_twice() -> dict[str, str] | None:
        nonlocal previous
        now = await tenant_fingerprint(pools, tenant_id)
        stable = now == previous
        previous = now
        return now if stable else None

    return await eventually(
        same_twice, timeout=30, interval=1.0, max_interval=1.0, message="the tenant's rows settled"
    )


async def send_corpus(
    stack: Stack, service: str, routes: list[Route], document: dict[str, Any], tenant: FuzzTenant
) -> tuple[list[str], int]:
    failures: list[str] = []
    sent = 0
    base = stack.service_url(service)
    for route in routes:
        auth = tenant.scim if route.is_scim else tenant.operator
        for form, target, body, content_type in requests_for(route, document, tenant):
            headers = dict(auth)
            if content_type is not None:
                headers["Content-Type"] = content_type
            response = await raw_request(base, route.method, target, headers, body)
            for _ in range(SHED_RETRIES):
                delay = shed_delay(response.status_code, response.headers.get("retry-after"))
                if delay is None:
                    break
                await asyncio.sleep(delay)
                response = await raw_request(base, route.method, target, headers, body)
            sent += 1
            defect = refusal_defect(route, response)
            if defect is not None:
                trace = ""
                if response.status_code >= 500:
                    trace = f": {server_error(service, response)}"
                failures.append(f"{service} {route} [{form}]: {defect}{trace}")
    return failures, sent


@pytest.mark.parametrize("service", SERVICES)
async def test_hostile_input_gets_a_clean_4xx_and_changes_nothing(
    stack: Stack,
    operator_headers: dict[str, str],
    service_dbs: dict[str, asyncpg.Pool],
    receiver: Receiver,
    service: str,
) -> None:
    tenant = await fuzz_tenant(
        stack, operator_headers, hook_url=f"{receiver.url}/hook", with_admin=False
    )
    document = await openapi_document(stack, service)
    routes = routes_of(document) + (scim_routes() if service == "provisioning" else [])
    routes.sort(key=lambda r: (run_rank(r.method, r.path), str(r)))
    before = await settled(service_dbs, tenant.tenant_id)
    failures, sent = await send_corpus(stack, service, routes, document, tenant)
    await asyncio.sleep(1.0)  # anything a request set off (events, projections) lands
    after = await tenant_fingerprint(service_dbs, tenant.tenant_id)
    changed = changed_tables(before, after)
    assert sent > 10 * len(routes)
    defects = failures + [f"row changed: {c}" for c in changed]
    assert not defects, failure_report(
        f"{service}: {sent} hostile requests to {len(routes)} routes", defects
    )
