"""A tenant created in tenancy reaches the projection of the four other services through
the real Kafka broker, and carries the request's trace with it."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from uuid_utils.compat import uuid4

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import Stack

from .conftest import PROJECTING

pytestmark = pytest.mark.kafka


def new_slug() -> str:
    return f"t-{uuid4().hex[:12]}"


async def projected(pool: asyncpg.Pool, tenant_id: UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT * FROM tenant_projection WHERE tenant_id = $1", tenant_id
    )
    return row


async def test_a_new_tenant_reaches_all_four_services(
    tenancy: httpx.AsyncClient, service_dbs: dict[str, asyncpg.Pool]
) -> None:
    response = await tenancy.post(
        "/v1/tenants", json={"name": "Acme", "slug": new_slug(), "plan": "team"}
    )
    assert response.status_code == 201, response.text
    tenant = response.json()
    tenant_id = UUID(tenant["tenant_id"])
    assert tenant["status"] == "active"
    assert tenant["version"] == 1

    async def everywhere() -> dict[str, Any] | None:
        rows = {s: await projected(service_dbs[s], tenant_id) for s in PROJECTING}
        return rows if all(rows.values()) else None

    rows = await eventually(everywhere, timeout=30, message="tenant in all four projections")
    for service, row in rows.items():
        assert row["plan"] == "team", service
        assert row["status"] == "active", service
        assert row["version"] == 1, service

    got = await tenancy.get(f"/v1/tenants/{tenant_id}")
    assert got.status_code == 200
    assert got.json()["slug"] == tenant["slug"]


async def test_trace_context_flows_from_the_request_into_the_event(
    stack: Stack, tenancy: httpx.AsyncClient, service_dbs: dict[str, asyncpg.Pool]
) -> None:
    trace_id = uuid4().hex
    traceparent = f"00-{trace_id}-{uuid4().hex[:16]}-01"
    response = await tenancy.post(
        "/v1/tenants",
        json={"name": "Traced", "slug": new_slug()},
        headers={"traceparent": traceparent},
    )
    assert response.status_code == 201
    tenant_id = UUID(response.json()["tenant_id"])
    envelope = await service_dbs["tenancy"].fetchval(
        "SELECT envelope FROM events WHERE tenant_id = $1", tenant_id
    )
    import json

    stored = json.loads(envelope)
    assert stored["traceparent"].split("-")[1] == trace_id

    # ...and it crossed Kafka: read the record's ce_traceparent header.
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        "tenant.created",
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    try:

        async def found() -> bytes | None:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for r in records:
                    headers = dict(r.headers)
                    if headers.get("ce_tenantid") == str(tenant_id).encode():
                        return headers.get("ce_traceparent")
            return None

        header = await eventually(found, timeout=30, message="the tenant.created record")
    finally:
        await consumer.stop()
    assert header.decode().split("-")[1] == trace_id


async def test_concurrent_creates_with_one_slug_give_exactly_one_tenant(
    tenancy: httpx.AsyncClient,
) -> None:
    slug = new_slug()
    responses = await asyncio.gather(
        *(tenancy.post("/v1/tenants", json={"name": f"n{i}", "slug": slug}) for i in range(6))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 5
    conflict = next(r for r in responses if r.status_code == 409)
    assert conflict.headers["content-type"].startswith("application/problem+json")
    assert conflict.json()["type"].endswith("/slug-taken")
