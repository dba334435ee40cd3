"""Dead letters: read what a service's consumer groups parked, and replay it after a fix.

A consumer group sends a poison record to `dlt.<group>` (consumer.py) with its original
key, value and headers plus `dlt_original_topic`, `dlt_consumer_group`, `dlt_error_type`
and `dlt_error`. The operator's command (`tenantry-<service> dead-letters`, see
dead_letters_cli.py) lists them, shows one, and replays one or all of a type.

Replay re-runs this service's own handler in the consumer's unit of work; it does not
republish the record to its original topic. Republishing hands the event to every group
subscribed to that topic, not only to the one that failed, and the others drop it only
while their inbox still holds its id: housekeeping deletes inbox rows after
TENANTRY_INBOX_RETENTION_HOURS, so a dead letter republished later than that would be
applied a second time by every other service. It would also go to the running worker,
which may not run the fixed code yet, and could be dead-lettered again.

Re-running the handler touches only the failed group's effects, in one transaction
scoped to the event's tenant (as `EventConsumer._apply`): claim the event id in `inbox`
under the group named by `dlt_consumer_group` (if the group applied a copy meanwhile,
e.g. a redelivery, the claim fails and nothing runs), open its sealed personal fields
with the service's keys (the record's bytes stay sealed), run the handler, and record the
dead-letter record in `dead_letter_replays`. All three commit together or not at all, so
a replay that fails leaves no trace and may be tried again. `dead_letter_replays` (never
pruned, one row per replayed record) is what keeps a record from being replayed twice:
the inbox row that would also refuse it is deleted after its retention.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tenantry_events.catalog import CATALOG, Catalog, dead_letter_topic
from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope, MalformedEvent
from tenantry_events.kafka_codec import from_record
from tenantry_events.pg import Database
from tenantry_events.sealing import DataKeys, unseal
from tenantry_events.storage import Inbox
from tenantry_events.tracing import continued_span

ReplayOutcome = Literal["applied", "duplicate"]


class DeadLetterError(Exception):
    """The operator asked for something that cannot be done (exit code 2)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a dead-letter topic, as the consumer parked it."""

    topic: str
    partition: int
    offset: int
    dead_lettered_at: datetime  # the DLT record's timestamp
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def ref(self) -> str:
        """Where the record is: `<dlt topic>:<partition>:<offset>`."""
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def place(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    @property
    def event_id(self) -> UUID | None:
        raw = self.header("ce_id")
        try:
            return UUID(raw) if raw is not None else None
        except ValueError:
            return None

    @property
    def event_type(self) -> str | None:
        return self.header("ce_type")

    @property
    def consumer_group(self) -> str:
        """The group that failed it; the topic names it too (`dlt.<group>`)."""
        return self.header("dlt_consumer_group") or self.topic.removeprefix("dlt.")

    @property
    def original_topic(self) -> str | None:
        return self.header("dlt_original_topic")

    @property
    def error_type(self) -> str:
        return self.header("dlt_error_type") or ""

    @property
    def error(self) -> str:
        return self.header("dlt_error") or ""

    def envelope(self, catalog: Catalog = CATALOG) -> Envelope[Any]:
        """The event, decoded as the consumer does; MalformedEvent if it is not one."""
        return from_record(
            [(k, v) for k, v in self.headers if not k.startswith("dlt_")], self.value, catalog
        )


@dataclass(frozen=True, slots=True)
class Replay:
    """What a replay did to one dead-letter record (a row of `dead_letter_replays`)."""

    event_id: UUID
    outcome: ReplayOutcome
    replayed_at: datetime


async def read_dead_letters(
    bootstrap: str, topics: Iterable[str], *, timeout: float = 30.0
) -> list[DeadLetter]:
    """Every record of the dead-letter topics that exist, up to their end when read,
    oldest first. Joins no consumer group and commits nothing."""
    partitions = await _partitions(bootstrap, topics)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    letters: list[DeadLetter] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        unread = {tp for tp in partitions if await consumer.position(tp) < ends[tp]}
        deadline = time.monotonic() + timeout
        while unread:
            if time.monotonic() > deadline:
                raise DeadLetterError(
                    f"timed out after {timeout:.0f}s reading "
                    + ", ".join(sorted(f"{tp.topic}:{tp.partition}" for tp in unread))
                )
            batch = await consumer.getmany(*unread, timeout_ms=500)
            for tp, records in batch.items():
                letters.extend(
                    DeadLetter(
                        topic=r.topic,
                        partition=r.partition,
                        offset=r.offset,
                        dead_lettered_at=datetime.fromtimestamp(r.timestamp / 1000, UTC),
                        key=r.key,
                        value=r.value or b"",
                        headers=tuple(r.headers or ()),
                    )
                    for r in records
                    if r.offset < ends[tp]
                )
            for tp in list(unread):
                if await consumer.position(tp) >= ends[tp]:
                    unread.discard(tp)
    finally:
        await consumer.stop()
    return sorted(letters, key=lambda d: (d.dead_lettered_at, d.place))


async def _partitions(bootstrap: str, topics: Iterable[str]) -> list[TopicPartition]:
    """The partitions of those topics that exist (a group that never failed may have none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15_000)
    await admin.start()
    try:
        wanted = sorted(set(topics) & set(await admin.list_topics()))
        described = await admin.describe_topics(wanted) if wanted else []
    finally:
        await admin.close()
    return [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        for partition in sorted(topic["partitions"], key=lambda p: int(p["partition"]))
    ]


