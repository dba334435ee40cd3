"""Tenancy's service layer for offboarding and the purge: the commands the routes and the
scheduler share, and the scheduler itself (a worker task).

The scheduler keeps no timers: each pass reads what is due from the database (purge_at,
the reminders not sent yet, purges still missing reports), so a restart, a second worker
or a pass that died halfway changes nothing: the tenant's row is locked while it is
worked on, and every step checks the state it found.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
from uuid_utils.compat import uuid7

from tenantry_events.payloads.tenancy import TenantPurgeRequested
from tenantry_events.pg import Database
from tenantry_platform.clock import Clock, utc
from tenantry_service.periodic import run_periodically
from tenantry_tenancy.domain import REMINDER_DAYS, DomainError, Tenant
from tenantry_tenancy.erasures import ErasureStore
from tenantry_tenancy.purges import PurgeStore
from tenantry_tenancy.store import TenantRepository, TenantRow

log = logging.getLogger("tenantry.tenancy.lifecycle")
SCHEDULER = "system:lifecycle-scheduler"


async def request_purge(
    tx: asyncpg.Connection,
    tenants: TenantRepository,
    purges: PurgeStore,
    tenant: Tenant,
    *,
    now: datetime,
    reason: str,
    by: str,
    early: bool,
) -> TenantRow:
    """Record tenant.purge_requested in the tenant's stream and open the saga's row."""
    change = tenant.request_purge(now=now, purge_id=uuid7(), reason=reason, by=by, early=early)
    row = await tenants.record(tx, tenant, change, occurred_at=now)
    assert isinstance(change, TenantPurgeRequested)
    await purges.open(tx, tenant.tenant_id, change, now)
    return row


@dataclass(frozen=True)
class Pass:
    """What one scheduler pass did."""

    purges_requested: int = 0
    reminders_sent: int = 0
    purges_asked_again: int = 0
    slugs_released: int = 0

    def __bool__(self) -> bool:
        return self != Pass()

    erasures_asked_again: int = 0


class LifecycleScheduler:
    def __init__(
        self,
        db: Database,
        tenants: TenantRepository,
        purges: PurgeStore,
        *,
        clock: Clock,
        resend_after: timedelta,
        erasures: ErasureStore | None = None,
    ) -> None:
        self._db = db
        self._erasures = erasures  # one person's erasures missing reports (erasures.py)
        self._tenants = tenants
        self._purges = purges
        self._clock = clock
        self._resend_after = resend_after

    async def run(self, stop: asyncio.Event, every: float) -> None:
        await run_periodically(self.run_once, stop, every, log=log, what="lifecycle pass")

    async def run_once(self) -> Pass:
        now = utc(self._clock)
        horizon = now + timedelta(days=max(REMINDER_DAYS))
        async with self._db.transaction(platform=True) as tx:
            rows = await tx.fetch(
                """SELECT tenant_id FROM tenants
                   WHERE status = 'offboarding' AND purge_at <= $1 ORDER BY purge_at""",
                horizon,
            )
        requested = reminded = 0
        for row in rows:
            purged, sent = await self._due(row["tenant_id"], now)
            requested += purged
            reminded += sent
        async with self._db.transaction(platform=True) as tx:
            again = await self._purges.due_for_resend(tx, now, self._resend_after)
            erasures_again = (
                await self._erasures.due_for_resend(tx, now, self._resend_after)
                if self._erasures
                else []
            )
            released = await self._purges.release_slugs(tx, now)
        return Pass(
            purges_requested=requested,
            reminders_sent=reminded,
            purges_asked_again=len(again),
            erasures_asked_again=len(erasures_again),
            slugs_released=released,
        )

    async def _due(self, tenant_id: UUID, now: datetime) -> tuple[int, int]:
        """The purge if due, else a reminder if one is; each tenant in its own transaction
        (its row locked), so one tenant's failure does not hold the others back."""
        async with self._db.transaction(platform=True) as tx:
            tenant = await self._tenants.load(tx, tenant_id)
            if tenant is None or tenant.status != "offboarding" or tenant.offboarding is None:
                return 0, 0  # cancelled or already purging since the scan
            if now >= tenant.offboarding.purge_at:
                try:
                    await request_purge(
                        tx,
                        self._tenants,
                        self._purges,
                        tenant,
                        now=now,
                        reason="the grace period ended",
                        by=SCHEDULER,
                        early=False,
                    )
                except DomainError:
                    return 0, 0
                return 1, 0
            due = tenant.reminders_due(now)
            if not due:
                return 0, 0
            sent = await self._purges.remind(
                tx, tenant_id, tenant.offboarding.purge_at, due, now, tenant.version
            )
            return 0, int(sent)
