"""Moving a tenant between two real regions (issue 18 §7; docs/residency.md "Moving a
tenant"), on the two-region stack (tenantry_testkit.regions, started when it does not
answer, like bench/residency.py).

Per sample: a new tenant (enterprise plan) in its home region, seeded straight into its
databases as bench/lifecycle.py does (SCIM users in provisioning; a webhook endpoint, with
a secret sealed by the region's key, and messages, deliveries and attempts in webhooks),
or not seeded ("empty": an owner-less tenant, the fixed cost). Then, timed:

1. baseline: a customer export of the same tenant (POST /v1/tenants/{id}/exports, polled
   until `completed`): the export saga alone, the first step of a move;
2. the move: POST /v1/tenants/{id}/moves, polled in the new region until its move is
   `completed` (the tenant imported, routed there by the directory, active again), and in
   the old region until its copy is purged (`completed` there).

The samples alternate us -> eu and eu -> us. Sizes: BENCH_MOVE_USERS, BENCH_MOVE_ATTEMPTS
(the seeded tenant), BENCH_MOVE_SAMPLES (per size). What a run leaves: the moved tenants,
in their new regions.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from uuid_utils.compat import uuid4

from bench.common import BenchResult, Context, Row, median, now, ratio
from tenantry_credentials.crypto import SecretBox
from tenantry_testkit.fixtures import operator_token
from tenantry_testkit.regions import Region, running_regions
from tenantry_webhooks.endpoint_secrets import EndpointSecrets

USERS = int(os.environ.get("BENCH_MOVE_USERS", "5000"))
ATTEMPTS = int(os.environ.get("BENCH_MOVE_ATTEMPTS", "20000"))
SAMPLES = int(os.environ.get("BENCH_MOVE_SAMPLES", "4"))
ATTEMPTS_PER_DELIVERY = 4
POLL_EVERY = 0.1
TIMEOUT = 900.0


@dataclass
class Regions:
    regions: dict[str, Region]
    operators: dict[str, dict[str, str]]

    def url(self, region: str, path: str) -> str:
        return f"{self.regions[region].service_url('tenancy')}{path}"


async def seed(region: Region, tenant_id: UUID) -> int:
    """The tenant's rows, as the superuser (past RLS); returns how many."""
    marker = uuid4().hex[:10]
    messages = max(1, ATTEMPTS // ATTEMPTS_PER_DELIVERY)
    conn = await asyncpg.connect(region.super_dsn("tenantry_provisioning"))
    try:
        await conn.execute(
            """INSERT INTO scim_users (id, tenant_id, user_name, display_name, emails)
               SELECT gen_random_uuid(), $1, $2 || '-' || n || '@example.com', $2 || ' ' || n,
                      jsonb_build_array(jsonb_build_object('value', $2 || n || '@example.com'))
               FROM generate_series(1, $3) AS n""",
            tenant_id,
            marker,
            USERS,
        )
    finally:
        await conn.close()
    endpoint = f"ep_{marker}"
    secret = EndpointSecrets(SecretBox.from_base64(region.env["TENANTRY_MASTER_KEY"]))
    conn = await asyncpg.connect(region.super_dsn("tenantry_webhooks"))
    try:
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO endpoints (endpoint_id, tenant_id, url, event_types, secret,
                                          enabled, disabled_reason)
                   VALUES ($1, $2, 'http://127.0.0.1:9/hook', '{tenant.updated}', $3, false,
                           'benchmark')""",
                endpoint,
                tenant_id,
                secret.seal(endpoint, f"whsec_{marker}"),
            )
            await conn.execute(
                """INSERT INTO messages (message_id, tenant_id, event_id, event_type, body)
                   SELECT 'msg_' || $2 || '_' || n, $1::uuid, gen_random_uuid(),
                          'tenant.updated',
                          convert_to(jsonb_build_object('n', n, 'note', repeat('x', 120))::text,
                                     'UTF8')
                   FROM generate_series(1, $3) AS n""",
                tenant_id,
                marker,
                messages,
            )
            await conn.execute(
                """INSERT INTO deliveries (message_id, endpoint_id, tenant_id, status, attempts,
                                           last_status)
                   SELECT message_id, $2, tenant_id, 'succeeded', $3, 200
                   FROM messages WHERE tenant_id = $1""",
                tenant_id,
                endpoint,
                ATTEMPTS_PER_DELIVERY,
            )
            await conn.execute(
                """INSERT INTO attempts (delivery_id, tenant_id, message_id, endpoint_id,
                                         attempt, started_at, latency_ms, status_code)
                   SELECT d.delivery_id, d.tenant_id, d.message_id, d.endpoint_id, a, now(),
                          20, 200
                   FROM deliveries d CROSS JOIN generate_series(1, $2) AS a
                   WHERE d.tenant_id = $1""",
                tenant_id,
                ATTEMPTS_PER_DELIVERY,
            )
    finally:
        await conn.close()
    return USERS + 1 + 2 * messages + messages * ATTEMPTS_PER_DELIVERY


async def _json(response: httpx.Response, status: int, what: str) -> dict[str, Any]:
    if response.status_code != status:
        raise RuntimeError(f"{what}: {response.status_code} {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


async def _until(
    http: httpx.AsyncClient, url: str, headers: dict[str, str], done: str, key: str = "state"
) -> dict[str, Any]:
    t0 = now()
    while now() - t0 < TIMEOUT:
        answer = await http.get(url, headers=headers)
        if answer.status_code == 200:
            body: dict[str, Any] = answer.json()
            if body.get(key) == done:
                return body
            if body.get(key) == "failed":
                raise RuntimeError(f"{url}: failed: {body.get('failure')}")
        await asyncio.sleep(POLL_EVERY)
    raise RuntimeError(f"{url}: not {done} within {TIMEOUT:.0f} s")


@dataclass
class Sample:
    rows: int
    export: float
    arrived: float
    purged: float


async def sample(
    http: httpx.AsyncClient, regions: Regions, home: str, other: str, seeded: bool
) -> Sample:
    ops = regions.operators
    slug = f"bench-move-{uuid4().hex[:10]}"
    made = await http.post(
        regions.url(home, "/v1/tenants"),
        json={"name": f"Bench {slug}", "slug": slug, "plan": "enterprise", "home_region": home},
        headers=ops[home],
    )
    tenant_id = UUID((await _json(made, 201, "POST /v1/tenants"))["tenant_id"])
    rows = await seed(regions.regions[home], tenant_id) if seeded else 0
    base = f"/v1/tenants/{tenant_id}"

    t0 = now()
    job = await _json(
        await http.post(regions.url(home, f"{base}/exports"), json={}, headers=ops[home]),
        202,
        "POST exports",
    )
    await _until(
        http,
        regions.url(home, f"{base}/exports/{job['export_id']}"),
        ops[home],
        "completed",
        key="status",
    )
    export = now() - t0

    t0 = now()
    move = await _json(
        await http.post(
            regions.url(home, f"{base}/moves"),
            json={"to_region": other, "reason": "benchmark"},
            headers=ops[home],
        ),
        202,
        "POST moves",
    )
    path = f"{base}/moves/{move['move_id']}"
    await _until(http, regions.url(other, path), ops[other], "completed")
    arrived = now() - t0
    await _until(http, regions.url(home, path), ops[home], "completed")
    return Sample(rows, export, arrived, now() - t0)


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        "region_move",
        "a tenant moved between regions (to active there; old copy purged) vs its export",
        "moves",
        params={
            "samples_per_size": SAMPLES,
            "seeded_scim_users": USERS,
            "seeded_webhook_attempts": ATTEMPTS,
            "directions": "alternating us -> eu, eu -> us; a new tenant each",
            "poll_every_s": POLL_EVERY,
        },
    )
    result.params["load_average_at_start"] = os.getloadavg()
    with running_regions() as running:
        operators = {
            name: {"Authorization": f"Bearer {await operator_token(region)}"}
            for name, region in running.items()
        }
        regions = Regions(running, operators)
        async with httpx.AsyncClient(timeout=60, follow_redirects=False) as http:
            for seeded, size in ((False, "empty tenant"), (True, "seeded tenant")):
                samples = [
                    await sample(http, regions, *(("us", "eu") if i % 2 == 0 else ("eu", "us")),
                                 seeded)
                    for i in range(SAMPLES)
                ]  # fmt: skip
                export = Row(f"{size}: export alone", "POST -> completed", baseline=True)
                arrived = Row(f"{size}: move, to active in the new region", "POST -> completed")
                purged = Row(f"{size}: move, old copy purged", "POST -> completed there")
                for s in samples:
                    export.latencies.append(s.export)
                    arrived.latencies.append(s.arrived)
                    purged.latencies.append(s.purged)
                result.rows += [export, arrived, purged]
                result.ratios[f"{size}: move / export, medians"] = ratio(
                    median(arrived.latencies), median(export.latencies)
                )
                if seeded:
                    rows = samples[0].rows
                    result.params["seeded_rows_per_tenant"] = rows
                    result.ratios[f"{size}: rows moved per second (median)"] = ratio(
                        rows, median(arrived.latencies)
                    )
    result.params["load_average_at_end"] = os.getloadavg()
    return result
