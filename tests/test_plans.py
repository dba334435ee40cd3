"""Plans as data and limits enforced where things are created (identity: seats and API
keys), correct under concurrency, with overrides by an operator."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import httpx
import pytest
from uuid_utils.compat import uuid4

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import Stack

from .test_identity import bearer, create_key, new_tenant

pytestmark = pytest.mark.kafka


async def limits_version_at_identity(stack: Stack, tenant_id: str) -> int:
    conn = await asyncpg.connect(stack.owner_dsn(stack.service_database("identity")))
    try:
        return int(
            await conn.fetchval(
                "SELECT limits_version FROM tenant_limits WHERE tenant_id = $1::uuid", tenant_id
            )
        )
    finally:
        await conn.close()


async def override(
    stack: Stack, headers: dict[str, str], tenant_id: str, values: dict[str, Any]
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        r = await client.post(
            f"/v1/tenants/{tenant_id}/limit-overrides", json=values, headers=headers
        )
        assert r.status_code == 200, r.text
        view: dict[str, Any] = r.json()
    await eventually(
        lambda: _at_least(limits_version_at_identity(stack, tenant_id), view["limits_version"]),
        timeout=30,
        message="identity applied the new limits",
    )
    return view


async def _at_least(probe: Any, version: int) -> bool:
    return bool(await probe >= version)


async def test_the_plan_catalog_and_a_tenants_limits_are_readable(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    key = (await create_key(stack, operator_headers, tenant_id, ["tenant:read"]))["key"]
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        plans = (await client.get("/v1/plans", headers=bearer(key))).json()
        assert [p["plan_id"] for p in plans] == ["free", "team", "business", "enterprise"]
        assert plans[0]["limits"]["seats"] == 3
        assert plans[-1]["limits"]["seats"] is None
        mine = (await client.get(f"/v1/tenants/{tenant_id}/limits", headers=bearer(key))).json()
        assert mine["plan"] == "free"
        assert mine["limits"]["sso"] is False
        unknown = await client.post(
            "/v1/tenants",
            headers=operator_headers,
            json={"name": "x", "slug": f"u-{uuid4().hex[:8]}", "plan": "platinum"},
        )
        assert unknown.status_code == 400
        assert unknown.json()["type"].endswith("/unknown-plan")


async def test_one_seat_left_and_concurrent_invites_exactly_one_wins(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    await override(stack, operator_headers, tenant_id, {"seats": 2})
    async with httpx.AsyncClient(base_url=stack.service_url("identity"), timeout=20) as client:
        url = f"/v1/tenants/{tenant_id}/accounts"
        first = await client.post(
            url, headers=operator_headers, json={"email": f"a-{uuid4().hex[:6]}@example.com"}
        )
        assert first.status_code == 201
        responses = await asyncio.gather(
            *(
                client.post(
                    url,
                    headers=operator_headers,
                    json={"email": f"c{i}-{uuid4().hex[:6]}@example.com"},
                )
                for i in range(6)
            )
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201] + [403] * 5, statuses
        refused = next(r for r in responses if r.status_code == 403).json()
        assert refused["type"].endswith("/plan-limit-exceeded")
        assert (refused["limit"], refused["usage"], refused["allowed"]) == ("seats", 2, 2)
        assert refused["plan"] == "free"
        assert refused["upgrade_to"] == "team"
        listed = (await client.get(url, headers=operator_headers)).json()
        assert len(listed) == 2


async def test_api_key_limit_at_the_boundary_and_after_an_override(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)  # free: 2 API keys
    for _ in range(2):
        await create_key(stack, operator_headers, tenant_id, ["tenant:read"])
    async with httpx.AsyncClient(base_url=stack.service_url("identity"), timeout=10) as client:
        url = f"/v1/tenants/{tenant_id}/api-keys"
        third = await client.post(
            url, headers=operator_headers, json={"name": "3", "scopes": ["tenant:read"]}
        )
        assert third.status_code == 403
        body = third.json()
        assert (body["limit"], body["usage"], body["allowed"], body["upgrade_to"]) == (
            "api_keys",
            2,
            2,
            "team",
        )
    await override(stack, operator_headers, tenant_id, {"api_keys": 3})
    await create_key(stack, operator_headers, tenant_id, ["tenant:read"])
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        bad = await client.post(
            f"/v1/tenants/{tenant_id}/limit-overrides",
            headers=operator_headers,
            json={"api_keys": "lots"},
        )
        assert bad.status_code == 400
        assert bad.json()["type"].endswith("/invalid-override")
        unknown = await client.post(
            f"/v1/tenants/{tenant_id}/limit-overrides",
            headers=operator_headers,
            json={"moon_rockets": 1},
        )
        assert unknown.status_code == 400


async def tenancy_usage(stack: Stack, tenant_id: str) -> dict[str, Any]:
    conn = await asyncpg.connect(stack.owner_dsn(stack.service_database("tenancy")))
    try:
        row = await conn.fetchrow(
            "SELECT * FROM tenant_usage WHERE tenant_id = $1::uuid", tenant_id
        )
        return dict(row) if row else {}
    finally:
        await conn.close()


async def test_upgrade_applies_at_once_and_a_downgrade_usage_would_break_is_refused(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)  # free: 3 seats
    tenancy, identity = stack.service_url("tenancy"), stack.service_url("identity")
    async with httpx.AsyncClient(timeout=10) as client:
        accounts = f"{identity}/v1/tenants/{tenant_id}/accounts"
        made = []
        for i in range(3):
            r = await client.post(
                accounts,
                headers=operator_headers,
                json={"email": f"p{i}-{uuid4().hex[:6]}@example.com"},
            )
            assert r.status_code == 201
            made.append(r.json()["account_id"])
        full = await client.post(
            accounts, headers=operator_headers, json={"email": f"x-{uuid4().hex[:6]}@example.com"}
        )
        assert full.status_code == 403
        await eventually(
            lambda: _seats(stack, tenant_id, 3),
            timeout=30,
            message="tenancy counted 3 seats from account.created",
        )

        options = (
            await client.get(f"{tenancy}/v1/tenants/{tenant_id}/plan", headers=operator_headers)
        ).json()
        assert options["usage"]["seats"] == 3
        by_plan = {o["plan_id"]: o for o in options["options"]}
        assert by_plan["team"]["direction"] == "upgrade"
        assert by_plan["team"]["allowed"] is True

        plan_url = f"{tenancy}/v1/tenants/{tenant_id}/plan"
        up = await client.post(plan_url, headers=operator_headers, json={"plan": "team"})
        assert up.status_code == 200, up.text
        assert up.json()["plan"] == "team"
        same = await client.post(plan_url, headers=operator_headers, json={"plan": "team"})
        assert same.status_code == 409

        async def fourth_fits() -> bool:
            r = await client.post(
                accounts,
                headers=operator_headers,
                json={"email": f"y-{uuid4().hex[:6]}@example.com"},
            )
            return r.status_code == 201

        await eventually(
            fourth_fits,
            timeout=30,
            interval=0.2,
            message="identity follows the upgrade (team: 25 seats)",
        )
        await eventually(lambda: _seats(stack, tenant_id, 4), timeout=30, message="4 seats")

        down = await client.post(plan_url, headers=operator_headers, json={"plan": "free"})
        assert down.status_code == 409
        body = down.json()
        assert body["type"].endswith("/downgrade-blocked")
        assert body["blockers"] == [{"limit": "seats", "usage": 4, "allowed": 3}]

        disabled = await client.post(
            f"{accounts}/{made[0]}/disable", headers=operator_headers, json={}
        )
        assert disabled.status_code == 200
        await eventually(lambda: _seats(stack, tenant_id, 3), timeout=30, message="3 seats")
        down = await client.post(plan_url, headers=operator_headers, json={"plan": "free"})
        assert down.status_code == 200
        assert down.json()["plan"] == "free"
        history = (
            await client.get(f"{tenancy}/v1/tenants/{tenant_id}/history", headers=operator_headers)
        ).json()
        assert [h["type"] for h in history].count("tenant.plan_changed") == 2


async def _seats(stack: Stack, tenant_id: str, expected: int) -> bool:
    return (await tenancy_usage(stack, tenant_id)).get("seats") == expected


async def test_an_operator_changes_a_plan_and_its_tenants_follow(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=30) as client:
        made = await client.post(
            "/v1/tenants",
            headers=operator_headers,
            json={"name": "T", "slug": f"pl-{uuid4().hex[:8]}", "plan": "business"},
        )
        tenant_id = made.json()["tenant_id"]
        plans = {
            p["plan_id"]: p
            for p in (await client.get("/v1/plans", headers=operator_headers)).json()
        }
        original = plans["business"]["limits"]
        try:
            bad = await client.put(
                "/v1/plans/business", headers=operator_headers, json={**original, "seats": -5}
            )
            assert bad.status_code == 400
            changed = await client.put(
                "/v1/plans/business",
                headers=operator_headers,
                json={**original, "api_keys": original["api_keys"] + 1},
            )
            assert changed.status_code == 200, changed.text
            assert changed.json()["tenants_updated"] >= 1

            async def identity_follows() -> bool:
                conn = await asyncpg.connect(stack.owner_dsn(stack.service_database("identity")))
                try:
                    limits = await conn.fetchval(
                        "SELECT limits FROM tenant_limits WHERE tenant_id = $1::uuid", tenant_id
                    )
                finally:
                    await conn.close()
                wanted = original["api_keys"] + 1
                return bool(limits) and json.loads(limits)["api_keys"] == wanted

            await eventually(identity_follows, timeout=30, message="identity has the new plan")
        finally:
            restored = await client.put(
                "/v1/plans/business", headers=operator_headers, json=original
            )
            assert restored.status_code == 200
