"""The fold and the state check, on a small aggregate of the tests' own (pure, and on the
in-memory stores, which pass the same contract tests as Postgres)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import msgspec
import pytest
from uuid_utils.compat import uuid4

from tenantry_events.aggregates import UnfoldableStream, fold
from tenantry_events.catalog import CATALOG, EventType
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.memory import MemoryDatabase, MemoryEventStore, MemoryOutbox, MemoryTx
from tenantry_events.state_check import (
    AggregateKind,
    RowNotRebuildable,
    check_state,
    differences,
    rewriting_row,
)
from tenantry_testkit.fixtures import ScratchDatabase


class CounterOpened(msgspec.Struct, frozen=True, kw_only=True):
    label: str


class CounterAdded(msgspec.Struct, frozen=True, kw_only=True):
    amount: int


class CounterClosed(msgspec.Struct, frozen=True, kw_only=True):
    pass


COUNTER_EVENTS: list[tuple[str, type[msgspec.Struct]]] = [
    ("test.counter_opened", CounterOpened),
    ("test.counter_added", CounterAdded),
    ("test.counter_closed", CounterClosed),
]
for name, payload in COUNTER_EVENTS:
    if name not in CATALOG:
        CATALOG.register(EventType(name, payload, "tests", False, 1, "aggregate tests"))


@dataclass(frozen=True)
class Counter:
    label: str
    total: int
    version: int
    closed: bool = False

    @staticmethod
    def start(event: Envelope[Any]) -> Counter:
        if not isinstance(event.payload, CounterOpened):
            raise UnfoldableStream(f"a counter starts with test.counter_opened, not {event.type}")
        return Counter(label=event.payload.label, total=0, version=event.aggregate_version)

    def apply(self, event: Envelope[Any]) -> Counter:
        match event.payload:
            case CounterAdded(amount=amount):
                return replace(self, total=self.total + amount, version=event.aggregate_version)
            case CounterClosed():
                return replace(self, closed=True, version=event.aggregate_version)
        raise UnfoldableStream.unexpected(event, self)


def stream(*payloads: msgspec.Struct, first_version: int = 1) -> list[Envelope[Any]]:
    return [
        new_event(
            p,
            tenant_id=uuid4(),
            subject="counter",
            aggregate_version=v,
            source="/tenantry/tests",
            region="local",
        )
        for v, p in enumerate(payloads, start=first_version)
    ]


def test_a_stream_folds_event_by_event_and_an_empty_one_is_nothing() -> None:
    events = stream(CounterOpened(label="c"), CounterAdded(amount=2), CounterAdded(amount=3))
    assert fold(Counter.start, events) == Counter(label="c", total=5, version=3)
    assert fold(Counter.start, events[:1]) == Counter(label="c", total=0, version=1)
    assert fold(Counter.start, []) is None


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (stream(CounterAdded(amount=1)), r"starts with test\.counter_opened"),
        (stream(CounterOpened(label="c"), CounterOpened(label="d")), "cannot apply"),
        (stream(CounterOpened(label="c"), first_version=2), "carries version 2"),
        (
            [*stream(CounterOpened(label="c")), *stream(CounterAdded(amount=1))],
            "carries version 1",
        ),
    ],
)
def test_a_stream_that_does_not_fold_raises(events: list[Envelope[Any]], message: str) -> None:
    with pytest.raises(UnfoldableStream, match=message):
        fold(Counter.start, events)


def test_an_apply_that_does_not_advance_the_version_is_caught() -> None:
    @dataclass(frozen=True)
    class Forgetful(Counter):
        def apply(self, event: Envelope[Any]) -> Forgetful:
            return self

    def start(event: Envelope[Any]) -> Forgetful:
        return Forgetful(label="c", total=0, version=1)

    with pytest.raises(UnfoldableStream, match=r"at version 1 after test\.counter_added"):
        fold(start, stream(CounterOpened(label="c"), CounterAdded(amount=1)))


def test_differences_name_each_field_nested_ones_by_their_path() -> None:
    row = {"state": {"status": "active", "plan": "free"}, "version": 2}
    events = {"state": {"status": "suspended", "plan": "free"}, "version": 3}
    assert differences(row, events) == [
        "state.status: row 'active', events 'suspended'",
        "version: row 2, events 3",
    ]
    assert differences(None, events) == ["row missing, events present"]


# ---------------------------------------------------------------- check_state, in memory


class CounterRows:
    """A state table of counters; a closed counter's row is deleted, like a deleted SSO
    connection's."""

    def __init__(self) -> None:
        self.rows: dict[str, Counter] = {}

    async def read(self, tx: MemoryTx, stream_id: str) -> Counter | None:
        return self.rows.get(stream_id)

    async def write(self, tx: MemoryTx, stream_id: str, state: Counter | None) -> None:
        if state is None:
            raise RowNotRebuildable("no events to rebuild it from")
        self.rows[stream_id] = state

    async def streams(self, tx: MemoryTx) -> list[str]:
        return list(self.rows)

    def kind(self) -> AggregateKind[Counter, MemoryTx]:
        return AggregateKind(
            name="counter",
            stream_prefix="counter-",
            start=Counter.start,
            read_row=self.read,
            write_row=self.write,
            row_streams=self.streams,
            keeps_row=lambda counter: not counter.closed,
        )


