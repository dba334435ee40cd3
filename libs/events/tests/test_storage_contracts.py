"""Every storage implementation runs the same contract tests."""

from __future__ import annotations

import pytest

from tenantry_events.memory import MemoryDatabase, MemoryEventStore, MemoryInbox, MemoryOutbox
from tenantry_events.storage import PostgresEventStore, PostgresInbox, PostgresOutbox
from tenantry_testkit.fixtures import ScratchDatabase

from .contracts import (
    EventStoreContract,
    InboxContract,
    OutboxContract,
    Stores,
)


def memory_stores() -> Stores:
    db = MemoryDatabase()
    outbox = MemoryOutbox(db)
    return Stores(db=db, events=MemoryEventStore(db, outbox), outbox=outbox, inbox=MemoryInbox(db))


def postgres_stores(scratch: ScratchDatabase) -> Stores:
    outbox = PostgresOutbox(scratch.db)
    return Stores(
        db=scratch.db, events=PostgresEventStore(outbox), outbox=outbox, inbox=PostgresInbox()
    )


class MemoryFixture:
    @pytest.fixture
    async def stores(self) -> Stores:
        return memory_stores()


class PostgresFixture:
    @pytest.fixture
    async def stores(self, scratch_db: ScratchDatabase) -> Stores:
        return postgres_stores(scratch_db)


class TestMemoryEventStore(MemoryFixture, EventStoreContract):
    pass


class TestMemoryOutbox(MemoryFixture, OutboxContract):
    pass


class TestMemoryInbox(MemoryFixture, InboxContract):
    pass


class TestPostgresEventStore(PostgresFixture, EventStoreContract):
    pass


class TestPostgresOutbox(PostgresFixture, OutboxContract):
    pass


class TestPostgresInbox(PostgresFixture, InboxContract):
    pass
