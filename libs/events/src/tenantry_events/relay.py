"""The outbox relay: publishes outbox rows to Kafka and deletes exactly what Kafka acked.

- One relay publishes at a time per database: it holds a session advisory lock, and a
  second relay waits for it (a standby that takes over when the first dies).
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
from collections.abc import Callable, Sequence
from typing import Protocol

import asyncpg
from aiokafka import AIOKafkaProducer
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from tenantry_events.kafka_codec import KafkaRecord
from tenantry_events.storage import Outbox, OutboxEntry
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
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._publish_timeout = publish_timeout
        self._producer: AIOKafkaProducer | None = None
        self.breaker = breaker or CircuitBreaker("kafka-producer", KAFKA_PRODUCER_BREAKER)

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=2,
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


class OutboxRelay:
    def __init__(
        self,
        outbox: Outbox[asyncpg.Connection],
        publisher: Publisher,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        max_backoff: float = 10.0,
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._max_backoff = max_backoff
        self._wake = asyncio.Event()
        self.published = 0

    def wake(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one batch; return how many rows it published."""
        entries: list[OutboxEntry] = await self._outbox.fetch(self._batch_size)
        if not entries:
            return 0
        await self._publisher.publish([e.record for e in entries])
        await self._outbox.remove([e.id for e in entries])
        self.published += len(entries)
        return len(entries)

    async def drain(self) -> None:
        """Publish until the outbox is empty, retrying through broker outages."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=_backoff(self._max_backoff),
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    log.warning("relay retrying after %s", attempt.retry_state.outcome)
                while await self.relay_once() == self._batch_size:
                    pass

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Clear before draining: a NOTIFY that lands during the drain must wake the next
            # round, not be erased after it (that cost a full poll interval, seen in bench).
            self._wake.clear()
            await self.drain()
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(
                    waiters, timeout=self._poll_interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()


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


async def run_relay(
    dsn: str,
    outbox: Outbox[asyncpg.Connection],
    publisher: Publisher,
    stop: asyncio.Event,
    **relay_options: float | int,
) -> OutboxRelay:
    """Hold the relay lease, listen for commits and relay until `stop` is set.

    The lease is a session advisory lock on a dedicated connection: if this process dies,
    Postgres drops the connection and the lock, and a standby relay takes over.
    """
    relay = OutboxRelay(outbox, publisher, **relay_options)  # type: ignore[arg-type]
    lease = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            if await lease.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_KEY):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        if stop.is_set():
            return relay
        await lease.add_listener(NOTIFY_CHANNEL, lambda *_: relay.wake())
        log.info("relay holds the lease")
        await relay.run(stop)
        # Flush on graceful shutdown, but never hang it: what is left stays in the outbox
        # for the next relay.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay.relay_once(), timeout=5.0)
    finally:
        await lease.close()
    return relay


def main() -> None:
    """Run a standalone relay (tests kill it with SIGKILL; services run it in their worker):

    python -m tenantry_events.relay --dsn postgresql://... --bootstrap 127.0.0.1:9092
    """
    import argparse
    import signal

    from tenantry_events.pg import Database
    from tenantry_events.storage import PostgresOutbox

    parser = argparse.ArgumentParser(description="Tenantry outbox relay")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        db = Database(args.dsn, max_size=2)
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
