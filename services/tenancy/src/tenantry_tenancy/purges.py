"""Postgres edge of the purge saga (DESIGN.md "Data lifecycle"): the purge's row, the
reports of the services as they arrive, the reminders sent before it, and what remains of
a purged tenant (its tombstone, its slug's quarantine, the signed deletion certificate).

The saga: the tenant's stream records tenant.purge_requested (store.TenantRepository) and
`open` starts the purge's row in the same transaction; each service answers with
tenant.purged_by (consumers.py calls `record_report`); the report that completes the set
concludes it (`conclude`). A purge whose reports stay missing is asked for again
(`due_for_resend`, the scheduler), so a lost or dead-lettered request cannot leave it
hanging; services answer a repeated request with the report they already made.
"""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.envelope import new_event
from tenantry_events.payloads.tenancy import (
    TenantOffboardingReminder,
    TenantPurged,
    TenantPurgedBy,
    TenantPurgeRequested,
    TenantState,
)
from tenantry_events.storage import PostgresOutbox
from tenantry_service.purge import PurgeRules
from tenantry_tenancy.directory.sync import facts_of, queue_facts
from tenantry_tenancy.domain import PURGE_PARTICIPANTS, DeletionFacts, deletion_certificate
from tenantry_tenancy.saga_rows import due_again


async def mark_key_destroyed(tx: asyncpg.Connection, tenant_id: UUID) -> None:
    """After the purge deleted the tenant's data key (its wrapped material with its row),
    a row says the key was destroyed, so that none is ever made again for the tenant (see
    data_keys.py: a destroyed key is never recreated)."""
    await tx.execute(
        """INSERT INTO tenant_data_keys (tenant_id, wrapped_key, created_at, destroyed_at)
           VALUES ($1, NULL, now(), now())
           ON CONFLICT (tenant_id) DO UPDATE SET wrapped_key = NULL, destroyed_at = now()""",
        tenant_id,
    )


# Tenancy's share of a purge (tenantry_service.purge does the deleting): the saga's own
# rows stay until it concludes (`tenants`, `purges`), and what remains of a purged tenant
# stays for good (`tenant_tombstones`, `slug_quarantine` until released), and so do the
# routing facts on their way to the directory (`directory_pending`: they say "purged"
# once the saga concludes). The tenant's data key goes with every other row;
# `mark_key_destroyed` leaves the marker.
TENANCY_PURGE = PurgeRules(
    keep=frozenset(
        {
            "tenants",
            "purges",
            "tenant_tombstones",
            "slug_quarantine",
            "directory_pending",
            "tenant_moves",  # where a moved tenant went: region ids and states
        }
    ),
    data_key_table="tenant_data_keys",
    extra_steps=(mark_key_destroyed,),
)


class PurgeView(msgspec.Struct, frozen=True, kw_only=True):
    """A purge as the API shows it: who has reported, and the certificate when done."""

    purge_id: UUID
    tenant_id: UUID
    requested_at: datetime
    early: bool
    reported: builtins.list[str]
    waiting_for: builtins.list[str]
    completed_at: datetime | None
    certificate_id: UUID | None


