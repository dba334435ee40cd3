"""No event is lost when the relay is SIGKILLed mid-stream or the broker stops during writes.

Real processes: the relay runs as its own process (`python -m tenantry_events.relay`) and
is killed with SIGKILL; the real Kafka broker is stopped and started with deploy/local's
stack script. Bounded: a few seconds of writes, deadlines on every wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
import pytest
import pytest_asyncio
from uuid_utils.compat import uuid4

from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_testkit.fixtures import ScratchDatabase, eventually
from tenantry_testkit.stack import Stack

from .conftest import RelayProcess, ScratchTopic

pytestmark = [pytest.mark.kafka, pytest.mark.chaos]


@pytest_asyncio.fixture
async def relay(stack: Stack, scratch_db: ScratchDatabase) -> AsyncIterator[RelayProcess]:
    process = RelayProcess(stack, scratch_db.app_dsn)
    yield process
    process.stop()


class Writer:
    """Appends events to many streams until stopped; remembers every committed id."""

    def __init__(self, db: ScratchDatabase, topic: ScratchTopic) -> None:
        self.store = PostgresEventStore(PostgresOutbox(db.db))
        self.db = db
        self.topic = topic
        self.written: list[UUID] = []
        self.stop = asyncio.Event()

    async def run(self, streams: int = 4) -> None:
        async def one(stream: int) -> None:
            tenant, version = uuid4(), 0
            while not self.stop.is_set():
                batch = [
                    self.topic.event(stream, tenant_id=tenant, version=version + i + 1)
                    for i in range(5)
                ]
                async with self.db.db.transaction() as tx:
                    version = await self.store.append(tx, f"chaos-{stream}", version, batch)
                self.written += [e.id for e in batch]
                await asyncio.sleep(0.05)  # a steady few hundred events a second

        await asyncio.gather(*(one(s) for s in range(streams)))


async def applied(effects_db: ScratchDatabase) -> dict[UUID, int]:
    rows = await effects_db.db.pool.fetch("SELECT event_id, applied FROM effects")
    return {r["event_id"]: r["applied"] for r in rows}


async def wait_all_applied(
    effects_db: ScratchDatabase, written: list[UUID], timeout: float
) -> dict[UUID, int]:
    async def done() -> dict[UUID, int] | None:
        counts = await applied(effects_db)
        return counts if set(written) <= set(counts) else None

    try:
        return await eventually(
            done, timeout=timeout, interval=0.2, message=f"all {len(written)} events applied"
        )
    except AssertionError as exc:
        counts = await applied(effects_db)
        raise AssertionError(f"{exc}: {len(set(written) & set(counts))} applied") from None


async def test_relay_killed_with_sigkill_mid_stream_loses_nothing(
    stack: Stack,
    scratch_db: ScratchDatabase,
    topic: ScratchTopic,
    relay: RelayProcess,
    start_consumer: Any,
    effects_db: ScratchDatabase,
) -> None:
    await start_consumer(topic)
    writer = Writer(scratch_db, topic)
    outbox = PostgresOutbox(scratch_db.db)
    relay.start()
    writing = asyncio.create_task(writer.run())
    # Kill it while it is busy: some published, some still waiting.
    await eventually(lambda: _published_some(effects_db), timeout=30, message="relay publishing")
    relay.kill()
    killed_at_pending = await outbox.pending()
    await asyncio.sleep(1.0)  # writes continue with no relay
    writer.stop.set()
    await writing
    assert await outbox.pending() > 0
    relay.start()
    counts = await wait_all_applied(effects_db, writer.written, timeout=90)
    assert set(counts) == set(writer.written), "every committed event arrived, no stranger"
    assert set(counts.values()) == {1}, "a redelivery never had a second effect"
    assert killed_at_pending >= 0
    await eventually(lambda: _outbox_empty(outbox), timeout=30, message="outbox drained")


async def test_broker_stopped_during_writes_loses_nothing(
    stack: Stack,
    scratch_db: ScratchDatabase,
    topic: ScratchTopic,
    relay: RelayProcess,
    start_consumer: Any,
    effects_db: ScratchDatabase,
) -> None:
    await start_consumer(topic)
    writer = Writer(scratch_db, topic)
    relay.start()
    writing = asyncio.create_task(writer.run())
    try:
        await eventually(
            lambda: _published_some(effects_db), timeout=30, message="relay publishing"
        )
        await _stack("kafka", "stop", stack)
        stopped_at = len(writer.written)
        await asyncio.sleep(4.0)  # writes keep committing while the broker is down
        assert len(writer.written) > stopped_at, "writes do not depend on the broker"
        # The running apis report the broker gone but stay ready: they never write to it.
        async with httpx.AsyncClient(timeout=10) as client:
            ready = await client.get(f"{stack.service_url('tenancy')}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"postgres": True, "kafka": False}
        await _stack("kafka", "start", stack)
        await asyncio.sleep(1.0)
    finally:
        writer.stop.set()
        await writing
        await _stack("kafka", "start", stack)  # whatever happened, leave the broker up
    counts = await wait_all_applied(effects_db, writer.written, timeout=60)
    assert set(counts) == set(writer.written)
    assert set(counts.values()) == {1}


async def _published_some(effects_db: ScratchDatabase) -> bool:
    return len(await applied(effects_db)) > 20


async def _outbox_empty(outbox: PostgresOutbox) -> bool:
    return await outbox.pending() == 0


async def _stack(component: str, action: str, stack: Stack) -> None:
    started = time.monotonic()
    await stack.control(component, action)
    print(f"stack.sh {component} {action}: {time.monotonic() - started:.1f}s")
