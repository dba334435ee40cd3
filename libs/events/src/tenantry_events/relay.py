"""The outbox relay: publishes outbox rows to Kafka and deletes exactly what Kafka acked.

- One relay publishes at a time per database: it holds a session advisory lock, and a
  second relay waits for it (a standby that takes over when the first dies). It reads and
  deletes rows only on the connection holding the lock (`RelayLease`), so when a database
  restart ends that session, and the lock with it, the relay stops publishing at once and
  reconnects to compete for the lock again.
- Woken by LISTEN/NOTIFY at commit; it also polls, since a notification can be missed.
- Never skips: it reads the rows that exist, oldest first, instead of a high-water mark.
- Never loses: a row is deleted only after Kafka acknowledged it (acks=all, idempotent
  producer); a crash between the ack and the delete republishes it, and consumers drop the
  duplicate through their inbox. A broker outage leaves the rows in place and the relay
  retries with backoff (tenacity) until the broker is back.
- Fails fast through a long outage: the publisher's circuit breaker opens after repeated
  failures and refuses publishes at once (CallNotPermitted) instead of letting each one wait
  out its timeout; the retry loop then waits until the breaker lets a trial through.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import asyncpg
from aiokafka import AIOKafkaProducer
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from tenantry_events.faults import Backoff, is_broken_connection, is_transient_db_error
from tenantry_events.kafka_codec import KafkaRecord
from tenantry_events.pg import init_connection
from tenantry_events.storage import OutboxEntry, PostgresOutbox
from tenantry_resilience import BreakerConfig, CallNotPermitted, CircuitBreaker

log = logging.getLogger("tenantry.relay")

RELAY_LOCK_KEY = 0x7E_4A_47_52  # one advisory lock id for "the relay" in each database
NOTIFY_CHANNEL = "tenantry_outbox"

KAFKA_PRODUCER_BREAKER = BreakerConfig(
    # A publish is a whole batch and the relay makes few of them, so a short window decides.
    sliding_window_size=10,
    minimum_number_of_calls=3,
    failure_rate_threshold=50.0,
    # Healthy acks=all batches take milliseconds; ten seconds means the cluster is in trouble.
    slow_call_duration_threshold=10.0,
    slow_call_rate_threshold=100.0,
    wait_duration_in_open_state=5.0,
    # One trial batch tells whether the broker is back; it is bounded by publish_timeout.
    permitted_calls_in_half_open_state=1,
)
"""The default breaker config of `KafkaPublisher` (named "kafka-producer")."""


class Publisher(Protocol):
    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        """Publish all records, in order per key; return only once the broker acked all."""
        ...


class KafkaPublisher:
    """aiokafka producer with idempotence and acks=all.

    A publish that fails or takes longer than `publish_timeout` throws the producer away
    and builds a new one on the next call: after a broker restart an old producer can wait
    forever on futures that never resolve, and a fresh one reconnects at once.

    Every publish goes through `breaker` (by default its own, named "kafka-producer", with
    `KAFKA_PRODUCER_BREAKER`; pass one from a `BreakerRegistry` to list it): while it is
    open, publish raises `CallNotPermitted` at once.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        client_id: str = "tenantry-relay",
        publish_timeout: float = 30.0,
        breaker: CircuitBreaker | None = None,
        linger_ms: int = 0,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._publish_timeout = publish_timeout
        # No linger: `publish` hands the producer its whole batch before awaiting any ack,
        # so records batch anyway; a linger only delayed the lone record of a quiet moment.
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self.breaker = breaker or CircuitBreaker("kafka-producer", KAFKA_PRODUCER_BREAKER)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=self._linger_ms,
            request_timeout_ms=10_000,
            retry_backoff_ms=200,
        )

    async def start(self) -> None:
        if self._producer is None:
            producer = self._new_producer()
            try:
                await asyncio.wait_for(producer.start(), timeout=self._publish_timeout)
            except BaseException:
                await self._discard(producer)
                raise
            self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await self._discard(producer)

    @staticmethod
    async def _discard(producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), timeout=5.0)

    async def publish(self, records: Sequence[KafkaRecord]) -> None:
        async with self.breaker.guard():
            await self.start()
            assert self._producer is not None
            producer = self._producer
            try:
                async with asyncio.timeout(self._publish_timeout):
                    futures = [
                        await producer.send(r.topic, value=r.value, key=r.key, headers=r.headers)
                        for r in records
                    ]
                    await asyncio.gather(*futures)
            except BaseException:
                await self.stop()
                raise


