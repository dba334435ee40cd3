"""Rate limits across the running suite: policies published by ratelimit reach every
service, one tenant's budget is shared by all five (one Redis key per tenant and policy),
429 problem+json with Retry-After and the IETF RateLimit fields, plan changes and key
policies followed, the in-flight cap, the decision API, and Redis killed mid-traffic."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from uuid_utils.compat import uuid4

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import Stack

from .conftest import SERVICES
from .test_identity import bearer, create_key, new_tenant

pytestmark = pytest.mark.kafka
KEY_SCOPES = ["tenant:read", "apikeys:read", "apikeys:write", "accounts:read"]


async def policy_versions(service_dbs: dict[str, asyncpg.Pool], tenant_id: str) -> list[int]:
    return [
        await pool.fetchval(
            "SELECT coalesce(max(version), 0) FROM rate_policies WHERE tenant_id = $1::uuid",
            tenant_id,
        )
        for pool in service_dbs.values()
    ]


async def published_everywhere(
    service_dbs: dict[str, asyncpg.Pool], tenant_id: str, version: int
) -> None:
    async def reached() -> bool:
        return min(await policy_versions(service_dbs, tenant_id)) >= version

    await eventually(reached, timeout=30, message=f"rate policies v{version} in all five")
    # Each service reads the projection at most once per policy TTL (1 s): let it expire.
    await asyncio.sleep(1.1)


async def set_tenant_policies(
    client: httpx.AsyncClient,
    stack: Stack,
    operator_headers: dict[str, str],
    tenant_id: str,
    body: dict[str, Any],
) -> dict[str, Any]:
    r = await client.put(
        f"{stack.service_url('ratelimit')}/v1/tenants/{tenant_id}/rate-policies",
        headers=operator_headers,
        json=body,
    )
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    return view


def requests_a_minute(burst: int) -> dict[str, Any]:
    """One request a minute after a burst: easy to exhaust, slow to refill."""
    return {"policies": [{"name": "requests", "limit": 1, "period_seconds": 60, "burst": burst}]}


async def limited_tenant(
    stack: Stack,
    operator_headers: dict[str, str],
    service_dbs: dict[str, asyncpg.Pool],
    policies: dict[str, Any],
) -> tuple[str, str]:
    """A new tenant with an API key and `policies` as its override, in force everywhere."""
    tenant_id = await new_tenant(stack, operator_headers)
    key = (await create_key(stack, operator_headers, tenant_id, KEY_SCOPES))["key"]
    async with httpx.AsyncClient(timeout=10) as client:
        view = await set_tenant_policies(client, stack, operator_headers, tenant_id, policies)
    await published_everywhere(service_dbs, tenant_id, view["version"])
    return tenant_id, key


async def test_a_tenant_gets_its_plans_policies_in_every_service_with_ratelimit_headers(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)  # free: 20/s, 40 at once
    key = (await create_key(stack, operator_headers, tenant_id, KEY_SCOPES))["key"]
    await published_everywhere(service_dbs, tenant_id, 1)
    async with httpx.AsyncClient(timeout=10) as client:
        view = (
            await client.get(
                f"{stack.service_url('ratelimit')}/v1/tenants/{tenant_id}/rate-policies",
                headers=bearer(key),
            )
        ).json()
        assert view["plan"] == "free"
        by_name = {p["name"]: p for p in view["policies"]}
        assert by_name["requests"]["limit"] == 20
        assert by_name["requests"]["burst"] == 40
        assert "hourly" in by_name
        assert view["max_in_flight"] == 10
        for service in SERVICES:
            r = await client.get(f"{stack.service_url(service)}/v1/whoami", headers=bearer(key))
            assert r.status_code == 200
            assert '"requests";q=40;w=2' in r.headers["RateLimit-Policy"], service
            assert '"hourly";q=2000;w=360' in r.headers["RateLimit-Policy"], service
            assert re.match(
                r'^"requests";r=\d+;t=\d+, "hourly";r=\d+;t=\d+$', r.headers["RateLimit"]
            )
        # operators are not rate limited (platform staff), so they get no RateLimit fields
        r = await client.get(f"{stack.service_url('identity')}/v1/whoami", headers=operator_headers)
        assert "RateLimit" not in r.headers


async def test_one_budget_across_all_five_services_and_a_429_that_says_when(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    _, key = await limited_tenant(stack, operator_headers, service_dbs, requests_a_minute(5))
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = []
        for service in SERVICES:  # one request to each: five in all, the burst
            r = await client.get(f"{stack.service_url(service)}/v1/whoami", headers=bearer(key))
            statuses.append(r.status_code)
        assert statuses == [200] * 5
        for service in SERVICES:
            refused = await client.get(
                f"{stack.service_url(service)}/v1/whoami", headers=bearer(key)
            )
            assert refused.status_code == 429, service
            assert refused.headers["content-type"].startswith("application/problem+json")
            body = refused.json()
            assert body["type"] == "https://tenantry.dev/problems/rate-limited"
            assert body["policy"] == "requests"
            assert 50 <= int(refused.headers["Retry-After"]) <= 60  # one request a minute
            assert body["retry_after"] == int(refused.headers["Retry-After"])
            assert '"requests";r=0;' in refused.headers["RateLimit"]


async def test_a_plan_change_moves_the_tenants_rate_everywhere(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    key = (await create_key(stack, operator_headers, tenant_id, KEY_SCOPES))["key"]
    await published_everywhere(service_dbs, tenant_id, 1)
    before = max(await policy_versions(service_dbs, tenant_id))
    async with httpx.AsyncClient(timeout=10) as client:
        up = await client.post(
            f"{stack.service_url('tenancy')}/v1/tenants/{tenant_id}/plan",
            headers=operator_headers,
            json={"plan": "team"},
        )
        assert up.status_code == 200, up.text
        await published_everywhere(service_dbs, tenant_id, before + 1)
        for service in SERVICES:
            r = await client.get(f"{stack.service_url(service)}/v1/whoami", headers=bearer(key))
            assert '"requests";q=100;w=2' in r.headers["RateLimit-Policy"], service
            assert '"hourly";q=10000;' in r.headers["RateLimit-Policy"], service


async def test_an_admin_narrows_one_key_and_the_tenants_other_keys_are_untouched(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    narrowed = await create_key(stack, operator_headers, tenant_id, KEY_SCOPES)
    other = await create_key(stack, operator_headers, tenant_id, KEY_SCOPES)
    ratelimit = stack.service_url("ratelimit")
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.put(
            f"{ratelimit}/v1/tenants/{tenant_id}/api-keys/{narrowed['api_key']['key_id']}/rate-policies",
            headers=bearer(other["key"]),  # a key with apikeys:write may narrow another key
            json={"policies": [{"name": "script", "limit": 1, "period_seconds": 60, "burst": 2}]},
        )
        assert r.status_code == 200, r.text
        await published_everywhere(service_dbs, tenant_id, r.json()["version"])
        identity = stack.service_url("identity")
        results = [
            (await client.get(f"{identity}/v1/whoami", headers=bearer(narrowed["key"]))).status_code
            for _ in range(3)
        ]
        assert results == [200, 200, 429]
        r = await client.get(f"{identity}/v1/whoami", headers=bearer(other["key"]))
        assert r.status_code == 200
        assert "script" not in r.headers["RateLimit-Policy"]
        unknown = await client.put(
            f"{ratelimit}/v1/tenants/{tenant_id}/api-keys/key_nope/rate-policies",
            headers=operator_headers,
            json={"policies": []},
        )
        assert unknown.status_code == 404


async def test_bad_policies_are_refused_and_change_nothing(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    await published_everywhere(service_dbs, tenant_id, 1)
    url = f"{stack.service_url('ratelimit')}/v1/tenants/{tenant_id}/rate-policies"
    async with httpx.AsyncClient(timeout=10) as client:
        before = (await client.get(url, headers=operator_headers)).json()
        for bad in (
            {"policies": [{"name": "x", "limit": 0, "period_seconds": 1, "burst": 1}]},
            {"policies": [{"name": "Bad Name", "limit": 1, "period_seconds": 1, "burst": 1}]},
            {"policies": [{"name": "x", "limit": 1, "period_seconds": 0, "burst": 1}]},
            {"policies": [{"name": "x", "limit": 1, "period_seconds": 1, "burst": 1}] * 2},
            {"policies": [], "max_in_flight": 0},
            {"policies": "nope"},
        ):
            r = await client.put(url, headers=operator_headers, json=bad)
            assert r.status_code in (400, 422), (bad, r.status_code)
            assert r.headers["content-type"].startswith("application/problem+json")
        assert (await client.get(url, headers=operator_headers)).json() == before
        tenant_admin_key = (await create_key(stack, operator_headers, tenant_id, KEY_SCOPES))["key"]
        r = await client.put(url, headers=bearer(tenant_admin_key), json={"policies": []})
        assert r.status_code == 403, "only operators override a tenant's policies"


async def test_the_in_flight_cap_refuses_the_request_over_it_and_frees_on_completion(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id, key = await limited_tenant(
        stack, operator_headers, service_dbs, {"policies": [], "max_in_flight": 1}
    )
    identity = stack.service_url("identity")
    async with httpx.AsyncClient(timeout=20) as client:
        release = asyncio.Event()

        async def slow_body() -> AsyncIterator[bytes]:
            # The pipeline (and its slot) runs before the route reads the body: a body
            # that is slow to arrive holds the tenant's only slot.
            yield b'{"name": "slow", '
            await release.wait()
            yield b'"scopes": ["tenant:read"]}'

        held = asyncio.create_task(
            client.post(
                f"{identity}/v1/tenants/{tenant_id}/api-keys",
                headers={**bearer(key), "Content-Type": "application/json"},
                content=slow_body(),
            )
        )

        redis = Redis.from_url(stack.redis_url)
        try:
            # Wait until the slow request holds the slot (a probe sent earlier could take
            # it first and get the slow one refused instead).
            slots = f"rl:{{{tenant_id}}}:inflight"
            await eventually(lambda: redis.zcard(slots), timeout=10, message="the slot taken")
        finally:
            await redis.aclose()
        over = await client.get(f"{identity}/v1/whoami", headers=bearer(key))
        assert over.status_code == 429
        assert over.json()["policy"] == "in-flight"
        assert over.headers["Retry-After"] == "1"
        release.set()
        assert (await held).status_code in (201, 403)  # created, or the plan's key limit
        r = await client.get(f"{identity}/v1/whoami", headers=bearer(key))
        assert r.status_code == 200, "the slot came back when the first request ended"


async def test_the_decision_api_shares_the_tenants_budget_with_the_services(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id, key = await limited_tenant(
        stack, operator_headers, service_dbs, requests_a_minute(3)
    )
    ratelimit = stack.service_url("ratelimit")
    async with httpx.AsyncClient(timeout=10) as client:
        decide = f"{ratelimit}/v1/decisions"
        first = await client.post(decide, headers=operator_headers, json={"tenant_id": tenant_id})
        assert first.status_code == 200
        assert first.json()["allowed"] is True
        assert first.json()["path"] == "redis"
        assert first.json()["policies"][0]["remaining"] == 2
        assert '"requests";r=2;' in first.headers["RateLimit"]
        assert (await client.get(f"{ratelimit}/v1/whoami", headers=bearer(key))).status_code == 200
        second = await client.post(
            decide, headers=operator_headers, json={"tenant_id": tenant_id, "cost": 2}
        )
        assert second.json()["allowed"] is False, "1 + 1 used, 2 more do not fit in 3"
        assert second.json()["retry_after_seconds"] > 0
        tenant_key = await client.post(decide, headers=bearer(key), json={"tenant_id": tenant_id})
        assert tenant_key.status_code == 403


def _decisions(metrics_text: str, path: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("tenantry_ratelimit_decisions_total{") and f'path="{path}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.chaos
async def test_redis_killed_mid_traffic_requests_flow_under_local_limits_then_redis_returns(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id, key = await limited_tenant(
        stack, operator_headers, service_dbs, requests_a_minute(20)
    )
    identity = stack.service_url("identity")
    async with httpx.AsyncClient(timeout=10) as client:
        local_before = _decisions((await client.get(f"{identity}/metrics")).text, "local")
        await stack.control("redis", "stop")
        try:
            statuses = [
                (await client.get(f"{identity}/v1/whoami", headers=bearer(key))).status_code
                for _ in range(25)
            ]
            # Requests keep flowing, under this instance's own copy of the limits.
            assert statuses == [200] * 20 + [429] * 5
            local_after = _decisions((await client.get(f"{identity}/metrics")).text, "local")
            assert local_after - local_before >= 25
        finally:
            await stack.control("redis", "start")

        # Redis is back (empty: it keeps no state on disk here), and so are shared limits.
        async def shared_again() -> bool:
            r = await client.post(
                f"{stack.service_url('ratelimit')}/v1/decisions",
                headers=operator_headers,
                json={"tenant_id": tenant_id},
            )
            return r.status_code == 200 and r.json()["path"] == "redis"

        await eventually(shared_again, timeout=30, message="decisions in Redis again")
        redis_before = _decisions((await client.get(f"{identity}/metrics")).text, "redis")

        async def identity_uses_redis() -> bool:
            await client.get(f"{identity}/v1/whoami", headers=bearer(key))
            text = (await client.get(f"{identity}/metrics")).text
            return _decisions(text, "redis") > redis_before

        await eventually(identity_uses_redis, timeout=30, message="identity back on Redis")


async def test_bad_decision_and_key_policy_requests_are_refused_with_problems(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    created = await create_key(stack, operator_headers, tenant_id, KEY_SCOPES)
    ratelimit = stack.service_url("ratelimit")
    key_url = (
        f"{ratelimit}/v1/tenants/{tenant_id}/api-keys/{created['api_key']['key_id']}/rate-policies"
    )
    async with httpx.AsyncClient(timeout=10) as client:
        bad_decisions: list[dict[str, Any]] = [
            {},
            {"tenant_id": "not-a-uuid"},
            {"tenant_id": tenant_id, "cost": 0},
            {"tenant_id": tenant_id, "cost": 1001},
            {"tenant_id": tenant_id, "surprise": 1},
        ]
        for bad in bad_decisions:
            r = await client.post(f"{ratelimit}/v1/decisions", headers=operator_headers, json=bad)
            assert r.status_code == 400, (bad, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        bad_policies: list[dict[str, Any]] = [
            {"policies": [{"name": "x", "limit": -1, "period_seconds": 1, "burst": 1}]},
            {
                "policies": [
                    {"name": "x", "limit": 1, "period_seconds": 1, "burst": 1, "route_class": "a b"}
                ]
            },
            {"policies": None},
        ]
        for bad in bad_policies:
            r = await client.put(key_url, headers=operator_headers, json=bad)
            assert r.status_code in (400, 422), (bad, r.text)
        view = await client.get(
            f"{ratelimit}/v1/tenants/{tenant_id}/rate-policies", headers=operator_headers
        )
        assert view.json()["key_policies"] == [], "nothing stored by a refused request"


async def test_refusals_are_reported_as_sampled_ratelimit_throttled_events(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    """429s in several services become one ratelimit.throttled per tenant per window
    (2 s locally), counted by policy, on the real broker."""
    from aiokafka import AIOKafkaConsumer

    tenant_id, key = await limited_tenant(
        stack, operator_headers, service_dbs, requests_a_minute(2)
    )
    consumer = AIOKafkaConsumer(
        "ratelimit.throttled",
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    refused = 0
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for service in SERVICES * 2:
                r = await client.get(f"{stack.service_url(service)}/v1/whoami", headers=bearer(key))
                refused += r.status_code == 429
        assert refused == 8  # two allowed, eight refused
        reports: list[dict[str, Any]] = []

        async def reported_all() -> bool:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    if dict(record.headers).get("ce_tenantid") == tenant_id.encode():
                        reports.append(json.loads(record.value))
            return bool(reports)

        await eventually(reported_all, timeout=30, message="ratelimit.throttled")
        # Refusals a service answers from its cache of refused keys are not counted.
        total = sum(r["total"] for r in reports)
        assert 1 <= total <= refused
        assert set().union(*(r["refusals"] for r in reports)) <= {"requests"}
    finally:
        await consumer.stop()


async def test_rate_policies_exist_only_for_tenancys_plans_and_can_be_removed(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    base = f"{stack.service_url('ratelimit')}/v1/rate-plans"
    generous = {"policies": [{"name": "daily", "limit": 10**6, "period_seconds": 1, "burst": 1}]}
    async with httpx.AsyncClient(timeout=10, headers=operator_headers) as client:
        for not_a_plan in ("no-such-plan", "FREE", "free "):
            r = await client.put(f"{base}/{not_a_plan}", json=generous)
            assert r.status_code == 404, r.text
            assert r.json()["type"] == "https://tenantry.dev/problems/unknown-plan"
        assert (
            await service_dbs["ratelimit"].fetchval(
                "SELECT count(*) FROM plan_rate_policies WHERE plan_id <> ALL($1::text[])",
                ["free", "team", "business", "enterprise"],
            )
            == 0
        )
        set_ = await client.put(f"{base}/enterprise", json=generous)
        assert set_.status_code == 200, set_.text
        assert set_.json()["plan_id"] == "enterprise"
        assert "enterprise" in {p["plan_id"] for p in (await client.get(base)).json()}
        removed = await client.delete(f"{base}/enterprise")
        assert removed.status_code == 204, removed.text
        assert "enterprise" not in {p["plan_id"] for p in (await client.get(base)).json()}
        again = await client.delete(f"{base}/enterprise")
        assert again.status_code == 404, again.text


def _fast_path_answers(metrics_text: str, answered_by: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("tenantry_ratelimit_decision_requests_total{")
        and f'answered_by="{answered_by}"' in line
    )


def _comparable(response: httpx.Response) -> tuple[int, str, list[str], Any]:
    """What must agree between the fast path and the full stack: the status, the content
    type, the header names, and the body without what differs by request (its id) or by
    the moment (the budget left, the time to reset)."""
    names = sorted(set(response.headers) - {"date", "server"})
    body: Any = response.json() if response.content else None
    if isinstance(body, dict):
        body.pop("request_id", None)
        for policy in body.get("policies", []):
            policy.pop("remaining", None)
            policy.pop("reset_seconds", None)
    return response.status_code, response.headers.get("content-type", ""), names, body


def _own(headers: dict[str, str], instance: int) -> dict[str, str]:
    """An Idempotency-Key of the instance's own: the two share the idempotency store, so
    one key sent to both would come back from the second as a replay."""
    if "Idempotency-Key" not in headers:
        return headers
    return {**headers, "Idempotency-Key": f"{headers['Idempotency-Key']}-{instance}"}


async def test_the_decision_fast_path_answers_exactly_as_the_full_stack_does(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    """ratelimit answers well-formed operator decisions on a fast path (fast_path.py) and
    hands everything else to the general pipeline. Each request below goes to the stack's
    instance (fast path on) and to an extra one with it off: the answers must agree, and
    the fast instance's counter says which of them it answered itself."""
    generous = {"policies": [{"name": "requests", "limit": 1000, "period_seconds": 1,
                              "burst": 1000}]}  # fmt: skip
    tenant_id, key = await limited_tenant(stack, operator_headers, service_dbs, generous)
    json_type = {"Content-Type": "application/json"}
    operator = {**operator_headers, **json_type}
    valid = json.dumps({"tenant_id": tenant_id}).encode()
    cases: list[tuple[str, str, dict[str, str], bytes, bool]] = [
        # (what, method, headers, body, answered by the fast path)
        ("a decision", "POST", operator, valid, True),
        ("a decision, charset named", "POST",
         {**operator_headers, "Content-Type": "application/json; charset=utf-8"}, valid, True),
        ("a decision with its request id", "POST", {**operator, "X-Request-Id": "gw-42.a:b"},
         valid, True),
        ("a request id that is not sane", "POST", {**operator, "X-Request-Id": "bad id!"},
         valid, True),
        ("key and class named", "POST", operator,
         json.dumps({"tenant_id": tenant_id, "api_key_id": "k1", "route_class": "reads",
                     "cost": 3}).encode(), True),
        ("not a uuid", "POST", operator, b'{"tenant_id": "x"}', False),
        ("not JSON", "POST", operator, b"{nope", False),
        ("an unknown field", "POST", operator,
         json.dumps({"tenant_id": tenant_id, "surprise": 1}).encode(), False),
        ("cost 0", "POST", operator, json.dumps({"tenant_id": tenant_id, "cost": 0}).encode(),
         False),
        ("an array", "POST", operator, b"[]", False),
        ("no body", "POST", operator, b"", False),
        ("no credential", "POST", json_type, valid, False),
        ("a bad token", "POST", {**json_type, "Authorization": "Bearer a.b.c"}, valid, False),
        ("a tenant's API key", "POST", {**json_type, **bearer(key)}, valid, False),
        ("text/plain", "POST", {**operator_headers, "Content-Type": "text/plain"}, valid, False),
        ("an Idempotency-Key", "POST", {**operator, "Idempotency-Key": f"k-{uuid4()}"}, valid,
         False),
        ("a body past 4 KiB", "POST", operator,
         json.dumps({"tenant_id": tenant_id, "api_key_id": "k" * 5000}).encode(), False),
        ("GET", "GET", operator_headers, b"", False),
        ("a query string", "POST?x=1", operator, valid, False),
    ]  # fmt: skip
    fast = stack.service_url("ratelimit")
    with stack.extra_api("ratelimit", 8198, {"TENANTRY_RATELIMIT_DECISIONS_FAST_PATH": "false"}):
        full = "http://127.0.0.1:8198"
        async with httpx.AsyncClient(timeout=10) as client:
            for what, method, headers, body, on_fast_path in cases:
                before = (await client.get(f"{fast}/metrics")).text
                verb, _, query = method.partition("?")
                answers = [
                    await client.request(
                        verb,
                        f"{base}/v1/decisions" + (f"?{query}" if query else ""),
                        headers=_own(headers, i),
                        content=body,
                    )
                    for i, base in enumerate((fast, full))
                ]
                after = (await client.get(f"{fast}/metrics")).text
                assert _comparable(answers[0]) == _comparable(answers[1]), what
                if "X-Request-Id" in headers:
                    echoed = headers["X-Request-Id"] == "gw-42.a:b"
                    for answer in answers:
                        assert (answer.headers["x-request-id"] == "gw-42.a:b") is echoed, what
                took_fast = _fast_path_answers(after, "fast") - _fast_path_answers(before, "fast")
                assert took_fast == (1 if on_fast_path else 0), what
            full_metrics = (await client.get(f"{full}/metrics")).text
    assert _fast_path_answers(full_metrics, "fast") == 0, "the setting turns it off"
