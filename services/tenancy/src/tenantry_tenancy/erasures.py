"""Erasing one person inside a live tenant (issue 17, GDPR Art. 17; docs/lifecycle.md
"Erasing one person"): the erasure's row, the services' reports as they arrive, and the
request asked again while some are missing.

The saga, as the purge's (purges.py) for one person instead of a tenant: `open` records
the erasure, destroys the person's subject key (so every event sealed with it reads as
erased, wherever it is kept) and emits subject.erasure_requested, in one transaction; each
service erases its rows of the person and answers with subject.erased_by
(tenantry_service.erasure); the report that completes the set emits subject.erased.
"""

from __future__ import annotations

import builtins
import logging
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.tenancy import (
    SubjectErased,
    SubjectErasedBy,
    SubjectErasureRequested,
)
from tenantry_events.storage import PostgresOutbox
from tenantry_platform.clock import Clock, utc
from tenantry_tenancy.data_keys import TenancyDataKeys
from tenantry_tenancy.domain import PURGE_PARTICIPANTS
from tenantry_tenancy.saga_rows import due_again

log = logging.getLogger("tenantry.tenancy.erasures")

# Every service holds something of a person (at least a copy of their subject key): all
# of them answer, as for a purge.
ERASURE_PARTICIPANTS = PURGE_PARTICIPANTS


class ErasureView(msgspec.Struct, frozen=True, kw_only=True):
    """An erasure as the API shows it: who has reported, with what."""

    erasure_id: UUID
    tenant_id: UUID
    subject_id: UUID
    status: str  # running | completed
    requested_at: datetime
    requested_by: str
    reported: builtins.list[str]
    waiting_for: builtins.list[str]
    reports: dict[str, SubjectErasedBy]
    completed_at: datetime | None


class ErasureStore:
    def __init__(
        self, outbox: PostgresOutbox, keys: TenancyDataKeys, *, source: str, region: str
    ) -> None:
        self._outbox = outbox
        self._keys = keys
        self._source = source
        self._region = region

    async def open(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        request: SubjectErasureRequested,
        *,
        reason: str,
        now: datetime,
    ) -> bool:
        """Record the erasure, destroy the person's subject key and ask every service to
        erase them. False when the person's erasure was asked for before (the existing
        one stands: the key is gone, the request keeps being re-sent until all answer)."""
        inserted = await tx.fetchval(
            """INSERT INTO erasures (erasure_id, tenant_id, subject_id, requested_by, reason,
                   requested_at, last_sent_at)
               VALUES ($1, $2, $3, $4, $5, $6, $6)
               ON CONFLICT (tenant_id, subject_id) DO NOTHING
               RETURNING true""",
            request.erasure_id,
            tenant_id,
            request.subject_id,
            request.by,
            reason,
            now,
        )
        if not inserted:
            return False
        await self._keys.destroy_subject_key_in(tx, tenant_id, request.subject_id)
        await self._emit(tx, tenant_id, request)
        return True

    async def due_for_resend(
        self, tx: asyncpg.Connection, now: datetime, after: timedelta
    ) -> builtins.list[UUID]:
        """Ask again for the erasures still waiting for reports `after` their last request
        (a lost or dead-lettered request must not leave one hanging)."""
        rows = await due_again(
            tx, "erasures", now, after, returning="erasure_id, tenant_id, subject_id"
        )
        for row in rows:
            request = SubjectErasureRequested(
                erasure_id=row["erasure_id"],
                subject_id=row["subject_id"],
                by="system:lifecycle-scheduler",
            )
            await self._emit(tx, row["tenant_id"], request)
        return [r["erasure_id"] for r in rows]

    async def record_report(
        self, tx: asyncpg.Connection, tenant_id: UUID, report: SubjectErasedBy, now: datetime
    ) -> bool:
        """Keep one service's report (the first it sent: a repeat is the same report);
        the one that completes the set completes the erasure and emits subject.erased.
        True when this report completed it."""
        row = await tx.fetchrow(
            """UPDATE erasures SET reports = reports || jsonb_build_object($3::text, $4::jsonb)
               WHERE erasure_id = $1 AND tenant_id = $2 AND NOT reports ? $3
               RETURNING reports, completed_at""",
            report.erasure_id,
            tenant_id,
            report.service,
            msgspec.to_builtins(report),
        )
        if row is None or row["completed_at"] is not None:
            return False
        if not set(ERASURE_PARTICIPANTS) <= set(row["reports"]):
            return False
        await tx.execute(
            "UPDATE erasures SET completed_at = $2 WHERE erasure_id = $1", report.erasure_id, now
        )
        erased = SubjectErased(
            erasure_id=report.erasure_id, subject_id=report.subject_id, completed_at=now
        )
        await self._emit(tx, tenant_id, erased)
        log.info("subject %s of tenant %s erased everywhere", report.subject_id, tenant_id)
        return True

    async def view(
        self, tx: asyncpg.Connection, tenant_id: UUID, erasure_id: UUID
    ) -> ErasureView | None:
        return await self._find(tx, tenant_id, "erasure_id", erasure_id)

    async def of_subject(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID
    ) -> ErasureView | None:
        """The person's erasure (there is one at most)."""
        return await self._find(tx, tenant_id, "subject_id", subject_id)

    async def _find(
        self, tx: asyncpg.Connection, tenant_id: UUID, column: str, value: UUID
    ) -> ErasureView | None:
        row = await tx.fetchrow(
            f"SELECT * FROM erasures WHERE tenant_id = $1 AND {column} = $2", tenant_id, value
        )
        return None if row is None else _view(row)

    async def _emit(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        payload: SubjectErasureRequested | SubjectErased,
    ) -> None:
        event = new_event(
            payload,
            tenant_id=tenant_id,
            subject=f"subject/{payload.subject_id}",
            aggregate_version=0,
            source=self._source,
            region=self._region,
        )
        await self._outbox.put(tx, [event])


def _view(row: asyncpg.Record) -> ErasureView:
    reports = {
        name: msgspec.convert(value, SubjectErasedBy) for name, value in row["reports"].items()
    }
    return ErasureView(
        erasure_id=row["erasure_id"],
        tenant_id=row["tenant_id"],
        subject_id=row["subject_id"],
        status="completed" if row["completed_at"] else "running",
        requested_at=row["requested_at"],
        requested_by=row["requested_by"],
        reported=sorted(reports),
        waiting_for=[s for s in ERASURE_PARTICIPANTS if s not in reports],
        reports=reports,
        completed_at=row["completed_at"],
    )


def erasure_consumers(
    erasures: ErasureStore, clock: Clock
) -> dict[str, Handler[asyncpg.Connection]]:
    """The erasure's collector: each service's subject.erased_by lands on its job."""

    async def on_erased_by(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        await erasures.record_report(tx, event.tenant_id, event.payload, utc(clock))

    return {"subject.erased_by": on_erased_by}
