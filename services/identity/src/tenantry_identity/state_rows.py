"""The rows of identity's two event-sourced aggregates (domain.Account, domain.ApiKey) as
`tenantry-identity verify-state` reads, lists and rebuilds them against their streams."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from tenantry_events.state_check import (
    AggregateKind,
    RowNotRebuildable,
    rewriting_row,
    update_row,
)
from tenantry_identity.domain import Account, ApiKey
from tenantry_identity.store import (
    ACCOUNT_STREAM,
    API_KEY_STREAM,
    account_stream,
    api_key_stream,
)


async def read_account(tx: asyncpg.Connection, stream_id: str) -> Account | None:
    """The account its row holds, the row locked for this transaction."""
    row = await tx.fetchrow(
        """SELECT account_id, tenant_id, email, role, status, email_verified, version
           FROM accounts WHERE account_id = $1 AND tenant_id IS NOT NULL FOR UPDATE""",
        UUID(stream_id.removeprefix(ACCOUNT_STREAM)),
    )
    return Account(**dict(row)) if row is not None else None


async def rebuild_account(tx: asyncpg.Connection, stream_id: str, account: Account | None) -> None:
    if account is None:
        raise RowNotRebuildable(f"{stream_id} has a row but no events to rebuild it from")
    # A password hash is in no event (it is a secret): a lost row cannot be made afresh.
    await update_row(
        tx,
        stream_id,
        "its password is lost",
        """UPDATE accounts SET email = $2, role = $3, status = $4, email_verified = $5,
                               version = $6
           WHERE account_id = $1 AND tenant_id = $7""",
        account.account_id,
        account.email,
        account.role,
        account.status,
        account.email_verified,
        account.version,
        account.tenant_id,
    )


async def account_row_streams(tx: asyncpg.Connection) -> list[str]:
    rows = await tx.fetch("SELECT account_id FROM accounts WHERE tenant_id IS NOT NULL")
    return [account_stream(r["account_id"]) for r in rows]


ACCOUNTS: AggregateKind[Account, asyncpg.Connection] = AggregateKind(
    name="account",
    stream_prefix=ACCOUNT_STREAM,
    start=Account.start,
    read_row=read_account,
    write_row=rebuild_account,
    row_streams=account_row_streams,
)


async def read_api_key(tx: asyncpg.Connection, stream_id: str) -> ApiKey | None:
    """The API key its row holds, the row locked for this transaction."""
    row = await tx.fetchrow(
        """SELECT key_id, tenant_id, encode(key_sha256, 'hex') AS key_sha256, display_prefix,
                  name, kind, owner_account_id, scopes, expires_at, created_by,
                  revoked_at IS NOT NULL AS revoked, version
           FROM api_keys WHERE key_id = $1 FOR UPDATE""",
        stream_id.removeprefix(API_KEY_STREAM),
    )
    if row is None:
        return None
    return ApiKey(**{**dict(row), "scopes": tuple(row["scopes"])})


async def rebuild_api_key(tx: asyncpg.Connection, stream_id: str, key: ApiKey | None) -> None:
    """Every column but `last_used_at` (a usage counter) comes from the events, so a lost
    row is made again; a revoked key keeps its revocation time, or gets now."""
    if key is None:
        raise RowNotRebuildable(f"{stream_id} has a row but no events to rebuild it from")
    async with rewriting_row(tx, stream_id):
        await tx.execute(
            """INSERT INTO api_keys (key_id, tenant_id, key_sha256, display_prefix, name, kind,
                                     owner_account_id, scopes, expires_at, created_by, version,
                                     revoked_at)
               VALUES ($1, $2, decode($3, 'hex'), $4, $5, $6, $7, $8, $9, $10, $11,
                       CASE WHEN $12 THEN now() END)
               ON CONFLICT (key_id) DO UPDATE
                   SET tenant_id = EXCLUDED.tenant_id, key_sha256 = EXCLUDED.key_sha256,
                       display_prefix = EXCLUDED.display_prefix, name = EXCLUDED.name,
                       kind = EXCLUDED.kind, owner_account_id = EXCLUDED.owner_account_id,
                       scopes = EXCLUDED.scopes, expires_at = EXCLUDED.expires_at,
                       created_by = EXCLUDED.created_by, version = EXCLUDED.version,
                       revoked_at = CASE WHEN $12 THEN coalesce(api_keys.revoked_at, now()) END""",
            key.key_id,
            key.tenant_id,
            key.key_sha256,
            key.display_prefix,
            key.name,
            key.kind,
            key.owner_account_id,
            list(key.scopes),
            key.expires_at,
            key.created_by,
            key.version,
            key.revoked,
        )


async def api_key_row_streams(tx: asyncpg.Connection) -> list[str]:
    return [api_key_stream(r["key_id"]) for r in await tx.fetch("SELECT key_id FROM api_keys")]


API_KEYS: AggregateKind[ApiKey, asyncpg.Connection] = AggregateKind(
    name="api key",
    stream_prefix=API_KEY_STREAM,
    start=ApiKey.start,
    read_row=read_api_key,
    write_row=rebuild_api_key,
    row_streams=api_key_row_streams,
)
