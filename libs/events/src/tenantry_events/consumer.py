"""The consumer side: at-least-once delivery made effectively-once by an inbox.

For each record: decode the CloudEvents envelope; open one transaction; claim the event id
in the inbox (a redelivery finds it claimed and does nothing); open the sealed personal
fields with the consumer's `keys` (sealing.py: a destroyed key reads as "[erased]"); run
the handler; commit; only then may the Kafka offset be committed (AckPolicy.MANUAL, see
`attach`: commits at most every 100 ms after an applied record, rewind on an exception).

Failures split in two:
- transient (`is_transient_db_error`: the database or the network is down, a broken pooled
  connection, a server restarting; or `KeysUnavailable`, the key source not answering):
  back off (exponential, jittered, capped) and raise, so the record is redelivered;
  nothing is skipped, the partition waits, without limit.
- poison (undecodable, or the handler keeps failing on it while the database answers):
  after `attempts` tries the record goes to the group's dead-letter topic with the error,
  and the consumer moves on. A failure while the database does not answer is transient,
  whatever its type: only a record that fails on a healthy database is poison.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Generic, Literal, Protocol, TypeVar
from uuid import UUID

from faststream import AckPolicy
from faststream.kafka.annotations import KafkaMessage
from opentelemetry import metrics

from tenantry_events.actors import acting_as
from tenantry_events.catalog import dead_letter_topic
from tenantry_events.envelope import Envelope, MalformedEvent
from tenantry_events.faults import Backoff, is_transient_db_error
from tenantry_events.kafka_codec import from_record
from tenantry_events.sealing import DataKeys, KeysUnavailable, unseal
from tenantry_events.storage import Inbox
from tenantry_events.tracing import continued_span

log = logging.getLogger("tenantry.consumer")
_meter = metrics.get_meter("tenantry.events")
_processed = _meter.create_counter("tenantry.consumer.processed", description="events applied")
_duplicates = _meter.create_counter("tenantry.consumer.duplicates", description="redeliveries")
_dead = _meter.create_counter("tenantry.consumer.dead_lettered", description="poison records")

TxT = TypeVar("TxT")
Handler = Callable[[TxT, Envelope[Any]], Awaitable[None]]
Outcome = Literal["applied", "duplicate", "dead-lettered", "ignored"]

TxCo = TypeVar("TxCo", covariant=True)


class TransactionFactory(Protocol[TxCo]):
    def transaction(
        self, *, tenant_id: UUID | None = None, platform: bool = False
    ) -> AbstractAsyncContextManager[TxCo]: ...


class DeadLetterSink(Protocol):
    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None: ...


class TransientFailure(Exception):
    """Raised to the broker so it rewinds and redelivers the record later."""


Sleep = Callable[[float], Awaitable[None]]


class EventConsumer(Generic[TxT]):
    def __init__(
        self,
        *,
        group: str,
        db: TransactionFactory[TxT],
        inbox: Inbox[TxT],
        handlers: Mapping[str, Handler[TxT]],
        dead_letters: DeadLetterSink,
        attempts: int = 3,
        transient_backoff: float = 0.5,
        max_transient_backoff: float = 10.0,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        keys: DataKeys[TxT] | None = None,
    ) -> None:
        self.group = group
        # Opens the sealed personal fields before a handler sees them; None only for
        # consumers of events that have none (tests, benchmarks): the services pass keys.
        self._keys = keys
        self.dead_letter_topic = dead_letter_topic(group)
        self._db = db
        self._inbox = inbox
        self._handlers = dict(handlers)
        self._dead_letters = dead_letters
        self._attempts = attempts
        # The first wait is `transient_backoff`, doubling up to the cap while the outage
        # lasts (consecutive transient failures), reset by the next record that succeeds.
        self._backoff = backoff or Backoff(base=transient_backoff, cap=max_transient_backoff)
        self._sleep = sleep
        self._transient_streak = 0

    @property
    def topics(self) -> list[str]:
        return sorted(self._handlers)

    async def process(
        self,
        topic: str,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        value: bytes,
    ) -> Outcome:
        try:
            envelope = from_record(headers, value)
        except MalformedEvent as exc:
            await self._dead_letter(topic, key, headers, value, exc)
            return "dead-lettered"
        handler = self._handlers.get(envelope.type)
        if handler is None:
            return "ignored"
        last_error: BaseException | None = None
        for attempt in range(1, self._attempts + 1):
            try:
                with continued_span(
                    f"consume {envelope.type}",
                    envelope.traceparent,
                    envelope.tracestate,
                    **{"messaging.consumer.group.name": self.group, "event.id": str(envelope.id)},
                ):
                    outcome = await self._apply(handler, envelope)
            except Exception as exc:
                if (
                    is_transient_db_error(exc)
                    or isinstance(exc, KeysUnavailable)  # the key source is down, not the data
                    or not await self._database_answers()
                ):
                    await self._back_off(envelope.id, exc)
                    raise TransientFailure(repr(exc)) from exc
                # A handler bug or bad data on a healthy database: retry, then dead-letter.
                last_error = exc
                log.warning("handler failed on %s (attempt %d): %r", envelope.id, attempt, exc)
            else:
                self._transient_streak = 0
                return outcome
        assert last_error is not None
        await self._dead_letter(topic, key, headers, value, last_error)
        self._transient_streak = 0
        return "dead-lettered"

    async def _database_answers(self) -> bool:
        """An empty transaction (BEGIN, COMMIT) on the consumer's database: a handler error
        is only the record's fault if the database is healthy."""
        try:
            async with self._db.transaction():
                pass
        except Exception as exc:
            log.warning("database not answering: %r", exc)
            return False
        return True

    async def _back_off(self, event_id: UUID, exc: BaseException) -> None:
        self._transient_streak += 1
        delay = self._backoff.delay(self._transient_streak)
        log.warning(
            "transient failure on %s: %r; will redeliver in %.2fs (%d in a row)",
            event_id,
            exc,
            delay,
            self._transient_streak,
        )
        await self._sleep(delay)

    async def _apply(self, handler: Handler[TxT], envelope: Envelope[Any]) -> Outcome:
        async with self._db.transaction(tenant_id=envelope.tenant_id) as tx:
            if not await self._inbox.claim(tx, self.group, envelope.id):
                _duplicates.add(1, {"group": self.group})
                return "duplicate"
            if self._keys is not None:
                envelope = await unseal(envelope, self._keys, tx)
            with acting_as(envelope.actor):  # what the handler causes, the event's actor caused
                await handler(tx, envelope)
        _processed.add(1, {"group": self.group, "type": envelope.type})
        return "applied"

    async def _dead_letter(
        self,
        topic: str,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
        value: bytes,
        error: BaseException,
    ) -> None:
        _dead.add(1, {"group": self.group})
        log.error("dead-lettering a record of %s: %r", topic, error)
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        await self._dead_letters.send(
            self.dead_letter_topic,
            key,
            value,
            [
                *[(k, v) for k, v in headers if not k.startswith("dlt_")],
                ("dlt_original_topic", topic.encode()),
                ("dlt_consumer_group", self.group.encode()),
                ("dlt_error_type", type(error).__name__.encode()),
                ("dlt_error", detail[:2000].encode()),
            ],
        )


