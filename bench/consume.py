"""Consumer throughput: records/s of the production consumer path (EventConsumer attached to
a FastStream KafkaBroker: decode, inbox claim + handler in one transaction, then an offset
commit at most every 100 ms) against raw aiokafka consumers of the same records, in the
same run.

A private topic is filled with EVENTS records first (untimed); every variant then reads the
whole topic from the beginning under its own consumer group. The clock runs from the first
record received to the last record done, so the group join is not counted.

- raw aiokafka, getmany, no group: the fetch ceiling;
- raw aiokafka, getone + commit() per record: what the per-record offset commit costs alone;
- EventConsumer.process fed by getmany, no offset commits: the handler path alone
  (decode, transaction with set_config, inbox claim, one INSERT, commit);
- the same loop with a consumer group and commit() after every record: the production
  semantics without FastStream;
- EventConsumer on FastStream (attach, AckPolicy.MANUAL): the production path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faststream.kafka import KafkaBroker

from bench.common import BenchResult, Context, Row, now, ratio
from tenantry_events.consumer import BrokerDeadLetters, EventConsumer, Handler, attach
from tenantry_events.envelope import Envelope
from tenantry_events.kafka_codec import to_record
from tenantry_events.pg import Migration
from tenantry_events.storage import PostgresInbox
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)

EVENTS = 2000
PARTITIONS = 3
TIMEOUT = 60.0  # per variant; a variant that does not finish reports what it did

EFFECTS_SQL = """
CREATE TABLE effects (
    consumer text NOT NULL, event_id uuid NOT NULL, n integer NOT NULL,
    PRIMARY KEY (consumer, event_id));
GRANT SELECT, INSERT, UPDATE ON effects TO {app_role};
"""


def handler_for(group: str) -> Handler[asyncpg.Connection]:
    async def record_effect(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        await tx.execute(
            """INSERT INTO effects (consumer, event_id, n) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING""",
            group,
            event.id,
            event.payload.n,
        )

    return record_effect


class NoDeadLetters:
    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        raise RuntimeError(f"unexpected dead letter for {topic}")


class Progress:
    """First record in, last record done, per-record times; `done` once `expected` are."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.first: float | None = None
        self.last: float | None = None
        self.latencies: list[float] = []
        self.outcomes: dict[str, int] = {}
        self.done = asyncio.Event()
        self.count: int | None = None  # when no per-record latencies are taken

    def started(self) -> float:
        t = now()
        if self.first is None:
            self.first = t
        return t

    def finished(self, started: float, outcome: str = "applied") -> None:
        self.last = now()
        self.latencies.append(self.last - started)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if len(self.latencies) >= self.expected:
            self.done.set()

    def row(self, label: str, op: str, baseline: bool) -> Row:
        wall = self.last - self.first if self.first is not None and self.last is not None else None
        count = self.count if self.count is not None else len(self.latencies)
        return Row(label, op, self.latencies, count, wall, baseline)


def _consumer(ctx: Context, topic: str, group: str | None, **kwargs: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=ctx.stack.kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kwargs,
    )


async def raw_getmany(ctx: Context, topic: str) -> Progress:
    progress = Progress(EVENTS)
    consumer = _consumer(ctx, topic, None)
    await consumer.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            # No group to join: the clock starts at the first poll, not the first record
            # (which would come with the whole topic in one fetch).
            progress.first = now()
            count = 0
            while count < EVENTS:
                batch = await consumer.getmany(timeout_ms=500)
                count += sum(len(records) for records in batch.values())
            progress.last = now()
            progress.count = count
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return progress


async def raw_commit_each(ctx: Context, topic: str, group: str) -> Progress:
    progress = Progress(EVENTS)
    consumer = _consumer(ctx, topic, group)
    await consumer.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            while not progress.done.is_set():
                await consumer.getone()
                t0 = progress.started()
                await consumer.commit()
                progress.finished(t0)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return progress


def _event_consumer(
    scratch: ScratchDatabase, group: str, topic: str, dead_letters: Any
) -> EventConsumer[asyncpg.Connection]:
    return EventConsumer(
        group=group,
        db=scratch.db,
        inbox=PostgresInbox(),
        handlers={topic: handler_for(group)},
        dead_letters=dead_letters,
    )


async def process_loop(
    ctx: Context, scratch: ScratchDatabase, topic: str, group: str, *, commit_each: bool
) -> Progress:
    """EventConsumer.process driven by a plain aiokafka loop; with `commit_each`, under a
    consumer group with commit() after every record (what FastStream does, without it)."""
    progress = Progress(EVENTS)
    event_consumer = _event_consumer(scratch, group, topic, NoDeadLetters())
    consumer = _consumer(ctx, topic, group if commit_each else None)
    await consumer.start()
    try:
        async with asyncio.timeout(TIMEOUT):
            while not progress.done.is_set():
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        t0 = progress.started()
                        outcome = await event_consumer.process(
                            r.topic, r.key, list(r.headers or ()), r.value
                        )
                        if commit_each:
                            await consumer.commit(
                                {TopicPartition(r.topic, r.partition): r.offset + 1}
                            )
                        progress.finished(t0, outcome)
    except TimeoutError:
        pass
    finally:
        await consumer.stop()
    return progress


