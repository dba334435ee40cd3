"""The lifecycle scheduler on a real database with a clock the test moves: reminders at
T-7 and T-1 days, each once; the purge requested once at purge_at; a purge missing
reports asked for again; a cancelled offboarding never purged. A new scheduler (a
restarted worker) picks up exactly where the last one stopped: it keeps nothing in memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
from uuid_utils.compat import uuid4

from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_platform.clock import FakeClock, utc
from tenantry_tenancy.domain import Tenant
from tenantry_tenancy.lifecycle import LifecycleScheduler, Pass
from tenantry_tenancy.purges import PurgeStore
from tenantry_tenancy.store import TenantRepository
from tenantry_testkit.fixtures import ScratchDatabase

SOURCE, REGION = "/tenantry/tenancy", "local"
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


class Parts:
    def __init__(self, scratch: ScratchDatabase) -> None:
        self.db = scratch.db
        self.clock = FakeClock(START.timestamp())
        outbox = PostgresOutbox(self.db)
        self.tenants = TenantRepository(PostgresEventStore(outbox), source=SOURCE, region=REGION)
        self.purges = PurgeStore(outbox, source=SOURCE, region=REGION)

    def scheduler(self) -> LifecycleScheduler:
        """A fresh scheduler, as a restarted worker makes."""
        return LifecycleScheduler(
            self.db, self.tenants, self.purges, clock=self.clock, resend_after=timedelta(minutes=10)
        )

    async def offboarded_tenant(self, grace: timedelta) -> UUID:
        tenant_id = uuid4()
        async with self.db.transaction(platform=True) as tx:
            created = Tenant.create(
                tenant_id,
                name="Leaving",
                slug=f"leaving-{tenant_id.hex[:8]}",
                plan="team",
                home_region=REGION,
                created_by="op",
            )
            await self.tenants.add(tx, tenant_id, created)
            tenant = await self.tenants.load(tx, tenant_id)
            assert tenant is not None
            change = tenant.start_offboarding(
                now=utc(self.clock), grace=grace, certificate_id=uuid4(), reason="ended", by="op"
            )
            await self.tenants.record(tx, tenant, change)
        return tenant_id

    async def emitted(self, tenant_id: UUID) -> list[tuple[str, dict[str, Any]]]:
        """The tenant's events waiting in the outbox (no relay runs on this database)."""
        async with self.db.transaction(platform=True) as tx:
            rows = await tx.fetch(
                "SELECT topic, value FROM outbox WHERE key = $1 ORDER BY id",
                str(tenant_id).encode(),
            )
        return [(r["topic"], msgspec.json.decode(r["value"])) for r in rows]

    def advance(self, **delta: float) -> None:
        self.clock.advance(timedelta(**delta).total_seconds())


async def test_reminders_then_the_purge_each_once_across_restarts(
    tenancy_db: ScratchDatabase,
) -> None:
    parts = Parts(tenancy_db)
    tenant_id = await parts.offboarded_tenant(timedelta(days=30))

    assert await parts.scheduler().run_once() == Pass()  # 30 days left: nothing due
    parts.advance(days=23, hours=12)  # 6.5 days left
    assert await parts.scheduler().run_once() == Pass(reminders_sent=1)
    assert await parts.scheduler().run_once() == Pass()  # sent once, even after a restart
    parts.advance(days=6)  # 12 hours left
    assert await parts.scheduler().run_once() == Pass(reminders_sent=1)
    parts.advance(hours=11, minutes=59)
    assert await parts.scheduler().run_once() == Pass()
    parts.advance(minutes=1)  # purge_at
    assert await parts.scheduler().run_once() == Pass(purges_requested=1)
    assert await parts.scheduler().run_once() == Pass()
    parts.advance(minutes=10)  # no service has reported: ask again
    assert await parts.scheduler().run_once() == Pass(purges_asked_again=1)
    assert await parts.scheduler().run_once() == Pass()

    emitted = await parts.emitted(tenant_id)
    assert [topic for topic, _ in emitted] == [
        "tenant.created",
        "tenant.offboarding_started",
        "tenant.offboarding_reminder",
        "tenant.offboarding_reminder",
        "tenant.purge_requested",
        "tenant.purge_requested",
    ]
    assert [value["days_left"] for _, value in emitted[2:4]] == [7, 1]
    first, again = (value for _, value in emitted[4:])
    assert first["purge_id"] == again["purge_id"]
    async with parts.db.transaction(platform=True) as tx:
        tenant = await parts.tenants.load(tx, tenant_id)
        view = await parts.purges.view(tx, tenant_id)
    assert tenant is not None
    assert tenant.status == "purging"
    assert view is not None
    assert view.waiting_for == [
        "identity",
        "provisioning",
        "ratelimit",
        "tenancy",
        "webhooks",
    ]


async def test_a_short_grace_sends_one_reminder_and_a_cancelled_offboarding_is_never_purged(
    tenancy_db: ScratchDatabase,
) -> None:
    parts = Parts(tenancy_db)
    short = await parts.offboarded_tenant(timedelta(days=3))
    cancelled = await parts.offboarded_tenant(timedelta(days=3))
    async with parts.db.transaction(platform=True) as tx:
        tenant = await parts.tenants.load(tx, cancelled)
        assert tenant is not None
        await parts.tenants.record(tx, tenant, tenant.cancel_offboarding(reason="stay", by="op"))

    assert await parts.scheduler().run_once() == Pass(reminders_sent=1)
    parts.advance(days=2, hours=1)  # under a day left: the T-1 reminder
    assert await parts.scheduler().run_once() == Pass(reminders_sent=1)
    parts.advance(days=1)
    assert await parts.scheduler().run_once() == Pass(purges_requested=1)

    reminders = [v for t, v in await parts.emitted(short) if t.endswith("_reminder")]
    assert [r["days_left"] for r in reminders] == [3, 1]
    assert [t for t, _ in await parts.emitted(cancelled)] == [
        "tenant.created",
        "tenant.offboarding_started",
        "tenant.offboarding_cancelled",
    ]


async def test_a_quarantined_slug_is_released_when_its_quarantine_ends(
    tenancy_db: ScratchDatabase,
) -> None:
    parts = Parts(tenancy_db)
    now = utc(parts.clock)
    async with parts.db.transaction(platform=True) as tx:
        for slug, days in (("ended", -1), ("held", 29)):
            await tx.execute(
                "INSERT INTO slug_quarantine (slug, tenant_id, released_at) VALUES ($1, $2, $3)",
                slug,
                uuid4(),
                now + timedelta(days=days),
            )
        assert await parts.purges.quarantined(tx, "held", now)
        assert not await parts.purges.quarantined(tx, "ended", now)
    assert await parts.scheduler().run_once() == Pass(slugs_released=1)
    parts.advance(days=29)
    assert await parts.scheduler().run_once() == Pass(slugs_released=1)
    async with parts.db.transaction(platform=True) as tx:
        assert await tx.fetchval("SELECT count(*) FROM slug_quarantine") == 0
