"""The SCIM directory's query plans and kept counts (issue 20), on a scratch database with
provisioning's migrations, as the app role: row-level security applies as in the service.

Plans: the SQL a list request issues (directory.listing_sql, store.page_query, exactly as
list_resources builds it) is EXPLAINed with another tenant's users in the same table,
holding the same userNames, and must be served by the index, custom plan or generic
(asyncpg prepares statements, and Postgres may switch to a generic plan). These assert
plans, not timings.

Counts: scim_derived.counts must equal count(*) after inserts, deletes, rolled-back writes
and concurrent writers; row-level security must keep another tenant's rows, and the
derived tables' rows, out of reach even of a query that names no tenant.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
import pytest_asyncio

from tenantry_events.pg import Database, package_migrations
from tenantry_provisioning import store
from tenantry_provisioning.directory import SOURCES, listing_sql
from tenantry_provisioning.scim import discovery, messages
from tenantry_provisioning.scim.grammar import parse_filter
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.stack import Stack

TENANT = UUID("00000000-0000-4000-8000-00000000a001")
OTHER = UUID("00000000-0000-4000-8000-00000000b002")
USERS = 4000  # the tenant's; the other tenant holds as many, with the same userNames
GROUPS = 2000
DOMAIN = "plans.example.com"


async def _seed(db: Database, tenant_id: UUID) -> None:
    async with db.transaction(tenant_id=tenant_id) as tx:
        await tx.execute(
            """INSERT INTO scim_users (id, tenant_id, user_name, external_id, emails, active)
               SELECT gen_random_uuid(), $1, 'u' || n || '@' || $2, 'ext-' || n,
                      jsonb_build_array(jsonb_build_object(
                          'value', 'U' || n || '@' || $2, 'type', 'work')),
                      n % 10 <> 0
               FROM generate_series(1, $3::int) AS n""",
            tenant_id,
            DOMAIN,
            USERS,
        )
        await tx.execute(
            """INSERT INTO scim_groups (id, tenant_id, display_name, external_id)
               SELECT gen_random_uuid(), $1, 'Group ' || n, 'gext-' || n
               FROM generate_series(1, $2::int) AS n""",
            tenant_id,
            GROUPS,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def seeded(stack: Stack) -> AsyncIterator[ScratchDatabase]:
    """Two tenants' directories, analysed (the owner may; the app role may not)."""
    scratch = await create_scratch_database(
        stack, package_migrations("tenantry_provisioning"), prefix="scimplans"
    )
    try:
        await _seed(scratch.db, TENANT)
        await _seed(scratch.db, OTHER)
        owner = await asyncpg.connect(scratch.owner_dsn)
        try:
            for table in ("scim_users", "scim_groups", "scim_derived.user_emails"):
                await owner.execute(f"ANALYZE {table}")
        finally:
            await owner.close()
        yield scratch
    finally:
        await drop_scratch_database(stack, scratch)


def _listing(resource: str, filter_: str | None, start: int = 1, count: int = 100) -> Any:
    """The page's SQL and arguments for a GET with these query parameters, as
    Directory.list_resources builds them."""
    query = {"startIndex": str(start), "count": str(count)}
    if filter_ is not None:
        query["filter"] = filter_
    params = messages.list_query(query, max_results=discovery.MAX_RESULTS)
    parsed = parse_filter(filter_) if filter_ else None
    where, args, order = listing_sql(resource, params, parsed)
    select, table, alias, _ = SOURCES[resource]
    page = store.page_query(
        select, table, alias, TENANT, where, args, order, start - 1, params["count"], None
    )
    return page, store.count_query(table, alias, TENANT, where, args)


async def _plan(db: Database, sql: str, args: list[Any], *, generic: bool = False) -> str:
    async with db.transaction(tenant_id=TENANT) as tx:
        if generic:
            await tx.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        rows = await tx.fetch(f"EXPLAIN {sql}", *args)
    return "\n".join(r[0] for r in rows)


LOOKUPS = [
    ("User", f'userName eq "U17@{DOMAIN.upper()}"', "scim_users_user_name_lower", "scim_users"),
    (
        "User",
        f'emails[type eq "work" and value eq "u17@{DOMAIN}"]',
        "user_emails_value",
        "scim_users",
    ),
    ("User", f'emails.value eq "u17@{DOMAIN}"', "user_emails_value", "scim_users"),
    ("User", 'externalId eq "ext-17"', "scim_users_external_id", "scim_users"),
    ("Group", 'displayName eq "group 17"', "scim_groups_display_name_lower", "scim_groups"),
    ("Group", 'externalId eq "gext-17"', "scim_groups_external_id", "scim_groups"),
]


