"""Tenancy's key store (data_keys.py) on a scratch copy of its database: one key per
tenant and person however many ask at once, only wrapped at rest, destroyed for good."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from datetime import UTC, datetime
from uuid import UUID

import pytest
from uuid_utils.compat import uuid4

from tenantry_credentials.crypto import DecryptionFailed, SecretBox
from tenantry_platform.clock import FakeClock
from tenantry_service.data_keys import KeyDestroyed
from tenantry_tenancy.data_keys import DataKeyStore, TenancyDataKeys
from tenantry_testkit.fixtures import ScratchDatabase
from tenantry_testkit.stack import Stack


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tenancy_db: ScratchDatabase, clock: FakeClock) -> DataKeyStore:
    return DataKeyStore(tenancy_db.db, SecretBox(os.urandom(32)), clock=clock)


async def test_concurrent_first_uses_get_one_key(
    store: DataKeyStore, tenancy_db: ScratchDatabase
) -> None:
    tenant, person = uuid4(), uuid4()
    tenant_keys, subject_keys = await asyncio.gather(
        asyncio.gather(*(store.get_or_create(tenant) for _ in range(12))),
        asyncio.gather(*(store.get_or_create(tenant, person) for _ in range(12))),
    )
    assert len(set(tenant_keys)) == 1
    assert len(tenant_keys[0]) == 32
    assert len(set(subject_keys)) == 1
    assert subject_keys[0] != tenant_keys[0]
    async with tenancy_db.db.transaction() as conn:
        assert await conn.fetchval("SELECT count(*) FROM tenant_data_keys") == 1
        assert await conn.fetchval("SELECT count(*) FROM subject_data_keys") == 1
        assert await store.read(conn, tenant) == tenant_keys[0]
        assert await store.read(conn, tenant, person) == subject_keys[0]


async def test_a_key_is_stored_only_wrapped(
    store: DataKeyStore, tenancy_db: ScratchDatabase
) -> None:
    tenant, person = uuid4(), uuid4()
    keys = [await store.get_or_create(tenant), await store.get_or_create(tenant, person)]
    async with tenancy_db.db.transaction() as conn:
        rows = await conn.fetch(
            "SELECT wrapped_key FROM tenant_data_keys"
            " UNION ALL SELECT wrapped_key FROM subject_data_keys"
        )
    assert len(rows) == 2
    for row in rows:
        for key in keys:
            assert key not in bytes(row["wrapped_key"])


async def test_a_wrapped_key_moved_to_another_tenant_does_not_open(
    store: DataKeyStore, tenancy_db: ScratchDatabase
) -> None:
    first, second = uuid4(), uuid4()
    await store.get_or_create(first)
    await store.get_or_create(second)
    async with tenancy_db.db.transaction() as conn:
        await conn.execute(
            "UPDATE tenant_data_keys SET wrapped_key ="
            " (SELECT wrapped_key FROM tenant_data_keys WHERE tenant_id = $1)"
            " WHERE tenant_id = $2",
            first,
            second,
        )
        with pytest.raises(DecryptionFailed):
            await store.read(conn, second)


async def test_destroying_a_tenant_key_destroys_its_subject_keys_for_good(
    store: DataKeyStore, tenancy_db: ScratchDatabase, clock: FakeClock
) -> None:
    tenant, person, neighbour = uuid4(), uuid4(), uuid4()
    await store.get_or_create(tenant, person)  # makes the tenant's key too
    neighbour_key = await store.get_or_create(neighbour)
    clock.advance(60)

    assert await store.destroy_tenant_key(tenant) is True
    assert await store.destroy_tenant_key(tenant) is False  # once
    for subject in (None, person):
        with pytest.raises(KeyDestroyed):
            await store.get_or_create(tenant, subject)  # never made again
    with pytest.raises(KeyDestroyed):
        await store.get_or_create(tenant, uuid4())  # nor a new person's
    async with tenancy_db.db.transaction() as conn:
        for subject in (None, person):
            with pytest.raises(KeyDestroyed):
                await store.read(conn, tenant, subject)
        rows = await conn.fetch(
            "SELECT wrapped_key, destroyed_at FROM tenant_data_keys WHERE tenant_id = $1"
            " UNION ALL SELECT wrapped_key, destroyed_at FROM subject_data_keys"
            " WHERE tenant_id = $1",
            tenant,
        )
        assert await store.read(conn, neighbour) == neighbour_key
    destroyed_at = datetime.fromtimestamp(clock.now(), UTC)
    assert [(r["wrapped_key"], r["destroyed_at"]) for r in rows] == [(None, destroyed_at)] * 2


async def test_destroying_one_persons_key_leaves_the_rest(store: DataKeyStore) -> None:
    tenant, erased, kept = uuid4(), uuid4(), uuid4()
    tenant_key = await store.get_or_create(tenant)
    await store.get_or_create(tenant, erased)
    kept_key = await store.get_or_create(tenant, kept)

    assert await store.destroy_subject_key(tenant, erased) is True
    with pytest.raises(KeyDestroyed):
        await store.get_or_create(tenant, erased)
    assert await store.get_or_create(tenant) == tenant_key
    assert await store.get_or_create(tenant, kept) == kept_key
    # A person erased before any key was made for them gets none later either.
    never = uuid4()
    assert await store.destroy_subject_key(tenant, never) is True
    with pytest.raises(KeyDestroyed):
        await store.get_or_create(tenant, never)


async def test_tenancy_seals_and_opens_from_its_own_table(
    store: DataKeyStore, tenancy_db: ScratchDatabase
) -> None:
    """TenancyDataKeys, the DataKeys tenancy's event store uses: sealing makes the key,
    opening never does, and a destroyed key is None to both."""
    keys = TenancyDataKeys(store)
    tenant, person, unknown = uuid4(), uuid4(), uuid4()
    async with tenancy_db.db.transaction() as tx:
        assert await keys.for_opening(tx, unknown) is None
        sealing = await keys.for_sealing(tx, tenant)
        sealing_person = await keys.for_sealing(tx, tenant, person)
    async with tenancy_db.db.transaction() as tx:
        assert (
            await tx.fetchval("SELECT count(*) FROM tenant_data_keys WHERE tenant_id = $1", unknown)
            == 0
        )
    fresh = TenancyDataKeys(store)  # another process: nothing cached
    async with tenancy_db.db.transaction() as tx:
        assert await fresh.for_opening(tx, tenant) == sealing
        assert await fresh.for_opening(tx, tenant, person) == sealing_person

    assert await keys.destroy_subject_key(tenant, person) is True
    async with tenancy_db.db.transaction() as tx:
        assert await keys.for_opening(tx, tenant, person) is None
        assert await keys.for_sealing(tx, tenant, person) is None
        assert await keys.for_opening(tx, tenant) == sealing
    assert await keys.destroy_tenant_key(tenant) is True
    async with tenancy_db.db.transaction() as tx:
        assert await keys.for_opening(tx, tenant) is None
        assert await keys.for_sealing(tx, tenant) is None
        assert await TenancyDataKeys(store).for_opening(tx, tenant) is None


async def test_a_kek_rotation_rewraps_every_live_key_and_changes_none(
    store: DataKeyStore, tenancy_db: ScratchDatabase
) -> None:
    old_kek, new_kek = SecretBox(os.urandom(32)), SecretBox(os.urandom(32))
    before = DataKeyStore(tenancy_db.db, old_kek)
    tenants = [uuid4() for _ in range(3)]
    people = [(t, uuid4()) for t in tenants for _ in range(2)]
    keys: dict[tuple[UUID, UUID | None], bytes] = {
        (t, None): await before.get_or_create(t) for t in tenants
    }
    keys |= {(t, p): await before.get_or_create(t, p) for t, p in people}
    await before.destroy_subject_key(*people[0])
    del keys[people[0]]

    after = DataKeyStore(tenancy_db.db, new_kek)
    assert await after.rewrap(old_kek, batch_size=2) == len(keys)  # paged by 2
    async with tenancy_db.db.transaction() as conn:
        for (tenant, person), key in keys.items():
            assert await after.read(conn, tenant, person) == key
            with pytest.raises(DecryptionFailed):
                await before.read(conn, tenant, person)
        with pytest.raises(KeyDestroyed):
            await after.read(conn, *people[0])
    assert await after.rewrap(old_kek) == 0  # nothing left to do: safe to run again
    with pytest.raises(DecryptionFailed):  # keys that open with neither
        await DataKeyStore(tenancy_db.db, SecretBox(os.urandom(32))).rewrap(old_kek)


async def test_the_rotation_command(stack: Stack, tenancy_db: ScratchDatabase) -> None:
    old_key, new_key = os.urandom(32), os.urandom(32)
    tenant = uuid4()
    key = await DataKeyStore(tenancy_db.db, SecretBox(old_key)).get_or_create(tenant)
    env = {
        **os.environ,
        "TENANTRY_DATABASE_URL": tenancy_db.app_dsn,
        "TENANTRY_KAFKA_BOOTSTRAP": stack.kafka_bootstrap,
        "TENANTRY_MASTER_KEY": base64.b64encode(new_key).decode(),
        "TENANTRY_PREVIOUS_MASTER_KEY": base64.b64encode(os.urandom(32)).decode(),
    }

    async def run() -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tenantry_tenancy.rewrap_data_keys",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode is not None
        return process.returncode, out.decode()

    assert (await run())[0] == 1, "the wrong previous key changes nothing"
    env["TENANTRY_PREVIOUS_MASTER_KEY"] = base64.b64encode(old_key).decode()
    code, out = await run()
    assert code == 0, out
    assert "1 key(s) re-wrapped" in out
    async with tenancy_db.db.transaction() as conn:
        assert await DataKeyStore(tenancy_db.db, SecretBox(new_key)).read(conn, tenant) == key
    env["TENANTRY_PREVIOUS_MASTER_KEY"] = "not base64"
    assert (await run())[0] == 2
