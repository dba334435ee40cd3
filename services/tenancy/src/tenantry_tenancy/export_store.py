"""Postgres edge of exports: the job rows (the saga's state; rules in exports.py), the events
that drive it, and the download links.

Every change of a job is `load` (the row locked), a rule of ExportJob, `save`, and the
events the change causes, in one transaction: a job and what it announced never disagree.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
from dataclasses import replace
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg
import msgspec
from uuid_utils.compat import uuid4

from tenantry_events.envelope import new_event
from tenantry_events.payloads.tenancy import (
    TenantExportCompleted,
    TenantExportFailed,
    TenantExportLink,
    TenantExportPart,
    TenantExportRequested,
)
from tenantry_events.storage import PostgresOutbox
from tenantry_tenancy.exports import ExportJob, ExportStatus, LinkTerms

# Download tokens are recognisable in logs and by secret scanners (a prefix, not a secret).
TOKEN_PREFIX = "tnx_"  # noqa: S105


class PartView(msgspec.Struct, frozen=True, kw_only=True):
    files: int
    records: int
    bytes: int
    error: str | None


class ExportView(msgspec.Struct, frozen=True, kw_only=True):
    """An export as the API shows it."""

    export_id: UUID
    tenant_id: UUID
    subject_account_id: UUID | None
    status: ExportStatus
    requested_by: str
    requested_at: datetime
    parts: dict[str, PartView]
    waiting_for: builtins.list[str]
    failure: str | None
    bytes: int | None
    records: int | None
    sha256: str | None
    completed_at: datetime | None
    expires_at: datetime | None


class LinkView(msgspec.Struct, frozen=True, kw_only=True):
    link_id: UUID
    export_id: UUID
    expires_at: datetime
    uses_left: int
    revoked: bool
    # Only in the answer that made the link: the token is not stored.
    url: str | None = None


class Download(msgspec.Struct, frozen=True, kw_only=True):
    export_id: UUID
    tenant_id: UUID
    archive_key: str
    bytes: int
    uses_left: int


class ExportStore:
    def __init__(self, outbox: PostgresOutbox, *, source: str, region: str) -> None:
        self._outbox = outbox
        self._source = source
        self._region = region

    # ---------------------------------------------------------------- jobs

    async def start(self, tx: asyncpg.Connection, job: ExportJob) -> bool:
        """Insert the job and emit tenant.export_requested; False if the tenant already
        has an export running (one at a time)."""
        inserted = await tx.fetchval(
            """INSERT INTO exports (export_id, tenant_id, subject_account_id, requested_by,
                                    requested_at, status, last_sent_at, move_id)
               VALUES ($1, $2, $3, $4, $5, $6, $5, $7)
               ON CONFLICT DO NOTHING RETURNING true""",
            job.export_id,
            job.tenant_id,
            job.subject_account_id,
            job.requested_by,
            job.requested_at,
            job.status,
            job.move_id,
        )
        if not inserted:
            return False
        await self._request_parts(tx, job)
        return True

    async def load(
        self, tx: asyncpg.Connection, export_id: UUID, *, tenant_id: UUID | None = None
    ) -> ExportJob | None:
        """The job, its row locked for this transaction (of `tenant_id` when given)."""
        row = await tx.fetchrow(
            """SELECT * FROM exports WHERE export_id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
               FOR UPDATE""",
            export_id,
            tenant_id,
        )
        return _job(row) if row else None

    async def save(
        self, tx: asyncpg.Connection, before: ExportJob, after: ExportJob, now: datetime
    ) -> None:
        """Write the job and announce what changed: a new request, or the failure."""
        await tx.execute(
            """UPDATE exports SET status = $2, requests = $3, parts = $4, failure = $5,
                      last_sent_at = CASE WHEN $3 > requests THEN $6 ELSE last_sent_at END
               WHERE export_id = $1""",
            after.export_id,
            after.status,
            after.requests,
            {name: msgspec.to_builtins(part) for name, part in after.parts.items()},
            after.failure,
            now,
        )
        if after.requests > before.requests:
            await self._request_parts(tx, after)
        if after.status == "failed" and before.status != "failed":
            failed = TenantExportFailed(
                export_id=after.export_id,
                reason=after.failure or "failed",
                requested_by=after.requested_by,
            )
            await self._emit(tx, after, failed)

    async def record_part(
        self, tx: asyncpg.Connection, tenant_id: UUID, part: TenantExportPart, now: datetime
    ) -> ExportJob | None:
        job = await self.load(tx, part.export_id, tenant_id=tenant_id)
        if job is None:
            return None  # a part of an export purged or never made: nothing to do
        after = job.with_part(part)
        if after != job:
            await self.save(tx, job, after, now)
        return after

    async def completed(
        self,
        tx: asyncpg.Connection,
        job: ExportJob,
        *,
        archive_bytes: int,
        archive_sha256: str,
        records: int,
        now: datetime,
        keep: timedelta,
    ) -> None:
        expires_at = now + keep
        await tx.execute(
            """UPDATE exports SET status = 'completed', archive_bytes = $2, archive_sha256 = $3,
                      records = $4, completed_at = $5, expires_at = $6
               WHERE export_id = $1""",
            job.export_id,
            archive_bytes,
            archive_sha256,
            records,
            now,
            expires_at,
        )
        done = TenantExportCompleted(
            export_id=job.export_id,
            bytes=archive_bytes,
            records=records,
            expires_at=expires_at,
            requested_by=job.requested_by,
        )
        await self._emit(tx, job, done)

    async def fail(
        self, tx: asyncpg.Connection, job: ExportJob, reason: str, now: datetime
    ) -> None:
        await self.save(tx, job, replace(job, status="failed", failure=reason), now)

    async def ids(
        self, tx: asyncpg.Connection, status: ExportStatus, *, before: datetime | None = None
    ) -> builtins.list[UUID]:
        """Jobs in `status` (running: last asked before `before`; completed: expiring
        before `before`), oldest first: what the export worker has to do."""
        if status == "running":
            sql = "SELECT export_id FROM exports WHERE status = $1 AND last_sent_at <= $2"
        elif status == "completed":
            sql = "SELECT export_id FROM exports WHERE status = $1 AND expires_at <= $2"
        else:
            sql = "SELECT export_id FROM exports WHERE status = $1 AND $2::timestamptz IS NULL"
        rows = await tx.fetch(sql + " ORDER BY requested_at LIMIT 100", status, before)
        return [r["export_id"] for r in rows]

    async def expired(self, tx: asyncpg.Connection, job: ExportJob) -> None:
        await tx.execute(
            "UPDATE exports SET status = 'expired' WHERE export_id = $1", job.export_id
        )
        await tx.execute("DELETE FROM export_links WHERE export_id = $1", job.export_id)

    async def view(
        self, tx: asyncpg.Connection, tenant_id: UUID, export_id: UUID
    ) -> ExportView | None:
        row = await tx.fetchrow(
            "SELECT * FROM exports WHERE export_id = $1 AND tenant_id = $2", export_id, tenant_id
        )
        return _view(row) if row else None

    async def list(
        self, tx: asyncpg.Connection, tenant_id: UUID, limit: int
    ) -> builtins.list[ExportView]:
        rows = await tx.fetch(
            "SELECT * FROM exports WHERE tenant_id = $1 ORDER BY requested_at DESC LIMIT $2",
            tenant_id,
            limit,
        )
        return [_view(r) for r in rows]

    # ---------------------------------------------------------------- links

    async def make_link(
        self,
        tx: asyncpg.Connection,
        job: ExportJob,
        terms: LinkTerms,
        *,
        created_by: str,
        now: datetime,
    ) -> LinkView:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        link_id = uuid4()
        expires_at = now + terms.ttl
        await tx.execute(
            """INSERT INTO export_links (link_id, export_id, tenant_id, token_sha256,
                                         created_by, created_at, expires_at, uses_left)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)""",
            link_id,
            job.export_id,
            job.tenant_id,
            _digest(token),
            created_by,
            now,
            expires_at,
            terms.uses,
        )
        await self._link_event(
            tx, job.tenant_id, job.export_id, link_id, "created", expires_at, terms.uses
        )
        return LinkView(
            link_id=link_id,
            export_id=job.export_id,
            expires_at=expires_at,
            uses_left=terms.uses,
            revoked=False,
            url=f"/v1/export-downloads/{token}",
        )

    async def links(
        self, tx: asyncpg.Connection, tenant_id: UUID, export_id: UUID
    ) -> builtins.list[LinkView]:
        rows = await tx.fetch(
            """SELECT link_id, export_id, expires_at, uses_left, revoked_at IS NOT NULL AS revoked
               FROM export_links WHERE export_id = $1 AND tenant_id = $2 ORDER BY created_at""",
            export_id,
            tenant_id,
        )
        return [LinkView(**dict(r)) for r in rows]

    async def revoke_link(
        self, tx: asyncpg.Connection, tenant_id: UUID, export_id: UUID, link_id: UUID, now: datetime
    ) -> bool:
        status = await tx.execute(
            """UPDATE export_links SET revoked_at = $4
               WHERE link_id = $1 AND export_id = $2 AND tenant_id = $3 AND revoked_at IS NULL""",
            link_id,
            export_id,
            tenant_id,
            now,
        )
        revoked = bool(status.endswith(" 1"))
        if revoked:
            await self._link_event(tx, tenant_id, export_id, link_id, "revoked")
        return revoked

    async def use_link(self, tx: asyncpg.Connection, token: str, now: datetime) -> Download | None:
        """Spend one use of the link (atomically: two downloads at once cannot both take the
        last use); None for an unknown, expired, used-up or revoked link, or an archive that
        is gone."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
            return None
        row = await tx.fetchrow(
            """UPDATE export_links l SET uses_left = l.uses_left - 1
               FROM exports e
               WHERE l.token_sha256 = $1 AND l.uses_left > 0 AND l.expires_at > $2
                 AND l.revoked_at IS NULL AND e.export_id = l.export_id
                 AND e.status = 'completed' AND e.expires_at > $2
               RETURNING e.export_id, e.tenant_id, e.archive_bytes, l.uses_left, l.link_id""",
            _digest(token),
            now,
        )
        if row is None:
            return None
        await self._link_event(
            tx,
            row["tenant_id"],
            row["export_id"],
            row["link_id"],
            "downloaded",
            uses_left=row["uses_left"],
        )
        job_prefix = f"exports/{row['tenant_id']}/{row['export_id']}/"
        return Download(
            export_id=row["export_id"],
            tenant_id=row["tenant_id"],
            archive_key=f"{job_prefix}archive.zip",
            bytes=row["archive_bytes"],
            uses_left=row["uses_left"],
        )

    # ---------------------------------------------------------------- events

    async def _request_parts(self, tx: asyncpg.Connection, job: ExportJob) -> None:
        request = TenantExportRequested(
            export_id=job.export_id,
            prefix=job.prefix,
            requested_by=job.requested_by,
            subject_account_id=job.subject_account_id,
            move_id=job.move_id,
        )
        await self._emit(tx, job, request)

    async def _emit(
        self,
        tx: asyncpg.Connection,
        job: ExportJob,
        payload: TenantExportRequested | TenantExportCompleted | TenantExportFailed,
    ) -> None:
        event = new_event(
            payload,
            tenant_id=job.tenant_id,
            subject=str(job.export_id),
            aggregate_version=job.requests,
            source=self._source,
            region=self._region,
        )
        await self._outbox.put(tx, [event])

    async def _link_event(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        export_id: UUID,
        link_id: UUID,
        change: str,
        expires_at: datetime | None = None,
        uses_left: int | None = None,
    ) -> None:
        """tenant.export_link: who made, revoked or used a link to the tenant's data."""
        payload = TenantExportLink(
            export_id=export_id,
            link_id=link_id,
            change=change,
            expires_at=expires_at,
            uses_left=uses_left,
        )
        event = new_event(
            payload,
            tenant_id=tenant_id,
            subject=str(link_id),
            aggregate_version=0,
            source=self._source,
            region=self._region,
        )
        await self._outbox.put(tx, [event])


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _job(row: asyncpg.Record) -> ExportJob:
    return ExportJob(
        export_id=row["export_id"],
        tenant_id=row["tenant_id"],
        subject_account_id=row["subject_account_id"],
        requested_by=row["requested_by"],
        requested_at=row["requested_at"],
        status=row["status"],
        requests=row["requests"],
        parts={
            name: msgspec.convert(part, TenantExportPart) for name, part in row["parts"].items()
        },
        failure=row["failure"],
        move_id=row["move_id"],
    )


def _view(row: asyncpg.Record) -> ExportView:
    job = _job(row)
    return ExportView(
        export_id=job.export_id,
        tenant_id=job.tenant_id,
        subject_account_id=job.subject_account_id,
        status=job.status,
        requested_by=job.requested_by,
        requested_at=job.requested_at,
        parts={
            name: PartView(
                files=len(part.files),
                records=sum(f.records for f in part.files),
                bytes=sum(f.bytes for f in part.files),
                error=part.error,
            )
            for name, part in sorted(job.parts.items())
        },
        waiting_for=job.waiting_for if job.status == "running" else [],
        failure=job.failure,
        bytes=row["archive_bytes"],
        records=row["records"],
        sha256=row["archive_sha256"],
        completed_at=row["completed_at"],
        expires_at=row["expires_at"],
    )
