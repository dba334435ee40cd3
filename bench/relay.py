"""Relay publish rate: OutboxRelay + KafkaPublisher draining a filled outbox to a private
topic, against a raw aiokafka producer sending the same records without the outbox.

Each of ROUNDS rounds: the raw baselines send EVENTS records, then the outbox of a scratch
database is filled with the same EVENTS events, PUT_BATCH per transaction, alternately
through `PostgresOutbox.put` (rows that hold their headers: events of no stream) and
`PostgresEventStore.append` (rows whose headers the relay builds from the event's row: what
a service's outbox mostly holds); both timed too, for reference. Then `OutboxRelay.drain()`
publishes them in batches of BATCH (the relay's default: fetch oldest BATCH, publish and
wait for every ack, delete them). The relay's outbox and publisher are wrapped to time each
step.

Baselines, same records, same producer settings as KafkaPublisher (idempotent, acks=all,
linger_ms=0), another private topic:
- raw producer, BATCH per wait: send BATCH records, wait for their acks, repeat (the relay's
  publish pattern without Postgres);
- raw producer, pipelined: send every record, then wait for all acks (the producer's ceiling).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.common import BenchResult, Context, Row, now, ratio
from tenantry_events.envelope import Envelope
from tenantry_events.kafka_codec import KafkaRecord, to_record
from tenantry_events.relay import KafkaPublisher, OutboxRelay
from tenantry_events.storage import OutboxEntry, PostgresEventStore, PostgresOutbox
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)

EVENTS = 20_000
BATCH = 500  # OutboxRelay's default batch_size
PUT_BATCH = 500
PARTITIONS = 3
ROUNDS = 3


class TimedOutbox:
    """The relay's outbox, with the time of each fetch and remove recorded."""

    def __init__(self, inner: PostgresOutbox) -> None:
        self.inner = inner
        self.fetches: list[float] = []
        self.removes: list[float] = []

    async def put(self, tx: asyncpg.Connection, events: Sequence[Envelope[Any]]) -> None:
        await self.inner.put(tx, events)

    async def fetch(self, limit: int) -> list[OutboxEntry]:
        t0 = now()
        entries = await self.inner.fetch(limit)
        self.fetches.append(now() - t0)
        return entries

    async def remove(self, ids: Sequence[int]) -> None:
        t0 = now()
        await self.inner.remove(ids)
        self.removes.append(now() - t0)

    async def pending(self) -> int:
        return await self.inner.pending()


class TimedPublisher:
    def __init__(self, inner: KafkaPublisher) -> None:
        self.inner = inner
        self.publishes: list[float] = []

    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        t0 = now()
        await self.inner.publish(records)
        self.publishes.append(now() - t0)


