"""Event-sourced aggregates: the contract every service's aggregates follow, and the fold
that rebuilds one from its stream. Pure (no I/O).

An aggregate is immutable state with a `version` (how many events of its stream it has
seen) and an `apply(event)` that returns the state after one more event. Its stream's
first event makes it (each aggregate type says how, e.g. `Tenant.start`), and `fold`
applies the rest in order. The state rows services keep beside their streams (for plain
SQL reads) are snapshots of this fold; `state_check.py` compares the two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Protocol, Self, TypeVar

import msgspec

from tenantry_events.catalog import CATALOG, UnknownEventType
from tenantry_events.envelope import Envelope


class Aggregate(Protocol):
    """State rebuilt from a stream. `version` is the aggregate version of the last event
    applied, which is the event's place in its stream (1, 2, 3, ...)."""

    @property
    def version(self) -> int: ...

    def apply(self, event: Envelope[Any]) -> Self:
        """The state after `event`; an event this aggregate does not know raises
        `UnfoldableStream` (see `UnfoldableStream.unexpected`)."""
        ...


A = TypeVar("A", bound=Aggregate)
P = TypeVar("P", bound=msgspec.Struct)
Start = Callable[[Envelope[Any]], A]  # the aggregate from its stream's first event


class UnfoldableStream(ValueError):
    """A stream that does not make an aggregate: a version out of place, or an event its
    aggregate does not know. Events are facts, so this is a bug or damaged data."""

    @classmethod
    def unexpected(cls, event: Envelope[Any], state: object) -> UnfoldableStream:
        return cls(
            f"{type(state).__name__} cannot apply {event.type} "
            f"(subject {event.subject}, version {event.aggregate_version})"
        )


def first_payload(event: Envelope[Any], payload_type: type[P], aggregate: str) -> P:
    """The payload of the first event of `aggregate`'s stream ("a tenant"), which must be a
    `payload_type`, the event that makes one; any other event is an UnfoldableStream."""
    payload = event.payload
    if not isinstance(payload, payload_type):
        try:
            expected = CATALOG.by_payload(payload_type).name
        except UnknownEventType:
            expected = payload_type.__name__
        raise UnfoldableStream(f"{aggregate}'s stream starts with {expected}, not {event.type}")
    return payload


S = TypeVar("S")


def state_from(payload: msgspec.Struct, state_type: type[S], /, **more: Any) -> S:
    """A new aggregate's state (a dataclass) from its creating event: each field the payload
    also has, by name, then `more` (what the envelope says, or a value in another form)."""
    names = {f.name for f in dataclasses.fields(state_type)}  # type: ignore[arg-type]
    values = {k: v for k, v in msgspec.structs.asdict(payload).items() if k in names}
    return state_type(**{**values, **more})


def fold(start: Start[A], stream: Iterable[Envelope[Any]]) -> A | None:
    """The aggregate a stream makes: `start` on the first event, `apply` on each later one;
    None for an empty stream. Each event must carry the next version, and the state after
    it must have that version, so a gap, a duplicate or an `apply` that forgot to advance
    the version raises instead of folding into a plausible wrong state."""
    state: A | None = None
    for position, event in enumerate(stream, start=1):
        if event.aggregate_version != position:
            raise UnfoldableStream(
                f"{event.type} at place {position} of {event.subject}'s stream "
                f"carries version {event.aggregate_version}"
            )
        state = start(event) if state is None else state.apply(event)
        if state.version != position:
            raise UnfoldableStream(
                f"{type(state).__name__} is at version {state.version} after "
                f"{event.type}, version {position}"
            )
    return state
