"""SCIM user writes (create, replace, delete): on both sides, the directory and identity's
account, or on neither.

Everything is checked before the first call to identity: the resource's attributes, the
userName rules below, and a trial write of the row inside a savepoint, so whatever
Postgres would refuse (a NUL, a lone surrogate, an oversized index entry) is a 400 that
names nothing in identity. What can still fail after identity's write is carried by the
saga in intents.py.

The rules a user must meet (userName, what Postgres can store) are domain.py's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from uuid import UUID

import asyncpg
from uuid_utils.compat import uuid7

from tenantry_events.pg import Database
from tenantry_provisioning import store
from tenantry_provisioning.domain import ScimError, checked_columns, login_email, taken
from tenantry_provisioning.scim import intents
from tenantry_provisioning.scim.accounts import IdentityAccounts
from tenantry_provisioning.scim.events import DirectoryEvents
from tenantry_provisioning.scim.intents import Intent

USER_NAME_MAX_CHARS = 256

Row = dict[str, Any]
Guard = Callable[[asyncpg.Connection, UUID], Awaitable[None]]


class _TrialDone(Exception):
    """Rolls back a trial write's savepoint."""


async def trial_write(
    tx: asyncpg.Connection, tenant_id: UUID, user_id: UUID, columns: Mapping[str, Any], *, new: bool
) -> None:
    """Write the row in a savepoint and roll it back: proves Postgres takes it before
    identity is asked for anything."""
    try:
        async with tx.transaction():
            if new:
                await store.insert_user(tx, tenant_id, user_id, columns)
            else:
                await store.update_user(tx, tenant_id, user_id, columns)
            raise _TrialDone
    except _TrialDone:
        return
    except asyncpg.UniqueViolationError:
        raise taken(columns["user_name"]) from None
    except (asyncpg.DataError, asyncpg.ProgramLimitExceededError, UnicodeError) as exc:
        raise ScimError(400, f"the user cannot be stored: {exc}", "invalidValue") from None


async def create(
    db: Database,
    events: DirectoryEvents,
    identity: IdentityAccounts,
    tenant_id: UUID,
    resource: Mapping[str, Any],
    authorization: str,
    guard: Guard,
) -> Row:
    columns = checked_columns(resource)
    user_name = columns["user_name"]
    active = columns["active"] is not False
    async with db.transaction(tenant_id=tenant_id) as tx:
        await guard(tx, tenant_id)
        if await store.user_name_owner(tx, tenant_id, user_name) is not None:
            raise taken(user_name)
        user_id = await intents.account_for_name(tx, tenant_id, user_name) or uuid7()
        await trial_write(tx, tenant_id, user_id, columns, new=True)
        intent, _ = await intents.open_intent(
            tx,
            tenant_id=tenant_id,
            user_id=user_id,
            kind="create",
            user_name=user_name,
            columns=columns,
            base_version=None,
            active=active,
        )
    await _identity_or_drop(
        db,
        intent,
        identity.provision(
            tenant_id,
            user_id,
            login_email(columns),
            active=active,
            authorization=authorization,
            intent_id=intent.id,
        ),
    )
    row = await _complete(db, events, intent)
    if row is None:  # finished by the worker or by a concurrent create meanwhile
        async with db.transaction(tenant_id=tenant_id) as tx:
            row = await store.get_user(tx, tenant_id, user_id)
        if row is None:
            raise _busy()
    return row


