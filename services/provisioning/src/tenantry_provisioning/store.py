"""Postgres access of the SCIM directory (scim_users, scim_groups, scim_group_members)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

USER_SELECT = """
    SELECT u.*,
           (SELECT coalesce(jsonb_agg(jsonb_build_object('value', g.id,
                                                         'display', g.display_name)
                                      ORDER BY g.display_name), '[]'::jsonb)
            FROM scim_group_members m JOIN scim_groups g ON g.id = m.group_id
            WHERE m.member_id = u.id) AS groups
    FROM scim_users u"""

GROUP_SELECT = """
    SELECT g.*,
           (SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'value', m.member_id,
                       'display', coalesce(m.display, u.display_name, u.user_name),
                       'type', coalesce(m.type, 'User'))
                   ORDER BY m.member_id), '[]'::jsonb)
            FROM scim_group_members m LEFT JOIN scim_users u ON u.id = m.member_id
            WHERE m.group_id = g.id) AS members
    FROM scim_groups g"""

_USER_WRITABLE = (
    "user_name",
    "external_id",
    "display_name",
    "nick_name",
    "profile_url",
    "title",
    "user_type",
    "preferred_language",
    "locale",
    "timezone",
    "active",
    "name_formatted",
    "name_family",
    "name_given",
    "name_middle",
    "name_prefix",
    "name_suffix",
    "emails",
    "phone_numbers",
    "addresses",
    "roles",
    "enterprise",
    "extra",
)


Row = dict[str, Any]


async def get_user(tx: asyncpg.Connection, tenant_id: UUID, user_id: UUID) -> Row | None:
    row = await tx.fetchrow(
        f"{USER_SELECT} WHERE u.tenant_id = $1 AND u.id = $2", tenant_id, user_id
    )
    return dict(row) if row is not None else None


async def user_name_owner(tx: asyncpg.Connection, tenant_id: UUID, user_name: str) -> UUID | None:
    # The stored lower() column: `lower(user_name) = ...` cannot use an index under
    # row-level security (lower() is not leakproof).
    value: UUID | None = await tx.fetchval(
        "SELECT id FROM scim_users WHERE tenant_id = $1 AND user_name_lower = lower($2)",
        tenant_id,
        user_name,
    )
    return value


async def insert_user(
    tx: asyncpg.Connection, tenant_id: UUID, user_id: UUID, columns: Mapping[str, Any]
) -> Row:
    names = ", ".join(_USER_WRITABLE)
    values = ", ".join(f"${i + 3}" for i in range(len(_USER_WRITABLE)))
    await tx.execute(
        f"INSERT INTO scim_users (id, tenant_id, {names}) VALUES ($1, $2, {values})",
        user_id,
        tenant_id,
        *(columns[c] for c in _USER_WRITABLE),
    )
    row = await get_user(tx, tenant_id, user_id)
    assert row is not None
    return row


async def update_user(
    tx: asyncpg.Connection, tenant_id: UUID, user_id: UUID, columns: Mapping[str, Any]
) -> Row:
    sets = ", ".join(f"{c} = ${i + 3}" for i, c in enumerate(_USER_WRITABLE))
    await tx.execute(
        f"""UPDATE scim_users SET {sets}, version = version + 1, updated_at = now()
            WHERE tenant_id = $1 AND id = $2""",
        tenant_id,
        user_id,
        *(columns[c] for c in _USER_WRITABLE),
    )
    row = await get_user(tx, tenant_id, user_id)
    assert row is not None
    return row


async def delete_user(tx: asyncpg.Connection, tenant_id: UUID, user_id: UUID) -> list[UUID]:
    """Deletes the user and its memberships; returns the groups it left."""
    groups = await tx.fetch(
        "DELETE FROM scim_group_members WHERE tenant_id = $1 AND member_id = $2 RETURNING group_id",
        tenant_id,
        user_id,
    )
    await tx.execute("DELETE FROM scim_users WHERE tenant_id = $1 AND id = $2", tenant_id, user_id)
    return [g["group_id"] for g in groups]


Cursor = tuple[datetime, UUID]  # (created_at, id): a position in the default order


def page_query(
    select: str,
    table: str,
    alias: str,
    tenant_id: UUID,
    where: str,
    params: Sequence[Any],
    order: str,
    offset: int,
    limit: int,
    after: Cursor | None = None,
) -> tuple[str, list[Any]]:
    """The SQL of one page and its arguments. `where` uses $2...; the order always ends
    with the id, so pages are stable. `after` is a cursor (RFC 9865) in the default order
    (created_at, id): rows strictly after it.

    The page's ids are chosen first and `select` (which aggregates each row's groups or
    members) runs for those alone: applied before OFFSET it would run for every skipped
    row too (1.9 s instead of 30 ms at startIndex 50,001)."""
    condition = _condition(alias, where)
    n = len(params) + 2
    args: list[Any] = [tenant_id, *params, limit, offset]
    if after is not None:
        condition += f" AND ({alias}.created_at, {alias}.id) > (${n + 2}, ${n + 3})"
        args += list(after)
    ordered = f"ORDER BY {order}, {alias}.id"
    page = f"SELECT {alias}.id FROM {table} {alias} WHERE {condition} {ordered}"
    return f"{select} WHERE {alias}.id IN ({page} LIMIT ${n} OFFSET ${n + 1}) {ordered}", args


def count_query(
    table: str, alias: str, tenant_id: UUID, where: str, params: Sequence[Any]
) -> tuple[str, list[Any]]:
    """How many rows of the tenant match `where` (which uses $2...): counted, so used only
    for a filter, whose index conditions serve the count as well."""
    sql = f"SELECT count(*) FROM {table} {alias} WHERE {_condition(alias, where)}"
    return sql, [tenant_id, *params]


def _condition(alias: str, where: str) -> str:
    return f"{alias}.tenant_id = $1" + (f" AND ({where})" if where else "")


def total_from_page(offset: int, limit: int, returned: int) -> int | None:
    """totalResults when the page itself proves it: a page shorter than asked for ends the
    listing, so the total is the rows before it plus its own (one statement, one
    snapshot); an empty first page means none. None when the page cannot tell (it is full,
    or empty past the end)."""
    if limit <= 0:
        return None
    if 0 < returned < limit:
        return offset + returned
    return 0 if returned == 0 and offset == 0 else None


async def tenant_total(tx: asyncpg.Connection, table: str, tenant_id: UUID) -> int:
    """The tenant's number of rows in `table` (scim_users or scim_groups), exact: kept by
    triggers in the transactions that insert and delete them (scim_derived.counts)."""
    total: int | None = await tx.fetchval(
        "SELECT total FROM scim_derived.counts WHERE tenant_id = $1 AND table_name = $2",
        tenant_id,
        table,
    )
    return total or 0


async def page(
    tx: asyncpg.Connection,
    select: str,
    table: str,
    alias: str,
    tenant_id: UUID,
    where: str,
    params: Sequence[Any],
    order: str,
    offset: int,
    limit: int,
    after: Cursor | None = None,
) -> tuple[int, list[Row]]:
    """One page of a filtered, sorted listing (page_query) and the exact total of the
    listing (without the cursor). The total is the page's own when it proves it
    (total_from_page: a lookup by userName never counts), else the tenant's kept count
    for an unfiltered listing, else a count of the filter's matches."""
    rows: list[Row] = []
    if limit > 0:
        sql, args = page_query(
            select, table, alias, tenant_id, where, params, order, offset, limit, after
        )
        rows = [dict(r) for r in await tx.fetch(sql, *args)]
    total = total_from_page(offset, limit, len(rows)) if after is None else None
    if total is None and not where:
        total = await tenant_total(tx, table, tenant_id)
    elif total is None:
        sql, args = count_query(table, alias, tenant_id, where, params)
        total = int(await tx.fetchval(sql, *args))
    return total, rows


