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
from tenantry_events.memory import MemoryDataKeys
from tenantry_events.sealing import ERASED, SEALED_PREFIX
from tenantry_events.storage import ConcurrencyConflict, EventStore, Inbox, Outbox


class ContractPing(msgspec.Struct, frozen=True, kw_only=True):
    """Payload used only by the contract tests."""

    n: int


class ContractProfile(msgspec.Struct, frozen=True, kw_only=True):
    name: str | None
    city: str


class ContractPerson(msgspec.Struct, frozen=True, kw_only=True):
    """A payload about one person, with personal fields at the top and nested."""

    account_id: UUID
    email: str
    profile: ContractProfile | None


class ContractNote(msgspec.Struct, frozen=True, kw_only=True):
    """A payload with a personal field but about no one person: the tenant's key alone."""

    text: str


if "test.contract_ping" not in CATALOG:
    CATALOG.register(EventType("test.contract_ping", ContractPing, "tests", False, 1, "test"))
    CATALOG.register(
        EventType(
            "test.contract_person",
            ContractPerson,
            "tests",
            False,
            1,
            "test",
            personal=("email", "profile.name"),
            person="account_id",
        )
    )
    CATALOG.register(
        EventType("test.contract_note", ContractNote, "tests", False, 1, "test", ("text",))
    )


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
    keys: MemoryDataKeys  # what the event store and the outbox seal with


def ping(n: int, tenant_id: UUID | None = None, version: int = 1) -> Envelope[ContractPing]:
    return new_event(
        ContractPing(n=n),
        tenant_id=tenant_id or uuid4(),
        subject="contract",
        aggregate_version=version,
        source="/tenantry/tests",
        region="local",
    )


def person(
    email: str, name: str | None, *, tenant_id: UUID, account_id: UUID, version: int = 1
) -> Envelope[ContractPerson]:
    return new_event(
        ContractPerson(
            account_id=account_id, email=email, profile=ContractProfile(name=name, city="Lyon")
        ),
        tenant_id=tenant_id,
        subject=str(account_id),
        aggregate_version=version,
        source="/tenantry/tests",
        region="local",
    )


def note(text: str, *, tenant_id: UUID, version: int = 1) -> Envelope[ContractNote]:
    return new_event(
        ContractNote(text=text),
        tenant_id=tenant_id,
        subject="note",
        aggregate_version=version,
        source="/tenantry/tests",
        region="local",
    )


