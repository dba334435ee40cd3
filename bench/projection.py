"""Write-to-projection latency through Kafka, on the running services.

Sequential: TENANTS times, POST /v1/tenants on tenancy (as the operator), then poll the
identity service's database until its tenant_projection row appears. The path: tenancy's
transaction (event + outbox, NOTIFY at commit) -> tenancy worker's relay (fetch, publish,
acks=all, delete) -> Kafka -> identity worker's EventConsumer (inbox claim, then identity's
handlers of tenant.created in one transaction: the projection upsert and the owner's
account, then the commit). Each tenant's time is split by the host's wall clock: request ->
the record's CreateTime on Kafka (tenancy's request and relay) -> the start of identity's
consumer transaction (its inbox row's processed_at: Kafka, the fetch, and whatever records
were ahead on identity's consumer) -> row seen (identity's handlers and commit).

Baselines in the same run:
- the POST itself (until the response is back);
- a raw aiokafka produce -> consume round trip on a private 1-partition topic (producer
  with the relay's settings, consumer already assigned and at the end of the partition):
  the floor that Kafka alone puts under the projection latency.

Burst: BURST tenants posted with CONCURRENCY requests in flight; POSTs/s against the rate at
which their rows land in identity's projection (first POST sent -> last row seen), and the
rate at which the backlog left when the last POST returned drains (the pipeline's pace
with nothing else asking the CPUs for HTTP work).

In-process floor (no HTTP, no service code): PIPELINE_EVENTS events appended one at a time
to a scratch database's event store, relayed by `run_relay` (woken by the commit's NOTIFY)
and consumed by an `EventConsumer` attached to a FastStream broker whose handler inserts one
row, each step timestamped: the backbone's share of the services' latency, measurable
without restarting them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faststream.kafka import KafkaBroker
from uuid_utils.compat import uuid4

from bench.common import BenchResult, Context, Row, median, now, ratio
from tenantry_events.consumer import EventConsumer, Outcome, attach
from tenantry_events.envelope import Envelope
from tenantry_events.kafka_codec import KafkaRecord
from tenantry_events.pg import Migration
from tenantry_events.relay import KafkaPublisher, run_relay
from tenantry_events.storage import PostgresEventStore, PostgresInbox, PostgresOutbox
from tenantry_testkit.fixtures import (
    create_scratch_database,
    drop_scratch_database,
    operator_token,
)

TENANTS = 100
WARMUP = 3
ROUND_TRIPS = 100
BURST = 200
CONCURRENCY = 8
POLL_INTERVAL = 0.002  # the resolution of "the row appeared"
TIMEOUT = 15.0  # per tenant; a tenant that does not arrive counts as missing, not as a time
PROJECTION = "identity"
CREATED_TOPIC = "tenant.created"
SLOW = 0.5  # response -> row beyond this is reported (the relay polls every 1 s)
PIPELINE_EVENTS = 100
PIPELINE_WARMUP = 5
PIPELINE_GAP = 0.02  # between events: each one finds the relay and the consumer idle

PIPELINE_SQL = """
CREATE TABLE pipeline_rows (event_id uuid PRIMARY KEY);
GRANT SELECT, INSERT ON pipeline_rows TO {app_role};
"""


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


async def _watch_created(bootstrap: str) -> AIOKafkaConsumer:
    """A consumer at the end of tenant.created: when the relay put each tenant's event there
    (the record's CreateTime, the relay's producer clock)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_topics([CREATED_TOPIC])
        finally:
            await admin.close()
        partitions = [
            TopicPartition(CREATED_TOPIC, p["partition"]) for p in described["partitions"]
        ]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        for partition in partitions:
            await consumer.position(partition)  # resolve the end now, before any POST
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def _sequential(
    client: httpx.AsyncClient, pool: asyncpg.Pool, watch: AIOKafkaConsumer, result: BenchResult
) -> None:
    post = Row("POST /v1/tenants", "request -> response", baseline=True)
    e2e = Row(f"POST -> {PROJECTION} projection row", "request -> row seen")
    after = Row("  of which: response -> row", "response -> row seen")
    missing = 0
    walls: dict[UUID, tuple[float, float]] = {}  # tenant: wall clock at request, at row seen
    for i in range(WARMUP + TENANTS):
        t0, w0 = now(), time.time()
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
            walls[tenant_id] = (w0, w0 + (t2 - t0))
        else:
            missing += 1
    e2e.count = after.count = len(e2e.latencies)
    result.rows += [post, e2e, after, *await _steps(pool, watch, walls)]
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


