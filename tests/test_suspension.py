"""Suspension that bites: once an operator suspends a tenant every service refuses every
credential of it (tokens and keys issued before), new tokens are refused, illegal
transitions are a 409 that emits nothing, and reactivation restores access."""

from __future__ import annotations

from uuid import UUID

import asyncpg
import httpx
import pytest
from uuid_utils.compat import uuid4

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import Stack

from .conftest import SERVICES
from .test_identity import bearer, create_key, new_tenant, whoami_everywhere

pytestmark = pytest.mark.kafka
PASSWORD = "correct horse battery staple"


async def test_suspension_is_enforced_by_all_five_services_and_reactivation_restores(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    key = (await create_key(stack, operator_headers, tenant_id, ["tenant:read"]))["key"]
    email = f"s-{uuid4().hex[:8]}@example.com"
    tenancy, identity = stack.service_url("tenancy"), stack.service_url("identity")
    async with httpx.AsyncClient(timeout=10) as client:
        await client.post(
            f"{identity}/v1/tenants/{tenant_id}/accounts",
            headers=operator_headers,
            json={"email": email, "password": PASSWORD},
        )
        login = {"email": email, "password": PASSWORD, "tenant_id": tenant_id}
        session = (await client.post(f"{identity}/v1/sessions", json=login)).json()
        credentials = [bearer(key), bearer(session["access_token"])]
        for headers in credentials:
            await all_five(stack, headers, 200, "credentials accepted before the suspension")

        suspended = await client.post(
            f"{tenancy}/v1/tenants/{tenant_id}/suspend",
            headers=operator_headers,
            json={"reason": "unpaid"},
        )
        assert suspended.status_code == 200, suspended.text
        assert suspended.json()["status"] == "suspended"
        for headers in credentials:
            await all_five(stack, headers, 403, "every service refuses the suspended tenant")
        r = await client.get(f"{tenancy}/v1/tenants/{tenant_id}", headers=bearer(key))
        assert r.status_code == 403
        assert r.json()["type"].endswith("/tenant-suspended")
        assert (await client.post(f"{identity}/v1/sessions", json=login)).status_code == 403
        refresh = await client.post(
            f"{identity}/v1/sessions/refresh", json={"refresh_token": session["refresh_token"]}
        )
        assert refresh.status_code == 403
        # Operators still reach it.
        assert (
            await client.get(f"{tenancy}/v1/tenants/{tenant_id}", headers=operator_headers)
        ).status_code == 200

        events_before = await _event_count(service_dbs["tenancy"], tenant_id)
        twice = await client.post(
            f"{tenancy}/v1/tenants/{tenant_id}/suspend",
            headers=operator_headers,
            json={"reason": "again"},
        )
        assert twice.status_code == 409
        assert twice.json()["type"].endswith("/illegal-transition")
        assert await _event_count(service_dbs["tenancy"], tenant_id) == events_before

        back = await client.post(
            f"{tenancy}/v1/tenants/{tenant_id}/reactivate",
            headers=operator_headers,
            json={"reason": "paid"},
        )
        assert back.status_code == 200
        for headers in credentials:
            await all_five(stack, headers, 200, "access restored everywhere")
        active_again = await client.post(
            f"{tenancy}/v1/tenants/{tenant_id}/reactivate",
            headers=operator_headers,
            json={"reason": "x"},
        )
        assert active_again.status_code == 409
        blank = await client.post(
            f"{tenancy}/v1/tenants/{tenant_id}/suspend",
            headers=operator_headers,
            json={"reason": ""},
        )
        assert blank.status_code == 400
        not_operator = await client.post(
            f"{tenancy}/v1/tenants/{tenant_id}/suspend",
            headers=bearer(key),
            json={"reason": "self"},
        )
        assert not_operator.status_code == 403

        history = (
            await client.get(f"{tenancy}/v1/tenants/{tenant_id}/history", headers=bearer(key))
        ).json()
        assert [(h["type"], h["status"], h["reason"]) for h in history] == [
            ("tenant.created", "active", None),
            ("tenant.suspended", "suspended", "unpaid"),
            ("tenant.reactivated", "active", "paid"),
        ]
        assert history[1]["by"].startswith("operator:")
    for service in SERVICES:
        if service == "tenancy":
            continue
        row = await service_dbs[service].fetchrow(
            "SELECT status, version FROM tenant_projection WHERE tenant_id = $1", UUID(tenant_id)
        )
        assert row is not None
        assert (row["status"], row["version"]) == ("active", 3), service


async def all_five(stack: Stack, headers: dict[str, str], status: int, message: str) -> None:
    async def probe() -> dict[str, int] | None:
        seen = await whoami_everywhere(stack, headers)
        return seen if set(seen.values()) == {status} else None

    await eventually(probe, timeout=30, message=message)


async def _event_count(pool: asyncpg.Pool, tenant_id: str) -> int:
    return int(
        await pool.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", UUID(tenant_id))
    )
