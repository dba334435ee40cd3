"""The three storage contracts of the backbone (event store, outbox, inbox) and their
Postgres implementations. In-memory twins for fast unit tests live in `memory.py`; both run
the same abstract contract tests (libs/events/tests/contracts.py).

Every write takes the transaction handle of the caller's unit of work, so a handler's
effects, the events it appends, their outbox rows and its inbox mark commit together.

Personal fields are sealed (sealing.py) by the outbox's `keys`: the event store and the
outbox write them sealed, so `events.envelope`, `outbox.value` and the Kafka record hold
ciphertext, and `load` opens them. An outbox built without keys writes and reads plaintext:
only tests and benchmarks that predate sealing build one; the services always pass keys.

An append is one round trip: the `append_events` function (migrations 0006, 0007) checks the
version and writes the events and their outbox rows. Those outbox rows hold topic, key,
value and event id but no headers: `PostgresOutbox.fetch` builds the CloudEvents headers
from the event's row, the same envelope, instead of every append paying to write and
parse them twice. Rows of `put` (events of no stream) hold their headers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.envelope import Envelope, decode_envelope, encode_envelope
from tenantry_events.kafka_codec import (
    KafkaRecord,
    header_values,
    record_headers,
    record_key,
    to_record,
)
from tenantry_events.pg import Database
from tenantry_events.sealing import DataKeys, seal_all, unseal_all

Tx = TypeVar("Tx", contravariant=True)
log = logging.getLogger("tenantry.outbox")
_JSON = msgspec.json.Encoder()
_STORED_ENVELOPE = msgspec.json.Decoder(Envelope[msgspec.Raw])  # headers need no payload


class ConcurrencyConflict(Exception):
    """Someone else appended to the stream since the caller read it (HTTP 409)."""

    def __init__(self, stream_id: str, expected_version: int, actual_version: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at version {actual_version}, "
            f"the write expected {expected_version}"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class OutboxEntry(msgspec.Struct, frozen=True):
    id: int
    record: KafkaRecord


class EventStore(Protocol, Generic[Tx]):
    async def append(
        self,
        tx: Tx,
        stream_id: str,
        expected_version: int,
        events: Sequence[Envelope[Any]],
    ) -> int:
        """Append after `expected_version` (0 for a new stream); return the new version.
        The events also enter the outbox in the same transaction."""
        ...

    async def load(self, tx: Tx, stream_id: str) -> list[Envelope[Any]]:
        """One stream's events in version order (empty for a stream never written)."""
        ...

    async def stream_ids(self, tx: Tx, prefix: str) -> list[str]:
        """Every stream whose id starts with `prefix` (one aggregate kind, e.g. "tenant-"),
        in id order: what an ops command folds to check or rebuild state rows."""
        ...


class Outbox(Protocol, Generic[Tx]):
    async def put(self, tx: Tx, events: Sequence[Envelope[Any]]) -> None:
        """Queue the events for Kafka, their personal fields sealed."""
        ...

    async def fetch(self, limit: int) -> list[OutboxEntry]:
        """The oldest waiting entries, in insertion order."""
        ...

    async def remove(self, ids: Sequence[int]) -> None: ...

    async def pending(self) -> int: ...


class Inbox(Protocol, Generic[Tx]):
    async def claim(self, tx: Tx, consumer: str, event_id: UUID) -> bool:
        """Mark the event processed by `consumer`; False if it already was."""
        ...


# --------------------------------------------------------------------------- Postgres


