"""tenancy's usage equals what the owners hold (identity: seats and API keys; webhooks:
endpoints), through usage.reported on the real broker: after every kind of change, after
the counters are corrupted (the owners' reconciliation repairs them), and in the downgrade
check. Also the tenant guard's answers for a state no route admits and for a tenant a
service has never heard of."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from uuid_utils.compat import uuid4

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import Stack

from .test_identity import bearer, create_key, new_tenant
from .test_scim import PATCH_OP, USER, scim_client, scim_tenant
from .test_sso import tenant_events_seen

pytestmark = pytest.mark.kafka

OWNED_BY = {
    "seats": (
        "identity",
        "SELECT count(*) FROM accounts WHERE tenant_id = $1 AND status = 'active'",
    ),
    "api_keys": (
        "identity",
        "SELECT count(*) FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NULL",
    ),
    "webhook_endpoints": ("webhooks", "SELECT count(*) FROM endpoints WHERE tenant_id = $1"),
}


def reconcile_seconds(stack: Stack) -> float:
    return float(stack.env.get("TENANTRY_USAGE_RECONCILE_SECONDS", "300"))


async def owners_counts(dbs: dict[str, asyncpg.Pool], tenant_id: str) -> dict[str, int]:
    """Counted as each owner's guard counts, in a transaction scoped to the tenant (the
    owners' tables have row-level security, even for their owner role)."""
    counts = {}
    for name, (service, sql) in OWNED_BY.items():
        async with dbs[service].acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            counts[name] = int(await conn.fetchval(sql, uuid.UUID(tenant_id)))
    return counts


async def tenancy_counts(dbs: dict[str, asyncpg.Pool], tenant_id: str) -> dict[str, int]:
    row = await dbs["tenancy"].fetchrow(
        "SELECT seats, api_keys, webhook_endpoints FROM tenant_usage WHERE tenant_id = $1",
        uuid.UUID(tenant_id),
    )
    return dict(row) if row else {}


async def converged(
    stack: Stack, dbs: dict[str, asyncpg.Pool], tenant_id: str, expected: dict[str, int]
) -> None:
    """The owners hold `expected`, and tenancy's counters come to equal them."""
    assert await owners_counts(dbs, tenant_id) == expected

    async def equal() -> bool:
        return await tenancy_counts(dbs, tenant_id) == expected

    # Endpoints are reported by the sweep until webhooks reports them as it changes them.
    await eventually(
        equal, timeout=reconcile_seconds(stack) + 30, message=f"tenancy's usage = {expected}"
    )


async def endpoint(client: httpx.AsyncClient, stack: Stack, headers: Any, tenant_id: str) -> str:
    r = await client.post(
        f"{stack.service_url('webhooks')}/v1/tenants/{tenant_id}/webhooks/endpoints",
        headers=headers,
        json={"url": "http://127.0.0.1:9/hook", "event_types": ["user.*"]},
    )
    assert r.status_code == 201, r.text
    endpoint_id: str = r.json()["endpoint"]["endpoint_id"]
    return endpoint_id


async def test_usage_follows_every_change_the_owners_make(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id, scim_key = await scim_tenant(stack, operator_headers)  # business; 1 key
    identity = f"{stack.service_url('identity')}/v1/tenants/{tenant_id}"
    webhooks = f"{stack.service_url('webhooks')}/v1/tenants/{tenant_id}/webhooks/endpoints"
    ops = operator_headers
    await converged(
        stack, service_dbs, tenant_id, {"seats": 0, "api_keys": 1, "webhook_endpoints": 0}
    )
    async with httpx.AsyncClient(timeout=15) as client, scim_client(stack, scim_key) as scim:
        invited = []
        for i in range(2):
            r = await client.post(
                f"{identity}/accounts",
                headers=ops,
                json={"email": f"u{i}-{uuid4().hex[:6]}@ex.com"},
            )
            assert r.status_code == 201, r.text
            invited.append(r.json()["account_id"])
        r = await scim.post(
            "/Users", json={"schemas": [USER], "userName": f"dir-{uuid4().hex[:6]}@ex.com"}
        )
        assert r.status_code == 201, r.text
        scim_user = r.json()["id"]
        await converged(
            stack, service_dbs, tenant_id, {"seats": 3, "api_keys": 1, "webhook_endpoints": 0}
        )

        # An admin disables one; the directory deprovisions its user (account.disabled).
        r = await client.post(f"{identity}/accounts/{invited[0]}/disable", headers=ops, json={})
        assert r.status_code == 200, r.text
        off = {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {"active": False}}]}
        assert (await scim.patch(f"/Users/{scim_user}", json=off)).status_code == 200
        await converged(
            stack, service_dbs, tenant_id, {"seats": 1, "api_keys": 1, "webhook_endpoints": 0}
        )

        # Reprovisioned (account.enabled): the seat that tenancy used to miss.
        on = {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {"active": True}}]}
        assert (await scim.patch(f"/Users/{scim_user}", json=on)).status_code == 200
        await converged(
            stack, service_dbs, tenant_id, {"seats": 2, "api_keys": 1, "webhook_endpoints": 0}
        )

        # Keys: two more, one revoked.
        made = [await create_key(stack, ops, tenant_id, ["tenant:read"]) for _ in range(2)]
        r = await client.delete(f"{identity}/api-keys/{made[0]['api_key']['key_id']}", headers=ops)
        assert r.status_code in (200, 204), r.text
        await converged(
            stack, service_dbs, tenant_id, {"seats": 2, "api_keys": 2, "webhook_endpoints": 0}
        )

        # Endpoints: three made, one deleted (never counted before).
        made_endpoints = [await endpoint(client, stack, ops, tenant_id) for _ in range(3)]
        r = await client.delete(f"{webhooks}/{made_endpoints[0]}", headers=ops)
        assert r.status_code == 204, r.text
        await converged(
            stack, service_dbs, tenant_id, {"seats": 2, "api_keys": 2, "webhook_endpoints": 2}
        )
    # The reports travelled the real broker.
    await tenant_events_seen(stack, tenant_id, {"usage.reported"}, timeout=30)