class OutboxSource(Protocol):
    """Where the relay reads and deletes rows: a `RelayLease` (the connection holding the
    lock) in production, any outbox in benchmarks."""

    async def fetch(self, limit: int) -> list[OutboxEntry]: ...

    async def remove(self, ids: Sequence[int]) -> None: ...


class LeaseLost(Exception):
    """The relay's lease connection is gone, and its lock with it: stop publishing."""


class OutboxRelay:
    """Drains `source` into `publisher`. With `lost` (set when the lease connection
    closes) a publish in flight is abandoned the moment the lease goes: another relay may
    take the lock once the database is back, and two must never publish at once."""

    def __init__(
        self,
        outbox: OutboxSource,
        publisher: Publisher,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        max_backoff: float = 10.0,
        lost: asyncio.Event | None = None,
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._lost = lost
        self._wake = asyncio.Event()
        self.published = 0

    def wake(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch; return how many rows it published."""
        entries: list[OutboxEntry] = await self._outbox.fetch(self._batch_size)
        if not entries:
            return 0
        started = time.time()
        await self._publish([e.record for e in entries])
        # Wall-clock times: the chaos tests line up the batches of several relay processes.
        log.debug(
            "published %d records, outbox ids %d..%d, %.6f..%.6f",
            len(entries),
            entries[0].id,
            entries[-1].id,
            started,
            time.time(),
        )
        await self._outbox.remove([e.id for e in entries])
        self.published += len(entries)
        return len(entries)

    async def _publish(self, records: Sequence[KafkaRecord]) -> None:
        lost = self._lost
        if lost is None:
            await self._publisher.publish(records)
            return
        if lost.is_set():
            raise LeaseLost("the lease was lost before publishing")
        publishing = asyncio.ensure_future(self._publisher.publish(records))
        losing = asyncio.ensure_future(lost.wait())
        try:
            await asyncio.wait({publishing, losing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            losing.cancel()
            if not publishing.done():
                publishing.cancel()  # the publisher drops its producer (and its buffer)
                with contextlib.suppress(BaseException):
                    await publishing
        if publishing.cancelled():
            raise LeaseLost("the lease was lost while publishing")
        publishing.result()

    async def drain(self) -> None:
        """Publish until the outbox is empty, retrying through broker outages (not
        through a lost lease: that ends the drain, and the relay must win the lock again)."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(lambda exc: not isinstance(exc, LeaseLost)),
            wait=_backoff(self._max_backoff),
            before_sleep=_log_retry,
            reraise=True,
        ):
            with attempt:
                while await self.relay_once() == self._batch_size:
                    pass

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Clear before draining: a NOTIFY that lands during the drain must wake the next
            # round, not be erased after it (that cost a full poll interval, seen in bench).
            self._wake.clear()
            await self.drain()
            events = [self._wake, stop] + ([self._lost] if self._lost else [])
            waiters = [asyncio.ensure_future(e.wait()) for e in events]
            try:
                await asyncio.wait(
                    waiters, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.warning("relay retrying in %.1fs after %r", delay, error)


def _backoff(max_backoff: float) -> Callable[[RetryCallState], float]:
    """Exponential backoff with jitter (0.1 s, 0.2 s, ... up to `max_backoff`), but never
    sooner than an open breaker lets a trial through: each attempt also reads a batch from
    the outbox, which is wasted while the breaker refuses to publish it."""
    exponential = wait_exponential_jitter(multiplier=0.1, max=max_backoff, jitter=0.1)

    def wait(retry_state: RetryCallState) -> float:
        delay = exponential(retry_state)
        outcome = retry_state.outcome
        error = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(error, CallNotPermitted) and error.retry_after is not None:
            return max(delay, min(error.retry_after, max_backoff))
        return delay

    return wait


# The lock is ours only if this very session holds it: a session behind a transaction
# pooler, or a new session after a reconnect, would not.
_HOLDS_LOCK_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_locks
               WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
                 AND classid = ($1::bigint >> 32)::oid
                 AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1)"""


class RelayLease:
    """The relay's session advisory lock and the one connection it works on.

    Every batch is read and deleted on this connection, after checking that its session
    still holds the lock; a query that fails because the connection broke, a closed
    connection or a lock no longer held raise `LeaseLost`. `lost` is set the moment the
    connection closes (a database restart closes it), so a publish in flight stops too.
    """

    def __init__(self, conn: asyncpg.Connection, outbox: PostgresOutbox) -> None:
        self._conn = conn
        self._outbox = outbox
        self.lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: self.lost.set())

    @classmethod
    async def open(cls, dsn: str, outbox: PostgresOutbox) -> RelayLease:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await init_connection(conn)  # the pool's codecs: outbox headers are jsonb
        except BaseException:
            conn.terminate()
            raise
        return cls(conn, outbox)

    @property
    def connection(self) -> asyncpg.Connection:
        return self._conn

    async def try_acquire(self) -> bool:
        return bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY))

    async def holds_lock(self) -> bool:
        return bool(await self._conn.fetchval(_HOLDS_LOCK_SQL, RELAY_LOCK_KEY))

    async def fetch(self, limit: int) -> list[OutboxEntry]:
        async with self._on_lease():
            if not await self.holds_lock():
                raise LeaseLost("this session no longer holds the relay lock")
            return await self._outbox.fetch(limit, conn=self._conn)

    async def remove(self, ids: Sequence[int]) -> None:
        async with self._on_lease():
            await self._outbox.remove(ids, conn=self._conn)

    @contextlib.asynccontextmanager
    async def _on_lease(self) -> AsyncIterator[None]:
        if self.lost.is_set() or self._conn.is_closed():
            raise LeaseLost("the lease connection is closed")
        try:
            yield
        except Exception as exc:
            if isinstance(exc, LeaseLost) or not is_broken_connection(exc):
                raise
            self.lost.set()
            raise LeaseLost(f"the lease connection broke: {exc!r}") from exc

    async def close(self) -> None:
        """Closing the session releases the lock (or it already went with the session)."""
        if self._conn.is_closed():
            return
        try:
            await self._conn.close(timeout=2.0)
        except Exception:
            self._conn.terminate()


async def run_relay(
    dsn: str,
    outbox: PostgresOutbox,
    publisher: Publisher,
    stop: asyncio.Event,
    *,
    backoff: Backoff | None = None,
    **relay_options: float | int,
) -> int:
    """Hold the relay lease, listen for commits and relay until `stop` is set; return how
    many rows this process published.

    The lease is a session advisory lock on a dedicated connection, and the outbox is read
    and deleted on that connection only. If this process dies, Postgres drops the session
    and the lock, and a standby relay takes over. If the database restarts, the session
    and the lock are gone: the relay stops publishing at once, reconnects (backing off
    while the database is unreachable) and competes for the lock again like a standby.
    """
    backoff = backoff or Backoff(base=0.2, cap=5.0)
    poll = float(relay_options.get("poll_interval", 1.0))
    published = 0
    failures = 0
    while not stop.is_set():
        lease: RelayLease | None = None
        relay: OutboxRelay | None = None
        try:
            lease = await RelayLease.open(dsn, outbox)
            if not await _win_lock(lease, stop, poll):
                break
            failures = 0
            relay = OutboxRelay(lease, publisher, lost=lease.lost, **relay_options)  # type: ignore[arg-type]
            await lease.connection.add_listener(NOTIFY_CHANNEL, _waker(relay))
            log.info("relay holds the lease")
            await relay.run(stop)
            # Flush on graceful shutdown, but never hang it: what is left stays in the
            # outbox for the next relay.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(relay.relay_once(), timeout=5.0)
        except Exception as exc:
            if not (isinstance(exc, LeaseLost) or is_transient_db_error(exc)):
                raise
            failures += 1
            delay = backoff.delay(failures)
            log.warning(
                "relay lost its lease or cannot reach the database (%r): not publishing; "
                "reconnecting in %.2fs",
                exc,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
        finally:
            if relay is not None:
                published += relay.published
            if lease is not None:
                await lease.close()
    return published


async def _win_lock(lease: RelayLease, stop: asyncio.Event, poll: float) -> bool:
    """Try the lock every `poll` seconds (a standby) until it is ours or `stop` is set;
    a standby whose connection breaks raises, like the holder, and reconnects."""
    while not stop.is_set():
        if await lease.try_acquire():
            return True
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lease.lost.wait())]
        try:
            await asyncio.wait(waiters, timeout=min(poll, 1.0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    return False


def _waker(relay: OutboxRelay) -> Callable[..., None]:
    return lambda *_: relay.wake()


def main() -> None:
    """Run a standalone relay (tests kill it with SIGKILL; services run it in their worker):

    python -m tenantry_events.relay --dsn postgresql://... --bootstrap 127.0.0.1:9092
    """
    import argparse
    import signal

    from tenantry_events.pg import Database

    parser = argparse.ArgumentParser(description="Tenantry outbox relay")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--log-level", default="INFO", help="DEBUG logs every batch published")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        db = Database(args.dsn, min_size=0, max_size=1)  # the lease has its own connection
        await db.connect()
        publisher = KafkaPublisher(args.bootstrap)
        await publisher.start()
        try:
            await run_relay(
                args.dsn, PostgresOutbox(db), publisher, stop, batch_size=args.batch_size
            )
        finally:
            await publisher.stop()
            await db.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