async def test_check_state_reports_each_drift_and_rebuild_repairs_what_events_can() -> None:
    db = MemoryDatabase()
    store = MemoryEventStore(db, MemoryOutbox(db))
    table = CounterRows()
    async with db.transaction() as tx:
        for stream_id, payloads in {
            "counter-ok": (CounterOpened(label="ok"), CounterAdded(amount=1)),
            "counter-tampered": (CounterOpened(label="t"), CounterAdded(amount=2)),
            "counter-lost": (CounterOpened(label="l"),),
            "counter-closed": (CounterOpened(label="x"), CounterClosed()),
        }.items():
            events = stream(*payloads)
            await store.append(tx, stream_id, 0, events)
            state = fold(Counter.start, events)
            assert state is not None
            if not state.closed:
                table.rows[stream_id] = state
        await store.append(tx, "other-kind", 0, stream(CounterAdded(amount=1)))
    table.rows["counter-tampered"] = replace(table.rows["counter-tampered"], total=99)
    del table.rows["counter-lost"]
    table.rows["counter-orphan"] = Counter(label="o", total=0, version=1)
    kinds = [table.kind()]

    found = await check_state(db, store, kinds)
    assert [(d.stream_id, d.differences, d.rebuilt) for d in found] == [
        ("counter-lost", ["row missing, events present"], False),
        ("counter-orphan", ["row present, events missing"], False),
        ("counter-tampered", ["total: row 99, events 2"], False),
    ]

    repaired = await check_state(db, store, kinds, rebuild=True)
    assert [(d.stream_id, d.rebuilt, d.error) for d in repaired] == [
        ("counter-lost", True, None),
        ("counter-orphan", False, "not rebuilt: no events to rebuild it from"),
        ("counter-tampered", True, None),
    ]
    assert table.rows["counter-tampered"].total == 2
    assert table.rows["counter-lost"] == Counter(label="l", total=0, version=1)
    # Idempotent: a second rebuild has only what events cannot repair left.
    again = await check_state(db, store, kinds, rebuild=True)
    assert [d.stream_id for d in again] == ["counter-orphan"]


async def test_a_stream_that_does_not_fold_is_reported_and_left_alone() -> None:
    db = MemoryDatabase()
    store = MemoryEventStore(db, MemoryOutbox(db))
    table = CounterRows()
    async with db.transaction() as tx:
        await store.append(tx, "counter-bad", 0, stream(CounterAdded(amount=1)))
    table.rows["counter-bad"] = Counter(label="b", total=1, version=1)
    [drift] = await check_state(db, store, [table.kind()], rebuild=True)
    assert not drift.rebuilt
    assert drift.error is not None
    assert "starts with test.counter_opened" in drift.error
    assert table.rows["counter-bad"] == Counter(label="b", total=1, version=1)


async def test_a_row_rewrite_that_clashes_on_a_unique_value_is_not_rebuildable(
    effects_db: ScratchDatabase,
) -> None:
    """rewriting_row (Postgres): the clash is this aggregate's RowNotRebuildable, and the
    check's transaction goes on (a savepoint took the error)."""
    async with effects_db.db.transaction(platform=True) as tx:
        await tx.execute("CREATE TEMP TABLE slugs (stream_id text PRIMARY KEY, slug text UNIQUE)")
        await tx.execute("INSERT INTO slugs VALUES ('a', 'acme'), ('b', 'bolt')")
        with pytest.raises(RowNotRebuildable, match="another row holds a unique value"):
            async with rewriting_row(tx, "b"):
                await tx.execute("UPDATE slugs SET slug = 'acme' WHERE stream_id = 'b'")
        async with rewriting_row(tx, "b"):
            await tx.execute("UPDATE slugs SET slug = 'bolt-2' WHERE stream_id = 'b'")
        rows = await tx.fetch("SELECT stream_id, slug FROM slugs ORDER BY stream_id")
    assert [tuple(r) for r in rows] == [("a", "acme"), ("b", "bolt-2")]
