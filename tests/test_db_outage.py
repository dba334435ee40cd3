"""A database outage is a 503 with Retry-After, not a 500, and is not logged as a bug.

The stack's Postgres is shared by every test, so the outage is staged on a throwaway
cluster of the test's own: one more api process of a service, migrated onto that cluster,
talking to the shared Kafka, Redis and identity. The cluster is stopped (a real server
stop) while requests arrive, then started again."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncpg
import httpx
import pytest

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.pg_cluster import PgCluster
from tenantry_testkit.stack import Stack

from .test_identity import create_key, new_tenant
from .test_scim import ERROR

REPO = Path(__file__).resolve().parents[1]
PROBLEM = "application/problem+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def migrated_onto(cluster: PgCluster, stack: Stack, service: str) -> dict[str, str]:
    """The service's database created and migrated on `cluster`; the settings that point
    an instance at it."""
    database = stack.service_database(service)
    owner = await asyncpg.connect(cluster.stack.owner_dsn("postgres"), timeout=10)
    try:
        await owner.execute(f'CREATE DATABASE "{database}"')
    finally:
        await owner.close()
    settings = {
        "TENANTRY_DATABASE_URL": cluster.stack.app_dsn(database),
        "TENANTRY_MIGRATION_DATABASE_URL": cluster.stack.owner_dsn(database),
        "TENANTRY_WORKER_HEALTH_PORT": "0",
    }
    env = {**stack.service_env(service), **settings}
    proc = await asyncio.create_subprocess_exec(
        str(REPO / ".venv" / "bin" / f"tenantry-{service}"),
        "migrate",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, out.decode()[-2000:]
    return settings


@pytest.mark.parametrize("service", ["tenancy", "provisioning"])
async def test_requests_during_a_database_outage_get_503_with_retry_after(
    stack: Stack, operator_headers: dict[str, str], pg_cluster: PgCluster, service: str
) -> None:
    settings = await migrated_onto(pg_cluster, stack, service)
    # Requests that must read the database: tenancy's plans (as the operator), and a SCIM
    # read with a real key (its lookup is the first read) on provisioning's SCIM mount.
    if service == "tenancy":
        path, headers, error_schema = "/v1/plans", operator_headers, None
    else:
        tenant_id = await new_tenant(stack, operator_headers)
        key = (await create_key(stack, operator_headers, tenant_id, ["scim:write"]))["key"]
        path, headers, error_schema = "/scim/v2/Users", {"Authorization": f"Bearer {key}"}, ERROR
    port = free_port()
    log = REPO / ".local" / "log" / f"{service}-extra-{port}.log"
    with stack.extra_api(service, port, settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            await pg_cluster.stop("fast")
            during = await client.get(path, headers=headers)
            assert during.status_code == 503, during.text
            assert int(during.headers["retry-after"]) > 0
            if error_schema is None:
                assert during.headers["content-type"].startswith(PROBLEM)
                assert during.json()["type"] == "https://tenantry.dev/problems/unavailable"
            else:
                assert during.json()["schemas"] == [error_schema]
            assert (await client.get("/readyz")).status_code == 503

            await pg_cluster.start()

            async def answered() -> bool:
                r = await client.get(path, headers=headers)
                return r.status_code < 500

            await eventually(answered, timeout=30, message=f"{service} answering again")
    text = log.read_text()
    assert f"database unavailable on GET {path}" in text
    # Not logged as a bug: no "unhandled error" with its traceback, nothing at error level
    # (asyncpg's own pool may warn while it reconnects).
    assert "unhandled error" not in text
    assert '"level": "error"' not in text


async def test_an_api_stays_ready_without_kafka(stack: Stack) -> None:
    """An api writes events to its outbox, never to Kafka: with no broker it still serves
    and stays ready (it reports the broker), so a Kafka outage takes no api pod out of its
    Service; a broker outage shows in the workers' logs and the outboxes' growth."""
    no_broker = {"TENANTRY_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    with stack.extra_api("ratelimit", free_port(), no_broker) as base:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"postgres": True, "kafka": False}