def attach(
    broker: Any,
    consumer: EventConsumer[Any],
    *,
    auto_offset_reset: str = "earliest",
    commit_interval: float = 0.1,
) -> Any:
    """Register `consumer` on a FastStream KafkaBroker as one subscriber over its topics.

    Offsets are committed at most every `commit_interval` seconds, after a record's
    transaction committed: the subscriber handles records one at a time, so the position
    committed never passes an unapplied record. A crash redelivers what was applied since
    the last commit, and the inbox drops those duplicates (a per-record commit cost more
    than half the throughput, see docs/benchmarks.md). A record that fails is rewound
    (nack) and handled again; nothing after it is committed before it.
    """
    last_commit = 0.0
    context = broker.context

    # No parameter that FastStream's dependency injection resolves: fast_depends runs a
    # sync resolver (the `KafkaMessage` context field) in a worker thread, one thread hop
    # per record, and FastStream's default decoder parses the JSON body nobody reads. The
    # message comes from the broker's context, which FastStream fills before the call.
    async def on_record(body: bytes) -> None:
        nonlocal last_commit
        message: KafkaMessage = context.get_local("message")
        # The raw record, not FastStream's decoded body: decoding is the envelope codec's job.
        record = message.raw_message
        assert not isinstance(record, tuple)  # single-record subscriber
        try:
            await consumer.process(record.topic, record.key, list(record.headers or ()), body)
        except BaseException:
            await message.nack()  # rewind to this record: it comes back
            raise
        now = time.monotonic()
        if now - last_commit >= commit_interval:
            await message.ack()  # commits the position after this record
            last_commit = now

    subscriber = broker.subscriber(
        *consumer.topics,
        group_id=consumer.group,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset=auto_offset_reset,
        decoder=_raw_body,
        title=f"{consumer.group}",
    )
    subscriber(on_record)
    return subscriber


async def _raw_body(message: KafkaMessage) -> bytes:
    """The record's value as is (FastStream's own decoder would parse it as JSON)."""
    return bytes(message.body)


class BrokerDeadLetters:
    """Dead letters through the FastStream broker's own producer."""

    def __init__(self, broker: Any) -> None:
        self._broker = broker

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        await self._broker.publish(
            value,
            topic=topic,
            key=key,
            headers={k: v.decode(errors="replace") for k, v in headers},
        )


def chain(*handlers: Handler[TxT]) -> Handler[TxT]:
    """Several handlers of one event type, run in order in the same transaction."""

    async def run_all(tx: TxT, event: Envelope[Any]) -> None:
        for handler in handlers:
            await handler(tx, event)

    return run_all


def merge_handlers(*maps: Mapping[str, Handler[TxT]]) -> dict[str, Handler[TxT]]:
    """One handler per event type (one subscriber): types named by several maps chain."""
    grouped: dict[str, list[Handler[TxT]]] = {}
    for handlers in maps:
        for name, handler in handlers.items():
            grouped.setdefault(name, []).append(handler)
    return {name: hs[0] if len(hs) == 1 else chain(*hs) for name, hs in grouped.items()}
