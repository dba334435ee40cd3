"""Bad input at the HTTP edge gets problem+json and changes nothing; Idempotency-Key and
cursor paging behave as documented. Runs against the real tenancy service."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
from uuid_utils.compat import uuid4

PROBLEM = "application/problem+json"


async def written_for(pool: asyncpg.Pool, slug: str) -> tuple[int, int]:
    """Tenant rows and events that carry `slug` (scoped, so other traffic cannot interfere)."""
    row = await pool.fetchrow(
        """SELECT (SELECT count(*) FROM tenants WHERE slug = $1) AS tenants,
                  (SELECT count(*) FROM events
                    WHERE envelope -> 'payload' -> 'tenant' ->> 'slug' = $1) AS events""",
        slug,
    )
    assert row is not None
    return row["tenants"], row["events"]


def assert_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["type"] == f"https://tenantry.dev/problems/{slug}"
    assert body["title"]


@pytest.mark.parametrize(
    ("content", "headers", "status", "slug"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "malformed-request"),
        (
            b'{"name": 5, "slug": "ok"}',
            {"content-type": "application/json"},
            400,
            "validation-error",
        ),
        (
            b'{"slug": "missing-name"}',
            {"content-type": "application/json"},
            400,
            "validation-error",
        ),
        (
            b'{"name": "x", "slug": "ok", "extra": 1}',
            {"content-type": "application/json"},
            400,
            "validation-error",
        ),
        (
            b'{"name": "x", "slug": "Not A Slug"}',
            {"content-type": "application/json"},
            400,
            "invalid-tenant",
        ),
        (
            b'{"name": "   ", "slug": "blank-name"}',
            {"content-type": "application/json"},
            400,
            "invalid-tenant",
        ),
        (b"[1, 2, 3]", {"content-type": "application/json"}, 400, "validation-error"),
        (
            b'{"name": "' + b"x" * 2_000_000 + b'", "slug": "big"}',
            {"content-type": "application/json"},
            413,
            "payload-too-large",
        ),
    ],
)
async def test_bad_input_is_a_problem_and_writes_nothing(
    tenancy: httpx.AsyncClient,
    service_dbs: dict[str, asyncpg.Pool],
    content: bytes,
    headers: dict[str, str],
    status: int,
    slug: str,
) -> None:
    response = await tenancy.post("/v1/tenants", content=content, headers=headers)
    assert_problem(response, status, slug)
    assert "x-request-id" in response.headers
    for tenant_slug in ("ok", "missing-name", "blank-name", "big", "Not A Slug"):
        assert await written_for(service_dbs["tenancy"], tenant_slug) == (0, 0)


async def test_unknown_route_and_wrong_method_are_problems(tenancy: httpx.AsyncClient) -> None:
    assert_problem(await tenancy.get("/v1/nothing-here"), 404, "not-found")
    assert_problem(await tenancy.get(f"/v1/tenants/{uuid4()}"), 404, "not-found")
    assert_problem(await tenancy.get("/v1/tenants/not-a-uuid"), 404, "not-found")
    assert_problem(await tenancy.delete("/v1/tenants"), 405, "method-not-allowed")


async def test_idempotency_key_replays_the_first_response(
    tenancy: httpx.AsyncClient, service_dbs: dict[str, asyncpg.Pool]
) -> None:
    key = str(uuid4())
    body = {"name": "Once", "slug": f"once-{uuid4().hex[:10]}"}
    first = await tenancy.post("/v1/tenants", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201
    assert await written_for(service_dbs["tenancy"], body["slug"]) == (1, 1)
    again = await tenancy.post("/v1/tenants", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await written_for(service_dbs["tenancy"], body["slug"]) == (1, 1)

    other = await tenancy.post(
        "/v1/tenants", json={**body, "name": "Twice"}, headers={"Idempotency-Key": key}
    )
    assert_problem(other, 422, "idempotency-key-reused")
    assert await written_for(service_dbs["tenancy"], body["slug"]) == (1, 1)


async def test_tenant_list_pages_with_an_opaque_cursor(tenancy: httpx.AsyncClient) -> None:
    for i in range(3):
        r = await tenancy.post(
            "/v1/tenants", json={"name": f"p{i}", "slug": f"p-{uuid4().hex[:10]}"}
        )
        assert r.status_code == 201
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await tenancy.get("/v1/tenants", params=params)).json()
        assert len(page["data"]) <= 2
        seen += [t["tenant_id"] for t in page["data"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    assert len(seen) == len(set(seen))
    everything = (await tenancy.get("/v1/tenants", params={"limit": "200"})).json()
    assert len(seen) >= len(everything["data"])
    assert_problem(
        await tenancy.get("/v1/tenants", params={"cursor": "%%%"}), 400, "invalid-cursor"
    )
    assert_problem(await tenancy.get("/v1/tenants", params={"limit": "0"}), 400, "invalid-limit")