async def _steps(
    pool: asyncpg.Pool, watch: AIOKafkaConsumer, walls: dict[UUID, tuple[float, float]]
) -> list[Row]:
    """Where each tenant's time went, by wall clocks of one host: the tenant.created
    record's CreateTime on Kafka, and the start of the transaction in which identity's
    consumer claimed the event (its inbox row's processed_at, which is now() of that
    transaction: the handlers ran after it, the row was committed at its end)."""
    on_kafka: dict[UUID, tuple[float, UUID]] = {}
    deadline = now() + TIMEOUT
    while len(on_kafka) < len(walls) and now() < deadline:
        for records in (await watch.getmany(timeout_ms=200)).values():
            for record in records:
                headers = dict(record.headers or ())
                tenant_id = UUID(headers["ce_tenantid"].decode())
                if tenant_id in walls:
                    on_kafka[tenant_id] = (record.timestamp / 1000, UUID(headers["ce_id"].decode()))
    began = {
        r["event_id"]: r["began"].timestamp()
        for r in await pool.fetch(
            """SELECT event_id, min(processed_at) AS began FROM inbox
               WHERE event_id = ANY($1::uuid[]) AND starts_with(consumer, $2)
               GROUP BY event_id""",
            [event_id for _, event_id in on_kafka.values()],
            f"tenantry-{PROJECTION}",
        )
    }
    rows = [
        Row("  of which: request -> on Kafka", "request -> record CreateTime"),
        Row(f"  of which: on Kafka -> {PROJECTION}'s tx began", "CreateTime -> inbox row"),
        Row(f"  of which: {PROJECTION}'s tx began -> row", "inbox row -> row seen"),
    ]
    for tenant_id, (sent, seen) in walls.items():
        if tenant_id in on_kafka and on_kafka[tenant_id][1] in began:
            kafka, event_id = on_kafka[tenant_id]
            marks = (sent, kafka, began[event_id], seen)
            for row, a, b in zip(rows, marks, marks[1:], strict=False):
                row.latencies.append(b - a)
    for row in rows:
        row.count = len(row.latencies)
    return rows


