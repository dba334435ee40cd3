"""The event backbone end to end on the real broker: event store -> outbox -> relay ->
Kafka -> FastStream consumer with inbox."""

from __future__ import annotations

import asyncio
import random
from typing import Any
from uuid import UUID

import pytest
from uuid_utils.compat import uuid4

from tenantry_events.kafka_codec import to_record
from tenantry_events.relay import KafkaPublisher, run_relay
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_testkit.fixtures import ScratchDatabase, eventually
from tenantry_testkit.stack import Stack

from .conftest import ScratchTopic, read_topic

pytestmark = pytest.mark.kafka


async def effect_counts(db: ScratchDatabase) -> dict[UUID, int]:
    rows = await db.db.pool.fetch("SELECT event_id, applied FROM effects")
    return {r["event_id"]: r["applied"] for r in rows}


async def test_concurrent_writers_relay_consumer_see_exactly_what_was_written(
    stack: Stack,
    scratch_db: ScratchDatabase,
    topic: ScratchTopic,
    start_consumer: Any,
    effects_db: ScratchDatabase,
    producer: Any,
) -> None:
    outbox = PostgresOutbox(scratch_db.db)
    store = PostgresEventStore(outbox)
    written: list[UUID] = []

    async def writer(w: int) -> None:
        tenant = uuid4()
        for i in range(40):
            event = topic.event(w * 1000 + i, tenant_id=tenant, version=i + 1)
            async with scratch_db.db.transaction() as tx:
                await store.append(tx, f"stream-{w}", i, [event])
                # Hold some transactions open so later ids commit first: the trap in which
                # a sequence's commit order is not its value order.
                await asyncio.sleep(random.uniform(0, 0.01))
            written.append(event.id)

    running = await start_consumer(topic)
    publisher = KafkaPublisher(stack.kafka_bootstrap)
    await publisher.start()
    stop = asyncio.Event()
    relay_task = asyncio.create_task(run_relay(scratch_db.app_dsn, outbox, publisher, stop))
    try:
        await asyncio.gather(*(writer(w) for w in range(10)))
        counts = await eventually(
            lambda: _when(effect_counts(effects_db), lambda c: len(c) >= len(written)),
            timeout=60,
            message="every written event applied",
        )
        assert set(counts) == set(written)
        assert set(counts.values()) == {1}
        assert await outbox.pending() == 0

        # Redeliver 20 of them by hand, then a marker on the same key: once the marker is
        # applied, the duplicates before it were consumed, and none had a second effect.
        tenant = uuid4()
        duplicates = [topic.event(i, tenant_id=tenant) for i in range(20)]
        for event in duplicates:
            record = to_record(event)
            for _ in range(2):
                await producer.send_and_wait(
                    record.topic, record.value, key=record.key, headers=record.headers
                )
        marker = topic.event(99_999, tenant_id=tenant)
        mr = to_record(marker)
        await producer.send_and_wait(mr.topic, mr.value, key=mr.key, headers=mr.headers)
        counts = await eventually(
            lambda: _when(effect_counts(effects_db), lambda c: marker.id in c),
            timeout=30,
            message="the marker applied",
        )
        assert all(counts[e.id] == 1 for e in duplicates)
        assert running.outcomes.count("duplicate") >= 20
    finally:
        stop.set()
        await relay_task
        await publisher.stop()


async def test_poison_records_go_to_the_dead_letter_topic_and_consumption_continues(
    stack: Stack,
    topic: ScratchTopic,
    start_consumer: Any,
    effects_db: ScratchDatabase,
    producer: Any,
) -> None:
    await start_consumer(topic)
    tenant = uuid4()
    key = str(tenant).encode()
    # 1. Not a CloudEvent at all.
    await producer.send_and_wait(topic.name, b"\xff not json", key=key, headers=[("x", b"y")])
    # 2. A valid envelope the handler always rejects (n < 0).
    bad = to_record(topic.event(-1, tenant_id=tenant))
    await producer.send_and_wait(bad.topic, bad.value, key=bad.key, headers=bad.headers)
    # 3. A good one after both.
    good = topic.event(5, tenant_id=tenant)
    gr = to_record(good)
    await producer.send_and_wait(gr.topic, gr.value, key=gr.key, headers=gr.headers)

    counts = await eventually(
        lambda: _when(effect_counts(effects_db), lambda c: good.id in c),
        timeout=30,
        message="the good record after the poison ones applied",
    )
    assert counts == {good.id: 1}
    dead = await read_topic(stack, topic.dlt, expected=2)
    assert len(dead) == 2
    errors = sorted(dict(r.headers)["dlt_error_type"].decode() for r in dead)
    assert errors == ["MalformedEvent", "ValueError"]
    for record in dead:
        headers = dict(record.headers)
        assert headers["dlt_original_topic"].decode() == topic.name
        assert headers["dlt_error"]
        assert record.key == key


async def _when(probe: Any, condition: Any) -> Any:
    value = await probe
    return value if condition(value) else None
