"""Admission control under real overload (bounded: one extra identity instance sized
small, a few hundred requests on loopback): critical requests keep succeeding while
sheddable ones are refused fast with 503 problem+json and Retry-After."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tenantry_testkit.stack import Stack

from .test_identity import new_tenant

pytestmark = pytest.mark.kafka
OVERLOAD_PORT = 8191
SMALL_INSTANCE = {
    "TENANTRY_ADMISSION_MODE": "fixed",
    "TENANTRY_ADMISSION_FIXED_LIMIT": "2",
    "TENANTRY_ADMISSION_MAX_QUEUE": "16",
    "TENANTRY_ADMISSION_DEFAULT_MAX_WAIT_SECONDS": "0.5",
    "TENANTRY_ADMISSION_SHEDDABLE_MAX_WAIT_SECONDS": "0.1",
    "TENANTRY_ADMISSION_LARGE_LIST_THRESHOLD": "100",
}


async def test_critical_requests_succeed_while_sheddable_ones_are_shed(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    credentials = {
        "email": stack.env["TENANTRY_OPERATOR_EMAIL"],
        "password": stack.env["TENANTRY_OPERATOR_PASSWORD"],
    }
    with stack.extra_api("identity", OVERLOAD_PORT, SMALL_INSTANCE) as base:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
            accounts = f"/v1/tenants/{tenant_id}/accounts"

            async def sheddable() -> tuple[str, httpx.Response]:
                # a large list: sheddable by its size
                r = await client.get(f"{accounts}?limit=200", headers=operator_headers)
                return "sheddable", r

            async def default() -> tuple[str, httpx.Response]:
                return "default", await client.get(accounts, headers=operator_headers)

            async def critical() -> tuple[str, httpx.Response]:
                return "critical", await client.post("/v1/sessions", json=credentials)

            results: list[tuple[str, httpx.Response]] = []
            flooding = True

            async def flood(kind: Callable[[], Awaitable[tuple[str, httpx.Response]]]) -> None:
                while flooding:
                    results.append(await kind())

            # 40 clients loop on lists (far more than 2 slots and 16 queue places can hold)
            # while two clients sign in, one after another: critical traffic is a minority
            # stream inside the flood, as in production.
            flooders = [
                asyncio.create_task(flood(sheddable if i % 2 else default)) for i in range(40)
            ]
            try:
                for _ in range(10):
                    results.extend(await asyncio.gather(critical(), critical()))
            finally:
                flooding = False
                await asyncio.gather(*flooders)

    outcomes = Counter((kind, r.status_code) for kind, r in results)
    critical_total = sum(1 for kind, _ in results if kind == "critical")
    assert critical_total == 20
    assert outcomes[("critical", 201)] == critical_total, outcomes
    shed = [r for kind, r in results if kind == "sheddable" and r.status_code == 503]
    assert shed, f"the instance was not overloaded: {outcomes}"
    for refused in shed:
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["type"] in (
            "https://tenantry.dev/problems/overloaded",
            "https://tenantry.dev/problems/deadline-exceeded",
        )
    # Every request got an answer, served or shed: nothing hung, nothing failed.
    assert {status for _, status in outcomes} <= {200, 201, 503}, outcomes

    # Sheddable requests go first: a larger share of them is refused than of default.
    def refused_share(kind: str) -> float:
        total = sum(n for (k, _), n in outcomes.items() if k == kind)
        return outcomes[(kind, 503)] / total

    assert refused_share("sheddable") > refused_share("default"), outcomes
