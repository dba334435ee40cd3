"""Hostile input is refused once, in the shared pipeline, by every service: bodies that are
not UTF-8, nested thousands deep, with NULs, lone surrogates, duplicate keys or numbers past
64 bits, and URLs with NULs, bad encodings, huge integers or 100 KB of query. Each answer is
a 400 (or 414) in the mount's own format (problem+json on /v1, a SCIM Error on /scim/v2),
and nothing is written."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from uuid_utils.compat import uuid4

from tenantry_testkit.stack import Stack

from .test_http_edge import assert_problem, written_for
from .test_scim import ERROR, SCIM_JSON, scim_client, scim_tenant

TENANT = str(uuid4())  # tenant-scoped routes: the guard refuses before any tenant is read

# One JSON-taking route of each service (operators pass every authorization check).
ROUTES = [
    ("tenancy", "POST", "/v1/tenants"),
    ("identity", "POST", f"/v1/tenants/{TENANT}/accounts"),
    ("webhooks", "POST", f"/v1/tenants/{TENANT}/webhooks/endpoints"),
    ("ratelimit", "PUT", f"/v1/tenants/{TENANT}/rate-policies"),
    ("provisioning", "GET", "/v1/whoami"),
]

# (body, the problem type); each names a slug so a write would be visible in tenancy.
BODIES = [
    (b'{"name": "\xff\xfe", "slug": "hostile-utf8"}', "invalid-encoding"),
    (b"[" * 5000 + b"]" * 5000, "json-too-deep"),
    (b'{"name": "a\\u0000b", "slug": "hostile-nul"}', "nul-character"),
    (b'{"name\\u0000": "a", "slug": "hostile-nul-key"}', "nul-character"),
    (b'{"name": "\\ud800", "slug": "hostile-surrogate"}', "invalid-encoding"),
    (b'{"name": "n", "slug": "hostile-int", "plan": 99999999999999999999}', "number-out-of-range"),
    (b'{"name": "n", "slug": "hostile-float", "plan": 1e999}', "number-out-of-range"),
    (b'{"name": "a", "name": "b", "slug": "hostile-dup"}', "duplicate-json-key"),
]
SLUGS = [
    "hostile-utf8",
    "hostile-nul",
    "hostile-nul-key",
    "hostile-surrogate",
    "hostile-int",
    "hostile-float",
    "hostile-dup",
]


async def raw_request(
    base_url: str, method: str, target: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 exchange over a plain socket: httpx refuses URLs past 64 KiB itself."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = [f"{method} {target} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()] + [f"Content-Length: {len(body)}"]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    status_line, _, rest = response.partition(b"\r\n")
    header_block, _, content = rest.partition(b"\r\n\r\n")
    parsed = dict(
        (k.strip().lower(), v.strip())
        for k, _, v in (line.decode().partition(":") for line in header_block.split(b"\r\n"))
    )
    return int(status_line.split()[1]), parsed, content


@pytest.mark.parametrize(("service", "method", "path"), ROUTES[:4])
@pytest.mark.parametrize(("body", "slug"), BODIES)
async def test_hostile_bodies_are_a_400_in_every_service(
    stack: Stack,
    operator_headers: dict[str, str],
    service_dbs: dict[str, asyncpg.Pool],
    service: str,
    method: str,
    path: str,
    body: bytes,
    slug: str,
) -> None:
    async with httpx.AsyncClient(base_url=stack.service_url(service), timeout=10) as client:
        response = await client.request(
            method,
            path,
            content=body,
            headers={**operator_headers, "content-type": "application/json"},
        )
    assert_problem(response, 400, slug)
    for tenant_slug in SLUGS:
        assert await written_for(service_dbs["tenancy"], tenant_slug) == (0, 0)


@pytest.mark.parametrize(("service", "method", "path"), ROUTES)
@pytest.mark.parametrize(
    ("query", "status", "slug"),
    [
        ("limit=99999999999999999999", 400, "number-out-of-range"),
        ("cursor=a%00b", 400, "nul-character"),
        ("cursor=%ff%fe", 400, "invalid-encoding"),
    ],
)
async def test_hostile_urls_are_refused_in_every_service(
    stack: Stack,
    operator_headers: dict[str, str],
    service: str,
    method: str,
    path: str,
    query: str,
    status: int,
    slug: str,
) -> None:
    async with httpx.AsyncClient(base_url=stack.service_url(service), timeout=10) as client:
        response = await client.request(
            method,
            f"{path}?{query}",
            content=b"{}" if method != "GET" else None,
            headers={**operator_headers, "content-type": "application/json"},
        )
    assert_problem(response, status, slug)


@pytest.mark.parametrize(("service", "method", "path"), ROUTES)
async def test_a_100_kb_url_is_a_414_problem_in_every_service(
    stack: Stack, operator_headers: dict[str, str], service: str, method: str, path: str
) -> None:
    status, headers, content = await raw_request(
        stack.service_url(service),
        method,
        f"{path}?cursor={'a' * 100_000}",
        {**operator_headers, "Content-Type": "application/json"},
        b"{}" if method != "GET" else b"",
    )
    assert status == 414, content
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(content)["type"] == "https://tenantry.dev/problems/uri-too-long"


async def test_a_nul_in_a_path_value_is_a_400(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        response = await client.put(
            "/v1/plans/free%00x", json={"limits": {}}, headers=operator_headers
        )
    assert_problem(response, 400, "nul-character")


async def test_the_scim_mount_answers_hostile_input_with_scim_errors(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    marker = f"hostile-{uuid4().hex[:8]}@example.com"
    cases = [
        (b'{"userName": "\xff"}', "invalidSyntax"),
        (b"[" * 5000 + b"]" * 5000, "invalidSyntax"),
        (f'{{"userName": "{marker}", "displayName": "a\\u0000"}}'.encode(), "invalidValue"),
        (f'{{"userName": "{marker}", "x": 99999999999999999999}}'.encode(), "invalidValue"),
        (f'{{"userName": "{marker}", "userName": "{marker}"}}'.encode(), "invalidSyntax"),
    ]
    async with scim_client(stack, key) as scim:
        for body, scim_type in cases:
            response = await scim.post("/Users", content=body)
            assert response.status_code == 400, response.text
            assert response.headers["content-type"].startswith(SCIM_JSON)
            error = response.json()
            assert error["schemas"] == [ERROR]
            assert error["status"] == "400"
            assert error["scimType"] == scim_type, error
    status, headers, content = await raw_request(
        stack.service_url("provisioning"),
        "GET",
        f"/scim/v2/Users?filter=userName%20eq%20%22{'a' * 100_000}%22",
        {"Authorization": f"Bearer {key}", "Accept": SCIM_JSON},
    )
    assert status == 414, content
    assert headers["content-type"].startswith(SCIM_JSON)
    assert json.loads(content)["schemas"] == [ERROR]
    assert (
        await service_dbs["provisioning"].fetchval(
            "SELECT count(*) FROM scim_users WHERE tenant_id = $1::uuid", tenant_id
        )
        == 0
    )
    assert (
        await service_dbs["identity"].fetchval(
            "SELECT count(*) FROM accounts WHERE tenant_id = $1::uuid AND email = $2",
            tenant_id,
            marker,
        )
        == 0
    )


async def test_attempts_of_an_unknown_endpoint_or_message_are_404_not_an_empty_page(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    base = f"/v1/tenants/{TENANT}/webhooks"
    async with httpx.AsyncClient(base_url=stack.service_url("webhooks"), timeout=10) as client:
        for path in (f"{base}/endpoints/ep_nope/attempts", f"{base}/messages/msg_nope/attempts"):
            assert_problem(await client.get(path, headers=operator_headers), 404, "not-found")
