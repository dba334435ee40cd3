"""Postgres edge of the legal notices (legal_notices.py has the rules): the notices, each
tenant's copy and objection, and the fan-out pass that tells every tenant."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec
from uuid_utils.compat import uuid7

from tenantry_events.actors import Actor, acting_as
from tenantry_events.envelope import new_event
from tenantry_events.payloads.tenancy import (
    LegalSubprocessorChanged,
    SubprocessorChange,
    TenantLegalObjection,
)
from tenantry_events.pg import Database
from tenantry_events.storage import PostgresOutbox
from tenantry_platform.clock import Clock, utc
from tenantry_tenancy.legal_notices import NoticeTerms

FAN_OUT_BATCH: Final = 200


class NoticeView(msgspec.Struct, frozen=True, kw_only=True):
    notice_id: UUID
    kind: str
    summary: str
    changes: list[SubprocessorChange]
    document: str | None
    version: str | None
    published_at: datetime
    effective_at: datetime
    published_by: str
    fanned_out_at: datetime | None = None


class TenantNotice(msgspec.Struct, frozen=True, kw_only=True):
    notice: NoticeView
    notified_at: datetime
    objected_at: datetime | None
    objection_reason: str | None
    objected_by: str | None


class Objection(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    objected_at: datetime
    reason: str
    objected_by: str


_NOTICE = (
    "notice_id, kind, summary, changes::text AS changes, document, version, published_at,"
    " effective_at, published_by, fanned_out_at"
)


class LegalNoticeStore:
    def __init__(self, outbox: PostgresOutbox, *, source: str, region: str) -> None:
        self._outbox = outbox
        self._source = source
        self._region = region

    async def publish(
        self, tx: asyncpg.Connection, terms: NoticeTerms, published_by: str, actor: Actor | None
    ) -> NoticeView:
        notice_id = uuid7()
        # Who published it, for the tenants' audit logs, without the address (a global row).
        who = msgspec.structs.replace(actor, ip=None, user_agent=None) if actor else None
        await tx.execute(
            """INSERT INTO legal_notices (notice_id, kind, summary, changes, document, version,
                   published_at, effective_at, published_by, actor)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
            notice_id,
            terms.kind,
            terms.summary,
            msgspec.to_builtins(terms.changes),  # the pool's jsonb codec encodes
            terms.document,
            terms.version,
            terms.published_at,
            terms.effective_at,
            published_by,
            msgspec.to_builtins(who) if who else None,
        )
        view = await self.notice(tx, notice_id)
        assert view is not None
        return view

    async def notice(self, tx: asyncpg.Connection, notice_id: UUID) -> NoticeView | None:
        row = await tx.fetchrow(
            f"SELECT {_NOTICE} FROM legal_notices WHERE notice_id = $1", notice_id
        )
        return _notice(row) if row else None

    async def notices(self, tx: asyncpg.Connection) -> builtins.list[NoticeView]:
        rows = await tx.fetch(f"SELECT {_NOTICE} FROM legal_notices ORDER BY published_at DESC")
        return [_notice(r) for r in rows]

    async def of_tenant(
        self, tx: asyncpg.Connection, tenant_id: UUID
    ) -> builtins.list[TenantNotice]:
        # One query: the tenant's copies joined to their notices.
        notice_columns = ", ".join(f"n.{c.strip()}" for c in _NOTICE.split(","))
        rows = await tx.fetch(
            f"""SELECT {notice_columns}, t.notified_at, t.objected_at, t.objection_reason,
                       t.objected_by
                FROM legal_notice_tenants t JOIN legal_notices n USING (notice_id)
                WHERE t.tenant_id = $1 ORDER BY t.notified_at DESC""",
            tenant_id,
        )
        return [TenantNotice(notice=_notice(r), **{k: r[k] for k in _TENANT_COLUMNS}) for r in rows]

    async def tenant_copy(
        self, tx: asyncpg.Connection, tenant_id: UUID, notice_id: UUID
    ) -> asyncpg.Record | None:
        """The tenant's row of the notice, locked (an objection takes it)."""
        return await tx.fetchrow(
            """SELECT objected_at FROM legal_notice_tenants
               WHERE tenant_id = $1 AND notice_id = $2 FOR UPDATE""",
            tenant_id,
            notice_id,
        )

    async def object(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        notice_id: UUID,
        reason: str,
        objected_by: str,
        now: datetime,
    ) -> None:
        await tx.execute(
            """UPDATE legal_notice_tenants
               SET objected_at = $3, objection_reason = $4, objected_by = $5
               WHERE tenant_id = $1 AND notice_id = $2""",
            tenant_id,
            notice_id,
            now,
            reason,
            objected_by,
        )
        event = new_event(
            TenantLegalObjection(notice_id=notice_id, reason=reason, objected_by=objected_by),
            tenant_id=tenant_id,
            subject=str(notice_id),
            aggregate_version=0,
            source=self._source,
            region=self._region,
        )
        await self._outbox.put(tx, [event])

    async def objections(self, tx: asyncpg.Connection, notice_id: UUID) -> builtins.list[Objection]:
        rows = await tx.fetch(
            """SELECT tenant_id, objected_at, objection_reason AS reason, objected_by
               FROM legal_notice_tenants WHERE notice_id = $1 AND objected_at IS NOT NULL
               ORDER BY objected_at""",
            notice_id,
        )
        return [Objection(**dict(r)) for r in rows]

    async def fan_out_once(self, db: Database, clock: Clock) -> int:
        """Tell the next batch of tenants about each notice still going out: a row per
        tenant and legal.subprocessor_changed, in one transaction (a crash repeats none
        and skips none). Tenants created after the notice was published are not told: they
        signed up under its terms. How many tenants were told."""
        told = 0
        async with db.transaction(platform=True) as tx:
            pending = await tx.fetch(
                f"""SELECT {_NOTICE}, actor::text AS actor FROM legal_notices
                    WHERE fanned_out_at IS NULL ORDER BY published_at"""
            )
            for row in pending:
                notice = _notice(row)
                tenants = await tx.fetch(
                    """SELECT t.tenant_id FROM tenants t
                       WHERE t.status <> 'purged' AND t.created_at <= $2
                         AND NOT EXISTS (SELECT 1 FROM legal_notice_tenants n
                                         WHERE n.notice_id = $1 AND n.tenant_id = t.tenant_id)
                       ORDER BY t.tenant_id LIMIT $3""",
                    notice.notice_id,
                    notice.published_at,
                    FAN_OUT_BATCH,
                )
                if not tenants:
                    await tx.execute(
                        "UPDATE legal_notices SET fanned_out_at = $2 WHERE notice_id = $1",
                        notice.notice_id,
                        utc(clock),
                    )
                    continue
                ids = [t["tenant_id"] for t in tenants]
                await tx.execute(
                    """INSERT INTO legal_notice_tenants (notice_id, tenant_id, notified_at)
                       SELECT $1, unnest($2::uuid[]), $3""",
                    notice.notice_id,
                    ids,
                    utc(clock),
                )
                actor = msgspec.json.decode(row["actor"], type=Actor) if row["actor"] else None
                with acting_as(actor):  # the operator who published it, in each tenant's log
                    events = [self._told(notice, tenant_id) for tenant_id in ids]
                await self._outbox.put(tx, events)
                told += len(ids)
        return told

    def _told(self, notice: NoticeView, tenant_id: UUID) -> Any:
        return new_event(
            LegalSubprocessorChanged(
                notice_id=notice.notice_id,
                kind=notice.kind,
                summary=notice.summary,
                changes=notice.changes,
                document=notice.document,
                version=notice.version,
                published_at=notice.published_at,
                effective_at=notice.effective_at,
            ),
            tenant_id=tenant_id,
            subject=str(notice.notice_id),
            aggregate_version=0,
            source=self._source,
            region=self._region,
        )


_TENANT_COLUMNS: Final = ("notified_at", "objected_at", "objection_reason", "objected_by")


def _notice(row: asyncpg.Record) -> NoticeView:
    values = {k: row[k] for k in NoticeView.__struct_fields__}
    values["changes"] = msgspec.json.decode(row["changes"], type=list[SubprocessorChange])
    return NoticeView(**values)
