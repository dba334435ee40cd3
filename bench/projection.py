"""Write-to-projection latency through Kafka, on the running services.

Sequential: TENANTS times, POST /v1/tenants on tenancy (as the operator), then poll the
identity service's database until its tenant_projection row appears. The path: tenancy's
transaction (event + outbox, NOTIFY at commit) -> tenancy worker's relay (fetch, publish,
acks=all, delete) -> Kafka -> identity worker's EventConsumer (inbox claim + upsert, commit,
then the offset commit).

Baselines in the same run:
- the POST itself (until the response is back);
- a raw aiokafka produce -> consume round trip on a private 1-partition topic (producer
  with the relay's settings, consumer already assigned and at the end of the partition):
  the floor that Kafka alone puts under the projection latency.

Burst: BURST tenants posted with CONCURRENCY requests in flight; POSTs/s against the rate at
which their rows land in identity's projection (first POST sent -> last row seen), and the
rate at which the backlog left when the last POST returned drains (the pipeline's pace
with nothing else asking the CPUs for HTTP work).
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from uuid_utils.compat import uuid4

from bench.common import BenchResult, Context, Row, median, now, ratio
from tenantry_testkit.fixtures import operator_token

TENANTS = 100
WARMUP = 3
ROUND_TRIPS = 100
BURST = 200
CONCURRENCY = 8
POLL_INTERVAL = 0.002  # the resolution of "the row appeared"
TIMEOUT = 15.0  # per tenant; a tenant that does not arrive counts as missing, not as a time
PROJECTION = "identity"
SLOW = 0.5  # response -> row beyond this is reported (the relay polls every 1 s)


def _tenant_body(tag: str) -> dict[str, str]:
    slug = f"bench-{tag}-{uuid4().hex[:10]}"
    return {"name": f"Bench {slug}", "slug": slug, "plan": "team"}


async def _post(client: httpx.AsyncClient, tag: str) -> UUID:
    response = await client.post("/v1/tenants", json=_tenant_body(tag))
    if response.status_code != 201:
        raise RuntimeError(f"POST /v1/tenants: HTTP {response.status_code}: {response.text}")
    return UUID(response.json()["tenant_id"])


async def _wait_row(pool: asyncpg.Pool, tenant_id: UUID) -> bool:
    deadline = now() + TIMEOUT
    while now() < deadline:
        if await pool.fetchval("SELECT 1 FROM tenant_projection WHERE tenant_id = $1", tenant_id):
            return True
        await asyncio.sleep(POLL_INTERVAL)
    return False


async def _sequential(client: httpx.AsyncClient, pool: asyncpg.Pool, result: BenchResult) -> None:
    post = Row("POST /v1/tenants", "request -> response", baseline=True)
    e2e = Row(f"POST -> {PROJECTION} projection row", "request -> row seen")
    after = Row("  of which: response -> row", "response -> row seen")
    missing = 0
    for i in range(WARMUP + TENANTS):
        t0 = now()
        tenant_id = await _post(client, "seq")
        t1 = now()
        arrived = await _wait_row(pool, tenant_id)
        t2 = now()
        if i < WARMUP:
            continue
        post.latencies.append(t1 - t0)
        if arrived:
            e2e.latencies.append(t2 - t0)
            after.latencies.append(t2 - t1)
        else:
            missing += 1
    e2e.count = after.count = len(e2e.latencies)
    result.rows += [post, e2e, after]
    result.params["sequential_missing"] = missing
    slow = sorted(x for x in after.latencies if x > SLOW)
    result.params["sequential_slow"] = len(slow)
    if slow:
        result.notes.append(
            f"ANOMALY: {len(slow)}/{len(after.latencies)} tenants took > {SLOW * 1000:.0f} ms "
            f"from response to row ({', '.join(f'{x * 1000:.0f}' for x in slow)} ms): about "
            "the relay's 1 s poll interval, i.e. the relay missed the commit's NOTIFY and "
            "published on its next poll"
        )
    if missing:
        result.notes.append(f"ANOMALY: {missing} tenants never reached {PROJECTION} in {TIMEOUT}s")


async def _kafka_round_trips(ctx: Context, result: BenchResult) -> None:
    topic = await ctx.private_topic(f"bench.{ctx.run_id}.roundtrip", partitions=1)
    partition = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(
        bootstrap_servers=ctx.stack.kafka_bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
    )
    consumer = AIOKafkaConsumer(bootstrap_servers=ctx.stack.kafka_bootstrap, group_id=None)
    await producer.start()
    await consumer.start()
    row = Row("raw Kafka produce -> consume", "send -> record received", baseline=True)
    try:
        consumer.assign([partition])
        await consumer.seek_to_end(partition)
        await producer.send_and_wait(topic, b"warm", partition=0)
        await asyncio.wait_for(consumer.getone(), timeout=TIMEOUT)
        for i in range(ROUND_TRIPS):
            value = f"rt-{i}".encode()
            t0 = now()
            await producer.send(topic, value, partition=0)
            while True:
                record = await asyncio.wait_for(consumer.getone(), timeout=TIMEOUT)
                if record.value == value:
                    break
            row.latencies.append(now() - t0)
    finally:
        await consumer.stop()
        await producer.stop()
    row.count = len(row.latencies)
    result.rows.append(row)


async def _burst(client: httpx.AsyncClient, pool: asyncpg.Pool, result: BenchResult) -> None:
    ids: list[UUID] = []
    post_latencies: list[float] = []
    queue = list(range(BURST))

    async def poster() -> None:
        while queue:
            queue.pop()
            t0 = now()
            ids.append(await _post(client, "burst"))
            post_latencies.append(now() - t0)

    async def count_rows() -> int:
        return int(
            await pool.fetchval(
                "SELECT count(*) FROM tenant_projection WHERE tenant_id = ANY($1::uuid[])", ids
            )
        )

    t0 = now()
    await asyncio.gather(*(poster() for _ in range(CONCURRENCY)))
    posted = now() - t0
    seen_at_posted = seen = await count_rows()
    deadline = now() + TIMEOUT * 2
    while seen < len(ids) and now() < deadline:
        await asyncio.sleep(0.01)
        seen = await count_rows()
    landed = now() - t0
    result.rows.append(
        Row(
            f"burst: POST x{BURST}, {CONCURRENCY} in flight",
            "request -> response",
            post_latencies,
            count=len(ids),
            wall=posted,
            baseline=True,
        )
    )
    result.rows.append(Row(f"burst: rows in {PROJECTION} projection", "-", count=seen, wall=landed))
    backlog = seen - seen_at_posted
    result.rows.append(
        Row(
            "burst: backlog after the last POST",
            "-",
            count=backlog,
            wall=landed - posted if backlog else None,
        )
    )
    result.params["burst_rows_seen_when_posting_ended"] = seen_at_posted
    result.params["burst_rows_seen"] = seen
    if seen != len(ids):
        result.notes.append(f"ANOMALY: only {seen}/{len(ids)} burst tenants reached {PROJECTION}")


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        "projection",
        f"POST /v1/tenants -> {PROJECTION} tenant_projection (running services)",
        "tenants",
        params={
            "tenants": TENANTS,
            "round_trips": ROUND_TRIPS,
            "burst": BURST,
            "concurrency": CONCURRENCY,
            "poll_interval_s": POLL_INTERVAL,
        },
    )
    stack = ctx.stack
    token = await operator_token(stack)
    pool = await asyncpg.create_pool(
        stack.owner_dsn(stack.service_database(PROJECTION)), min_size=1, max_size=2
    )
    try:
        async with httpx.AsyncClient(
            base_url=stack.service_url("tenancy"),
            timeout=TIMEOUT,
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            await _sequential(client, pool, result)
            await _kafka_round_trips(ctx, result)
            await _burst(client, pool, result)
    finally:
        await pool.close()

    rows = {r.label.strip(): r for r in result.rows}
    e2e = rows[f"POST -> {PROJECTION} projection row"]
    result.ratios["median projection latency / median POST"] = ratio(
        median(e2e.latencies), median(rows["POST /v1/tenants"].latencies)
    )
    result.ratios["median response->row / median raw Kafka round trip"] = ratio(
        median(rows["of which: response -> row"].latencies),
        median(rows["raw Kafka produce -> consume"].latencies),
    )
    burst_post = rows[f"burst: POST x{BURST}, {CONCURRENCY} in flight"]
    burst_rows = rows[f"burst: rows in {PROJECTION} projection"]
    result.ratios["burst: projection rows/s / POSTs/s"] = ratio(burst_rows.rate, burst_post.rate)
    result.notes.append(
        f"rows are polled every {POLL_INTERVAL * 1000:.0f} ms on {PROJECTION}'s database; "
        f"the burst's row rate counts from the first POST sent to the last row seen"
    )
    result.notes.append(
        "creates real tenants (slugs bench-*) in the local stack's databases; they stay"
    )
    return result
