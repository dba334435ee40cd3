"""Group members are users of the group's own tenant (store.py and migration 0003), on
a scratch database under row-level security: the check sees only the tenant's users, the
table refuses any other member, and a user deleted while a membership is being written
leaves no membership behind."""

from __future__ import annotations

import asyncio
from uuid import UUID, uuid4

import asyncpg
import pytest

from tenantry_events.pg import Database
from tenantry_provisioning import store

OURS, THEIRS = uuid4(), uuid4()


async def a_user(db: Database, tenant_id: UUID) -> UUID:
    user_id = uuid4()
    async with db.transaction(tenant_id=tenant_id) as tx:
        await tx.execute(
            "INSERT INTO scim_users (id, tenant_id, user_name) VALUES ($1, $2, $3)",
            user_id,
            tenant_id,
            f"{user_id}@example.com",
        )
    return user_id


async def a_group(db: Database, tenant_id: UUID) -> UUID:
    group_id = uuid4()
    async with db.transaction(tenant_id=tenant_id) as tx:
        await store.insert_group(
            tx, tenant_id, group_id, {"display_name": "G", "external_id": None, "extra": {}}
        )
    return group_id


async def members_of(db: Database, group_id: UUID) -> set[UUID]:
    async with db.transaction(tenant_id=OURS) as tx:
        rows = await tx.fetch(
            "SELECT member_id FROM scim_group_members WHERE group_id = $1", group_id
        )
    return {r["member_id"] for r in rows}


async def test_only_the_tenants_own_users_are_known(directory: Database) -> None:
    ours, theirs, nobody = (
        await a_user(directory, OURS),
        await a_user(directory, THEIRS),
        uuid4(),
    )
    group_id = await a_group(directory, OURS)
    async with directory.transaction(tenant_id=OURS) as tx:
        unknown = await store.unknown_members(tx, OURS, group_id, [ours, theirs, nobody])
    assert unknown == [theirs, nobody]


async def test_the_table_refuses_a_member_that_is_no_user_of_the_tenant(
    directory: Database,
) -> None:
    """The foreign key holds even for a writer that skips the check."""
    theirs, group_id = await a_user(directory, THEIRS), await a_group(directory, OURS)
    for stranger in (theirs, uuid4()):
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            async with directory.transaction(tenant_id=OURS) as tx:
                await store.set_members(tx, OURS, group_id, [(stranger, None, None)])
    assert await members_of(directory, group_id) == set()


async def test_a_user_deleted_while_its_membership_is_written_leaves_none(
    directory: Database,
) -> None:
    """The check locks the user (FOR KEY SHARE): a concurrent delete waits for the
    membership's commit, then the key's cascade takes the membership with the user."""
    user_id, group_id = await a_user(directory, OURS), await a_group(directory, OURS)
    written = asyncio.Event()
    release = asyncio.Event()

    async def add_member() -> None:
        async with directory.transaction(tenant_id=OURS) as tx:
            assert await store.unknown_members(tx, OURS, group_id, [user_id]) == []
            await store.set_members(tx, OURS, group_id, [(user_id, None, None)])
            written.set()
            await release.wait()

    async def delete_user() -> None:
        async with directory.transaction(tenant_id=OURS) as tx:
            await tx.execute("DELETE FROM scim_users WHERE id = $1", user_id)

    adding = asyncio.create_task(add_member())
    await written.wait()
    deleting = asyncio.create_task(delete_user())
    await asyncio.sleep(0.3)
    assert not deleting.done(), "the delete waits for the membership's transaction"
    release.set()
    await asyncio.wait_for(asyncio.gather(adding, deleting), timeout=10)
    assert await members_of(directory, group_id) == set()