class Tombstone(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    home_region: str
    created_at: datetime
    offboarding_started_at: datetime | None
    purged_at: datetime
    purge_id: UUID
    certificate_id: UUID


class PurgeStore:
    def __init__(self, outbox: PostgresOutbox, *, source: str, region: str) -> None:
        self._outbox = outbox
        self._source = source
        self._region = region

    async def open(
        self, tx: asyncpg.Connection, tenant_id: UUID, request: TenantPurgeRequested, now: datetime
    ) -> None:
        await tx.execute(
            """INSERT INTO purges (purge_id, tenant_id, requested_at, early, last_sent_at)
               VALUES ($1, $2, $3, $4, $3)""",
            request.purge_id,
            tenant_id,
            now,
            request.early,
        )

    async def due_for_resend(
        self, tx: asyncpg.Connection, now: datetime, after: timedelta
    ) -> builtins.list[UUID]:
        """Ask again for the purges still waiting for reports `after` their last request
        (the request goes out through the outbox, not the tenant's stream)."""
        rows = await due_again(tx, "purges", now, after, returning="purge_id, tenant_id, early")
        for row in rows:
            request = TenantPurgeRequested(
                purge_id=row["purge_id"],
                early=row["early"],
                reason="asked again: reports are missing",
                by="system:lifecycle-scheduler",
            )
            version = await tx.fetchval(
                "SELECT version FROM tenants WHERE tenant_id = $1", row["tenant_id"]
            )
            await self._emit(tx, row["tenant_id"], request, version or 1)
        return [r["purge_id"] for r in rows]

    async def record_report(
        self, tx: asyncpg.Connection, tenant_id: UUID, report: TenantPurgedBy
    ) -> bool:
        """Keep one service's report (the first it sent: a repeat is the same report);
        True when every participant has now reported and the purge is not concluded."""
        row = await tx.fetchrow(
            """UPDATE purges SET reports = reports || jsonb_build_object($3::text, $4::jsonb)
               WHERE purge_id = $1 AND tenant_id = $2 AND NOT reports ? $3
               RETURNING reports, completed_at""",
            report.purge_id,
            tenant_id,
            report.service,
            msgspec.to_builtins(report),
        )
        if row is None:
            return False
        return row["completed_at"] is None and set(PURGE_PARTICIPANTS) <= set(row["reports"])

    async def conclude(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        purge_id: UUID,
        *,
        now: datetime,
        quarantine: timedelta,
        sign: Any,
    ) -> Tombstone | None:
        """Turn the tenant into its tombstone: the certificate (signed by `sign`, an async
        callable of the claims), the slug's quarantine, the tenant's row deleted, and
        tenant.purged. None if it was concluded already (a redelivered last report)."""
        purge = await tx.fetchrow(
            "SELECT * FROM purges WHERE purge_id = $1 AND completed_at IS NULL FOR UPDATE",
            purge_id,
        )
        tenant = await tx.fetchrow(
            "SELECT * FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant_id
        )
        if purge is None or tenant is None:
            return None
        reports = {
            name: msgspec.convert(value, TenantPurgedBy) for name, value in purge["reports"].items()
        }
        facts = DeletionFacts(
            certificate_id=tenant["certificate_id"],
            tenant_id=tenant_id,
            home_region=tenant["home_region"],
            tenant_created_at=tenant["created_at"],
            offboarding_started_at=tenant["offboarding_started_at"],
            purge_requested_at=purge["requested_at"],
            purged_at=now,
            early=purge["early"],
            reports=reports,
        )
        certificate = deletion_certificate(facts)
        jws = await sign(certificate)
        await tx.execute(
            """UPDATE purges SET completed_at = $2, certificate = $3, certificate_jws = $4
               WHERE purge_id = $1""",
            purge_id,
            now,
            certificate,
            jws,
        )
        tombstone = Tombstone(
            tenant_id=tenant_id,
            home_region=tenant["home_region"],
            created_at=tenant["created_at"],
            offboarding_started_at=tenant["offboarding_started_at"],
            purged_at=now,
            purge_id=purge_id,
            certificate_id=tenant["certificate_id"],
        )
        await tx.execute(
            """INSERT INTO tenant_tombstones (tenant_id, home_region, created_at,
                   offboarding_started_at, purged_at, purge_id, certificate_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            *msgspec.structs.astuple(tombstone),
        )
        await tx.execute(
            """INSERT INTO slug_quarantine (slug, tenant_id, released_at) VALUES ($1, $2, $3)
               ON CONFLICT (slug) DO UPDATE SET released_at = EXCLUDED.released_at""",
            tenant["slug"],
            tenant_id,
            now + quarantine,
        )
        # What tenancy's own share of the purge left: the tenant's row (the saga needed
        # it) and the inbox marks of the reports that came after that share (this one's
        # too: a redelivery finds the purge concluded and concludes nothing).
        await tx.execute("DELETE FROM offboarding_reminders WHERE tenant_id = $1", tenant_id)
        await tx.execute("DELETE FROM tenants WHERE tenant_id = $1", tenant_id)
        # The directory keeps a tombstone (id, region, purged) and the slug, quarantined.
        await queue_facts(
            tx,
            facts_of(
                tenant_id, home_region=tenant["home_region"], status="purged", slug=tenant["slug"]
            ),
        )
        await tx.execute("SELECT purge_tenant_rows('inbox'::regclass, $1)", tenant_id)
        purged = TenantPurged(
            tenant=TenantState(
                name="",
                slug="",
                status="purged",
                plan=tenant["plan"],
                home_region=tenant["home_region"],
            ),
            purge_id=purge_id,
            certificate_id=tenant["certificate_id"],
        )
        # The stream is gone (tenancy's part of the purge deleted it): tenant.purged is a
        # notification, with a version above any the stream reached.
        await self._emit(tx, tenant_id, purged, tenant["version"] + 1)
        return tombstone

    async def view(self, tx: asyncpg.Connection, tenant_id: UUID) -> PurgeView | None:
        row = await tx.fetchrow(
            """SELECT p.*, t.certificate_id FROM purges p
               LEFT JOIN tenant_tombstones t USING (tenant_id)
               WHERE p.tenant_id = $1""",
            tenant_id,
        )
        if row is None:
            return None
        reported = sorted(row["reports"])
        return PurgeView(
            purge_id=row["purge_id"],
            tenant_id=tenant_id,
            requested_at=row["requested_at"],
            early=row["early"],
            reported=reported,
            waiting_for=[s for s in PURGE_PARTICIPANTS if s not in reported],
            completed_at=row["completed_at"],
            certificate_id=row["certificate_id"],
        )

    async def certificate(
        self, tx: asyncpg.Connection, certificate_id: UUID
    ) -> tuple[dict[str, Any], str] | None:
        """The certificate and its JWS, by the certificate's id (unguessable; it holds
        no personal data, so the id is the capability to read it)."""
        row = await tx.fetchrow(
            """SELECT p.certificate, p.certificate_jws FROM tenant_tombstones t
               JOIN purges p USING (purge_id) WHERE t.certificate_id = $1""",
            certificate_id,
        )
        if row is None:
            return None
        return row["certificate"], row["certificate_jws"]

    async def tombstone(self, tx: asyncpg.Connection, tenant_id: UUID) -> Tombstone | None:
        row = await tx.fetchrow(
            """SELECT tenant_id, home_region, created_at, offboarding_started_at, purged_at,
                      purge_id, certificate_id
               FROM tenant_tombstones WHERE tenant_id = $1""",
            tenant_id,
        )
        return Tombstone(**dict(row)) if row else None

    # ---------------------------------------------------------------- reminders

    async def remind(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        purge_at: datetime,
        thresholds: builtins.list[int],
        now: datetime,
        version: int,
    ) -> bool:
        """Send one reminder for the thresholds (days) crossed and not yet reminded of;
        all of them count as sent (a tenant offboarded with 3 days of grace gets one
        reminder, not a 7-day one and then another)."""
        inserted = await tx.fetch(
            """INSERT INTO offboarding_reminders (tenant_id, purge_at, days)
               SELECT $1, $2, d FROM unnest($3::int[]) AS d
               ON CONFLICT DO NOTHING RETURNING days""",
            tenant_id,
            purge_at,
            thresholds,
        )
        if not inserted:
            return False
        days_left = max(0, -(-int((purge_at - now).total_seconds()) // 86400))
        reminder = TenantOffboardingReminder(purge_at=purge_at, days_left=days_left)
        await self._emit(tx, tenant_id, reminder, version)
        return True

    async def release_slugs(self, tx: asyncpg.Connection, now: datetime) -> int:
        """Forget the slugs whose quarantine has ended (a purged tenant's slug is kept no
        longer than that); they are free for new tenants from then on."""
        released = await tx.fetch(
            """DELETE FROM slug_quarantine q WHERE released_at <= $1
               RETURNING q.tenant_id,
                   (SELECT home_region FROM tenant_tombstones t
                    WHERE t.tenant_id = q.tenant_id) AS home_region""",
            now,
        )
        for row in released:  # ...and in every region: the directory releases it too
            if row["home_region"] is not None:
                await queue_facts(
                    tx,
                    facts_of(
                        row["tenant_id"], home_region=row["home_region"], status="purged", slug=None
                    ),
                )
        return len(released)

    async def quarantined(self, tx: asyncpg.Connection, slug: str, now: datetime) -> bool:
        return bool(
            await tx.fetchval(
                "SELECT true FROM slug_quarantine WHERE slug = $1 AND released_at > $2",
                slug,
                now,
            )
        )

    async def _emit(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        payload: TenantPurgeRequested | TenantPurged | TenantOffboardingReminder,
        version: int,
    ) -> None:
        event = new_event(
            payload,
            tenant_id=tenant_id,
            subject=str(tenant_id),
            aggregate_version=version,
            source=self._source,
            region=self._region,
        )
        await self._outbox.put(tx, [event])
