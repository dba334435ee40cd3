"""Usage reports (the owner's side): absolute counts, numbered in the order they were
counted even when two transactions report at once, and a sweep over every known tenant.
Also the limits guard's answer for a tenant this service has no limits for."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest
from uuid_utils.compat import uuid4

from tenantry_events.kafka_codec import from_record
from tenantry_events.payloads.usage import UsageReported
from tenantry_events.storage import PostgresOutbox
from tenantry_guardrails.plan_limits import guard_feature, guard_quantity, known_limits
from tenantry_http.auth import ProjectionWait
from tenantry_http.problems import Problem
from tenantry_projections.usage_reports import Counted, ReconcileSettings, UsageReporter
from tenantry_testkit.fixtures import ScratchDatabase

THINGS_SQL = "SELECT count(*) FROM things WHERE tenant_id = $1 AND live"


async def with_things(scratch: ScratchDatabase) -> UsageReporter:
    """A service with one counted resource: `things`, live ones counted."""
    owner = await asyncpg.connect(scratch.owner_dsn)
    try:
        await owner.execute(
            "CREATE TABLE things (id serial PRIMARY KEY, tenant_id uuid NOT NULL, live bool)"
        )
        app_role = await scratch.db.pool.fetchval("SELECT current_user")
        await owner.execute(f'GRANT ALL ON things, things_id_seq TO "{app_role}"')
    finally:
        await owner.close()
    return UsageReporter(
        PostgresOutbox(scratch.db),
        [Counted("webhook_endpoints", THINGS_SQL)],
        source="/tenantry/test",
        region="local",
    )


async def reports(scratch: ScratchDatabase) -> list[tuple[UUID, UsageReported]]:
    entries = await PostgresOutbox(scratch.db).fetch(10_000)
    decoded = [from_record(e.record.headers, e.record.value) for e in entries]
    assert all(e.type == "usage.reported" for e in decoded)
    return [(e.tenant_id, e.payload) for e in decoded]


async def test_each_report_counts_afresh_with_the_next_version(scratch_db: ScratchDatabase) -> None:
    reporter = await with_things(scratch_db)
    tenant, other = uuid4(), uuid4()
    for live in (True, True, False):
        await scratch_db.db.pool.execute(
            "INSERT INTO things (tenant_id, live) VALUES ($1, $2)", tenant, live
        )
    await scratch_db.db.pool.execute(
        "INSERT INTO things (tenant_id, live) VALUES ($1, true)", other
    )
    async with scratch_db.db.transaction() as tx:
        first = await reporter.report(tx, tenant, "webhook_endpoints")
    await scratch_db.db.pool.execute("UPDATE things SET live = false WHERE tenant_id = $1", tenant)
    async with scratch_db.db.transaction() as tx:
        second = await reporter.report(tx, tenant, "webhook_endpoints")
        elsewhere = await reporter.report(tx, other, "webhook_endpoints")
    assert (first.count, first.version) == (2, 1)
    assert (second.count, second.version) == (0, 2)
    assert (elsewhere.count, elsewhere.version) == (1, 1)
    sent = await reports(scratch_db)
    assert [(t, p.count, p.version) for t, p in sent] == [
        (tenant, 2, 1),
        (tenant, 0, 2),
        (other, 1, 1),
    ]


async def test_concurrent_changes_the_highest_version_has_the_final_count(
    scratch_db: ScratchDatabase,
) -> None:
    """Twenty transactions each add a thing and report in the same transaction, all at once:
    whatever order they commit in, the report with the highest version counts all twenty."""
    reporter = await with_things(scratch_db)
    tenant = uuid4()

    async def add_and_report() -> None:
        async with scratch_db.db.transaction() as tx:
            await tx.execute("INSERT INTO things (tenant_id, live) VALUES ($1, true)", tenant)
            await asyncio.sleep(0.005)  # widen the window between change and report
            await reporter.report(tx, tenant, "webhook_endpoints")

    await asyncio.gather(*(add_and_report() for _ in range(20)))
    sent = [p for _, p in await reports(scratch_db)]
    assert sorted(p.version for p in sent) == list(range(1, 21))
    newest = max(sent, key=lambda p: p.version)
    assert newest.count == 20
    # Versions were handed out in counting order: a higher version never counted fewer.
    by_version = sorted(sent, key=lambda p: p.version)
    assert all(a.count <= b.count for a, b in itertools.pairwise(by_version))


async def test_the_sweep_reports_every_known_tenant_page_by_page(
    scratch_db: ScratchDatabase,
) -> None:
    reporter = await with_things(scratch_db)
    tenants = sorted(uuid4() for _ in range(7))
    for i, tenant in enumerate(tenants):
        await scratch_db.db.pool.execute(
            """INSERT INTO tenant_projection (tenant_id, name, slug, status, plan, home_region,
                   version) VALUES ($1, 'n', $2, 'active', 'free', 'local', 1)""",
            tenant,
            f"s{i}",
        )
        for _ in range(i):
            await scratch_db.db.pool.execute(
                "INSERT INTO things (tenant_id, live) VALUES ($1, true)", tenant
            )
    sent = await reporter.sweep(scratch_db.db, batch=3, stop=asyncio.Event())
    assert sent == 7  # one resource counted here, every tenant's first report
    counts = {t: p.count for t, p in await reports(scratch_db)}
    assert counts == {tenant: i for i, tenant in enumerate(tenants)}

    # Nothing changed: a sweep counts again and sends nothing.
    hour = 3600.0
    assert (
        await reporter.sweep(scratch_db.db, batch=3, stop=asyncio.Event(), refresh_seconds=hour)
        == 0
    )
    # One tenant's rows change behind the reporter's back (no change-driven report): the
    # next sweep sends exactly that tenant's new count.
    await scratch_db.db.pool.execute(
        "INSERT INTO things (tenant_id, live) VALUES ($1, true)", tenants[2]
    )
    assert (
        await reporter.sweep(scratch_db.db, batch=3, stop=asyncio.Event(), refresh_seconds=hour)
        == 1
    )
    newest = max(
        (p for t, p in await reports(scratch_db) if t == tenants[2]), key=lambda p: p.version
    )
    assert newest.count == 3
    # Reports older than the refresh horizon are sent again, changed or not.
    assert (
        await reporter.sweep(scratch_db.db, batch=3, stop=asyncio.Event(), refresh_seconds=0.0) == 7
    )


def test_reconcile_settings_from_the_environment() -> None:
    assert ReconcileSettings.from_env({}).usage_reconcile_seconds == 300.0
    settings = ReconcileSettings.from_env(
        {"TENANTRY_USAGE_RECONCILE_SECONDS": "2.5", "TENANTRY_USAGE_RECONCILE_BATCH": "10"}
    )
    assert (settings.usage_reconcile_seconds, settings.usage_reconcile_batch) == (2.5, 10)
    for bad in ("0", "-1", "soon"):
        with pytest.raises((ValueError, msgspec.ValidationError)):
            ReconcileSettings.from_env({"TENANTRY_USAGE_RECONCILE_SECONDS": bad})


# ---------------------------------------------------------------- limits of an unknown tenant


class Sleeps:
    def __init__(self, then: Any = None) -> None:
        self.total = 0.0
        self.then = then

    async def __call__(self, seconds: float) -> None:
        self.total += seconds
        if self.then is not None:
            await self.then()
            self.then = None


async def add_tenant(scratch: ScratchDatabase, tenant: UUID, *, limits: bool) -> None:
    await scratch.db.pool.execute(
        """INSERT INTO tenant_projection (tenant_id, name, slug, status, plan, home_region,
               version) VALUES ($1, 'n', 's', 'active', 'free', 'local', 1)""",
        tenant,
    )
    if limits:
        full = {
            "sso": False, "scim": False, "data_export": False, "seats": 3,
            "webhook_endpoints": 1, "api_keys": 2, "requests_per_second": 5, "burst": 10,
        }  # fmt: skip
        await scratch.db.pool.execute(
            """INSERT INTO tenant_limits (tenant_id, plan, limits, plans, limits_version)
               VALUES ($1, 'free', $2, '[]', 1)""",
            tenant,
            full,
        )


async def test_limits_of_a_tenant_never_heard_of_are_404_after_a_bounded_wait(
    scratch_db: ScratchDatabase,
) -> None:
    sleeps = Sleeps()
    wait = ProjectionWait(timeout=1.0, interval=0.1, sleep=sleeps)
    async with scratch_db.db.transaction() as tx:
        with pytest.raises(Problem) as refused:
            await known_limits(tx, uuid4(), wait=wait)
    assert (refused.value.status, refused.value.slug) == (404, "tenant-not-found")
    assert sleeps.total == pytest.approx(1.0)


async def test_limits_of_a_known_tenant_still_on_their_way_are_503(
    scratch_db: ScratchDatabase,
) -> None:
    tenant = uuid4()
    await add_tenant(scratch_db, tenant, limits=False)
    wait = ProjectionWait(timeout=0.3, interval=0.1, sleep=Sleeps())
    async with scratch_db.db.transaction() as tx:
        with pytest.raises(Problem) as refused:
            await known_limits(tx, tenant, wait=wait)
    assert (refused.value.status, refused.value.slug) == (503, "limits-unknown")
    assert refused.value.headers == {"Retry-After": "1"}


async def test_limits_that_arrive_during_the_wait_are_used(scratch_db: ScratchDatabase) -> None:
    tenant = uuid4()
    wait = ProjectionWait(
        timeout=2.0, interval=0.1, sleep=Sleeps(lambda: add_tenant(scratch_db, tenant, limits=True))
    )
    async with scratch_db.db.transaction() as tx:
        limits = await known_limits(tx, tenant, for_update=True, wait=wait)
    assert limits.plan == "free"


async def test_the_guards_answer_404_for_an_unknown_tenant(scratch_db: ScratchDatabase) -> None:
    """guard_quantity and guard_feature use the same rule (the default, short wait)."""
    for quantity in (True, False):
        async with scratch_db.db.transaction() as tx:
            with pytest.raises(Problem) as refused:
                if quantity:
                    await guard_quantity(tx, uuid4(), "seats", "SELECT 0")
                else:
                    await guard_feature(tx, uuid4(), "sso")
        assert refused.value.slug == "tenant-not-found"