class PostgresOutbox:
    def __init__(self, db: Database, *, keys: DataKeys[asyncpg.Connection] | None = None) -> None:
        self._db = db
        self.keys = keys  # the event store beside this outbox seals and opens with them too

    async def put(self, tx: asyncpg.Connection, events: Sequence[Envelope[Any]]) -> None:
        await self.put_sealed(tx, await seal_all(events, self.keys, tx))

    async def put_sealed(self, tx: asyncpg.Connection, events: Sequence[Envelope[Any]]) -> None:
        """`put` for events sealed already."""
        if not events:
            return
        records = [to_record(e) for e in events]
        await tx.execute(
            # jsonb travels as text: nested lists would become one multi-dimensional array.
            """INSERT INTO outbox (topic, key, headers, value, event_id)
               SELECT t, k, h::jsonb, v, e
               FROM unnest($1::text[], $2::bytea[], $3::text[], $4::bytea[], $5::uuid[])
                    AS u(t, k, h, v, e)""",
            [r.topic for r in records],
            [r.key for r in records],
            [_JSON.encode(header_values(e)).decode() for e in events],
            [r.value for r in records],
            [e.id for e in events],
        )

    async def fetch(
        self, limit: int, *, conn: asyncpg.Connection | None = None
    ) -> list[OutboxEntry]:
        """The oldest `limit` rows, through the pool or on `conn` (the relay reads on the
        connection that holds its lock, see relay.py).

        A row of an appended event takes its headers from the event's row. A row whose
        event is gone cannot be published, and must not be: the tenant was purged (the
        purge keeps its saga's outbox rows; a relay that died between Kafka's ack and the
        delete finds one again), so the row is deleted here."""
        on = conn or self._db.pool
        rows = await on.fetch(
            # The subquery runs for the rows the LIMIT keeps, by events' event_id key.
            """SELECT o.id, o.topic, o.key, o.headers, o.value,
                      CASE WHEN o.headers IS NULL THEN
                          (SELECT e.envelope::text FROM events e WHERE e.event_id = o.event_id)
                      END AS envelope
               FROM outbox o ORDER BY o.id LIMIT $1""",
            limit,
        )
        entries: list[OutboxEntry] = []
        orphans: list[int] = []
        for r in rows:
            if r["headers"] is not None:
                headers = [(k, v.encode()) for k, v in r["headers"]]
            elif r["envelope"] is not None:
                headers = record_headers(_STORED_ENVELOPE.decode(r["envelope"]))
            else:
                orphans.append(r["id"])
                continue
            record = KafkaRecord(topic=r["topic"], key=r["key"], headers=headers, value=r["value"])
            entries.append(OutboxEntry(r["id"], record))
        if orphans:
            log.warning("dropped outbox rows %s: their events were deleted", orphans)
            await self.remove(orphans, conn=conn)
        return entries

    async def remove(self, ids: Sequence[int], *, conn: asyncpg.Connection | None = None) -> None:
        await (conn or self._db.pool).execute(
            "DELETE FROM outbox WHERE id = ANY($1::bigint[])", list(ids)
        )

    async def pending(self) -> int:
        return int(await self._db.pool.fetchval("SELECT count(*) FROM outbox"))


class PostgresEventStore:
    """Seals and opens with its outbox's keys: one place says whether a service seals."""

    def __init__(self, outbox: PostgresOutbox, *, stored_headers: bool = False) -> None:
        """`stored_headers`: also write each outbox row's headers, for relays older than
        the ones that derive them (a rolling upgrade from before issue 20: an old relay
        fails on a row without headers). Same one statement, a larger row."""
        self._outbox = outbox
        self._stored_headers = stored_headers

    async def append(
        self,
        tx: asyncpg.Connection,
        stream_id: str,
        expected_version: int,
        events: Sequence[Envelope[Any]],
    ) -> int:
        """One call of `append_events` (migration 0006): version check, events, outbox rows.
        Sealing comes first, so a stale write also seals (and may create keys) in vain."""
        events = await seal_all(events, self._outbox.keys, tx)
        keys: dict[UUID, bytes] = {}  # one tenant per stream, in practice: one str(UUID)
        row = await tx.fetchrow(
            """SELECT appended, version
               FROM append_events($1, $2, $3::uuid[], $4::text[], $5::uuid[],
                                  $6::timestamptz[], $7::text[], $8::bytea[], $9::bytea[],
                                  $10::text[])""",
            stream_id,
            expected_version,
            [e.id for e in events],
            [e.type for e in events],
            [e.tenant_id for e in events],
            [e.occurred_at for e in events],
            [encode_envelope(e).decode() for e in events],
            [keys.get(e.tenant_id) or keys.setdefault(e.tenant_id, record_key(e)) for e in events],
            [_JSON.encode(e.payload) for e in events],
            [
                _JSON.encode(header_values(e)).decode() if self._stored_headers else None
                for e in events
            ],
        )
        assert row is not None  # a function call returns one row
        if not row["appended"]:
            raise ConcurrencyConflict(stream_id, expected_version, row["version"])
        return int(row["version"])

    async def load(self, tx: asyncpg.Connection, stream_id: str) -> list[Envelope[Any]]:
        rows = await tx.fetch(
            "SELECT envelope::text AS e FROM events WHERE stream_id = $1 ORDER BY version",
            stream_id,
        )
        events = [decode_envelope(r["e"].encode()) for r in rows]
        return await unseal_all(events, self._outbox.keys, tx)

    async def stream_ids(self, tx: asyncpg.Connection, prefix: str) -> list[str]:
        # A scan of the table: an ops command's read, not a request's.
        rows = await tx.fetch(
            """SELECT DISTINCT stream_id FROM events WHERE starts_with(stream_id, $1)
               ORDER BY stream_id""",
            prefix,
        )
        return [r["stream_id"] for r in rows]


class PostgresInbox:
    async def claim(self, tx: asyncpg.Connection, consumer: str, event_id: UUID) -> bool:
        inserted = await tx.fetchval(
            """INSERT INTO inbox (consumer, event_id) VALUES ($1, $2)
               ON CONFLICT DO NOTHING RETURNING true""",
            consumer,
            event_id,
        )
        return bool(inserted)
