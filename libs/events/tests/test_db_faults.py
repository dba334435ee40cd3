"""Database faults: which errors are transient (one classifier), the backoff, the consumer
retrying instead of dead-lettering while the database is away, the pool dropping a broken
connection, and a relay whose lease session ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tenantry_events.consumer import EventConsumer, TransientFailure
from tenantry_events.envelope import Envelope
from tenantry_events.faults import (
    Backoff,
    DatabaseUnavailable,
    is_broken_connection,
    is_transient_db_error,
)
from tenantry_events.kafka_codec import to_record
from tenantry_events.memory import MemoryDatabase, MemoryInbox, MemoryTx
from tenantry_events.pg import Database
from tenantry_events.relay import LeaseLost, RelayLease
from tenantry_events.storage import PostgresOutbox
from tenantry_testkit.fixtures import ScratchDatabase, eventually
from tenantry_testkit.pg_cluster import free_loopback_port
from tenantry_testkit.stack import Stack

from .contracts import ping


def _raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


def _raised_during(exc: BaseException, context: BaseException) -> BaseException:
    exc.__context__ = context
    return exc


TRANSIENT = [
    asyncpg.InternalClientError('cannot switch to state 15; protocol is in the "failed" state'),
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.PostgresConnectionError("connection failure"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CrashShutdownError("terminating connection because of crash of another process"),
    asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    asyncpg.SerializationError("could not serialize access"),
    asyncpg.DeadlockDetectedError("deadlock detected"),
    asyncpg.InterfaceError("cannot perform operation: connection is closed"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    asyncpg.InterfaceError("pool is closing"),
    DatabaseUnavailable("no database connection"),
    ConnectionRefusedError(111, "Connect call failed"),
    TimeoutError(),
    _raised_from(RuntimeError("lookup failed"), asyncpg.AdminShutdownError("shutdown")),
]
POISON = [
    ValueError("bad data"),
    # Hostile input reaching asyncpg is the record's fault, however often it is retried.
    asyncpg.DataError("invalid input for query argument $1: 2**70 (value out of int64 range)"),
    asyncpg.InterfaceError("the server expects 2 arguments for this query, 1 was passed"),
    asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
    asyncpg.UndefinedColumnError('column "nope" does not exist'),
    _raised_during(ValueError("a bug while handling an outage"), ConnectionResetError()),
]


@pytest.mark.parametrize("exc", TRANSIENT, ids=repr)
def test_connection_level_errors_are_transient(exc: BaseException) -> None:
    assert is_transient_db_error(exc)


@pytest.mark.parametrize("exc", POISON, ids=repr)
def test_the_works_own_errors_are_not_transient(exc: BaseException) -> None:
    assert not is_transient_db_error(exc)
    assert not is_broken_connection(exc)


def test_a_retryable_transaction_error_leaves_the_connection_usable() -> None:
    assert not is_broken_connection(asyncpg.SerializationError("could not serialize"))
    assert is_broken_connection(asyncpg.InternalClientError("cannot switch to state 15"))


def test_backoff_doubles_to_its_cap_with_jitter_below() -> None:
    exact = Backoff(base=0.2, cap=3.0, jitter=0.5, rng=lambda: 0.0)
    assert [exact.delay(n) for n in range(1, 7)] == [0.2, 0.4, 0.8, 1.6, 3.0, 3.0]
    assert exact.delay(10_000) == 3.0
    most_jitter = Backoff(base=0.2, cap=3.0, jitter=0.5, rng=lambda: 1.0)
    assert [most_jitter.delay(n) for n in (1, 5)] == [0.1, 1.5]


# ------------------------------------------------------------------ the consumer


class FlakyDatabase(MemoryDatabase):
    """A MemoryDatabase that refuses connections while `down`."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    @asynccontextmanager
    async def transaction(
        self, *, tenant_id: UUID | None = None, platform: bool = False
    ) -> AsyncIterator[MemoryTx]:
        if self.down:
            raise DatabaseUnavailable("connection refused")
        async with super().transaction(tenant_id=tenant_id, platform=platform) as tx:
            yield tx


class Sink:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, headers: Any) -> None:
        self.sent.append(topic)


def consumer_with(handler: Any, db: MemoryDatabase | None = None) -> tuple[Any, Sink, list[float]]:
    db = db or MemoryDatabase()
    sink, slept = Sink(), []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    consumer = EventConsumer(
        group="unit",
        db=db,
        inbox=MemoryInbox(db),
        handlers={"test.contract_ping": handler},
        dead_letters=sink,
        backoff=Backoff(base=0.5, cap=4.0, rng=lambda: 0.0),
        sleep=sleep,
    )
    return consumer, sink, slept


