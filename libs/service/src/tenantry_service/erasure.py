"""What every service does when tenancy asks it to erase one person inside a live tenant
(issue 17, GDPR Art. 17; docs/lifecycle.md "Erasing one person"): delete or anonymize its
rows of the person, forget its copy of their subject key, and answer `subject.erased_by`
with the counts.

Tenancy destroyed the person's subject key before asking (erasure_api.py), so what events
said of them (sealed with it, tenantry_events.sealing) already reads as erased wherever it
is kept: event stores, outboxes, Kafka. This handler deals with the rest, the plain rows:
which ones are the person's, each service declares in its ServiceSpec (`ErasureRules`),
as SQL statements with $1 the tenant and $2 the subject (the account id, which is also
the SCIM user's id), and steps of its own where an event must say what changed (identity
revokes the person's API keys with apikey.revoked, so every service stops accepting them).

Idempotent: the statements, the record (`subject_erasures`, counts only) and the
`subject.erased_by` outbox row commit together; a redelivered request finds the record
and answers with the same report.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.tenancy import PurgedRows, SubjectErasedBy, SubjectErasureRequested
from tenantry_events.storage import PostgresOutbox
from tenantry_platform.clock import Clock, SystemClock, utc
from tenantry_service.purge import _deleted as _affected  # a command status's row count
from tenantry_service.runtime import Runtime

log = logging.getLogger("tenantry.erasure")

ERASURE_REQUESTED = "subject.erasure_requested"
ERASURE_RECORD = "subject_erasures"


@dataclass(frozen=True)
class ErasureStatement:
    """One statement over `table` ($1 the tenant id, $2 the subject id) whose command
    status counts the rows it erased (DELETE n, UPDATE n)."""

    table: str
    sql: str


# A step of a service's own: erases what a statement cannot (it writes events), in the
# erasure's transaction; returns its counts.
ErasureStep = Callable[[asyncpg.Connection, UUID, UUID], Awaitable[list[PurgedRows]]]
SubjectKeyForgetter = Callable[[asyncpg.Connection, UUID, UUID], Awaitable[None]]


# What every service holds of anyone: stored responses of requests replayed under an
# Idempotency-Key (a created account's or SCIM user's body names them by id). Scoped to
# the tenant as tenantry_http.idempotency scopes them ('kind:subject:tenant_id').
COMMON_STATEMENTS: Sequence[ErasureStatement] = (
    ErasureStatement(
        "idempotency_keys",
        """DELETE FROM idempotency_keys
           WHERE scope LIKE '%:' || $1::uuid::text
             AND position(convert_to($2::uuid::text, 'UTF8') IN coalesce(body, '')) > 0""",
    ),
)


@dataclass(frozen=True)
class ErasureRules:
    """What is one person's in a service, beyond `COMMON_STATEMENTS` and the service's
    copy of their subject key. A service holding nothing else of a person (ratelimit,
    tenancy) declares nothing and still answers.

    steps: built once per worker from the runtime (they need its stores), run first.
    statements: run after the steps, in order (children before the rows they reference).
    """

    statements: Sequence[ErasureStatement] = ()
    steps: Sequence[Callable[[Runtime], ErasureStep]] = field(default_factory=tuple)


@dataclass(frozen=True, kw_only=True)
class SubjectEraser:
    """The `subject.erasure_requested` handler of one service."""

    service: str
    source: str
    region: str
    outbox: PostgresOutbox
    statements: Sequence[ErasureStatement]
    steps: Sequence[ErasureStep]
    forget_subject_key: SubjectKeyForgetter
    clock: Clock = field(default_factory=SystemClock)

    async def handle(
        self, tx: asyncpg.Connection, envelope: Envelope[SubjectErasureRequested]
    ) -> None:
        request = envelope.payload
        tenant_id = envelope.tenant_id
        report = await self._recorded(tx, tenant_id, request)
        if report is None:
            report = await self._erase(tx, tenant_id, request)
        await self.outbox.put(
            tx,
            [
                new_event(
                    report,
                    tenant_id=tenant_id,
                    subject=f"subject/{request.subject_id}",
                    aggregate_version=0,
                    source=self.source,
                    region=self.region,
                )
            ],
        )

    async def _recorded(
        self, tx: asyncpg.Connection, tenant_id: UUID, request: SubjectErasureRequested
    ) -> SubjectErasedBy | None:
        row = await tx.fetchrow(
            f"""SELECT tables, completed_at FROM {ERASURE_RECORD}
                WHERE tenant_id = $1 AND subject_id = $2""",
            tenant_id,
            request.subject_id,
        )
        if row is None:
            return None
        log.info("subject %s was erased already: answering with its report", request.subject_id)
        return SubjectErasedBy(
            erasure_id=request.erasure_id,
            subject_id=request.subject_id,
            service=self.service,
            tables=msgspec.convert(row["tables"], list[PurgedRows]),
            completed_at=row["completed_at"],
        )

    async def _erase(
        self, tx: asyncpg.Connection, tenant_id: UUID, request: SubjectErasureRequested
    ) -> SubjectErasedBy:
        subject_id = request.subject_id
        counts: dict[str, int] = {}
        for step in self.steps:
            for done in await step(tx, tenant_id, subject_id):
                counts[done.table] = counts.get(done.table, 0) + done.rows
        existing = await _tables(tx)
        for statement in (*COMMON_STATEMENTS, *self.statements):
            if statement.table in existing:
                status = await tx.execute(statement.sql, tenant_id, subject_id)
                counts[statement.table] = counts.get(statement.table, 0) + _affected(status)
        await self.forget_subject_key(tx, tenant_id, subject_id)
        tables = [PurgedRows(table=t, rows=n) for t, n in sorted(counts.items())]
        report = SubjectErasedBy(
            erasure_id=request.erasure_id,
            subject_id=subject_id,
            service=self.service,
            tables=tables,
            completed_at=utc(self.clock),
        )
        # Written last, with the counts: a redelivery running beside this one fails on its
        # key and, retried, finds this record.
        await tx.execute(
            f"""INSERT INTO {ERASURE_RECORD} (tenant_id, subject_id, erasure_id, tables,
                    completed_at)
                VALUES ($1, $2, $3, $4::jsonb, $5)""",
            tenant_id,
            subject_id,
            request.erasure_id,
            msgspec.to_builtins(tables),
            report.completed_at,
        )
        log.info(
            "erased subject %s of tenant %s: %d rows in %d tables",
            subject_id,
            tenant_id,
            sum(t.rows for t in tables),
            len(tables),
        )
        return report


async def _tables(tx: asyncpg.Connection) -> frozenset[str]:
    """The service's tables (a statement over a table this database lacks is skipped)."""
    rows = await tx.fetch(
        "SELECT relname FROM pg_class"
        " WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"
    )
    return frozenset(r["relname"] for r in rows)
