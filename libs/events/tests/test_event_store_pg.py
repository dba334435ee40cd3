"""The Postgres event store's one-call append (migration 0006, issue 20): what the contract
tests cannot see from outside. A lost race still leaves the caller's transaction usable,
the outbox rows of appended events take their headers from the event's row and come out
exactly as `to_record` would make them, and a row whose event was purged is dropped."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import asyncpg
import msgspec
import pytest
from uuid_utils.compat import uuid4

from tenantry_events.actors import Actor
from tenantry_events.envelope import decode_envelope
from tenantry_events.kafka_codec import to_record
from tenantry_events.storage import ConcurrencyConflict, PostgresEventStore, PostgresOutbox
from tenantry_testkit.fixtures import ScratchDatabase, eventually

from .contracts import person, ping
from .test_storage_contracts import postgres_stores


async def _blocked(db: ScratchDatabase, pid: int) -> None:
    """Until the backend `pid` waits on a lock (the unique index's wait for the other
    writer's transaction)."""
    conn = await asyncpg.connect(db.owner_dsn)

    async def waiting() -> bool:
        # pg_locks, not pg_stat_activity: its wait columns are hidden from other roles.
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted)", pid
            )
        )

    try:
        await eventually(waiting, timeout=10, message="the second writer to wait on a lock")
    finally:
        await conn.close()


async def test_a_lost_race_is_a_conflict_and_the_transaction_stays_usable(
    scratch_db: ScratchDatabase,
) -> None:
    """Both writers pass the version check; the second meets the unique key once the first
    commits, and the function's subtransaction undoes its insert alone."""
    stores = postgres_stores(scratch_db)
    stream = f"r-{uuid4().hex}"
    winner, loser, after = ping(1), ping(2), ping(3, version=2)
    async with scratch_db.db.transaction() as first:
        await stores.events.append(first, stream, 0, [winner])

        async def second_writer() -> tuple[int, int]:
            async with scratch_db.db.transaction() as tx:
                pid = tx.get_server_pid()
                started.set_result(pid)
                with pytest.raises(ConcurrencyConflict) as info:
                    await stores.events.append(tx, stream, 0, [loser])
                # Still usable: the next append in the same transaction goes through.
                version = await stores.events.append(tx, stream, 1, [after])
            return info.value.actual_version, version

        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        second = asyncio.create_task(second_writer())
        await _blocked(scratch_db, await started)
    assert await second == (1, 2)
    async with scratch_db.db.transaction() as tx:
        assert [e.id for e in await stores.events.load(tx, stream)] == [winner.id, after.id]
    queued = {e.record.value for e in await stores.outbox.fetch(10_000)}
    assert to_record(winner).value in queued
    assert to_record(after).value in queued
    assert to_record(loser).value not in queued


async def test_appended_rows_take_their_headers_from_the_event_row(
    scratch_db: ScratchDatabase,
) -> None:
    stores = postgres_stores(scratch_db)
    tenant, ada = uuid4(), uuid4()
    paris = timezone(timedelta(hours=1))
    event = msgspec.structs.replace(
        person("ada@x.test", "Ada", tenant_id=tenant, account_id=ada),
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        tracestate="tenantry=1",
        actor=Actor(kind="user", id=str(ada), ip="192.0.2.1", user_agent="curl/8"),
        occurred_at=datetime(2026, 12, 8, 3, 4, 5, tzinfo=paris),  # an offset, no micros
    )
    stream = f"a-{ada}"
    async with scratch_db.db.transaction() as tx:
        await stores.events.append(tx, stream, 0, [event, ping(1, tenant_id=tenant, version=2)])
        await stores.outbox.put(tx, [ping(2, tenant_id=tenant)])  # a row with its headers
    async with scratch_db.db.transaction() as tx:
        stored = [
            decode_envelope(r["e"].encode())  # sealed, as the store wrote it
            for r in await tx.fetch(
                "SELECT envelope::text AS e FROM events WHERE stream_id = $1 ORDER BY version",
                stream,
            )
        ]
        headers = [r["headers"] for r in await tx.fetch("SELECT headers FROM outbox ORDER BY id")]
    assert headers[:2] == [None, None], "appended events' rows hold no headers"
    assert headers[2] is not None
    records = [e.record for e in await stores.outbox.fetch(10_000)]
    assert records[:2] == [to_record(e) for e in stored]
    assert dict(records[0].headers)["ce_time"] == b"2026-12-08T03:04:05+01:00"
    assert b"192.0.2.1" not in dict(records[0].headers)["ce_actor"], "the actor stays sealed"
    assert len(records) == 3


async def test_a_row_whose_event_was_purged_is_dropped_not_published(
    scratch_db: ScratchDatabase,
) -> None:
    stores = postgres_stores(scratch_db)
    tenant = uuid4()
    gone, kept = ping(1, tenant_id=tenant), ping(2, tenant_id=tenant, version=2)
    async with scratch_db.db.transaction() as tx:
        await stores.events.append(tx, f"t-{tenant}", 0, [gone, kept])
    owner = await asyncpg.connect(scratch_db.owner_dsn)
    try:
        await owner.execute("DELETE FROM events WHERE event_id = $1", gone.id)
    finally:
        await owner.close()
    entries = await stores.outbox.fetch(10_000)
    assert [e.record for e in entries] == [to_record(kept)]
    assert await stores.outbox.pending() == 1, "the orphan row is deleted"


async def test_stored_headers_keep_rows_readable_by_relays_that_do_not_derive_them(
    scratch_db: ScratchDatabase,
) -> None:
    """During a rolling upgrade from before issue 20 (TENANTRY_OUTBOX_STORED_HEADERS=true)
    every appended row carries its headers, exactly the ones the relay would derive, as an
    older relay reads them straight from the column."""
    derived = postgres_stores(scratch_db)
    assert isinstance(derived.outbox, PostgresOutbox)
    stored = PostgresEventStore(derived.outbox, stored_headers=True)
    tenant = uuid4()
    events = [ping(1, tenant_id=tenant), ping(2, tenant_id=tenant, version=2)]
    async with scratch_db.db.transaction() as tx:
        await stored.append(tx, f"s-{tenant}", 0, events)
        rows = await tx.fetch(
            "SELECT headers FROM outbox WHERE event_id = ANY($1) ORDER BY id",
            [e.id for e in events],
        )
    as_an_old_relay_reads_them = [[(k, v.encode()) for k, v in r["headers"]] for r in rows]
    assert as_an_old_relay_reads_them == [to_record(e).headers for e in events]
