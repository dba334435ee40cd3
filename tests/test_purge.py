"""Each service's share of a tenant's purge (issue 17 §2), on the running stack: a tenant
with data in every service (accounts, a session, API keys, an SSO connection, SCIM users
and a group, a webhook endpoint with deliveries, rate policies, Redis counters) and a
neighbour with the same; tenant.purge_requested put on the real broker (as tenancy's
scheduler will); one tenant.purged_by from each service. Then a scan of every column of
every table of every service's database finds nothing of the tenant (its marker string in
any text, JSON or bytes, its id in any tenant_id column or text), Redis holds no key of it,
and the neighbour's rows are all there. Redelivered, the request gets the same reports; a
late event of the tenant brings nothing back; a worker SIGKILLed mid-purge (held on a row
lock the test takes) is restarted and finishes with the right counts, nothing left behind.

Tenancy's own share (what it keeps as the tombstone) and Kafka's retained records are
other tests' subjects: tenancy's tables that its spec keeps are not scanned here."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from redis.asyncio import Redis
from uuid_utils.compat import uuid4

from tenantry_events.envelope import Envelope, new_event
from tenantry_events.kafka_codec import from_record, to_record
from tenantry_events.payloads.tenancy import (
    TenantPurgedBy,
    TenantPurgeRequested,
    TenantState,
    TenantSuspended,
)
from tenantry_service.app import ServiceSpec
from tenantry_service.purge import PURGE_RECORD, read_schema
from tenantry_testkit.fixtures import eventually
from tenantry_testkit.receiver import Receiver
from tenantry_testkit.stack import REPO, Stack

from .conftest import SERVICES
from .test_identity import bearer, create_key, whoami_everywhere
from .test_rate_limits import published_everywhere, set_tenant_policies
from .test_scim import GROUP, USER, scim_client

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]
# Tenancy's share is the lead's test (tenancy keeps its tombstone rows); these four purge
# everything of the tenant.
PURGING = ("identity", "provisioning", "webhooks", "ratelimit")
PASSWORD = "correct horse battery staple"
# Delivery plumbing: rows come for every tenant all the time (usage reports every few
# seconds), so a neighbour's count there only grows; it must never shrink.
GROWING = frozenset({"inbox", "outbox"})
TEXT_TYPES = frozenset({"text", "character varying", "character", "json", "jsonb"})


@dataclass(frozen=True)
class PopulatedTenant:
    tenant_id: UUID
    marker: str  # in its name, emails, user names, group, endpoint URL, SSO connection
    key: str  # an API key with every scope the test uses


def kept_tables(service: str) -> frozenset[str]:
    """The tables whose rows of the tenant the service keeps, on purpose."""
    spec = importlib.import_module(f"tenantry_{service}.app").SPEC
    assert isinstance(spec, ServiceSpec)
    return spec.purge.keep | {PURGE_RECORD}


async def new_tenant(stack: Stack, operator_headers: dict[str, str], marker: str) -> UUID:
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        r = await client.post(
            "/v1/tenants",
            json={"name": f"Purge {marker}", "slug": marker, "plan": "enterprise"},
            headers=operator_headers,
        )
        assert r.status_code == 201, r.text
        return UUID(r.json()["tenant_id"])


async def populated_tenant(
    stack: Stack,
    operator_headers: dict[str, str],
    superuser_dbs: dict[str, asyncpg.Pool],
    receiver: Receiver,
) -> PopulatedTenant:
    marker = f"purge-{uuid4().hex[:12]}"
    tenant_id = await new_tenant(stack, operator_headers, marker)
    scopes = ["scim:write", "tenant:read"]
    key = (await create_key(stack, operator_headers, str(tenant_id), scopes))["key"]
    async with httpx.AsyncClient(timeout=15) as client:
        identity = f"{stack.service_url('identity')}/v1/tenants/{tenant_id}"
        hooks = f"{stack.service_url('webhooks')}/v1/tenants/{tenant_id}/webhooks/endpoints"
        endpoint = await client.post(
            hooks,
            headers=operator_headers,
            json={"url": f"{receiver.url}/ok?tenant={marker}", "event_types": ["account.*"]},
        )
        assert endpoint.status_code == 201, endpoint.text
        email = f"{marker}-alice@example.com"
        made = await client.post(
            f"{identity}/accounts",
            # the stored response, under the operator's scope, names the tenant's admin
            headers={**operator_headers, "Idempotency-Key": marker},
            json={"email": email, "password": PASSWORD, "role": "admin"},
        )
        assert made.status_code == 201, made.text
        login = {"email": email, "password": PASSWORD, "tenant_id": str(tenant_id)}
        signed_in = await client.post(f"{stack.service_url('identity')}/v1/sessions", json=login)
        assert signed_in.status_code in (200, 201), signed_in.text
        async with scim_client(stack, key) as scim:
            members = []
            for name in ("bob", "carol"):
                r = await scim.post(
                    "/Users",
                    json={
                        "schemas": [USER],
                        "userName": f"{marker}-{name}@example.com",
                        "name": {"givenName": name.title(), "familyName": marker},
                        "emails": [{"value": f"{marker}-{name}@example.com", "primary": True}],
                        "active": True,
                    },
                )
                assert r.status_code == 201, r.text
                members.append({"value": r.json()["id"]})
            group = await scim.post(
                "/Groups", json={"schemas": [GROUP], "displayName": marker, "members": members}
            )
            assert group.status_code == 201, group.text
        # An hourly policy: its Redis key outlives the test (a per-second one expires in
        # seconds, before the purge could count it).
        hourly = {"name": "hourly", "limit": 900, "period_seconds": 3600, "burst": 50}
        policies = await set_tenant_policies(
            client, stack, operator_headers, str(tenant_id), {"policies": [hourly]}
        )
    await superuser_dbs["identity"].execute(
        """INSERT INTO sso_connections (connection_id, tenant_id, kind, name, enabled,
               allow_idp_initiated, config, secrets, attribute_mapping, version)
           VALUES ($1, $2, 'oidc', $3, true, false, $4::jsonb, $5, '{}'::jsonb, 1)""",
        uuid4(),
        tenant_id,
        f"IdP of {marker}",
        '{"issuer": "https://idp.example", "client_id": "cid"}',
        marker.encode(),
    )

    async def delivered() -> bool:
        # Alice, Bob and Carol: three account.created, each delivered, so webhooks is still.
        row = await superuser_dbs["webhooks"].fetchrow(
            """SELECT count(*) AS deliveries, count(*) FILTER (WHERE status = 'succeeded') AS ok
               FROM deliveries WHERE tenant_id = $1""",
            tenant_id,
        )
        assert row is not None
        return bool(row["deliveries"] >= 3 and row["ok"] == row["deliveries"])

    await eventually(delivered, timeout=60, message="the tenant's webhooks delivered")
    await published_everywhere(superuser_dbs, str(tenant_id), policies["version"])

    async def counted() -> bool:
        await whoami_everywhere(stack, bearer(key))
        return bool(await redis_keys_of(stack, tenant_id))

    await eventually(counted, timeout=30, message="the tenant's rate-limit keys in Redis")
    return PopulatedTenant(tenant_id, marker, key)


def purge_request(tenant_id: UUID) -> Envelope[TenantPurgeRequested]:
    payload = TenantPurgeRequested(purge_id=uuid4(), early=True, reason="test_purge", by="operator")
    return new_event(
        payload,
        tenant_id=tenant_id,
        subject=f"tenant/{tenant_id}",
        aggregate_version=0,
        source="/tenantry/tenancy",
        region="local",
    )


async def publish(stack: Stack, *envelopes: Envelope[Any], partition: int | None = None) -> None:
    """On the broker as tenancy's relay would put them (the same record twice is a
    redelivery), in order; on one `partition` to be consumed in that order."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    try:
        for envelope in envelopes:
            record = to_record(envelope)
            await producer.send_and_wait(
                record.topic,
                record.value,
                key=record.key,
                headers=record.headers,
                partition=partition,
            )
    finally:
        await producer.stop()


