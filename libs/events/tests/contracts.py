"""Abstract contract tests for the storage ports, in the style of the eventsourcing library:
each implementation subclasses a contract and provides a `stores` fixture (a `Stores`);
the contract's tests then run against it unchanged.
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

import msgspec
import pytest
from uuid_utils.compat import uuid4

from tenantry_events.catalog import CATALOG, EventType
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.kafka_codec import from_record
from tenantry_events.storage import ConcurrencyConflict, EventStore, Inbox, Outbox


class ContractPing(msgspec.Struct, frozen=True, kw_only=True):
    """Payload used only by the contract tests."""

    n: int


if "test.contract_ping" not in CATALOG:
    CATALOG.register(EventType("test.contract_ping", ContractPing, "tests", False, 1, "test"))


class TxFactory(Protocol):
    def transaction(
        self, *, tenant_id: UUID | None = None, platform: bool = False
    ) -> AbstractAsyncContextManager[Any]: ...


@dataclass
class Stores:
    db: TxFactory
    events: EventStore[Any]
    outbox: Outbox[Any]
    inbox: Inbox[Any]


def ping(n: int, tenant_id: UUID | None = None, version: int = 1) -> Envelope[ContractPing]:
    return new_event(
        ContractPing(n=n),
        tenant_id=tenant_id or uuid4(),
        subject="contract",
        aggregate_version=version,
        source="/tenantry/tests",
        region="local",
    )


class EventStoreContract:
    async def test_append_then_load_returns_events_in_order(self, stores: Stores) -> None:
        events = [ping(i, version=i + 1) for i in range(3)]
        async with stores.db.transaction() as tx:
            version = await stores.events.append(tx, "s-1", 0, events)
        assert version == 3
        async with stores.db.transaction() as tx:
            loaded = await stores.events.load(tx, "s-1")
        assert [e.id for e in loaded] == [e.id for e in events]
        assert [e.payload.n for e in loaded] == [0, 1, 2]

    async def test_wrong_expected_version_is_a_conflict_and_writes_nothing(
        self, stores: Stores
    ) -> None:
        async with stores.db.transaction() as tx:
            await stores.events.append(tx, "s-2", 0, [ping(1)])
        for stale in (0, 2):
            with pytest.raises(ConcurrencyConflict) as info:
                async with stores.db.transaction() as tx:
                    await stores.events.append(tx, "s-2", stale, [ping(2)])
            assert info.value.actual_version == 1
        async with stores.db.transaction() as tx:
            assert len(await stores.events.load(tx, "s-2")) == 1

    async def test_concurrent_writers_of_one_version_exactly_one_wins(self, stores: Stores) -> None:
        async def write(n: int) -> bool:
            try:
                async with stores.db.transaction() as tx:
                    await stores.events.append(tx, "s-3", 0, [ping(n)])
            except ConcurrencyConflict:
                return False
            return True

        results = await asyncio.gather(*(write(n) for n in range(8)))
        assert sorted(results) == [False] * 7 + [True]

    async def test_append_enters_the_outbox_in_the_same_transaction(self, stores: Stores) -> None:
        before = await stores.outbox.pending()
        event = ping(7)
        async with stores.db.transaction() as tx:
            await stores.events.append(tx, "s-4", 0, [event])
        entries = await stores.outbox.fetch(10_000)
        assert await stores.outbox.pending() == before + 1
        assert event.id in {from_record(e.record.headers, e.record.value).id for e in entries}

    async def test_rolled_back_append_leaves_no_event_and_no_outbox_row(
        self, stores: Stores
    ) -> None:
        before = await stores.outbox.pending()
        with pytest.raises(RuntimeError):
            async with stores.db.transaction() as tx:
                await stores.events.append(tx, "s-5", 0, [ping(1)])
                raise RuntimeError("handler failed after the append")
        async with stores.db.transaction() as tx:
            assert await stores.events.load(tx, "s-5") == []
        assert await stores.outbox.pending() == before

    async def test_unknown_stream_loads_empty(self, stores: Stores) -> None:
        async with stores.db.transaction() as tx:
            assert await stores.events.load(tx, "never-written") == []

    async def test_stream_ids_lists_each_written_stream_of_a_prefix_once_in_order(
        self, stores: Stores
    ) -> None:
        kind = f"k{uuid4().hex[:8]}-"  # stores are shared per database: a prefix of our own
        async with stores.db.transaction() as tx:
            await stores.events.append(tx, f"{kind}b", 0, [ping(1), ping(2, version=2)])
            await stores.events.append(tx, f"{kind}a", 0, [ping(3)])
            await stores.events.append(tx, f"other-{kind}c", 0, [ping(4)])
        with pytest.raises(RuntimeError):
            async with stores.db.transaction() as tx:
                await stores.events.append(tx, f"{kind}rolled-back", 0, [ping(5)])
                raise RuntimeError("rolled back")
        async with stores.db.transaction() as tx:
            assert await stores.events.stream_ids(tx, kind) == [f"{kind}a", f"{kind}b"]
            assert await stores.events.stream_ids(tx, f"{kind}a") == [f"{kind}a"]
            assert await stores.events.stream_ids(tx, f"no-such-{kind}") == []


class OutboxContract:
    async def test_fetch_is_oldest_first_and_remove_deletes_exactly_those(
        self, stores: Stores
    ) -> None:
        events = [ping(i) for i in range(5)]
        async with stores.db.transaction() as tx:
            await stores.outbox.put(tx, events[:3])
        async with stores.db.transaction() as tx:
            await stores.outbox.put(tx, events[3:])
        entries = await stores.outbox.fetch(10_000)
        ids = [from_record(e.record.headers, e.record.value).id for e in entries]
        assert ids[-5:] == [e.id for e in events]
        assert [e.id for e in entries] == sorted(e.id for e in entries)
        first_two = [e.id for e in entries[-5:-3]]
        await stores.outbox.remove(first_two)
        left = [
            from_record(e.record.headers, e.record.value).id
            for e in await stores.outbox.fetch(10_000)
        ]
        assert events[0].id not in left
        assert events[1].id not in left
        assert [e.id for e in events[2:]] == left[-3:]

    async def test_records_carry_topic_key_and_cloudevents_headers(self, stores: Stores) -> None:
        tenant = uuid4()
        event = ping(1, tenant_id=tenant)
        async with stores.db.transaction() as tx:
            await stores.outbox.put(tx, [event])
        entry = (await stores.outbox.fetch(10_000))[-1]
        assert entry.record.topic == "test.contract_ping"
        assert entry.record.key == str(tenant).encode()
        headers = dict(entry.record.headers)
        assert headers["ce_id"] == str(event.id).encode()
        assert headers["ce_specversion"] == b"1.0"

    async def test_fetch_respects_the_limit(self, stores: Stores) -> None:
        async with stores.db.transaction() as tx:
            await stores.outbox.put(tx, [ping(i) for i in range(4)])
        assert len(await stores.outbox.fetch(2)) == 2


class InboxContract:
    async def test_claim_once_per_consumer(self, stores: Stores) -> None:
        event_id = uuid4()
        async with stores.db.transaction() as tx:
            assert await stores.inbox.claim(tx, "group-a", event_id) is True
        async with stores.db.transaction() as tx:
            assert await stores.inbox.claim(tx, "group-a", event_id) is False
            assert await stores.inbox.claim(tx, "group-b", event_id) is True

    async def test_claim_rolled_back_with_its_transaction(self, stores: Stores) -> None:
        event_id = uuid4()
        with pytest.raises(RuntimeError):
            async with stores.db.transaction() as tx:
                assert await stores.inbox.claim(tx, "group-a", event_id)
                raise RuntimeError("the handler's effects failed")
        async with stores.db.transaction() as tx:
            assert await stores.inbox.claim(tx, "group-a", event_id) is True