async def _kafka_round_trips(ctx: Context, result: BenchResult) -> None:
    topic = await ctx.private_topic(f"bench.{ctx.run_id}.roundtrip", partitions=1)
    partition = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(
        bootstrap_servers=ctx.stack.kafka_bootstrap,
        enable_idempotence=True,
        acks="all",
        linger_ms=0,  # as KafkaPublisher
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


class _Marks:
    """Per event id, when each step of the pipeline saw it (perf_counter seconds)."""

    def __init__(self) -> None:
        self.at: dict[str, dict[str, float]] = {}
        self.done: dict[str, asyncio.Event] = {}

    def mark(self, event_id: str, step: str) -> None:
        self.at.setdefault(event_id, {})[step] = now()


class _TimedPublisher:
    def __init__(self, inner: KafkaPublisher, marks: _Marks) -> None:
        self.inner = inner
        self.marks = marks

    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        ids = [dict(r.headers)["ce_id"].decode() for r in records]
        for event_id in ids:
            self.marks.mark(event_id, "publish")
        await self.inner.publish(records)
        for event_id in ids:
            self.marks.mark(event_id, "acked")


class _NoDeadLetters:
    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        raise RuntimeError(f"unexpected dead letter for {topic}")


async def _pipeline(ctx: Context, result: BenchResult) -> None:
    """The in-process floor: append -> relay -> Kafka -> EventConsumer, one event at a time."""
    pipe_type = await ctx.private_event_type("pipeline", partitions=3)
    scratch = await create_scratch_database(
        ctx.stack, [Migration("bench", "0001_pipeline.sql", PIPELINE_SQL)], prefix="bench"
    )
    marks = _Marks()

    async def handler(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        await tx.execute("INSERT INTO pipeline_rows (event_id) VALUES ($1)", event.id)

    consumer = EventConsumer(
        group=f"bench-{ctx.run_id}-pipeline",
        db=scratch.db,
        inbox=PostgresInbox(),
        handlers={pipe_type.name: handler},
        dead_letters=_NoDeadLetters(),
    )
    process = consumer.process

    async def observed(
        topic: str, key: bytes | None, headers: Sequence[tuple[str, bytes]], value: bytes
    ) -> Outcome:
        event_id = dict(headers)["ce_id"].decode()
        marks.mark(event_id, "received")
        outcome = await process(topic, key, headers, value)
        marks.mark(event_id, "committed")
        if event_id in marks.done:
            marks.done[event_id].set()
        return outcome

    consumer.process = observed  # type: ignore[method-assign]
    broker = KafkaBroker(
        ctx.stack.kafka_bootstrap, enable_idempotence=True, acks="all", logger=None
    )
    attach(broker, consumer)
    publisher = KafkaPublisher(ctx.stack.kafka_bootstrap, client_id="tenantry-bench-pipeline")
    outbox = PostgresOutbox(scratch.db)
    store = PostgresEventStore(outbox)
    stop = asyncio.Event()
    steps = [
        ("append (1 tx, 1 event)", "start", "commit"),
        ("commit -> relay publishes", "commit", "publish"),
        ("publish -> acked (acks=all)", "publish", "acked"),
        ("acked -> consumer has it", "acked", "received"),
        ("consumer: inbox + handler + commit", "received", "committed"),
    ]
    total = Row("in-process: append -> consumer committed", "append start -> committed")
    parts = [Row(f"  of which: {label}", f"{a} -> {b}") for label, a, b in steps]
    missing = 0
    relay: asyncio.Task[int] | None = None
    try:
        await broker.start()
        await publisher.start()
        relay = asyncio.create_task(
            run_relay(scratch.app_dsn, outbox, _TimedPublisher(publisher, marks), stop)
        )
        for i in range(PIPELINE_WARMUP + PIPELINE_EVENTS):
            # The first events also wait for the consumer group's join: warm-up, untimed.
            event = pipe_type.event(i)
            event_id = str(event.id)
            marks.done[event_id] = asyncio.Event()
            marks.mark(event_id, "start")
            async with scratch.db.transaction() as tx:
                await store.append(tx, f"pipeline-{event_id}", 0, [event])
            marks.mark(event_id, "commit")
            try:
                await asyncio.wait_for(marks.done[event_id].wait(), timeout=TIMEOUT)
            except TimeoutError:
                missing += 1
                continue
            if i >= PIPELINE_WARMUP:
                at = marks.at[event_id]
                total.latencies.append(at["committed"] - at["start"])
                for row, (_, a, b) in zip(parts, steps, strict=True):
                    row.latencies.append(at[b] - at[a])
            await asyncio.sleep(PIPELINE_GAP)
    finally:
        stop.set()
        if relay is not None:
            await relay
        await broker.stop()
        await publisher.stop()
        await drop_scratch_database(ctx.stack, scratch)
    for row in (total, *parts):
        row.count = len(row.latencies)
    total.baseline = True
    result.rows += [total, *parts]
    result.params["pipeline_missing"] = missing
    if missing:
        result.notes.append(f"ANOMALY: {missing} pipeline events never reached the consumer")


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
            "pipeline_events": PIPELINE_EVENTS,
        },
    )
    stack = ctx.stack
    await _pipeline(ctx, result)
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
            watch = await _watch_created(stack.kafka_bootstrap)
            try:
                await _sequential(client, pool, watch, result)
            finally:
                await watch.stop()
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
    result.ratios["median response->row / median in-process pipeline"] = ratio(
        median(rows["of which: response -> row"].latencies),
        median(rows["in-process: append -> consumer committed"].latencies),
    )
    result.notes.append(
        "in-process: the backbone alone (scratch database, private topic, trivial handler, "
        f"{PIPELINE_GAP * 1000:.0f} ms between events); the services add HTTP, their handlers "
        "(identity's tenant.created also creates the owner's account) and a shared consumer"
    )
    result.notes.append(
        f"rows are polled every {POLL_INTERVAL * 1000:.0f} ms on {PROJECTION}'s database; "
        f"the burst's row rate counts from the first POST sent to the last row seen"
    )
    result.notes.append(
        "creates real tenants (slugs bench-*) in the local stack's databases; they stay"
    )
    return result