async def replace(
    db: Database,
    events: DirectoryEvents,
    identity: IdentityAccounts,
    tenant_id: UUID,
    user_id: UUID,
    change: Callable[[Row], Mapping[str, Any]],
    authorization: str,
    guard: Guard,
) -> Row:
    """PUT and PATCH: `change(current_row) -> the new full resource` (it checks If-Match).
    identity is called when `active` changes, when an earlier write of this user is still
    pending, or when identity's account (as its events say) is not in the state `active`
    asks for: the directory's `active` is the truth for a provisioned account."""
    async with db.transaction(tenant_id=tenant_id) as tx:
        await guard(tx, tenant_id)
        current = await store.get_user(tx, tenant_id, user_id)
    if current is None:
        raise ScimError(404, f"User {user_id} not found")
    columns = checked_columns(change(current))
    user_name = columns["user_name"]
    was_active, now_active = current["active"] is not False, columns["active"] is not False
    async with db.transaction(tenant_id=tenant_id) as tx:
        if await intents.name_reserved(tx, tenant_id, user_name, user_id):
            raise taken(user_name)
        locked = await tx.fetchval(
            "SELECT version FROM scim_users WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
            tenant_id,
            user_id,
        )
        if locked is None:
            raise ScimError(404, f"User {user_id} not found")
        if locked != current["version"]:
            raise ScimError(412, "the resource changed meanwhile; read it again", None)
        if was_active == now_active and await intents.identity_agrees(tx, user_id, now_active):
            # The directory alone: one transaction, no saga.
            await trial_write(tx, tenant_id, user_id, columns, new=False)
            row = await store.update_user(tx, tenant_id, user_id, columns)
            await intents.remember_account(tx, tenant_id, user_name, user_id)
            await events.emit(tx, tenant_id, row, intents.user_change(current, row))
            return row
        await trial_write(tx, tenant_id, user_id, columns, new=False)
        intent, _ = await intents.open_intent(
            tx,
            tenant_id=tenant_id,
            user_id=user_id,
            kind="replace",
            user_name=user_name,
            columns=columns,
            base_version=current["version"],
            active=now_active,
        )
    await _identity_or_drop(
        db, intent, identity.set_active(tenant_id, user_id, now_active, authorization)
    )
    written = await _complete(db, events, intent)
    if written is None:
        raise _busy()
    return written


async def remove(
    db: Database,
    events: DirectoryEvents,
    identity: IdentityAccounts,
    tenant_id: UUID,
    user_id: UUID,
    check: Callable[[Row], None],
    authorization: str,
    guard: Guard,
) -> None:
    """DELETE: the account is deprovisioned (it keeps its id: a re-created user of the
    same userName gets it back), the user and its memberships go."""
    async with db.transaction(tenant_id=tenant_id) as tx:
        await guard(tx, tenant_id)
        current = await store.get_user(tx, tenant_id, user_id)
        if current is None:
            raise ScimError(404, f"User {user_id} not found")
        check(current)
        intent, _ = await intents.open_intent(
            tx,
            tenant_id=tenant_id,
            user_id=user_id,
            kind="delete",
            user_name=current["user_name"],
            columns=None,
            base_version=current["version"],
            active=False,
        )
    await _identity_or_drop(
        db, intent, identity.set_active(tenant_id, user_id, False, authorization)
    )
    if await _complete(db, events, intent) is None:
        async with db.transaction(tenant_id=tenant_id) as tx:
            if await store.get_user(tx, tenant_id, user_id) is not None:
                raise _busy()


async def _identity_or_drop(db: Database, intent: Intent, call: Awaitable[Any]) -> None:
    """identity's step. A refusal (4xx) changed nothing there: the intent goes and the
    error is the answer. A 503 (identity unreachable, or busy with the same intent) may
    or may not have changed it: the intent stays, for the directory's retry or the
    worker."""
    try:
        await call
    except ScimError as exc:
        if exc.status < 500:
            await intents.drop(db, intent)
        raise


async def _complete(db: Database, events: DirectoryEvents, intent: Intent) -> Row | None:
    async with db.transaction(tenant_id=intent.tenant_id) as tx:
        return await intents.complete(events, tx, intent.id, wait=True)


def _busy() -> ScimError:
    return ScimError(
        503,
        "another change of this user was completed meanwhile; retry",
        None,
        {"Retry-After": "1"},
    )
