"""Sealed personal fields on the real backbone: event store -> outbox -> relay -> Kafka ->
consumer, and a dead letter replayed. Only ciphertext is stored or sent; the handlers see
plaintext, or ERASED once the tenant's key is destroyed."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import msgspec
import pytest
from uuid_utils.compat import uuid4

from tenantry_events.catalog import CATALOG, EventType, dead_letter_topic
from tenantry_events.dead_letters import Replayer, read_dead_letters
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.memory import MemoryDataKeys
from tenantry_events.relay import KafkaPublisher, run_relay
from tenantry_events.sealing import ERASED, SEALED_PREFIX
from tenantry_events.storage import PostgresEventStore, PostgresInbox, PostgresOutbox
from tenantry_events.topics import ensure_topics
from tenantry_testkit.fixtures import ScratchDatabase, eventually
from tenantry_testkit.stack import Stack

from .conftest import ScratchTopic, read_topic, start_event_consumer

pytestmark = pytest.mark.kafka


async def sealed_topic(stack: Stack) -> tuple[ScratchTopic, type[msgspec.Struct]]:
    """A scratch event type whose `email` is personal."""
    suffix = uuid4().hex[:10]
    name = f"test.sealed.{suffix}"
    payload = msgspec.defstruct(
        f"Sealed_{suffix}", [("n", int), ("email", str)], frozen=True, kw_only=True
    )
    CATALOG.register(EventType(name, payload, "tests", False, 1, "sealed test", ("email",)))
    topic = ScratchTopic(name, payload, dead_letter_topic(f"test-group-{suffix}"))
    await ensure_topics(stack.kafka_bootstrap, [name, topic.dlt], partitions=1)
    return topic, payload


async def test_kafka_carries_ciphertext_and_consumers_and_replays_open_it(
    stack: Stack, scratch_db: ScratchDatabase, effects_db: ScratchDatabase
) -> None:
    topic, payload = await sealed_topic(stack)
    keys = MemoryDataKeys()
    outbox = PostgresOutbox(scratch_db.db, keys=keys)
    store = PostgresEventStore(outbox)
    tenant = uuid4()
    marker = f"ada-{uuid4().hex[:8]}@example.test"
    events = [
        new_event(
            payload(n=n, email=marker),
            tenant_id=tenant,
            subject="s",
            aggregate_version=v,
            source="/tenantry/tests",
            region="local",
        )
        for v, n in enumerate([1, -1, 2], start=1)  # -1 is poison for the handler
    ]
    async with scratch_db.db.transaction() as tx:
        await store.append(tx, f"s-{tenant}", 0, events)

    seen: list[tuple[int, str]] = []
    fixed = False

    async def handler(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        if event.payload.n < 0 and not fixed:
            raise ValueError("poison until the fix")
        seen.append((event.payload.n, event.payload.email))

    running = await start_event_consumer(stack, effects_db.db, topic, handler, keys=keys)
    publisher = KafkaPublisher(stack.kafka_bootstrap)
    await publisher.start()
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(scratch_db.app_dsn, outbox, publisher, stop))
    try:
        records = await read_topic(stack, topic.name, 3)
        for record in records:
            assert marker.encode() not in record.value
            assert SEALED_PREFIX.encode() in record.value
        await eventually(
            lambda: _true(len(seen) == 2), timeout=30, message="the two good events applied"
        )
        assert seen == [(1, marker), (2, marker)]
        (letter,) = await eventually(
            lambda: _at_least(read_dead_letters(stack.kafka_bootstrap, [topic.dlt]), 1),
            timeout=30,
            message="the poison event dead-lettered",
        )
        assert marker.encode() not in letter.value, "the dead letter keeps the sealed bytes"

        # Replayed after the fix, and after the tenant's key is gone: structurally fine.
        fixed = True
        keys.destroy(tenant)
        replayer = Replayer(
            db=effects_db.db,
            inbox=PostgresInbox(),
            handlers={topic.name: handler},
            groups=[topic.dlt.removeprefix("dlt.")],
            keys=keys,
        )
        assert await replayer.replay(letter) == "applied"
        assert seen[-1] == (-1, ERASED)
        async with scratch_db.db.transaction() as tx:
            loaded = await store.load(tx, f"s-{tenant}")
        assert [e.payload.email for e in loaded] == [ERASED] * 3
    finally:
        stop.set()
        await relay
        await publisher.stop()
        await running.broker.stop()


async def _true(value: bool) -> bool | None:
    return value or None


async def _at_least(letters: Any, n: int) -> Any:
    found = await letters
    return found if len(found) >= n else None