def suspension(tenant_id: UUID, name: str) -> Envelope[TenantSuspended]:
    state = TenantState(
        name=name, slug=name, status="suspended", plan="enterprise", home_region="local"
    )
    return new_event(
        TenantSuspended(tenant=state, reason="test_purge", by="operator"),
        tenant_id=tenant_id,
        subject=f"tenant/{tenant_id}",
        aggregate_version=1000,
        source="/tenantry/tenancy",
        region="local",
    )


async def reports(
    stack: Stack, purge_id: UUID, services: tuple[str, ...], each: int = 1
) -> dict[str, list[TenantPurgedBy]]:
    """The tenant.purged_by of `purge_id` on the broker, until each service sent `each`."""
    consumer = AIOKafkaConsumer(
        "tenant.purged_by",
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    found: dict[str, list[TenantPurgedBy]] = {}
    try:

        async def all_reported() -> bool:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    report = from_record(list(record.headers), record.value or b"").payload
                    if report.purge_id == purge_id:
                        found.setdefault(report.service, []).append(report)
            return all(len(found.get(s, [])) >= each for s in services)

        await eventually(all_reported, timeout=120, message=f"tenant.purged_by from {services}")
    finally:
        await consumer.stop()
    return found


async def rows_by_table(pool: asyncpg.Pool, tenant_id: UUID) -> dict[str, int]:
    tables = await pool.fetch(
        """SELECT table_name FROM information_schema.columns
           WHERE table_schema = 'public' AND column_name = 'tenant_id'"""
    )
    return {
        t["table_name"]: await pool.fetchval(
            f'SELECT count(*) FROM "{t["table_name"]}" WHERE tenant_id = $1', tenant_id
        )
        for t in tables
    }


async def settled_traces(
    pool: asyncpg.Pool, tenant: PopulatedTenant, skip: frozenset[str], *, seconds: float = 10.0
) -> list[str]:
    """traces_of, once the outbox has drained: an event in flight there (a saga report, a
    timer's report written as the purge ended) is published and deleted by the relay
    within moments; what is still there after `seconds` is held."""
    deadline = time.monotonic() + seconds
    while True:
        traces = await traces_of(pool, tenant, skip)
        in_flight = [t for t in traces if t.startswith("outbox.")]
        if not in_flight or time.monotonic() > deadline:
            return traces
        await asyncio.sleep(0.2)


async def traces_of(pool: asyncpg.Pool, tenant: PopulatedTenant, skip: frozenset[str]) -> list[str]:
    """Every column of every table holding the tenant's marker or id: text and JSON as
    text, bytes as bytes, tenant_id columns by value."""
    columns = await pool.fetch(
        """SELECT c.table_name, c.column_name, c.data_type
           FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'"""
    )
    found = []
    for c in columns:
        table, column, kind = c["table_name"], c["column_name"], c["data_type"]
        if table in skip:
            continue
        where = f'"{table}"."{column}"'
        if column == "tenant_id" and kind == "uuid":
            count = await pool.fetchval(
                f'SELECT count(*) FROM "{table}" WHERE {where} = $1', tenant.tenant_id
            )
        elif kind in TEXT_TYPES:
            count = await pool.fetchval(
                f"""SELECT count(*) FROM "{table}"
                    WHERE strpos({where}::text, $1) > 0 OR strpos({where}::text, $2) > 0""",
                tenant.marker,
                str(tenant.tenant_id),
            )
        elif kind == "bytea":
            count = await pool.fetchval(
                f"""SELECT count(*) FROM "{table}"
                    WHERE position($1::bytea IN {where}) > 0
                       OR position($2::bytea IN {where}) > 0""",
                tenant.marker.encode(),
                str(tenant.tenant_id).encode(),
            )
        else:
            continue
        if count:
            found.append(f"{table}.{column}: {count}")
    return found


async def redis_keys_of(stack: Stack, tenant_id: UUID) -> list[bytes]:
    async with Redis.from_url(stack.redis_url) as redis:
        return [k async for k in redis.scan_iter(match=f"rl:{{{tenant_id}}}*", count=1000)]


def counts(report: TenantPurgedBy) -> dict[str, int]:
    return {t.table: t.rows for t in report.tables if t.rows}


async def test_a_purge_leaves_nothing_of_the_tenant_and_everything_of_the_neighbour(
    stack: Stack,
    operator_headers: dict[str, str],
    superuser_dbs: dict[str, asyncpg.Pool],
    receiver: Receiver,
) -> None:
    tenant = await populated_tenant(stack, operator_headers, superuser_dbs, receiver)
    neighbour = await populated_tenant(stack, operator_headers, superuser_dbs, receiver)
    neighbours_before = {
        s: await rows_by_table(superuser_dbs[s], neighbour.tenant_id) for s in PURGING
    }
    rows_before = {s: await rows_by_table(superuser_dbs[s], tenant.tenant_id) for s in PURGING}
    assert await redis_keys_of(stack, tenant.tenant_id), "the tenant has Redis keys to purge"

    request = purge_request(tenant.tenant_id)
    # Rate-limit counters expire with their windows: use the key once more so the purge
    # finds some to delete (their count is in the reports).
    await whoami_everywhere(stack, bearer(tenant.key))
    await publish(stack, request)
    sent = await reports(stack, request.payload.purge_id, PURGING)

    for service in PURGING:
        purged = counts(sent[service][0])
        expected = {
            table: rows
            for table, rows in rows_before[service].items()
            if rows and table not in kept_tables(service) | GROWING
        }
        # Every table that held rows of the tenant is in the report with (at least, for
        # rows made after the count above: inbox marks, usage reports) that many rows.
        short = {t: (n, purged.get(t, 0)) for t, n in expected.items() if purged.get(t, 0) < n}
        assert not short, f"{service}: rows before vs reported purged: {short}"
        traces = await settled_traces(superuser_dbs[service], tenant, kept_tables(service))
        assert traces == [], f"{service} still holds the tenant in {traces}"
    first = {service: sent[service][0] for service in PURGING}
    assert {"accounts", "api_keys", "sso_connections", "events"} <= counts(first["identity"]).keys()
    assert {"scim_users", "scim_groups", "scim_group_members"} <= counts(
        first["provisioning"]
    ).keys()
    assert {"endpoints", "messages", "deliveries", "attempts"} <= counts(first["webhooks"]).keys()
    assert "tenant_rate_policies" in counts(first["ratelimit"])
    assert await redis_keys_of(stack, tenant.tenant_id) == []
    assert sum(report.redis_keys for report in first.values()) > 0

    for service in PURGING:
        after = await rows_by_table(superuser_dbs[service], neighbour.tenant_id)
        before = neighbours_before[service]
        assert {t: n for t, n in after.items() if t not in GROWING} == {
            t: n for t, n in before.items() if t not in GROWING
        }, service
        assert all(after[t] >= before[t] for t in GROWING & before.keys()), service
    assert await redis_keys_of(stack, neighbour.tenant_id)

    # Redelivered (the same record again): the same report from each service.
    await publish(stack, request)
    again = await reports(stack, request.payload.purge_id, PURGING, each=2)
    assert {s: again[s][1] for s in PURGING} == first

    # A late event of the tenant, then one of the neighbour behind it on the same
    # partition: once the neighbour's is applied everywhere, the tenant's was handled, and
    # dropped (it would have brought the tenant's projection back, its marker in the name).
    await publish(
        stack,
        suspension(tenant.tenant_id, tenant.marker),
        suspension(neighbour.tenant_id, neighbour.marker),
        partition=0,
    )

    async def neighbour_suspended() -> bool:
        statuses = [
            await superuser_dbs[s].fetchval(
                "SELECT status FROM tenant_projection WHERE tenant_id = $1", neighbour.tenant_id
            )
            for s in PURGING
        ]
        return statuses == ["suspended"] * len(PURGING)

    await eventually(neighbour_suspended, timeout=60, message="the neighbour's suspension")
    for service in PURGING:
        traces = await traces_of(superuser_dbs[service], tenant, kept_tables(service))
        assert traces == [], f"a late event brought back {traces} in {service}"


def worker_pid(service: str) -> int:
    return int((REPO / ".local" / "run" / f"{service}-worker.pid").read_text().strip())


async def test_a_worker_killed_mid_purge_finishes_after_restart_with_the_right_counts(
    stack: Stack, operator_headers: dict[str, str], superuser_dbs: dict[str, asyncpg.Pool]
) -> None:
    marker = f"purge-{uuid4().hex[:12]}"
    tenant_id = await new_tenant(stack, operator_headers, marker)
    db = superuser_dbs["provisioning"]
    users = 5000
    await db.execute(
        """INSERT INTO scim_users (id, tenant_id, user_name, display_name, emails)
           SELECT gen_random_uuid(), $1, $2 || '-' || n || '@example.com', $2 || ' ' || n,
                  jsonb_build_array(jsonb_build_object('value', $2 || n || '@example.com'))
           FROM generate_series(1, $3) AS n""",
        tenant_id,
        marker,
        users,
    )
    # Hold one of the tenant's rows: the purge stops there until the worker is killed.
    holder = await db.acquire()
    held = holder.transaction()
    await held.start()
    await holder.fetchval(
        "SELECT id FROM scim_users WHERE tenant_id = $1 LIMIT 1 FOR UPDATE", tenant_id
    )
    request = purge_request(tenant_id)
    killed = worker_pid("provisioning")
    try:
        await publish(stack, request)

        async def purge_waiting() -> bool:
            return bool(
                await db.fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock'
                         AND query LIKE '%purge_tenant_rows%'"""
                )
            )

        await eventually(purge_waiting, timeout=60, message="the purge held on the row lock")
        os.kill(killed, signal.SIGKILL)
    finally:
        await held.rollback()
        await db.release(holder)

    async def gone() -> bool:
        try:
            os.kill(killed, 0)
        except ProcessLookupError:
            return True
        return False

    await eventually(gone, timeout=10, message="the killed worker gone")
    assert (
        await db.fetchval("SELECT count(*) FROM scim_users WHERE tenant_id = $1", tenant_id)
        == users
    ), "the killed purge rolled back"
    await asyncio.to_thread(
        subprocess.run,
        ["bash", str(REPO / "deploy" / "local" / "services.sh"), "start", "provisioning"],
        check=True,
        capture_output=True,
        timeout=150,
    )
    assert worker_pid("provisioning") != killed

    sent = await reports(stack, request.payload.purge_id, ("provisioning",))
    [report] = sent["provisioning"]
    assert counts(report)["scim_users"] == users
    assert await db.fetchval("SELECT count(*) FROM scim_users WHERE tenant_id = $1", tenant_id) == 0
    assert await db.fetchval(
        "SELECT tables @> $2::jsonb FROM tenant_purges WHERE tenant_id = $1",
        tenant_id,
        f'[{{"table": "scim_users", "rows": {users}}}]',
    )


@pytest.mark.parametrize("service", SERVICES)
async def test_every_table_of_every_service_is_purged_or_says_why_not(
    stack: Stack, service: str
) -> None:
    """A table without a tenant_id column must be named in tenantry_service.purge (not
    tenant data, purged through a foreign key, or by a rule of its own), else the purge
    would not know whether it holds the tenant's rows: it refuses to run, and this fails
    first, naming the table."""
    conn = await asyncpg.connect(stack.owner_dsn(stack.service_database(service)))
    try:
        schema = await read_schema(conn)
    finally:
        await conn.close()
    assert schema.unclassified() == []
    assert {"events", "inbox", "tenant_projection"} <= schema.tenant_tables