def raw_producer(bootstrap: str) -> AIOKafkaProducer:
    """The same settings as KafkaPublisher's producer."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id="tenantry-bench-raw",
        enable_idempotence=True,
        acks="all",
        linger_ms=0,
        request_timeout_ms=10_000,
        retry_backoff_ms=200,
    )


async def topic_size(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
        begins = await consumer.beginning_offsets(partitions)
        return int(sum(ends[p] - begins[p] for p in partitions))
    finally:
        await consumer.stop()


async def _raw_round(
    producer: AIOKafkaProducer, records: list[KafkaRecord], batched: Row, pipelined: Row
) -> None:
    latencies, t_all = [], now()
    for i in range(0, len(records), BATCH):
        t0 = now()
        futures = [
            await producer.send(r.topic, value=r.value, key=r.key, headers=r.headers)
            for r in records[i : i + BATCH]
        ]
        await asyncio.gather(*futures)
        latencies.append(now() - t0)
    batched.add(latencies, len(records), now() - t_all)

    t_all = now()
    futures = [
        await producer.send(r.topic, value=r.value, key=r.key, headers=r.headers) for r in records
    ]
    await asyncio.gather(*futures)
    pipelined.add([], len(records), now() - t_all)


async def _relay_round(
    outbox: PostgresOutbox,
    scratch: ScratchDatabase,
    publisher: KafkaPublisher,
    events: list[Envelope[Any]],
    rows: dict[str, Row],
) -> list[int]:
    """Fill the outbox, drain it with the relay; return pending before and after."""
    store = PostgresEventStore(outbox)
    latencies: dict[str, list[float]] = {"put": [], "append": []}
    fill_started = now()
    for n, i in enumerate(range(0, len(events), PUT_BATCH)):
        batch, via = events[i : i + PUT_BATCH], "put" if n % 2 == 0 else "append"
        t0 = now()
        async with scratch.db.transaction() as tx:
            if via == "put":
                await outbox.put(tx, batch)
            else:
                await store.append(tx, f"relay-{batch[0].id}", 0, batch)
        latencies[via].append(now() - t0)
    fill_wall = now() - fill_started
    for via, samples in latencies.items():
        # Each kind's share of the fill's wall time, by its share of the time spent.
        share = sum(samples) / sum(sum(x) for x in latencies.values())
        rows[f"fill-{via}"].add(samples, len(samples) * PUT_BATCH, fill_wall * share)
    before = await outbox.pending()

    timed_outbox, timed_publisher = TimedOutbox(outbox), TimedPublisher(publisher)
    relay = OutboxRelay(timed_outbox, timed_publisher, batch_size=BATCH)
    t0 = now()
    await asyncio.wait_for(relay.drain(), timeout=120)
    wall = now() - t0
    fetches = timed_outbox.fetches[: len(timed_publisher.publishes)]  # the last one is empty
    per_batch = [
        f + p + r
        for f, p, r in zip(fetches, timed_publisher.publishes, timed_outbox.removes, strict=True)
    ]
    rows["relay"].add(per_batch, relay.published, wall)
    rows["fetch"].latencies += fetches
    rows["publish"].latencies += timed_publisher.publishes
    rows["delete"].latencies += timed_outbox.removes
    return [before, await outbox.pending()]


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        "relay",
        "outbox relay publish rate vs raw aiokafka producer",
        "events",
        params={
            "events": EVENTS,
            "batch": BATCH,
            "put_batch": PUT_BATCH,
            "partitions": PARTITIONS,
            "rounds": ROUNDS,
        },
    )
    bootstrap = ctx.stack.kafka_bootstrap
    topic = await ctx.private_event_type("relay", partitions=PARTITIONS)
    raw_topic = await ctx.private_topic(f"{topic.name}-raw", partitions=PARTITIONS)
    rows = {
        "raw": Row(f"raw producer, {BATCH} per wait", f"{BATCH} acked", baseline=True),
        "pipelined": Row("raw producer, pipelined", "-", baseline=True),
        "relay": Row("OutboxRelay.drain + KafkaPublisher", f"{BATCH}: fetch+publish+delete"),
        "fetch": Row("relay step: outbox fetch", f"SELECT {BATCH}"),
        "publish": Row("relay step: publish", f"{BATCH} acked"),
        "delete": Row("relay step: outbox delete", f"DELETE {BATCH}"),
        "fill-put": Row(f"PostgresOutbox.put (fill), {PUT_BATCH}/tx", f"1 tx, {PUT_BATCH} events"),
        "fill-append": Row(
            f"PostgresEventStore.append (fill), {PUT_BATCH}/tx", f"1 tx, {PUT_BATCH} events"
        ),
    }
    result.rows += rows.values()
    pending: list[list[int]] = []

    scratch = await create_scratch_database(ctx.stack, prefix="bench")
    producer = raw_producer(bootstrap)
    publisher = KafkaPublisher(bootstrap, client_id="tenantry-bench-relay")
    try:
        await producer.start()
        await publisher.start()
        await producer.partitions_for(raw_topic)  # metadata, as a running relay has it
        outbox = PostgresOutbox(scratch.db)
        for _ in range(ROUNDS):
            # Fresh events each round (the topic's records stay unique); the same records
            # go raw and through the outbox. The rounds alternate raw and relay.
            events = [topic.event(n) for n in range(EVENTS)]
            records = [msgspec.structs.replace(to_record(e), topic=raw_topic) for e in events]
            await _raw_round(producer, records, rows["raw"], rows["pipelined"])
            pending.append(await _relay_round(outbox, scratch, publisher, events, rows))
    finally:
        await publisher.stop()
        await producer.stop()
        await drop_scratch_database(ctx.stack, scratch)
    relay_records = await topic_size(bootstrap, topic.name)
    raw_records = await topic_size(bootstrap, raw_topic)

    result.ratios["relay/raw events/s (same batching)"] = ratio(
        rows["relay"].rate, rows["raw"].rate
    )
    result.ratios["relay/raw events/s (pipelined)"] = ratio(
        rows["relay"].rate, rows["pipelined"].rate
    )
    result.params.update(
        outbox_pending_before_after=pending,
        relay_published=rows["relay"].count,
        relay_topic_records=relay_records,
        raw_topic_records=raw_records,
    )
    result.notes.append(
        f"{ROUNDS} rounds of {EVENTS} events, raw and relay alternating; outbox before/after "
        f"each drain: {pending}; Kafka holds {relay_records} relayed, {raw_records} raw records"
    )
    if relay_records != ROUNDS * EVENTS or any(after for _, after in pending):
        result.notes.append("ANOMALY: the relay did not publish exactly the outbox")
    result.notes.append(
        "the outbox is filled before the relay starts (half its rows by put, half by the "
        "event store's append): a drain of a backlog, not a "
        "service's steady state; fetch/publish/delete are the relay's steps, per batch"
    )
    return result