async def replays_of(db: Database, topics: Iterable[str]) -> dict[tuple[str, int, int], Replay]:
    """The replays recorded for these dead-letter topics, by record place."""
    async with db.transaction() as tx:
        rows = await tx.fetch(
            """SELECT dlt_topic, dlt_partition, dlt_offset, event_id, outcome, replayed_at
               FROM dead_letter_replays WHERE dlt_topic = ANY($1::text[])""",
            sorted(set(topics)),
        )
    return {
        (r["dlt_topic"], r["dlt_partition"], r["dlt_offset"]): Replay(
            r["event_id"], r["outcome"], r["replayed_at"]
        )
        for r in rows
    }


def replay_of(letter: DeadLetter, replays: Mapping[tuple[str, int, int], Replay]) -> Replay | None:
    """The replay recorded for this very record (same place and same event id)."""
    replay = replays.get(letter.place)
    return replay if replay is not None and replay.event_id == letter.event_id else None


class AlreadyReplayed(Exception):
    """Another replay of the same record committed first; this one rolled back."""


class Replayer:
    """Replays dead letters through this service's handlers (see the module docstring)."""

    def __init__(
        self,
        *,
        db: Database,
        inbox: Inbox[asyncpg.Connection],
        handlers: Mapping[str, Handler[asyncpg.Connection]],
        groups: Sequence[str],
        catalog: Catalog = CATALOG,
        keys: DataKeys[asyncpg.Connection] | None = None,
    ) -> None:
        self._db = db
        # As the consumer's: the record's sealed personal fields open before the handler.
        self._keys = keys
        self._inbox = inbox
        self._handlers = dict(handlers)
        self._groups = tuple(groups)
        self._catalog = catalog

    @property
    def db(self) -> Database:
        return self._db

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    @property
    def dead_letter_topics(self) -> list[str]:
        """Where this service's groups park records (one topic per group)."""
        return [dead_letter_topic(group) for group in self._groups]

    def handles(self, event_type: str) -> bool:
        return event_type in self._handlers

    def check(self, letter: DeadLetter) -> Envelope[Any]:
        """The event a replay would apply; DeadLetterError if it cannot be replayed."""
        try:
            envelope = letter.envelope(self._catalog)
        except MalformedEvent as exc:
            raise DeadLetterError(
                f"{letter.ref} is not a valid event and cannot be replayed: {exc}"
            ) from None
        if envelope.type not in self._handlers:
            raise DeadLetterError(f"{letter.ref}: this service has no handler for {envelope.type}")
        if letter.consumer_group not in self._groups:
            raise DeadLetterError(
                f"{letter.ref} was dead-lettered by {letter.consumer_group}, "
                f"not by this service's groups ({', '.join(self._groups)})"
            )
        return envelope

    async def replay(self, letter: DeadLetter) -> ReplayOutcome:
        """Apply the record once: `applied`, or `duplicate` when the group's inbox already
        holds it. Raises AlreadyReplayed if a concurrent replay recorded it first, and
        whatever the handler raises (nothing is then committed)."""
        envelope = self.check(letter)
        handler = self._handlers[envelope.type]
        group = letter.consumer_group
        with continued_span(
            f"replay {envelope.type}",
            envelope.traceparent,
            envelope.tracestate,
            **{"messaging.consumer.group.name": group, "event.id": str(envelope.id)},
        ):
            async with self._db.transaction(tenant_id=envelope.tenant_id) as tx:
                claimed = await self._inbox.claim(tx, group, envelope.id)
                if claimed:
                    if self._keys is not None:
                        envelope = await unseal(envelope, self._keys, tx, catalog=self._catalog)
                    await handler(tx, envelope)
                outcome: ReplayOutcome = "applied" if claimed else "duplicate"
                recorded = await tx.fetchval(
                    """INSERT INTO dead_letter_replays (dlt_topic, dlt_partition, dlt_offset,
                                                        event_id, event_type, consumer, outcome)
                       VALUES ($1, $2, $3, $4, $5, $6, $7)
                       ON CONFLICT DO NOTHING RETURNING true""",
                    letter.topic,
                    letter.partition,
                    letter.offset,
                    envelope.id,
                    envelope.type,
                    group,
                    outcome,
                )
                if not recorded:
                    raise AlreadyReplayed(letter.ref)  # rolls the claim and effects back
        return outcome
