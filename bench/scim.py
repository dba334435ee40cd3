"""SCIM lookups and list pages at scale (issue 20) on the running provisioning service.

One tenant's directory is seeded with USERS users and GROUPS groups directly in
provisioning's database (as the SCIM routes would have written them), next to
OTHER_TENANTS other tenants holding half as many users again and as many groups, whose
users have the same userNames: an index that does not lead with the tenant, or a plan
that scans, meets them.
Then, over HTTP with the tenant's SCIM key, the requests Okta and Entra ID send:

- GET /Users/{id}: the baseline (a primary-key read and the route's floor);
- the lookups by filter: `userName eq`, `externalId eq`, an email
  (`emails[type eq "work" and value eq ...]`) and, on Groups, `displayName eq`, each
  asking for `count=100` as Okta does, each with a different existing user or group;
- list pages of 100: the first and the tenth unfiltered, and the first of `active eq
  false` (5 % of the users), whose totalResults needs a count.

The variants are interleaved round-robin (the first one rotates each round) so that drift
of the host's load reaches all of them alike. Every answer's totalResults is checked (the
lookups find exactly one, the pages the seeded numbers). The seeded rows are deleted at the
end (and the tables vacuumed); the bench tenant stays in tenancy, as the audit bench's
does.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import httpx
from uuid_utils.compat import uuid4

from bench.auth import HTTP_TIMEOUT, _expect, _new_tenant, _post, bearer
from bench.common import BenchResult, Context, Row, median, now, p99, ratio
from tenantry_testkit.fixtures import operator_token

USERS = int(os.environ.get("TENANTRY_BENCH_SCIM_USERS", "100000"))
OTHER_TENANTS = 5
OTHER_USERS = USERS // 2  # over the other tenants
GROUPS = USERS // 10
INACTIVE_EVERY = 20  # every 20th user is deactivated: 5 %
ROUNDS = 200  # timed requests per variant
WARMUP = 20  # rounds of every variant, not timed
SAMPLE = 500  # users and groups the lookups pick from
PAGE = 100
SCIM_JSON = "application/scim+json"


@dataclass(frozen=True)
class Variant:
    row: Row
    path: str
    params: Callable[[int], dict[str, str]]  # round -> query parameters
    total: int | None  # the totalResults every answer must carry (None: not a list)


async def _seed(
    conn: asyncpg.Connection, tenant_id: UUID, users: int, groups: int, domain: str
) -> None:
    """`users` users (userNames u<n>@<domain>, one work email each, every INACTIVE_EVERY-th
    deactivated) and `groups` groups, created a second apart."""
    start = datetime.now(UTC) - timedelta(seconds=users + 60)
    await conn.execute(
        """INSERT INTO scim_users (id, tenant_id, user_name, external_id, display_name,
               name_given, name_family, emails, active, created_at, updated_at)
           SELECT gen_random_uuid(), $1, 'u' || n || '@' || $2, 'ext-' || n,
                  'Bench User ' || n, 'Bench', 'User ' || n,
                  jsonb_build_array(jsonb_build_object(
                      'value', 'U' || n || '@mail.' || $2, 'type', 'work', 'primary', true)),
                  n % $4 <> 0, $5::timestamptz + make_interval(secs => n),
                  $5::timestamptz + make_interval(secs => n)
           FROM generate_series(1, $3::int) AS n""",
        tenant_id,
        domain,
        users,
        INACTIVE_EVERY,
        start,
    )
    await conn.execute(
        """INSERT INTO scim_groups (id, tenant_id, display_name, external_id, created_at,
               updated_at)
           SELECT gen_random_uuid(), $1, 'Bench Group ' || n, 'gext-' || n,
                  $3::timestamptz + make_interval(secs => n),
                  $3::timestamptz + make_interval(secs => n)
           FROM generate_series(1, $2::int) AS n""",
        tenant_id,
        groups,
        start,
    )


async def _vacuum(conn: asyncpg.Connection) -> None:
    """What autovacuum would do after such a load (statistics, visibility map, dead rows),
    done now: autovacuum waking up mid-measurement would take one of the host's CPUs, and
    the dead rows of the cleanup would slow every later scan of these tables."""
    tables = ["scim_users", "scim_groups"]
    if await conn.fetchval("SELECT to_regclass('scim_derived.user_emails') IS NOT NULL"):
        tables += ["scim_derived.user_emails", "scim_derived.counts"]
    await conn.execute(f"VACUUM (ANALYZE) {', '.join(tables)}")


async def _delete(conn: asyncpg.Connection, tenants: list[UUID]) -> None:
    await conn.execute("DELETE FROM scim_groups WHERE tenant_id = ANY($1::uuid[])", tenants)
    await conn.execute("DELETE FROM scim_users WHERE tenant_id = ANY($1::uuid[])", tenants)


async def _scim_tenant(client: httpx.AsyncClient, ctx: Context, operator: str) -> tuple[UUID, str]:
    """A tenant on a plan with SCIM, and a SCIM key that provisioning accepts."""
    stack = ctx.stack
    tenant_id = await _new_tenant(
        client, stack.service_url("tenancy"), operator, "scim", plan="enterprise"
    )
    response = await _post(
        client,
        f"{stack.service_url('identity')}/v1/tenants/{tenant_id}/api-keys",
        {"name": "bench scim", "scopes": ["scim:write"]},
        bearer(operator),
    )
    key: str = _expect(response, 201, "POST /v1/tenants/{tid}/api-keys")["key"]
    users = f"{stack.service_url('provisioning')}/scim/v2/Users"
    deadline = now() + 60
    while True:  # until provisioning has projected the tenant's plan and the key
        r = await client.get(users, params={"count": "0"}, headers=_scim_headers(key))
        if r.status_code == 200:
            return tenant_id, key
        if now() > deadline:
            raise RuntimeError(f"provisioning does not take the bench key: {r.status_code}")
        await asyncio.sleep(0.1)


def _scim_headers(key: str) -> dict[str, str]:
    return {**bearer(key), "Accept": SCIM_JSON}


def _variants(
    users: list[asyncpg.Record], groups: list[asyncpg.Record], domain: str
) -> list[Variant]:
    def user(i: int) -> asyncpg.Record:
        return users[i % len(users)]

    def number(i: int) -> str:
        return str(user(i)["user_name"]).split("@")[0].removeprefix("u")

    n = f"{USERS:,} users"
    lookups = "filter, count=100"
    return [
        Variant(
            Row(f"GET /Users/{{id}}, {n}", "request -> response", baseline=True),
            "/Users/{id}",
            lambda i: {},
            None,
        ),
        Variant(
            Row(f"userName eq, {n}", lookups),
            "/Users",
            lambda i: {"filter": f'userName eq "{user(i)["user_name"]}"', "count": "100"},
            1,
        ),
        Variant(
            Row(f"externalId eq, {n}", lookups),
            "/Users",
            lambda i: {"filter": f'externalId eq "{user(i)["external_id"]}"', "count": "100"},
            1,
        ),
        Variant(
            Row(f'emails[type eq "work" and value eq], {n}', lookups),
            "/Users",
            lambda i: {
                # Another case than stored: emails compare case-insensitively.
                "filter": f'emails[type eq "work" and value eq "u{number(i)}@mail.{domain}"]',
                "count": "100",
            },
            1,
        ),
        Variant(
            Row(f"Groups displayName eq, {GROUPS:,} groups", lookups),
            "/Groups",
            lambda i: {
                "filter": f'displayName eq "{groups[i % len(groups)]["display_name"]}"',
                "count": "100",
            },
            1,
        ),
        Variant(
            Row(f"first page of {PAGE}, no filter", "request -> page"),
            "/Users",
            lambda i: {"startIndex": "1", "count": str(PAGE)},
            USERS,
        ),
        Variant(
            Row(f"tenth page of {PAGE}, no filter", "request -> page"),
            "/Users",
            lambda i: {"startIndex": str(9 * PAGE + 1), "count": str(PAGE)},
            USERS,
        ),
        Variant(
            Row(f"first page of {PAGE}, active eq false", "request -> page"),
            "/Users",
            lambda i: {"filter": "active eq false", "startIndex": "1", "count": str(PAGE)},
            USERS // INACTIVE_EVERY,
        ),
    ]


async def _measure(
    client: httpx.AsyncClient, base: str, key: str, variants: list[Variant], ids: list[UUID]
) -> None:
    headers = _scim_headers(key)
    for round_ in range(WARMUP + ROUNDS):
        shift = round_ % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            path = variant.path.replace("{id}", str(ids[round_ % len(ids)]))
            t0 = now()
            r = await client.get(f"{base}{path}", params=variant.params(round_), headers=headers)
            elapsed = now() - t0
            body = _expect(r, 200, f"GET {variant.row.label}")
            if variant.total is not None and body["totalResults"] != variant.total:
                raise RuntimeError(
                    f"{variant.row.label}: totalResults {body['totalResults']}, "
                    f"expected {variant.total}"
                )
            if round_ >= WARMUP:
                variant.row.latencies.append(elapsed)
    for variant in variants:
        variant.row.count = len(variant.row.latencies)


async def run(ctx: Context) -> BenchResult:
    stack = ctx.stack
    result = BenchResult(
        "scim",
        "SCIM filters and list pages at scale vs GET /Users/{id} (running services)",
        "requests",
        params={
            "users": USERS,
            "other_tenants": OTHER_TENANTS,
            "other_users": OTHER_USERS,
            "groups": GROUPS,
            "rounds": ROUNDS,
            "page": PAGE,
        },
    )
    operator = await operator_token(stack)
    # One domain for every tenant: the other tenants hold the same userNames.
    domain = f"bench-{ctx.run_id}.example.com"
    others = [uuid4() for _ in range(OTHER_TENANTS)]
    async with httpx.AsyncClient(timeout=max(HTTP_TIMEOUT, 60)) as client:
        tenant_id, key = await _scim_tenant(client, ctx, operator)
        conn = await asyncpg.connect(stack.super_dsn(stack.service_database("provisioning")))
        tenants = [tenant_id, *others]
        try:
            t0 = now()
            await _seed(conn, tenant_id, USERS, GROUPS, domain)
            for other in others:
                await _seed(
                    conn, other, OTHER_USERS // OTHER_TENANTS, GROUPS // OTHER_TENANTS, domain
                )
            await _vacuum(conn)
            result.notes.append(
                f"seeded {USERS + OTHER_USERS:,} users and {GROUPS * 2:,} groups "
                f"in {now() - t0:.1f} s"
            )
            users = await conn.fetch(
                """SELECT id, user_name, external_id FROM scim_users
                   WHERE tenant_id = $1 ORDER BY random() LIMIT $2""",
                tenant_id,
                SAMPLE,
            )
            groups = await conn.fetch(
                """SELECT display_name FROM scim_groups
                   WHERE tenant_id = $1 ORDER BY random() LIMIT $2""",
                tenant_id,
                SAMPLE,
            )
            variants = _variants(list(users), list(groups), domain)
            ids = [u["id"] for u in users]
            random.shuffle(ids)
            base = f"{stack.service_url('provisioning')}/scim/v2"
            await _measure(client, base, key, variants, ids)
        finally:
            await _delete(conn, tenants)
            await _vacuum(conn)
            await conn.close()
    result.rows = [v.row for v in variants]
    floor = result.rows[0]
    for row in result.rows[1:]:
        result.ratios[f"{row.label}: median / baseline median"] = ratio(
            median(row.latencies), median(floor.latencies)
        )
        result.ratios[f"{row.label}: p99 / baseline p99"] = ratio(
            p99(row.latencies), p99(floor.latencies)
        )
    return result
