"""A database restart loses nothing and duplicates nothing: relays keep (or re-win) their
lock and never publish two at a time; a consumer applies every record exactly once and
dead-letters none.

The fault is a real restart of a throwaway PostgreSQL cluster of the test's own
(`pg_cluster`: `pg_ctl stop -m fast|immediate`, then start), never the shared stack's.
The relays are real processes (`python -m tenantry_events.relay`); Kafka is the shared
broker with a fresh topic per test. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from uuid_utils.compat import uuid4

from tenantry_events.faults import is_transient_db_error
from tenantry_events.kafka_codec import from_record, to_record
from tenantry_events.pg import Database
from tenantry_events.relay import RELAY_LOCK_KEY
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    eventually,
)
from tenantry_testkit.pg_cluster import PgCluster, pg_cluster
from tenantry_testkit.stack import Stack

from .conftest import (
    EFFECTS_MIGRATION,
    PublishedBatch,
    RelayProcess,
    ScratchTopic,
    start_event_consumer,
)

__all__ = ["pg_cluster"]  # the fixture, imported to be used here

pytestmark = [pytest.mark.kafka, pytest.mark.chaos, pytest.mark.timeout(240)]


@pytest_asyncio.fixture
async def cluster_db(pg_cluster: PgCluster) -> AsyncIterator[ScratchDatabase]:
    scratch = await create_scratch_database(pg_cluster.stack, [EFFECTS_MIGRATION], prefix="rs")
    try:
        yield scratch
    finally:
        await scratch.db.close()  # the cluster and its databases go with the fixture


class OutageTolerantWriter:
    """Appends events to a few streams until stopped, through database restarts: a batch
    whose commit failed may or may not have committed, so once the database answers again
    the writer asks it which, and carries on from the stream's real version."""

    def __init__(self, db: Database, topic: ScratchTopic) -> None:
        self.store = PostgresEventStore(PostgresOutbox(db))
        self.db = db
        self.topic = topic
        self.written: list[UUID] = []
        self.failed_commits = 0
        self.stop = asyncio.Event()

    async def run(self, streams: int = 4) -> None:
        await asyncio.gather(*(self._stream(s) for s in range(streams)))

    async def _stream(self, stream: int) -> None:
        tenant, version, stream_id = uuid4(), 0, f"restart-{stream}"
        while not self.stop.is_set():
            batch = [
                self.topic.event(stream, tenant_id=tenant, version=version + i + 1)
                for i in range(5)
            ]
            try:
                async with self.db.transaction() as tx:
                    version = await self.store.append(tx, stream_id, version, batch)
                self.written += [e.id for e in batch]
            except Exception as exc:
                if not is_transient_db_error(exc):
                    raise
                self.failed_commits += 1
                version = await self._settle(stream_id, [e.id for e in batch])
            await asyncio.sleep(0.05)

    async def _settle(self, stream_id: str, ids: list[UUID]) -> int:
        deadline = time.monotonic() + 60
        while True:
            try:
                async with self.db.transaction() as tx:
                    found = {
                        r["event_id"]
                        for r in await tx.fetch(
                            "SELECT event_id FROM events WHERE event_id = ANY($1)", ids
                        )
                    }
                    version = await tx.fetchval(
                        "SELECT coalesce(max(version), 0) FROM events WHERE stream_id = $1",
                        stream_id,
                    )
                self.written += [i for i in ids if i in found]
                return int(version)
            except Exception as exc:
                if not is_transient_db_error(exc) or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