async def get_group(tx: asyncpg.Connection, tenant_id: UUID, group_id: UUID) -> Row | None:
    row = await tx.fetchrow(
        f"{GROUP_SELECT} WHERE g.tenant_id = $1 AND g.id = $2", tenant_id, group_id
    )
    return dict(row) if row is not None else None


async def insert_group(
    tx: asyncpg.Connection, tenant_id: UUID, group_id: UUID, columns: Mapping[str, Any]
) -> None:
    await tx.execute(
        """INSERT INTO scim_groups (id, tenant_id, display_name, external_id, extra)
           VALUES ($1, $2, $3, $4, $5)""",
        group_id,
        tenant_id,
        columns["display_name"],
        columns["external_id"],
        columns["extra"],
    )


async def update_group(
    tx: asyncpg.Connection, tenant_id: UUID, group_id: UUID, columns: Mapping[str, Any]
) -> None:
    await tx.execute(
        """UPDATE scim_groups SET display_name = $3, external_id = $4, extra = $5,
               version = version + 1, updated_at = now()
           WHERE tenant_id = $1 AND id = $2""",
        tenant_id,
        group_id,
        columns["display_name"],
        columns["external_id"],
        columns["extra"],
    )


async def unknown_members(
    tx: asyncpg.Connection, tenant_id: UUID, group_id: UUID, member_ids: Sequence[UUID]
) -> list[UUID]:
    """The ids among `member_ids` that are neither members of the group already nor users
    of the tenant. The users found are locked (FOR KEY SHARE) until the transaction ends,
    so a concurrent delete waits for it (and then takes the membership with it)."""
    if not member_ids:
        return []
    users = await tx.fetch(
        """SELECT id FROM scim_users WHERE tenant_id = $1 AND id = ANY($2::uuid[])
           FOR KEY SHARE""",
        tenant_id,
        list(member_ids),
    )
    kept = await tx.fetch(
        """SELECT member_id FROM scim_group_members
           WHERE tenant_id = $1 AND group_id = $2 AND member_id = ANY($3::uuid[])""",
        tenant_id,
        group_id,
        list(member_ids),
    )
    known = {r["id"] for r in users} | {r["member_id"] for r in kept}
    return [m for m in member_ids if m not in known]


