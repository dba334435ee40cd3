"""Usage reports from the service that holds the things a quantity limit counts.

tenancy shows usage and refuses a downgrade that usage would break, but the rows are
elsewhere (accounts and API keys in identity, endpoints in webhooks). Each owner counts its
own rows and sends the absolute count as `usage.reported`, through its outbox:

- when the count may have changed (identity from its worker, on its own account.* and
  apikey.* events; webhooks in the transaction that creates or deletes an endpoint), and
- from a reconciliation sweep in its worker, every tenant in bounded batches: it counts
  again and reports a count that differs from the last one reported (a change that slipped
  past the first rule, a hand-edited table), or one last reported longer ago than
  TENANTRY_USAGE_REFRESH_SECONDS (a report lost on tenancy's side). A quiet tenant costs
  one count per sweep and no event, so the sweep stays cheap with many tenants.

Each report of a tenant and resource gets the next `version` from `usage_report_versions`;
bumping it locks that row, so two reports are counted one after the other and the higher
version has the newer count. tenancy keeps the highest version: arrival order and
duplicates do not matter. The transaction must be READ COMMITTED (the default), so the
count, a later statement than the lock, sees whatever the previous report saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.envelope import new_event
from tenantry_events.payloads.usage import CountedResource, UsageReported
from tenantry_events.pg import Database
from tenantry_events.purged import purged_or_held
from tenantry_events.storage import PostgresOutbox

log = logging.getLogger("tenantry.usage_reports")


@dataclass(frozen=True, slots=True)
class Counted:
    """One quantity limit a service holds: `count_sql` counts it for $1 = tenant id (the
    same query the service's `guard_quantity` checks the limit with)."""

    resource: CountedResource
    count_sql: str


class ReconcileSettings(msgspec.Struct, frozen=True, kw_only=True):
    """TENANTRY_USAGE_RECONCILE_SECONDS: time between the starts of two sweeps (a sweep of
    many tenants may take longer: then the next starts when it ends).
    TENANTRY_USAGE_RECONCILE_BATCH: tenants read per page of a sweep.
    TENANTRY_USAGE_REFRESH_SECONDS: a count unchanged for this long is reported again."""

    usage_reconcile_seconds: float = 300.0
    usage_reconcile_batch: int = 200
    usage_refresh_seconds: float = 86_400.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReconcileSettings:
        env = os.environ if environ is None else environ
        raw = {
            name: env[f"TENANTRY_{name.upper()}"]
            for name in cls.__struct_fields__
            if f"TENANTRY_{name.upper()}" in env
        }
        settings = msgspec.convert(raw, type=cls, strict=False)
        if (
            min(
                settings.usage_reconcile_seconds,
                settings.usage_reconcile_batch,
                settings.usage_refresh_seconds,
            )
            <= 0
        ):
            raise ValueError("TENANTRY_USAGE_RECONCILE_SECONDS, _BATCH and _REFRESH_SECONDS > 0")
        return settings


class UsageReporter:
    def __init__(
        self,
        outbox: PostgresOutbox,
        counted: Sequence[Counted],
        *,
        source: str,
        region: str,
    ) -> None:
        self._outbox = outbox
        self._counted = {c.resource: c for c in counted}
        self._source = source
        self._region = region

    @property
    def resources(self) -> list[CountedResource]:
        return list(self._counted)

    async def report(
        self, tx: asyncpg.Connection, tenant_id: UUID, resource: CountedResource
    ) -> UsageReported:
        """Count `resource` for the tenant and put the report in the outbox, in `tx` (the
        caller's transaction, scoped to the tenant where row-level security applies)."""
        counted = self._counted[resource]
        version = int(
            await tx.fetchval(
                """INSERT INTO usage_report_versions AS v (tenant_id, resource, version)
                   VALUES ($1, $2, 1)
                   ON CONFLICT (tenant_id, resource) DO UPDATE SET version = v.version + 1
                   RETURNING version""",
                tenant_id,
                resource,
            )
        )
        count = int(await tx.fetchval(counted.count_sql, tenant_id))
        now = datetime.now(UTC)
        await tx.execute(
            """UPDATE usage_report_versions SET last_count = $3, reported_at = $4
               WHERE tenant_id = $1 AND resource = $2""",
            tenant_id,
            resource,
            count,
            now,
        )
        payload = UsageReported(resource=resource, count=count, version=version, counted_at=now)
        await self._outbox.put(
            tx,
            [
                new_event(
                    payload,
                    tenant_id=tenant_id,
                    subject=resource,
                    aggregate_version=version,
                    source=self._source,
                    region=self._region,
                )
            ],
        )
        return payload

    async def report_all(self, tx: asyncpg.Connection, tenant_id: UUID) -> None:
        for resource in self._counted:
            await self.report(tx, tenant_id, resource)

    async def report_if_stale(
        self, tx: asyncpg.Connection, tenant_id: UUID, refresh_before: datetime
    ) -> int:
        """Report each resource whose count changed since its last report, or whose last
        report is older than `refresh_before`; returns how many were reported."""
        last = {
            row["resource"]: (row["last_count"], row["reported_at"])
            for row in await tx.fetch(
                """SELECT resource, last_count, reported_at FROM usage_report_versions
                   WHERE tenant_id = $1""",
                tenant_id,
            )
        }
        reported = 0
        for resource, counted in self._counted.items():
            last_count, reported_at = last.get(resource, (None, None))
            fresh = reported_at is not None and reported_at >= refresh_before
            if fresh and int(await tx.fetchval(counted.count_sql, tenant_id)) == last_count:
                continue
            await self.report(tx, tenant_id, resource)
            reported += 1
        return reported

    async def sweep(
        self, db: Database, *, batch: int, stop: asyncio.Event, refresh_seconds: float = 0.0
    ) -> int:
        """Reconcile every tenant this service knows (its tenant_projection), `batch` tenants
        a page, one short transaction per tenant: report what changed or went stale
        (`refresh_seconds`; 0 reports everything). Returns the reports sent."""
        reported, after = 0, UUID(int=0)
        while not stop.is_set():
            page = await db.pool.fetch(
                """SELECT tenant_id FROM tenant_projection WHERE tenant_id > $1
                   ORDER BY tenant_id LIMIT $2""",
                after,
                batch,
            )
            refresh_before = datetime.now(UTC) - timedelta(seconds=refresh_seconds)
            for row in page:
                async with db.transaction(tenant_id=row["tenant_id"]) as tx:
                    if await purged_or_held(tx, row["tenant_id"]):
                        continue  # a purged tenant's tombstone: nothing to count, ever
                    reported += await self.report_if_stale(tx, row["tenant_id"], refresh_before)
            if len(page) < batch:
                break
            after = page[-1]["tenant_id"]
        return reported

    async def reconcile_forever(
        self, db: Database, settings: ReconcileSettings, stop: asyncio.Event
    ) -> None:
        """The worker task: a sweep, then a wait, until stop. A failed sweep (the database
        away) is logged and retried at the next interval."""
        while not stop.is_set():
            started = asyncio.get_running_loop().time()
            try:
                reported = await self.sweep(
                    db,
                    batch=settings.usage_reconcile_batch,
                    stop=stop,
                    refresh_seconds=settings.usage_refresh_seconds,
                )
                log.debug("usage reconciliation sent %d report(s)", reported)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("usage reconciliation failed (%r); next try in one interval", exc)
            elapsed = asyncio.get_running_loop().time() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(), timeout=max(0.0, settings.usage_reconcile_seconds - elapsed)
                )
