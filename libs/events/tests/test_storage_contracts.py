"""Every storage implementation runs the same contract tests."""

from __future__ import annotations

import pytest
from uuid_utils.compat import uuid4

from tenantry_events.memory import (
    MemoryDatabase,
    MemoryDataKeys,
    MemoryEventStore,
    MemoryInbox,
    MemoryOutbox,
)
from tenantry_events.sealing import SEALED_PREFIX
from tenantry_events.storage import PostgresEventStore, PostgresInbox, PostgresOutbox
from tenantry_testkit.fixtures import ScratchDatabase

from .contracts import (
    EventStoreContract,
    InboxContract,
    OutboxContract,
    Stores,
    person,
)


def memory_stores() -> Stores:
    db, keys = MemoryDatabase(), MemoryDataKeys()
    outbox = MemoryOutbox(db, keys=keys)
    return Stores(
        db=db, events=MemoryEventStore(db, outbox), outbox=outbox, inbox=MemoryInbox(db), keys=keys
    )


def postgres_stores(scratch: ScratchDatabase) -> Stores:
    keys = MemoryDataKeys()  # the key source is not the store's business: any DataKeys
    outbox = PostgresOutbox(scratch.db, keys=keys)
    return Stores(
        db=scratch.db,
        events=PostgresEventStore(outbox),
        outbox=outbox,
        inbox=PostgresInbox(),
        keys=keys,
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


async def test_postgres_rows_hold_only_ciphertext_of_personal_fields(
    scratch_db: ScratchDatabase,
) -> None:
    stores = postgres_stores(scratch_db)
    tenant, ada = uuid4(), uuid4()
    async with scratch_db.db.transaction() as tx:
        await stores.events.append(
            tx,
            f"a-{ada}",
            0,
            [person("ada@x.test", "Ada Lovelace", tenant_id=tenant, account_id=ada)],
        )
    async with scratch_db.db.transaction() as tx:
        envelope = await tx.fetchval(
            "SELECT envelope::text FROM events WHERE stream_id = $1", f"a-{ada}"
        )
        value = await tx.fetchval("SELECT value FROM outbox ORDER BY id DESC LIMIT 1")
    for stored in (envelope.encode(), bytes(value)):
        assert b"ada@x.test" not in stored
        assert b"Lovelace" not in stored
        assert f"{SEALED_PREFIX}s.{ada}:".encode() in stored


async def test_events_recorded_before_sealing_still_load(scratch_db: ScratchDatabase) -> None:
    before = PostgresEventStore(PostgresOutbox(scratch_db.db))  # no keys: plaintext
    tenant, ada = uuid4(), uuid4()
    old = person("ada@x.test", "Ada", tenant_id=tenant, account_id=ada)
    new = person("ada@y.test", "Ada", tenant_id=tenant, account_id=ada, version=2)
    stores = postgres_stores(scratch_db)
    async with scratch_db.db.transaction() as tx:
        await before.append(tx, f"a-{ada}", 0, [old])
        await stores.events.append(tx, f"a-{ada}", 1, [new])
    async with scratch_db.db.transaction() as tx:
        assert await stores.events.load(tx, f"a-{ada}") == [old, new]
        raw = await before.load(tx, f"a-{ada}")
    assert raw[0] == old
    assert raw[1].payload.email.startswith(SEALED_PREFIX), "a keyless reader sees ciphertext"
