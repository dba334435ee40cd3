"""The saga of a SCIM user write that crosses into identity: intent, identity, directory.

A create, a replace that changes `active` and a delete first record an intent (the row
to write, the row version it applies to, the account state identity is asked for) in the
transaction that checked them, then call identity, then `complete` the intent: the
directory row and its event in one transaction that also deletes the intent. So:

- identity refuses (a 4xx: nothing changed there): the caller drops the intent; neither
  side changed.
- the process dies, or identity times out, after identity's write: the intent stays.
  The worker (`finish_stale_intents`) completes it once provisioning's account_projection
  (fed by identity's account.* events) shows the account in the state the intent asked
  for; the directory's retry of the same write takes it over sooner. Both sides changed.
- the process dies before identity's write: the account never reaches that state, and
  the worker drops the intent after `scim_intent_abandon_seconds`; neither side changed
  (the directory retries meanwhile, and its retry re-drives the intent).

Completing is idempotent (the intent row is locked and deleted) and checks the row
version it was based on, so a stale intent never overwrites a newer write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from uuid_utils.compat import uuid7

from tenantry_events.payloads.provisioning import (
    GroupMembersChanged,
    UserDeprovisioned,
    UserProvisioned,
    UserUpdated,
)
from tenantry_events.pg import Database
from tenantry_provisioning import store
from tenantry_provisioning.scim.events import DirectoryEvents, directory_group, directory_user
from tenantry_provisioning.settings import ProvisioningSettings

log = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Intent:
    id: UUID
    tenant_id: UUID
    user_id: UUID
    kind: str  # create | replace | delete
    user_name: str
    columns: Mapping[str, Any] | None
    base_version: int | None
    active: bool


async def open_intent(
    tx: asyncpg.Connection,
    *,
    tenant_id: UUID,
    user_id: UUID,
    kind: str,
    user_name: str,
    columns: Mapping[str, Any] | None,
    base_version: int | None,
    active: bool,
) -> tuple[Intent, bool]:
    """Record the intent; True with it if it replaced a pending one of the same user (whose
    identity call may or may not have happened: the caller must set identity's state)."""
    replaced = await tx.fetchval(
        "DELETE FROM scim_user_intents WHERE user_id = $1 RETURNING id", user_id
    )
    intent = Intent(
        id=uuid7(),
        tenant_id=tenant_id,
        user_id=user_id,
        kind=kind,
        user_name=user_name,
        columns=columns,
        base_version=base_version,
        active=active,
    )
    await tx.execute(
        """INSERT INTO scim_user_intents
               (id, tenant_id, user_id, kind, user_name, columns, base_version, active)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
        intent.id,
        tenant_id,
        user_id,
        kind,
        user_name,
        dict(columns) if columns is not None else None,
        base_version,
        active,
    )
    return intent, replaced is not None


async def identity_agrees(tx: asyncpg.Connection, user_id: UUID, active: bool) -> bool:
    """No write of this user is pending, and identity's account (as far as its events have
    told) is in the state `active` asks for."""
    if await tx.fetchval("SELECT true FROM scim_user_intents WHERE user_id = $1", user_id):
        return False
    status = await tx.fetchval(
        "SELECT status FROM account_projection WHERE account_id = $1", user_id
    )
    return status is None or (status == "active") == active


async def account_for_name(tx: asyncpg.Connection, tenant_id: UUID, user_name: str) -> UUID | None:
    """The account a create of `user_name` uses: a pending create's, else the one the name
    had before (a re-created user), else None (a new one)."""
    pending: UUID | None = await tx.fetchval(
        """SELECT user_id FROM scim_user_intents
           WHERE tenant_id = $1 AND kind = 'create' AND lower(user_name) = lower($2)""",
        tenant_id,
        user_name,
    )
    if pending is not None:
        return pending
    # user_name_lower, not lower(user_name): only the stored column is an index condition
    # under row-level security (lower() is not leakproof).
    earlier: UUID | None = await tx.fetchval(
        """SELECT a.account_id FROM scim_user_accounts a
           WHERE a.tenant_id = $1 AND a.user_name_lower = lower($2)
             AND NOT EXISTS (SELECT 1 FROM scim_users u WHERE u.id = a.account_id)""",
        tenant_id,
        user_name,
    )
    return earlier


async def name_reserved(
    tx: asyncpg.Connection, tenant_id: UUID, user_name: str, user_id: UUID | None
) -> bool:
    """Whether another user has `user_name`, or a pending create of another user holds it."""
    owner = await store.user_name_owner(tx, tenant_id, user_name)
    if owner is not None and owner != user_id:
        return True
    holder = await tx.fetchval(
        """SELECT user_id FROM scim_user_intents
           WHERE tenant_id = $1 AND kind = 'create' AND lower(user_name) = lower($2)""",
        tenant_id,
        user_name,
    )
    return holder is not None and holder != user_id


async def drop(db: Database, intent: Intent) -> None:
    """identity refused (and changed nothing): the write is abandoned on both sides."""
    async with db.transaction(tenant_id=intent.tenant_id) as tx:
        await tx.execute("DELETE FROM scim_user_intents WHERE id = $1", intent.id)


async def complete(
    events: DirectoryEvents, tx: asyncpg.Connection, intent_id: UUID, *, wait: bool = False
) -> Row | None:
    """Write the directory side of a pending intent and delete it; the user's row as
    written (for a delete: as it was). None if the intent is gone (completed or replaced
    by another write) or its base version is outdated (then it is dropped)."""
    found = await tx.fetchrow(
        "SELECT * FROM scim_user_intents WHERE id = $1 FOR UPDATE"
        + ("" if wait else " SKIP LOCKED"),
        intent_id,
    )
    if found is None:
        return None
    intent = Intent(
        id=found["id"],
        tenant_id=found["tenant_id"],
        user_id=found["user_id"],
        kind=found["kind"],
        user_name=found["user_name"],
        columns=found["columns"],
        base_version=found["base_version"],
        active=found["active"],
    )
    await tx.execute("DELETE FROM scim_user_intents WHERE id = $1", intent.id)
    if intent.kind == "create":
        return await _create(events, tx, intent)
    current = await tx.fetchrow(
        "SELECT version FROM scim_users WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        intent.tenant_id,
        intent.user_id,
    )
    if current is None or current["version"] != intent.base_version:
        log.info("SCIM intent %s is outdated by a newer write: dropped", intent.id)
        return None
    if intent.kind == "replace":
        return await _replace(events, tx, intent)
    return await _delete(events, tx, intent)


async def _create(events: DirectoryEvents, tx: asyncpg.Connection, intent: Intent) -> Row | None:
    assert intent.columns is not None
    if await store.get_user(tx, intent.tenant_id, intent.user_id) is not None:
        return None
    row = await store.insert_user(tx, intent.tenant_id, intent.user_id, intent.columns)
    await remember_account(tx, intent.tenant_id, row["user_name"], intent.user_id)
    await events.emit(tx, intent.tenant_id, row, UserProvisioned(user=directory_user(row)))
    return row


async def _replace(events: DirectoryEvents, tx: asyncpg.Connection, intent: Intent) -> Row:
    assert intent.columns is not None
    before = await store.get_user(tx, intent.tenant_id, intent.user_id)
    assert before is not None
    row = await store.update_user(tx, intent.tenant_id, intent.user_id, intent.columns)
    await remember_account(tx, intent.tenant_id, row["user_name"], intent.user_id)
    await events.emit(tx, intent.tenant_id, row, user_change(before, row))
    return row


def user_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> Any:
    """user.deprovisioned when the write deactivates the user, else user.updated."""
    user = directory_user(after)
    if before["active"] is not False and after["active"] is False:
        return UserDeprovisioned(user=user, deleted=False)
    return UserUpdated(user=user)


async def _delete(events: DirectoryEvents, tx: asyncpg.Connection, intent: Intent) -> Row:
    tenant_id, user_id = intent.tenant_id, intent.user_id
    current = await store.get_user(tx, tenant_id, user_id)
    assert current is not None
    left = await store.delete_user(tx, tenant_id, user_id)
    user = msgspec.structs.replace(directory_user(current), active=False)
    await events.emit(tx, tenant_id, current, UserDeprovisioned(user=user, deleted=True))
    for group_id in left:
        group = await store.get_group(tx, tenant_id, group_id)
        if group is not None:
            await events.emit(
                tx,
                tenant_id,
                group,
                GroupMembersChanged(group=directory_group(group), added=[], removed=[user_id]),
            )
    return current


async def remember_account(
    tx: asyncpg.Connection, tenant_id: UUID, user_name: str, account_id: UUID
) -> None:
    """The name now leads to this account (a rename moves it; a deleted user's name that
    another user takes no longer leads to the deleted user's account)."""
    await tx.execute(
        """DELETE FROM scim_user_accounts
           WHERE tenant_id = $1 AND (account_id = $3 OR user_name_lower = lower($2))""",
        tenant_id,
        user_name,
        account_id,
    )
    await tx.execute(
        "INSERT INTO scim_user_accounts (tenant_id, user_name, account_id) VALUES ($1, $2, $3)",
        tenant_id,
        user_name,
        account_id,
    )


# ---------------------------------------------------------------- the worker's part


async def finish_stale_intents(
    db: Database, events: DirectoryEvents, settings: ProvisioningSettings, stop: asyncio.Event
) -> None:
    """The provisioning worker's loop (a worker task, app.py): every
    `scim_intent_sweep_seconds`, complete the intents whose request is gone once identity
    holds the account in the asked state, and drop the ones that never got there."""
    if settings.scim_intent_sweep_seconds <= 0:
        return
    while not stop.is_set():
        try:
            await sweep_once(
                db,
                events,
                stale=timedelta(seconds=settings.scim_intent_stale_seconds),
                abandon=timedelta(seconds=settings.scim_intent_abandon_seconds),
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("SCIM intents: sweep failed (%s); next round retries", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.scim_intent_sweep_seconds)


async def sweep_once(
    db: Database, events: DirectoryEvents, *, stale: timedelta, abandon: timedelta
) -> tuple[int, int]:
    """One round: (completed, dropped). Ages are measured by the database's clock, the one
    that stamped the intents."""
    async with db.transaction(platform=True) as tx:
        rows = await tx.fetch(
            """SELECT i.id, i.tenant_id, i.created_at < now() - $2::interval AS abandoned,
                      p.status = CASE WHEN i.active THEN 'active' ELSE 'disabled' END
                          AS reached
               FROM scim_user_intents i
               LEFT JOIN account_projection p ON p.account_id = i.user_id
               WHERE i.created_at < now() - $1::interval
               ORDER BY i.created_at LIMIT 100""",
            stale,
            abandon,
        )
    completed = dropped = 0
    for row in rows:
        async with db.transaction(tenant_id=row["tenant_id"]) as tx:
            if row["reached"]:
                await complete(events, tx, row["id"])
                completed += 1
                log.info("SCIM intent %s completed by the worker", row["id"])
            elif row["abandoned"]:
                await tx.execute("DELETE FROM scim_user_intents WHERE id = $1", row["id"])
                dropped += 1
                log.warning("SCIM intent %s dropped: identity never reached its state", row["id"])
    return completed, dropped
