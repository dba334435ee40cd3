"""State rows checked against their streams, and rebuilt from them.

A service keeps a state row per event-sourced aggregate, written in the same transaction as
its events, so reads are plain SQL. The events are the truth: folding an aggregate's stream
(`aggregates.fold`) must give what its row holds. `check_state` compares the two for every
aggregate of the kinds a service registers, and with `rebuild` rewrites the rows that
differ from their fold. Each aggregate is checked (and rebuilt) in one transaction that
first locks its row, so a command committing meanwhile is waited for, not reported.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
import msgspec

from tenantry_events.aggregates import Aggregate, Start, UnfoldableStream, fold
from tenantry_events.consumer import TransactionFactory
from tenantry_events.storage import EventStore

A = TypeVar("A", bound=Aggregate)
Tx = TypeVar("Tx")


@dataclass(frozen=True)
class AggregateKind(Generic[A, Tx]):
    """One kind of event-sourced aggregate and its state row: how to fold its streams, and
    how to read and write its row. A service lists its kinds in its ServiceSpec."""

    name: str  # "tenant", as the ops command prints it
    stream_prefix: str  # every stream of this kind, and only those, starts with it
    start: Start[A]  # the aggregate from its stream's first event
    # The aggregate as its row holds it, the row locked (FOR UPDATE); None: no row.
    read_row: Callable[[Tx, str], Awaitable[A | None]]
    # Make the row hold this state (insert or update; None: no row should exist). It may
    # raise RowNotRebuildable when the events do not carry everything the row needs.
    write_row: Callable[[Tx, str, A | None], Awaitable[None]]
    # The stream ids of every row of this kind (rows whose stream is missing are drift).
    row_streams: Callable[[Tx], Awaitable[list[str]]]
    # Whether the folded state keeps a row: False for an aggregate whose stream ends in
    # its deletion (its row was deleted with that event).
    keeps_row: Callable[[A], bool] = lambda state: True


class RowNotRebuildable(Exception):
    """The row cannot be written from the events alone (say, a column no event carries)."""


@asynccontextmanager
async def rewriting_row(tx: asyncpg.Connection, stream_id: str) -> AsyncIterator[None]:
    """A `write_row` on Postgres: in a savepoint, so that a value another row holds (a
    unique constraint: a slug, an email) makes RowNotRebuildable for this aggregate and
    leaves the check's transaction usable for the rest."""
    try:
        async with tx.transaction():
            yield
    except asyncpg.UniqueViolationError as exc:
        raise RowNotRebuildable(
            f"{stream_id}: another row holds a unique value ({exc.constraint_name})"
        ) from None


async def update_row(
    tx: asyncpg.Connection, stream_id: str, lost: str, sql: str, *args: Any
) -> None:
    """Rewrite an existing row (`sql` is one UPDATE) in `rewriting_row`; a row that is not
    there is RowNotRebuildable with `lost`, what no event carries to make it again."""
    async with rewriting_row(tx, stream_id):
        updated = await tx.execute(sql, *args)
    if updated == "UPDATE 0":
        raise RowNotRebuildable(f"{stream_id} has events but no row ({lost})")


class Drift(msgspec.Struct, frozen=True, kw_only=True):
    """One aggregate whose row is not what its stream folds to."""

    kind: str
    stream_id: str
    differences: list[str]  # "state.status: row 'active', events 'suspended'"
    rebuilt: bool = False
    error: str | None = None  # why it could not be folded or rebuilt


async def check_state(
    db: TransactionFactory[Tx],
    events: EventStore[Tx],
    kinds: Sequence[AggregateKind[Any, Tx]],
    *,
    rebuild: bool = False,
) -> list[Drift]:
    """Every aggregate of `kinds` whose row differs from its fold, in stream id order; with
    `rebuild` each row is rewritten from its fold and its drift marked `rebuilt` (or given
    the `error` that prevented it). Idempotent: a second rebuild finds nothing to do."""
    drifts: list[Drift] = []
    for kind in kinds:
        async with db.transaction(platform=True) as tx:
            stream_ids = set(await events.stream_ids(tx, kind.stream_prefix))
            stream_ids.update(await kind.row_streams(tx))
        for stream_id in sorted(stream_ids):
            async with db.transaction(platform=True) as tx:
                drift = await check_one(tx, events, kind, stream_id, rebuild=rebuild)
            if drift is not None:
                drifts.append(drift)
    return drifts


async def check_one(
    tx: Tx,
    events: EventStore[Tx],
    kind: AggregateKind[A, Tx],
    stream_id: str,
    *,
    rebuild: bool = False,
) -> Drift | None:
    """One aggregate, inside the caller's transaction: None when its row is its fold."""
    row = await kind.read_row(tx, stream_id)  # locks the row before the stream is read
    try:
        folded = fold(kind.start, await events.load(tx, stream_id))
    except UnfoldableStream as exc:
        return Drift(kind=kind.name, stream_id=stream_id, differences=[], error=str(exc))
    expected = folded if folded is not None and kind.keeps_row(folded) else None
    if row == expected:
        return None
    drift = Drift(kind=kind.name, stream_id=stream_id, differences=differences(row, expected))
    if not rebuild:
        return drift
    try:
        await kind.write_row(tx, stream_id, expected)
    except RowNotRebuildable as exc:
        return msgspec.structs.replace(drift, error=f"not rebuilt: {exc}")
    return msgspec.structs.replace(drift, rebuilt=True)


def differences(row: object, events: object) -> list[str]:
    """Field by field, what the row holds against what the events fold to (states are
    dataclasses or msgspec Structs; a nested one's fields are named `outer.inner`)."""
    if row is None or events is None:
        return [f"row {_describe(row)}, events {_describe(events)}"]
    held, folded = _fields(row), _fields(events)
    return [
        f"{name}: row {held.get(name)!r}, events {folded.get(name)!r}"
        for name in sorted(held.keys() | folded.keys())
        if held.get(name) != folded.get(name)
    ]


def _fields(state: object) -> dict[str, Any]:
    def flat(prefix: str, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            return {prefix: value}
        out: dict[str, Any] = {}
        for name, inner in value.items():
            out.update(flat(f"{prefix}.{name}" if prefix else str(name), inner))
        return out

    return flat("", msgspec.to_builtins(state))


def _describe(state: object) -> str:
    return "missing" if state is None else "present"