@pytest.mark.parametrize(("resource", "filter_", "index", "table"), LOOKUPS)
@pytest.mark.parametrize("generic", [False, True], ids=["custom", "generic"])
async def test_lookups_by_filter_are_served_by_an_index(
    seeded: ScratchDatabase, resource: str, filter_: str, index: str, table: str, generic: bool
) -> None:
    (page_sql, page_args), (count_sql, count_args) = _listing(resource, filter_)
    for sql, args in ((page_sql, page_args), (count_sql, count_args)):
        plan = await _plan(seeded.db, sql, args, generic=generic)
        assert index in plan, plan
        assert f"Seq Scan on {table}" not in plan, plan
        assert "Seq Scan on user_emails" not in plan, plan


@pytest.mark.parametrize(("resource", "filter_", "index", "table"), LOOKUPS)
async def test_lookups_find_the_tenants_row_only(
    seeded: ScratchDatabase, resource: str, filter_: str, index: str, table: str
) -> None:
    (page_sql, page_args), _ = _listing(resource, filter_)
    async with seeded.db.transaction(tenant_id=TENANT) as tx:
        rows = await tx.fetch(page_sql, *page_args)
    assert [r["tenant_id"] for r in rows] == [TENANT]


async def test_the_policy_alone_scopes_and_serves_a_query_naming_no_tenant(
    seeded: ScratchDatabase,
) -> None:
    """Row-level security is the second wall: without `tenant_id = $1` a query still sees
    the tenant's rows only (the other tenant has the same userName), and the policy is
    itself the index condition."""
    name = f"u17@{DOMAIN}"
    lookup = "SELECT tenant_id FROM scim_users WHERE user_name_lower = lower($1)"
    async with seeded.db.transaction(tenant_id=TENANT) as tx:
        assert [r["tenant_id"] for r in await tx.fetch(lookup, name)] == [TENANT]
        assert await tx.fetchval("SELECT count(*) FROM scim_users") == USERS
        assert await tx.fetchval("SELECT count(DISTINCT tenant_id) FROM scim_groups") == 1
        derived = "SELECT DISTINCT tenant_id FROM scim_derived.{}"
        assert [r[0] for r in await tx.fetch(derived.format("user_emails"))] == [TENANT]
        assert [r[0] for r in await tx.fetch(derived.format("counts"))] == [TENANT]
        plan = "\n".join(r[0] for r in await tx.fetch(f"EXPLAIN {lookup}", name))
    assert "scim_users_user_name_lower" in plan, plan
    assert "Seq Scan" not in plan, plan
    async with seeded.db.transaction() as tx:  # no tenant: nothing
        assert await tx.fetchval("SELECT count(*) FROM scim_users") == 0
        assert await tx.fetchval("SELECT count(*) FROM scim_derived.counts") == 0
    async with seeded.db.transaction(platform=True) as tx:  # nor platform work (0006)
        assert await tx.fetchval("SELECT count(*) FROM scim_users") == 0


async def test_the_directory_policies_are_one_tenant_by_equality(seeded: ScratchDatabase) -> None:
    """No OR and no range: an equality the planner estimates as one tenant and a btree
    positions on (migrations/0006_scim_tenant_policies.sql). The intents keep the platform
    arm for the worker's sweep."""
    owner = await asyncpg.connect(seeded.owner_dsn)
    try:
        policies = {
            r["tablename"]: r["qual"]
            for r in await owner.fetch(
                """SELECT tablename, qual FROM pg_policies
                   WHERE schemaname IN ('public', 'scim_derived')
                     AND (tablename LIKE 'scim%' OR schemaname = 'scim_derived')"""
            )
        }
    finally:
        await owner.close()
    assert set(policies) == {
        "scim_users",
        "scim_groups",
        "scim_group_members",
        "scim_user_accounts",
        "scim_user_intents",
        "user_emails",
        "counts",
    }
    intents = policies.pop("scim_user_intents")
    assert "app.platform" in intents
    for table, qual in policies.items():
        assert " OR " not in qual, table
        assert ">=" not in qual, table
        assert qual.startswith("(tenant_id = "), (table, qual)


async def test_the_app_role_cannot_write_the_derived_tables(seeded: ScratchDatabase) -> None:
    async with seeded.db.transaction(tenant_id=TENANT) as tx:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await tx.execute(
                "UPDATE scim_derived.counts SET total = 0 WHERE tenant_id = $1", TENANT
            )


# ---------------------------------------------------------------- counts


async def _counts(db: Database, tenant_id: UUID) -> tuple[int, int, int]:
    """(kept count of users, count(*) of users, kept count of groups - count(*))."""
    async with db.transaction(tenant_id=tenant_id) as tx:
        kept = await store.tenant_total(tx, "scim_users", tenant_id)
        counted = await tx.fetchval("SELECT count(*) FROM scim_users")
        groups = await store.tenant_total(tx, "scim_groups", tenant_id)
        groups -= await tx.fetchval("SELECT count(*) FROM scim_groups")
    return kept, counted, groups