async def read_everything(stack: Stack, topic: str) -> list[Any]:
    """Every record of `topic` up to its current end, in partition order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        if not partitions:
            partitions = [TopicPartition(topic, p) for p in range(3)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + 30
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            assert time.monotonic() < deadline, "reading the topic took over 30 s"
            for part in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


def overlapping(a: list[PublishedBatch], b: list[PublishedBatch]) -> list[tuple[Any, Any]]:
    return [(x, y) for x in a for y in b if x.started < y.acked and y.started < x.acked]


def owner_changes(relays: dict[str, list[PublishedBatch]]) -> int:
    timeline = sorted((batch.started, name) for name, bs in relays.items() for batch in bs)
    return sum(1 for (_, a), (_, b) in itertools.pairwise(timeline) if a != b)


async def lock_holders(cluster: PgCluster) -> int:
    conn = await asyncpg.connect(cluster.stack.super_dsn(), timeout=10)
    try:
        return int(
            await conn.fetchval(
                """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
                   AND objid = ($1::bigint & 4294967295)::oid""",
                RELAY_LOCK_KEY,
            )
        )
    finally:
        await conn.close()


async def test_two_relays_across_database_restarts_never_publish_at_once(
    stack: Stack,
    pg_cluster: PgCluster,
    cluster_db: ScratchDatabase,
    topic: ScratchTopic,
    tmp_path: Path,
) -> None:
    relays = {
        name: RelayProcess(stack, cluster_db.app_dsn, log=tmp_path / f"relay-{name}.log")
        for name in ("a", "b")
    }
    writer = OutageTolerantWriter(cluster_db.db, topic)
    outbox = PostgresOutbox(cluster_db.db)
    writing: asyncio.Task[None] | None = None
    try:
        relays["a"].start()

        async def a_holds_lease() -> bool:
            return relays["a"].lines("relay holds the lease") == 1

        await eventually(a_holds_lease, timeout=30, message="relay a holds the lease")
        relays["b"].start()  # the standby
        writing = asyncio.create_task(writer.run())

        def published() -> int:
            return sum(len(r.batches()) for r in relays.values())

        async def ten_more_batches(since: int) -> None:
            async def more() -> bool:
                return published() >= since + 10

            await eventually(more, timeout=60, message="relays publishing")

        for mode in ("fast", "immediate"):
            await ten_more_batches(published())
            await pg_cluster.restart(mode, down_for=1.0)
        await ten_more_batches(published())  # publishing again after the last restart
        writer.stop.set()
        await asyncio.wait_for(writing, timeout=60)

        async def drained() -> bool:
            return await _outbox_empty(outbox)

        await eventually(drained, timeout=60, message="outbox drained")
        assert all(r.alive for r in relays.values()), "a relay died with the database restart"
        assert await lock_holders(pg_cluster) == 1, "exactly one relay holds the lock"
    finally:
        writer.stop.set()
        if writing is not None and not writing.done():
            writing.cancel()
        for relay in relays.values():
            relay.stop()

    assert writer.failed_commits > 0, "the restarts happened while writes were committing"
    batches = {name: r.batches() for name, r in relays.items()}
    assert overlapping(batches["a"], batches["b"]) == [], "two relays published at once"
    # Whoever holds the lock publishes until its session ends: the publisher can change
    # only when the database restarts (twice here), never back and forth between them.
    assert owner_changes(batches) <= 2, batches

    records = await read_everything(stack, topic.name)
    events = [from_record(list(r.headers), r.value) for r in records]
    ids = [e.id for e in events]
    assert set(ids) == set(writer.written), "every committed event published, no stranger"
    # A batch acked by Kafka whose DELETE died with the connection is published again by
    # the next holder: at most one batch (50) per restart.
    duplicates = len(ids) - len(set(ids))
    assert duplicates <= 2 * 50, f"{duplicates} duplicate records"
    # Per key, the first copy of each event arrives in aggregate-version order.
    first_versions: dict[UUID, list[int]] = defaultdict(list)
    seen: set[UUID] = set()
    for event in events:  # partition order: one key lives on one partition
        if event.id not in seen:
            seen.add(event.id)
            first_versions[event.tenant_id].append(event.aggregate_version)
    for tenant, versions in first_versions.items():
        assert versions == sorted(versions), f"tenant {tenant}: {versions}"
        assert versions == list(range(1, len(versions) + 1)), f"tenant {tenant}: a gap"


async def test_consumer_across_database_restarts_applies_every_record_once(
    stack: Stack,
    pg_cluster: PgCluster,
    cluster_db: ScratchDatabase,
    topic: ScratchTopic,
) -> None:
    running = await start_event_consumer(
        stack, cluster_db.db, topic, transient_backoff=0.05, max_transient_backoff=1.0
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    sent: list[UUID] = []

    async def produce(count: int) -> None:
        tenants = [uuid4() for _ in range(6)]
        for n in range(count):
            event = topic.event(n, tenant_id=tenants[n % len(tenants)], version=n + 1)
            record = to_record(event)
            await producer.send(record.topic, record.value, key=record.key, headers=record.headers)
            sent.append(event.id)
            if n % 20 == 19:
                await asyncio.sleep(0.05)

    try:
        producing = asyncio.create_task(produce(1200))
        for mode in ("fast", "immediate"):
            since = running.outcomes.count("applied")

            async def fifty_more(since: int = since) -> bool:
                return running.outcomes.count("applied") >= since + 50

            await eventually(fifty_more, timeout=30, message="records being applied")
            await pg_cluster.restart(mode, down_for=1.0)
        await asyncio.wait_for(producing, timeout=60)
        await producer.flush()

        async def all_applied() -> dict[UUID, int] | None:
            return await _applied_all(cluster_db, sent)

        counts = await eventually(
            all_applied, timeout=90, interval=0.2, message=f"all {len(sent)} records applied"
        )
    finally:
        await producer.stop()
        await running.broker.stop()
    assert set(counts) == set(sent)
    assert set(counts.values()) == {1}, "a redelivery had a second effect"
    assert "dead-lettered" not in running.outcomes, "a restart dead-lettered a good record"
    dead = await read_everything(stack, topic.dlt)
    assert dead == []


async def _applied_all(db: ScratchDatabase, sent: list[UUID]) -> dict[UUID, int] | None:
    try:
        rows = await db.db.pool.fetch("SELECT event_id, applied FROM effects")
    except Exception as exc:
        if is_transient_db_error(exc):
            return None
        raise
    counts = {r["event_id"]: r["applied"] for r in rows}
    return counts if set(sent) <= set(counts) else None


async def _outbox_empty(outbox: PostgresOutbox) -> bool:
    try:
        return await outbox.pending() == 0
    except Exception as exc:
        if is_transient_db_error(exc):
            return False
        raise