async def set_members(
    tx: asyncpg.Connection,
    tenant_id: UUID,
    group_id: UUID,
    members: Sequence[tuple[UUID, str | None, str | None]],
) -> tuple[list[UUID], list[UUID]]:
    """Make the membership exactly `members` ((id, display, type) each); returns (added,
    removed)."""
    current = {
        r["member_id"]
        for r in await tx.fetch(
            "SELECT member_id FROM scim_group_members WHERE group_id = $1", group_id
        )
    }
    details = {m[0]: m for m in members}
    wanted = list(details)
    added = [m for m in wanted if m not in current]
    removed = sorted(current - set(wanted))
    if removed:
        await tx.execute(
            "DELETE FROM scim_group_members WHERE group_id = $1 AND member_id = ANY($2::uuid[])",
            group_id,
            removed,
        )
    if added:
        await tx.executemany(
            """INSERT INTO scim_group_members (group_id, member_id, tenant_id, display, type)
               VALUES ($1, $2, $3, $4, $5)""",
            [(group_id, m, tenant_id, details[m][1], details[m][2]) for m in added],
        )
    if added or removed:
        await tx.execute(
            "UPDATE scim_groups SET version = version + 1, updated_at = now() WHERE id = $1",
            group_id,
        )
    return added, removed


async def delete_group(tx: asyncpg.Connection, tenant_id: UUID, group_id: UUID) -> bool:
    done: str = await tx.execute(
        "DELETE FROM scim_groups WHERE tenant_id = $1 AND id = $2", tenant_id, group_id
    )
    return done.endswith(" 1")