async def _insert_user(db: Database, tenant_id: UUID, name: str) -> UUID:
    user_id = uuid4()
    async with db.transaction(tenant_id=tenant_id) as tx:
        await tx.execute(
            "INSERT INTO scim_users (id, tenant_id, user_name) VALUES ($1, $2, $3)",
            user_id,
            tenant_id,
            name,
        )
    return user_id


async def test_the_kept_counts_match_the_seeded_rows(seeded: ScratchDatabase) -> None:
    for tenant_id in (TENANT, OTHER):
        assert await _counts(seeded.db, tenant_id) == (USERS, USERS, 0)


async def test_the_kept_count_follows_inserts_deletes_and_rollbacks(
    seeded: ScratchDatabase,
) -> None:
    db, tenant_id = seeded.db, uuid4()
    ids = [await _insert_user(db, tenant_id, f"c{n}@{DOMAIN}") for n in range(5)]
    assert await _counts(db, tenant_id) == (5, 5, 0)
    async with db.transaction(tenant_id=tenant_id) as tx:
        # A savepoint rolled back (users.trial_write's way) leaves the count as it was.
        with pytest.raises(RuntimeError):
            async with tx.transaction():
                await tx.execute(
                    "INSERT INTO scim_users (id, tenant_id, user_name) VALUES ($1, $2, 'x')",
                    uuid4(),
                    tenant_id,
                )
                raise RuntimeError
        await tx.execute("DELETE FROM scim_users WHERE id = ANY($1::uuid[])", ids[:2])
        await tx.execute(
            "INSERT INTO scim_groups (id, tenant_id, display_name) VALUES ($1, $2, 'g')",
            uuid4(),
            tenant_id,
        )
    assert await _counts(db, tenant_id) == (3, 3, 0)
    async with db.transaction(tenant_id=tenant_id) as tx:
        with pytest.raises(asyncpg.CheckViolationError):
            await tx.execute("UPDATE scim_users SET tenant_id = $1 WHERE id = $2", OTHER, ids[2])
    async with db.transaction(tenant_id=tenant_id) as tx:
        await tx.execute("DELETE FROM scim_users")
        await tx.execute("DELETE FROM scim_groups")
        # None left: no row of the tenant stays behind (a purge leaves nothing here).
        assert await tx.fetchval("SELECT count(*) FROM scim_derived.counts") == 0


async def test_the_kept_count_is_exact_under_concurrent_writers(seeded: ScratchDatabase) -> None:
    db, tenant_id = seeded.db, uuid4()
    writers, each = 8, 15

    async def write(w: int) -> None:
        for n in range(each):
            user_id = await _insert_user(db, tenant_id, f"w{w}-{n}@{DOMAIN}")
            if n % 3 == 0:  # a third deleted again, racing the other writers' inserts
                async with db.transaction(tenant_id=tenant_id) as tx:
                    await tx.execute("DELETE FROM scim_users WHERE id = $1", user_id)

    async def read(stop: asyncio.Event) -> list[tuple[int, int]]:
        # One statement, one snapshot: the kept count next to count(*).
        seen = []
        while not stop.is_set():
            async with db.transaction(tenant_id=tenant_id) as tx:
                row = await tx.fetchrow(
                    """SELECT (SELECT coalesce(sum(total), 0) FROM scim_derived.counts
                               WHERE table_name = 'scim_users') AS kept,
                              (SELECT count(*) FROM scim_users) AS counted"""
                )
            assert row is not None
            seen.append((int(row["kept"]), int(row["counted"])))
            await asyncio.sleep(0)
        return seen

    stop = asyncio.Event()
    reader = asyncio.create_task(read(stop))
    await asyncio.gather(*(write(w) for w in range(writers)))
    stop.set()
    seen = await reader
    expected = writers * (each - len(range(0, each, 3)))
    assert await _counts(db, tenant_id) == (expected, expected, 0)
    assert seen, "the reader read during the writes"
    assert all(kept == counted for kept, counted in seen), seen


@pytest.mark.parametrize(
    ("offset", "limit", "returned", "total"),
    [
        (0, 100, 1, 1),  # a lookup: the page is the whole answer
        (0, 100, 0, 0),
        (20, 10, 3, 23),  # the last page: what precedes it and its own
        (0, 10, 10, None),  # full: more may follow
        (30, 10, 0, None),  # past the end: how far is not known
        (0, 0, 0, None),  # count=0 asks for the total only
    ],
)
def test_the_total_a_page_proves(offset: int, limit: int, returned: int, total: int | None) -> None:
    assert store.total_from_page(offset, limit, returned) == total
