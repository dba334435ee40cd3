"""In-memory twins of the storage contracts, for fast unit tests of service logic with
FastStream's TestKafkaBroker. They pass the same contract tests as the Postgres stores.

A `MemoryDatabase` serialises transactions with one lock and restores every store's state
when a transaction raises, which is all the isolation single-process tests need.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol
from uuid import UUID

from tenantry_events.envelope import Envelope
from tenantry_events.kafka_codec import to_record
from tenantry_events.sealing import KEY_BYTES, DataKeys, seal_all, unseal_all
from tenantry_events.storage import ConcurrencyConflict, OutboxEntry


class _Snapshottable(Protocol):
    def snapshot(self) -> object: ...
    def restore(self, state: object) -> None: ...


class MemoryTx:
    """The transaction handle of the in-memory stores."""


class MemoryDatabase:
    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._stores: list[_Snapshottable] = []

    def register(self, store: _Snapshottable) -> None:
        self._stores.append(store)

    @asynccontextmanager
    async def transaction(
        self, *, tenant_id: UUID | None = None, platform: bool = False
    ) -> AsyncIterator[MemoryTx]:
        async with self._lock:
            saved = [s.snapshot() for s in self._stores]
            try:
                yield MemoryTx()
            except BaseException:
                for store, state in zip(self._stores, saved, strict=True):
                    store.restore(state)
                raise


class MemoryOutbox:
    def __init__(self, db: MemoryDatabase, *, keys: DataKeys[MemoryTx] | None = None) -> None:
        self.keys = keys  # as PostgresOutbox: its event store seals with them too
        self._entries: list[OutboxEntry] = []
        self._next_id = 1
        db.register(self)

    def snapshot(self) -> object:
        return (list(self._entries), self._next_id)

    def restore(self, state: object) -> None:
        assert isinstance(state, tuple)
        entries, next_id = state
        self._entries, self._next_id = list(entries), int(next_id)

    async def put(self, tx: MemoryTx, events: Sequence[Envelope[Any]]) -> None:
        await self.put_sealed(tx, await seal_all(events, self.keys, tx))

    async def put_sealed(self, tx: MemoryTx, events: Sequence[Envelope[Any]]) -> None:
        for event in events:
            self._entries.append(OutboxEntry(self._next_id, to_record(event)))
            self._next_id += 1

    async def fetch(self, limit: int) -> list[OutboxEntry]:
        return self._entries[:limit]

    async def remove(self, ids: Sequence[int]) -> None:
        gone = set(ids)
        self._entries = [e for e in self._entries if e.id not in gone]

    async def pending(self) -> int:
        return len(self._entries)


class MemoryEventStore:
    def __init__(self, db: MemoryDatabase, outbox: MemoryOutbox) -> None:
        self._streams: dict[str, list[Envelope[Any]]] = {}
        self._outbox = outbox
        db.register(self)

    def snapshot(self) -> object:
        return copy.copy({k: list(v) for k, v in self._streams.items()})

    def restore(self, state: object) -> None:
        self._streams = state  # type: ignore[assignment]

    async def append(
        self,
        tx: MemoryTx,
        stream_id: str,
        expected_version: int,
        events: Sequence[Envelope[Any]],
    ) -> int:
        stream = self._streams.setdefault(stream_id, [])
        if len(stream) != expected_version:
            raise ConcurrencyConflict(stream_id, expected_version, len(stream))
        sealed = await seal_all(events, self._outbox.keys, tx)
        stream.extend(sealed)
        await self._outbox.put_sealed(tx, sealed)
        return len(stream)

    async def load(self, tx: MemoryTx, stream_id: str) -> list[Envelope[Any]]:
        return await unseal_all(self._streams.get(stream_id, []), self._outbox.keys, tx)

    async def stream_ids(self, tx: MemoryTx, prefix: str) -> list[str]:
        return sorted(s for s, events in self._streams.items() if events and s.startswith(prefix))


class MemoryInbox:
    def __init__(self, db: MemoryDatabase) -> None:
        self._seen: set[tuple[str, UUID]] = set()
        db.register(self)

    def snapshot(self) -> object:
        return set(self._seen)

    def restore(self, state: object) -> None:
        self._seen = state  # type: ignore[assignment]

    async def claim(self, tx: MemoryTx, consumer: str, event_id: UUID) -> bool:
        if (consumer, event_id) in self._seen:
            return False
        self._seen.add((consumer, event_id))
        return True


class MemoryDataKeys:
    """`DataKeys` in a dict, for unit tests and the in-memory stores: keys made on first
    sealing, destroyed for good by `destroy` (a tenant's, or one person's in a tenant)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[UUID, UUID | None], bytes] = {}
        self._destroyed: set[tuple[UUID, UUID | None]] = set()

    async def for_sealing(
        self, tx: object, tenant_id: UUID, subject_id: UUID | None = None
    ) -> bytes | None:
        slot = (tenant_id, subject_id)
        if slot in self._destroyed:
            return None
        return self._keys.setdefault(slot, os.urandom(KEY_BYTES))

    async def for_opening(
        self, tx: object, tenant_id: UUID, subject_id: UUID | None = None
    ) -> bytes | None:
        return self._keys.get((tenant_id, subject_id))

    def destroy(self, tenant_id: UUID, subject_id: UUID | None = None) -> None:
        self._keys.pop((tenant_id, subject_id), None)
        self._destroyed.add((tenant_id, subject_id))