async def process(consumer: EventConsumer[Any], n: int = 1) -> str:
    record = to_record(ping(n))
    outcome: str = await consumer.process(record.topic, record.key, record.headers, record.value)
    return outcome


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.InternalClientError('cannot switch to state 15; protocol is in the "failed" state'),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CrashShutdownError("terminating connection because of crash"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
    ],
    ids=repr,
)
async def test_a_restart_error_is_redelivered_with_growing_backoff_never_dead_lettered(
    error: Exception,
) -> None:
    failing = True

    async def handler(tx: MemoryTx, event: Envelope[Any]) -> None:
        if failing:
            raise error

    consumer, sink, slept = consumer_with(handler)
    for _ in range(6):  # the outage lasts: redelivered again and again, never dead
        with pytest.raises(TransientFailure):
            await process(consumer)
    assert sink.sent == []
    assert slept == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0], "exponential, capped"
    failing = False
    assert await process(consumer) == "applied"
    failing = True
    with pytest.raises(TransientFailure):
        await process(consumer, 2)
    assert slept[-1] == 0.5, "a success resets the backoff"


async def test_a_handler_failure_while_the_database_does_not_answer_is_not_poison() -> None:
    db = FlakyDatabase()

    async def handler(tx: MemoryTx, event: Envelope[Any]) -> None:
        db.down = True  # the database went away under the handler
        raise RuntimeError("an error no classifier knows")

    consumer, sink, slept = consumer_with(handler, db)
    with pytest.raises(TransientFailure):
        await process(consumer)
    assert sink.sent == []
    assert slept == [0.5]


async def test_hostile_input_that_asyncpg_refuses_is_dead_lettered_not_retried_forever() -> None:
    async def handler(tx: MemoryTx, event: Envelope[Any]) -> None:
        raise asyncpg.DataError("invalid input for query argument $1 (value out of int64 range)")

    consumer, sink, slept = consumer_with(handler)
    assert await process(consumer) == "dead-lettered"
    assert sink.sent == ["dlt.unit"]
    assert slept == []


# ------------------------------------------------------------------ the pool


async def test_a_broken_connection_is_terminated_not_returned_to_the_pool(
    scratch_db: ScratchDatabase,
) -> None:
    db = Database(scratch_db.app_dsn, min_size=1, max_size=1)
    await db.connect()
    try:

        async def backend() -> int:
            async with db.transaction() as conn:
                return int(await conn.fetchval("SELECT pg_backend_pid()"))

        first = await backend()
        with pytest.raises(ValueError, match="own error"):
            async with db.transaction():
                raise ValueError("the work's own error")
        assert await backend() == first, "a healthy connection goes back to the pool"
        with pytest.raises(asyncpg.InternalClientError):
            async with db.transaction() as conn:
                await conn.execute("SELECT 1")
                raise asyncpg.InternalClientError("cannot switch to state 15")
        assert await backend() != first, "the broken one was dropped, a fresh one made"
    finally:
        await db.close()


async def test_connections_a_restart_broke_are_skipped_while_the_server_is_up(
    stack: Stack, scratch_db: ScratchDatabase
) -> None:
    """Every pooled connection's backend is gone (as after a restart), the server is up:
    the next transaction drops the dead ones and works, instead of answering 503 once per
    dead connection for as long as they sit idle in the pool."""
    db = Database(scratch_db.app_dsn, min_size=3, max_size=3)
    await db.connect()
    try:
        held = [await db.pool.acquire() for _ in range(3)]
        pids = [int(await c.fetchval("SELECT pg_backend_pid()")) for c in held]
        for proxy in held:
            await db.pool.release(proxy)
        admin = await asyncpg.connect(stack.super_dsn())
        try:
            for pid in pids:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        async with db.transaction() as conn:
            fresh = int(await conn.fetchval("SELECT pg_backend_pid()"))
        assert fresh not in pids
    finally:
        await db.close()


async def test_no_connection_at_all_is_database_unavailable() -> None:
    db = Database(f"postgresql://nobody:x@127.0.0.1:{free_loopback_port()}/none", min_size=0)
    await db.connect()
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            async with db.transaction():
                pass
        assert is_transient_db_error(raised.value)
        assert await db.ping() is False
    finally:
        await db.close()


# ------------------------------------------------------------------ the relay's lease


async def test_a_lease_whose_session_ends_stops_reading_the_outbox(
    scratch_db: ScratchDatabase,
) -> None:
    lease = await RelayLease.open(scratch_db.app_dsn, PostgresOutbox(scratch_db.db))
    try:
        assert await lease.try_acquire()
        assert await lease.holds_lock()
        assert await lease.fetch(10) == []
        pid = lease.connection.get_server_pid()
        # What a database restart does to the session: the server ends it.
        assert await scratch_db.db.pool.fetchval("SELECT pg_terminate_backend($1)", pid)

        async def noticed() -> bool:
            return lease.lost.is_set()

        await eventually(noticed, timeout=5, message="the lease notices its session ended")
        with pytest.raises(LeaseLost):
            await lease.fetch(10)
        with pytest.raises(LeaseLost):
            await lease.remove([1])
    finally:
        await lease.close()


async def test_a_session_without_the_lock_reads_nothing(scratch_db: ScratchDatabase) -> None:
    holder = await RelayLease.open(scratch_db.app_dsn, PostgresOutbox(scratch_db.db))
    other = await RelayLease.open(scratch_db.app_dsn, PostgresOutbox(scratch_db.db))
    try:
        assert await holder.try_acquire()
        assert not await other.try_acquire()
        with pytest.raises(LeaseLost, match="no longer holds"):
            await other.fetch(10)
    finally:
        await holder.close()
        await other.close()