async def faststream(ctx: Context, scratch: ScratchDatabase, topic: str, group: str) -> Progress:
    progress = Progress(EVENTS)
    broker = KafkaBroker(
        ctx.stack.kafka_bootstrap, enable_idempotence=True, acks="all", logger=None
    )
    event_consumer = _event_consumer(scratch, group, topic, BrokerDeadLetters(broker))
    original = event_consumer.process

    async def observed(*args: Any, **kwargs: Any) -> Any:
        t0 = progress.started()
        outcome = await original(*args, **kwargs)
        progress.finished(t0, outcome)
        return outcome

    event_consumer.process = observed  # type: ignore[method-assign]
    attach(broker, event_consumer)
    await broker.start()
    try:
        await asyncio.wait_for(progress.done.wait(), timeout=TIMEOUT)
    except TimeoutError:
        pass
    finally:
        await broker.stop()
    return progress


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        "consume",
        "EventConsumer on FastStream vs raw aiokafka consumers (private topic)",
        "records",
        params={"events": EVENTS, "partitions": PARTITIONS},
    )
    topic = await ctx.private_event_type("consume", partitions=PARTITIONS)
    producer = AIOKafkaProducer(
        bootstrap_servers=ctx.stack.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        futures = []
        for n in range(EVENTS):
            r = to_record(topic.event(n))
            futures.append(await producer.send(r.topic, r.value, r.key, headers=r.headers))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()

    groups = {
        v: f"bench-{ctx.run_id}-{v}" for v in ("commit", "process", "process-commit", "faststream")
    }
    scratch = await create_scratch_database(
        ctx.stack, [Migration("bench", "0001_effects.sql", EFFECTS_SQL)], prefix="bench"
    )
    try:
        fetched = await raw_getmany(ctx, topic.name)
        committed = await raw_commit_each(ctx, topic.name, groups["commit"])
        processed = await process_loop(
            ctx, scratch, topic.name, groups["process"], commit_each=False
        )
        hand_rolled = await process_loop(
            ctx, scratch, topic.name, groups["process-commit"], commit_each=True
        )
        production = await faststream(ctx, scratch, topic.name, groups["faststream"])
        effects = {
            r["consumer"]: r["n"]
            for r in await scratch.db.pool.fetch(
                "SELECT consumer, count(*) AS n FROM effects GROUP BY consumer"
            )
        }
    finally:
        await drop_scratch_database(ctx.stack, scratch)

    rows = [
        fetched.row("raw aiokafka getmany, no group", "-", True),
        committed.row("raw aiokafka getone + commit() each", "commit()", True),
        processed.row("EventConsumer.process, no commit", "process (1 tx)", True),
        hand_rolled.row("EventConsumer.process + commit() each", "process + commit", True),
        production.row("EventConsumer on FastStream", "process (1 tx)", False),
    ]
    result.rows += rows
    _, commit, process, process_commit, fast = rows
    result.ratios["FastStream / process-only records/s"] = ratio(fast.rate, process.rate)
    result.ratios["process+commit each / process-only records/s"] = ratio(
        process_commit.rate, process.rate
    )
    result.ratios["FastStream / process+commit each records/s"] = ratio(
        fast.rate, process_commit.rate
    )
    if commit.rate and process.rate:
        # If the offset commit and the handler simply added up per record:
        additive = 1 / (1 / commit.rate + 1 / process.rate)
        result.params["additive_model_records_per_s"] = additive
        result.ratios["FastStream / additive model (commit-only + process-only)"] = ratio(
            fast.rate, additive
        )
    result.params.update(
        effects_rows=effects,
        outcomes={
            "process": processed.outcomes,
            "process-commit": hand_rolled.outcomes,
            "faststream": production.outcomes,
        },
    )
    variants = (
        (committed, "commit"),
        (processed, "process"),
        (hand_rolled, "process-commit"),
        (production, "faststream"),
    )
    for progress, label in variants:
        if len(progress.latencies) < EVENTS:
            result.notes.append(
                f"ANOMALY: {label} variant handled {len(progress.latencies)}/{EVENTS} in {TIMEOUT}s"
            )
    result.notes.append(
        f"{EVENTS} records over {PARTITIONS} partitions, read from the start by each variant; "
        "rate = records / (first record in -> last record done); raw getmany: from its "
        "first poll"
    )
    return result