async def test_reconciliation_repairs_counters_that_drifted(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    await create_key(stack, operator_headers, tenant_id, ["tenant:read"])
    async with httpx.AsyncClient(timeout=15) as client:
        await endpoint(client, stack, operator_headers, tenant_id)
    expected = {"seats": 0, "api_keys": 1, "webhook_endpoints": 1}
    await converged(stack, service_dbs, tenant_id, expected)
    # The owner's rows change behind its back (as its owner role, so no change-driven
    # report is written): only the reconciliation sweep can notice and report it.
    async with service_dbs["webhooks"].acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
        deleted = await conn.execute(
            "DELETE FROM endpoints WHERE tenant_id = $1", uuid.UUID(tenant_id)
        )
    assert deleted == "DELETE 1"
    await converged(stack, service_dbs, tenant_id, {**expected, "webhook_endpoints": 0})


async def test_a_downgrade_that_would_break_the_endpoint_limit_is_refused(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers, plan="team")  # 5 endpoints; free: 1
    plan_url = f"{stack.service_url('tenancy')}/v1/tenants/{tenant_id}/plan"
    async with httpx.AsyncClient(timeout=15) as client:
        kept = [await endpoint(client, stack, operator_headers, tenant_id) for _ in range(2)]
        await converged(
            stack, service_dbs, tenant_id, {"seats": 0, "api_keys": 0, "webhook_endpoints": 2}
        )
        down = await client.post(plan_url, headers=operator_headers, json={"plan": "free"})
        assert down.status_code == 409, down.text
        assert down.json()["type"].endswith("/downgrade-blocked")
        assert down.json()["blockers"] == [{"limit": "webhook_endpoints", "usage": 2, "allowed": 1}]
        plan = (await client.get(plan_url, headers=operator_headers)).json()
        assert plan["plan"] == "team"  # nothing changed

        webhooks = f"{stack.service_url('webhooks')}/v1/tenants/{tenant_id}/webhooks/endpoints"
        assert (
            await client.delete(f"{webhooks}/{kept[0]}", headers=operator_headers)
        ).status_code == 204
        await converged(
            stack, service_dbs, tenant_id, {"seats": 0, "api_keys": 0, "webhook_endpoints": 1}
        )
        down = await client.post(plan_url, headers=operator_headers, json={"plan": "free"})
        assert down.status_code == 200, down.text


# ---------------------------------------------------------------- the tenant guard


async def test_a_tenant_state_no_route_admits_is_refused_and_an_unknown_tenant_is_404(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    """A lifecycle state no route admits (here `purging`, written into webhooks'
    projection as its event would) is refused by every route; a tenant the projection lost or never
    heard of gets 404 tenant-not-found after a bounded wait, not 503 forever."""
    tenant_id = await new_tenant(stack, operator_headers)
    key = (await create_key(stack, operator_headers, tenant_id, ["webhooks:read"]))["key"]
    tenant = uuid.UUID(tenant_id)
    projection = service_dbs["webhooks"]
    endpoints = f"{stack.service_url('webhooks')}/v1/tenants/{tenant_id}/webhooks/endpoints"
    async with httpx.AsyncClient(timeout=15) as client:
        assert (await client.get(endpoints, headers=bearer(key))).status_code == 200
        row = None
        try:
            await projection.execute(
                "UPDATE tenant_projection SET status = 'purging' WHERE tenant_id = $1", tenant
            )
            refused = await client.get(endpoints, headers=bearer(key))
            assert refused.status_code == 403
            assert refused.json()["type"].endswith("/tenant-not-active")
            assert refused.json()["tenant_status"] == "purging"
            # Operators still pass.
            assert (await client.get(endpoints, headers=operator_headers)).status_code == 200

            row = await projection.fetchrow(
                "DELETE FROM tenant_projection WHERE tenant_id = $1 RETURNING *", tenant
            )
            unknown = await client.get(endpoints, headers=bearer(key))
            assert unknown.status_code == 404
            assert unknown.json()["type"].endswith("/tenant-not-found")
        finally:
            if row is not None:
                await projection.execute(
                    """INSERT INTO tenant_projection (tenant_id, name, slug, status, plan,
                           home_region, version) VALUES ($1, $2, $3, 'active', $4, $5, $6)
                       ON CONFLICT (tenant_id) DO UPDATE SET status = 'active'""",
                    tenant, row["name"], row["slug"], row["plan"], row["home_region"],
                    row["version"],
                )  # fmt: skip
            else:
                await projection.execute(
                    "UPDATE tenant_projection SET status = 'active' WHERE tenant_id = $1", tenant
                )
        assert (await client.get(endpoints, headers=bearer(key))).status_code == 200

        # An operator creating in a tenant that does not exist: 404, where it was an
        # endless 503 limits-unknown.
        ghost = f"{stack.service_url('identity')}/v1/tenants/{uuid4()}/accounts"
        r = await client.post(ghost, headers=operator_headers, json={"email": "g@example.com"})
        assert r.status_code == 404, r.text
        assert r.json()["type"].endswith("/tenant-not-found")
