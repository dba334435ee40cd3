"""Fixtures of the backbone tests on the real broker: a fresh topic and event type per test,
a scratch database, and a FastStream consumer with its inbox."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faststream.kafka import KafkaBroker
from uuid_utils.compat import uuid4

from tenantry_events.catalog import CATALOG, EventType, dead_letter_topic
from tenantry_events.consumer import BrokerDeadLetters, EventConsumer, Handler, attach
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.pg import Database, Migration
from tenantry_events.storage import PostgresInbox
from tenantry_events.topics import ensure_topics
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.stack import Stack


class Ping(msgspec.Struct, frozen=True, kw_only=True):
    n: int


@dataclass
class ScratchTopic:
    """A catalogued event type of its own, so tests never touch the suite's topics."""

    name: str
    payload: type[msgspec.Struct]
    dlt: str

    def event(self, n: int, tenant_id: UUID | None = None, version: int = 1) -> Envelope[Any]:
        return new_event(
            self.payload(n=n),
            tenant_id=tenant_id or uuid4(),
            subject=f"ping-{n}",
            aggregate_version=version,
            source="/tenantry/tests",
            region="local",
        )


@pytest_asyncio.fixture
async def topic(stack: Stack) -> ScratchTopic:
    suffix = uuid4().hex[:10]
    name = f"test.ping.{suffix}"
    payload = msgspec.defstruct(f"Ping_{suffix}", [("n", int)], frozen=True, kw_only=True)
    CATALOG.register(EventType(name, payload, "tests", False, 1, "backbone test event"))
    group = f"test-group-{suffix}"
    t = ScratchTopic(name=name, payload=payload, dlt=dead_letter_topic(group))
    await ensure_topics(stack.kafka_bootstrap, [name, t.dlt], partitions=3)
    return t


EFFECTS_SQL = """
CREATE TABLE effects (event_id uuid PRIMARY KEY, n integer NOT NULL, applied integer NOT NULL);
GRANT SELECT, INSERT, UPDATE ON effects TO {app_role};
"""


EFFECTS_MIGRATION = Migration("tests", "0001_effects.sql", EFFECTS_SQL)


@pytest_asyncio.fixture
async def effects_db(stack: Stack) -> AsyncIterator[ScratchDatabase]:
    """The consumer's database: backbone tables plus an `effects` table whose `applied`
    column counts how many times each event's effect ran."""
    scratch = await create_scratch_database(stack, [EFFECTS_MIGRATION], prefix="fx")
    try:
        yield scratch
    finally:
        await drop_scratch_database(stack, scratch)


async def record_effect(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    if event.payload.n < 0:
        raise ValueError(f"payload n={event.payload.n} is poison for this handler")
    await tx.execute(
        """INSERT INTO effects (event_id, n, applied) VALUES ($1, $2, 1)
           ON CONFLICT (event_id) DO UPDATE SET applied = effects.applied + 1""",
        event.id,
        event.payload.n,
    )


class RelayProcess:
    """`python -m tenantry_events.relay` as a real process (to SIGKILL, or to run two of).
    With `log`, its output goes there at DEBUG: one line per batch published."""

    def __init__(self, stack: Stack, dsn: str, log: Path | None = None) -> None:
        self.stack = stack
        self.dsn = dsn
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        output = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tenantry_events.relay",
                "--dsn",
                self.dsn,
                "--bootstrap",
                self.stack.kafka_bootstrap,
                "--batch-size",
                "50",
                "--log-level",
                "DEBUG" if self.log else "INFO",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        assert self.process.returncode == -signal.SIGKILL

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def batches(self) -> list[PublishedBatch]:
        """The batches this relay published, from its DEBUG log."""
        assert self.log is not None
        return [
            PublishedBatch(int(m[1]), int(m[2]), int(m[3]), float(m[4]), float(m[5]))
            for m in _BATCH_LINE.finditer(self.log.read_text(errors="replace"))
        ]

    def lines(self, needle: str) -> int:
        assert self.log is not None
        return self.log.read_text(errors="replace").count(needle)


_BATCH_LINE = re.compile(
    r"published (\d+) records, outbox ids (\d+)\.\.(\d+), ([\d.]+)\.\.([\d.]+)"
)


@dataclass(frozen=True)
class PublishedBatch:
    size: int
    first_id: int
    last_id: int
    started: float  # wall clock, seconds
    acked: float


@dataclass
class RunningConsumer:
    broker: KafkaBroker
    consumer: EventConsumer[Any]
    outcomes: list[str] = field(default_factory=list)


async def start_event_consumer(
    stack: Stack,
    db: Database,
    topic: ScratchTopic,
    handler: Handler[asyncpg.Connection] = record_effect,
    **options: Any,
) -> RunningConsumer:
    """A real EventConsumer on its own FastStream broker (the caller stops `.broker`)."""
    broker = KafkaBroker(stack.kafka_bootstrap, enable_idempotence=True, acks="all", logger=None)
    consumer = EventConsumer(
        group=topic.dlt.removeprefix("dlt."),
        db=db,
        inbox=PostgresInbox(),
        handlers={topic.name: handler},
        dead_letters=BrokerDeadLetters(broker),
        **{"transient_backoff": 0.2, **options},
    )
    result = RunningConsumer(broker, consumer)
    original = consumer.process

    async def observed(*args: Any, **kwargs: Any) -> Any:
        outcome = await original(*args, **kwargs)
        result.outcomes.append(outcome)
        return outcome

    consumer.process = observed  # type: ignore[method-assign]
    attach(broker, consumer)
    await broker.start()
    return result


@pytest_asyncio.fixture
async def start_consumer(
    stack: Stack, effects_db: ScratchDatabase
) -> AsyncIterator[Callable[..., Any]]:
    running: list[KafkaBroker] = []

    async def start(
        topic: ScratchTopic, handler: Handler[asyncpg.Connection] = record_effect
    ) -> RunningConsumer:
        result = await start_event_consumer(stack, effects_db.db, topic, handler)
        running.append(result.broker)
        return result

    yield start
    for broker in running:
        await broker.stop()


@pytest_asyncio.fixture
async def producer(stack: Stack) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(
        bootstrap_servers=stack.kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await p.start()
    yield p
    await p.stop()


async def read_topic(stack: Stack, topic: str, expected: int, timeout: float = 20.0) -> list[Any]:
    """Read `expected` records of a topic from the beginning (bounded in time)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return records