def outbox_values(entries: list[Any], ids: set[UUID]) -> list[bytes]:
    """The Kafka record values of the outbox entries of these events."""
    return [
        e.record.value for e in entries if from_record(e.record.headers, e.record.value).id in ids
    ]


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

    async def test_stale_batched_append_writes_nothing_and_the_transaction_goes_on(
        self, stores: Stores
    ) -> None:
        stream = f"b-{uuid4().hex}"
        first = [ping(i, version=i + 1) for i in range(3)]
        async with stores.db.transaction() as tx:
            assert await stores.events.append(tx, stream, 0, first) == 3
        before = await stores.outbox.pending()
        late = [ping(10 + i, version=4 + i) for i in range(2)]
        async with stores.db.transaction() as tx:
            for stale in (0, 2, 5):  # behind, and ahead of, the stream's version
                with pytest.raises(ConcurrencyConflict) as info:
                    await stores.events.append(tx, stream, stale, late)
                assert (info.value.expected_version, info.value.actual_version) == (stale, 3)
            # The conflicts wrote nothing and left the caller's transaction usable.
            assert await stores.events.append(tx, stream, 3, late) == 5
        async with stores.db.transaction() as tx:
            loaded = await stores.events.load(tx, stream)
        assert [e.id for e in loaded] == [e.id for e in first + late]
        assert await stores.outbox.pending() == before + len(late)
        queued = [
            from_record(e.record.headers, e.record.value).id
            for e in await stores.outbox.fetch(10_000)
        ]
        assert queued[-2:] == [e.id for e in late], "each event queued once, in order"

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

    async def test_personal_fields_are_sealed_in_the_outbox_and_open_on_load(
        self, stores: Stores
    ) -> None:
        tenant, account = uuid4(), uuid4()
        stream = f"p-{uuid4().hex}"
        events: list[Envelope[Any]] = [
            person("ada@example.test", "Ada Lovelace", tenant_id=tenant, account_id=account),
            note("called Ada on Tuesday", tenant_id=tenant, version=2),
        ]
        async with stores.db.transaction() as tx:
            await stores.events.append(tx, stream, 0, events)
        values = outbox_values(await stores.outbox.fetch(10_000), {e.id for e in events})
        assert len(values) == 2
        for value in values:
            assert b"Ada" not in value
            assert b"ada@" not in value
            assert SEALED_PREFIX.encode() in value
        assert b"Lyon" in values[0], "a field the catalog does not call personal stays readable"
        async with stores.db.transaction() as tx:
            assert await stores.events.load(tx, stream) == events

    async def test_a_destroyed_subject_key_erases_that_person_only(self, stores: Stores) -> None:
        tenant, ada, bob = uuid4(), uuid4(), uuid4()
        async with stores.db.transaction() as tx:
            await stores.events.append(
                tx, f"a-{ada}", 0, [person("ada@x.test", "Ada", tenant_id=tenant, account_id=ada)]
            )
            await stores.events.append(
                tx, f"b-{bob}", 0, [person("bob@x.test", None, tenant_id=tenant, account_id=bob)]
            )
            await stores.events.append(tx, f"n-{ada}", 0, [note("Ada", tenant_id=tenant)])
        stores.keys.destroy(tenant, ada)
        async with stores.db.transaction() as tx:
            (erased,) = await stores.events.load(tx, f"a-{ada}")
            (kept,) = await stores.events.load(tx, f"b-{bob}")
            (tenant_note,) = await stores.events.load(tx, f"n-{ada}")
        assert erased.payload.email == ERASED
        assert erased.payload.profile == ContractProfile(name=ERASED, city="Lyon")
        assert erased.payload.account_id == ada, "the event keeps its shape and its subject"
        assert (kept.payload.email, kept.payload.profile.name) == ("bob@x.test", None)
        assert tenant_note.payload.text == "Ada", "sealed with the tenant's key alone"

    async def test_a_destroyed_tenant_key_erases_everything_it_sealed(self, stores: Stores) -> None:
        tenant, neighbour, ada = uuid4(), uuid4(), uuid4()
        async with stores.db.transaction() as tx:
            await stores.events.append(
                tx, f"a-{ada}", 0, [person("ada@x.test", "Ada", tenant_id=tenant, account_id=ada)]
            )
            await stores.events.append(tx, f"n-{tenant}", 0, [note("Ada", tenant_id=tenant)])
            await stores.events.append(tx, f"n-{neighbour}", 0, [note("Eve", tenant_id=neighbour)])
        stores.keys.destroy(tenant)
        async with stores.db.transaction() as tx:
            (erased,) = await stores.events.load(tx, f"a-{ada}")
            (erased_note,) = await stores.events.load(tx, f"n-{tenant}")
            (other,) = await stores.events.load(tx, f"n-{neighbour}")
        assert (erased.payload.email, erased.payload.profile.name) == (ERASED, ERASED)
        assert erased_note.payload.text == ERASED
        assert other.payload.text == "Eve"
        # A tenant whose key is destroyed writes no new personal data either.
        async with stores.db.transaction() as tx:
            await stores.events.append(
                tx, f"n-{tenant}", 1, [note("Ada", tenant_id=tenant, version=2)]
            )
            assert (await stores.events.load(tx, f"n-{tenant}"))[1].payload.text == ERASED


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

    async def test_put_seals_personal_fields(self, stores: Stores) -> None:
        tenant, ada = uuid4(), uuid4()
        event = person("ada@x.test", "Ada", tenant_id=tenant, account_id=ada)
        async with stores.db.transaction() as tx:
            await stores.outbox.put(tx, [event])
        (value,) = outbox_values(await stores.outbox.fetch(10_000), {event.id})
        assert b"ada@x.test" not in value
        assert b"Ada" not in value
        sealed = msgspec.json.decode(value, type=ContractPerson)
        assert sealed.email.startswith(f"{SEALED_PREFIX}s.{ada}:")
        assert sealed.profile is not None
        assert sealed.profile.name is not None
        assert sealed.profile.name.startswith(f"{SEALED_PREFIX}s.{ada}:")


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
