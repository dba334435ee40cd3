"""The audit log's Postgres edge: appending entries to a tenant's chain, reading them back
with filters, and pruning what the plan no longer keeps. Every call runs in the caller's
transaction with the tenant's row-level-security scope (or the platform's, for pruning)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.envelope import Envelope
from tenantry_tenancy.audit.entries import GENESIS, AuditRecord, canonical, next_hash, record_of


class StoredEntry(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    recorded_at: datetime
    record: str  # the exact text hashed into the chain
    prev_hash: bytes
    hash: bytes


class AuditFilter(msgspec.Struct, frozen=True, kw_only=True):
    actor_id: str | None = None
    actor_kind: str | None = None
    action: str | None = None  # exact, or a prefix ending in "." or "*" ("sso.")
    target_id: str | None = None
    target_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    outcome: str | None = None
    request_id: str | None = None


class ChainState(msgspec.Struct, frozen=True, kw_only=True):
    head_seq: int
    head_hash: bytes
    pruned_through_seq: int
    pruned_through_hash: bytes


_COLUMNS: Final = "seq, recorded_at, record, prev_hash, hash"


class AuditStore:
    async def append(
        self, tx: asyncpg.Connection, sealed: Envelope[Any], recorded_at: datetime
    ) -> tuple[AuditRecord, StoredEntry] | None:
        """Chain the entry of one event (personal fields sealed) to its tenant's log; None
        when the event is in the log already (a redelivery). The chain row's lock orders
        the appends of one tenant, whichever consumer lane they come from."""
        tenant_id = sealed.tenant_id
        if await tx.fetchval(
            "SELECT 1 FROM audit_entries WHERE tenant_id = $1 AND event_id = $2",
            tenant_id,
            sealed.id,
        ):
            return None
        await tx.execute(
            """INSERT INTO audit_chains (tenant_id, head_seq, head_hash, pruned_through_hash)
               VALUES ($1, 0, $2, $2) ON CONFLICT (tenant_id) DO NOTHING""",
            tenant_id,
            GENESIS,
        )
        head = await tx.fetchrow(
            "SELECT head_seq, head_hash FROM audit_chains WHERE tenant_id = $1 FOR UPDATE",
            tenant_id,
        )
        assert head is not None  # inserted above when missing
        seq = int(head["head_seq"]) + 1
        prev = bytes(head["head_hash"])
        record = record_of(sealed, seq)
        text = canonical(record)
        digest = next_hash(prev, text)
        await tx.execute(
            """INSERT INTO audit_entries (tenant_id, seq, event_id, occurred_at, recorded_at,
                   action, outcome, actor_kind, actor_id, target_type, target_id, request_id,
                   record, prev_hash, hash)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)""",
            tenant_id,
            seq,
            sealed.id,
            sealed.occurred_at,
            recorded_at,
            record.action,
            record.outcome,
            record.actor.kind,
            record.actor.id,
            record.target.type,
            record.target.id,
            record.actor.request_id,
            text.decode(),
            prev,
            digest,
        )
        await tx.execute(
            "UPDATE audit_chains SET head_seq = $2, head_hash = $3 WHERE tenant_id = $1",
            tenant_id,
            seq,
            digest,
        )
        stored = StoredEntry(
            seq=seq, recorded_at=recorded_at, record=text.decode(), prev_hash=prev, hash=digest
        )
        return record, stored

    async def query(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        where: AuditFilter,
        *,
        after: int | None,
        descending: bool,
        limit: int,
    ) -> list[StoredEntry]:
        """Up to `limit` entries in chain order (or newest first), past the cursor `after`
        (a seq), that match every filter given."""
        clauses = ["tenant_id = $1"]
        args: list[Any] = [tenant_id]

        def bind(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if where.actor_id is not None:
            clauses.append(f"actor_id = {bind(where.actor_id)}")
        if where.actor_kind is not None:
            clauses.append(f"actor_kind = {bind(where.actor_kind)}")
        if where.action is not None:
            prefix = where.action.removesuffix("*")
            if prefix != where.action or prefix.endswith("."):
                clauses.append(f"starts_with(action, {bind(prefix)})")
            else:
                clauses.append(f"action = {bind(where.action)}")
        if where.target_id is not None:
            clauses.append(f"target_id = {bind(where.target_id)}")
        if where.target_type is not None:
            clauses.append(f"target_type = {bind(where.target_type)}")
        if where.request_id is not None:
            clauses.append(f"request_id = {bind(where.request_id)}")
        if where.outcome is not None:
            clauses.append(f"outcome = {bind(where.outcome)}")
        if where.since is not None:
            clauses.append(f"occurred_at >= {bind(where.since)}")
        if where.until is not None:
            clauses.append(f"occurred_at < {bind(where.until)}")
        if after is not None:
            clauses.append(f"seq {'<' if descending else '>'} {bind(after)}")
        order = "DESC" if descending else "ASC"
        rows = await tx.fetch(
            f"SELECT {_COLUMNS} FROM audit_entries WHERE {' AND '.join(clauses)}"
            f" ORDER BY seq {order} LIMIT {bind(limit)}",
            *args,
        )
        return [_entry(r) for r in rows]

    async def chain(self, tx: asyncpg.Connection, tenant_id: UUID) -> ChainState:
        row = await tx.fetchrow(
            """SELECT head_seq, head_hash, pruned_through_seq, pruned_through_hash
               FROM audit_chains WHERE tenant_id = $1""",
            tenant_id,
        )
        if row is None:
            return ChainState(
                head_seq=0, head_hash=GENESIS, pruned_through_seq=0, pruned_through_hash=GENESIS
            )
        return ChainState(
            head_seq=int(row["head_seq"]),
            head_hash=bytes(row["head_hash"]),
            pruned_through_seq=int(row["pruned_through_seq"]),
            pruned_through_hash=bytes(row["pruned_through_hash"]),
        )

    async def prune(
        self, tx: asyncpg.Connection, tenant_id: UUID, before: datetime, *, batch: int = 5000
    ) -> int:
        """Remove the tenant's oldest entries recorded before `before` (a prefix of the
        chain, at most `batch` of them), remembering the last removed hash as the new
        anchor; how many were removed. The prefix ends at the first entry still kept, so
        the chain left is whole."""
        chain = await tx.fetchrow(
            """SELECT head_seq, pruned_through_seq FROM audit_chains
               WHERE tenant_id = $1 FOR UPDATE""",
            tenant_id,
        )
        if chain is None:
            return 0
        first_kept = await tx.fetchval(
            """SELECT seq FROM audit_entries WHERE tenant_id = $1 AND recorded_at >= $2
               ORDER BY seq LIMIT 1""",
            tenant_id,
            before,
        )
        pruned = int(chain["pruned_through_seq"])
        end = int(chain["head_seq"]) if first_kept is None else int(first_kept) - 1
        end = min(end, pruned + batch)
        if end <= pruned:
            return 0
        last_hash = await tx.fetchval(
            "SELECT hash FROM audit_entries WHERE tenant_id = $1 AND seq = $2", tenant_id, end
        )
        removed = await tx.execute(
            "DELETE FROM audit_entries WHERE tenant_id = $1 AND seq <= $2", tenant_id, end
        )
        await tx.execute(
            """UPDATE audit_chains SET pruned_through_seq = $2, pruned_through_hash = $3
               WHERE tenant_id = $1""",
            tenant_id,
            end,
            last_hash,
        )
        return int(removed.split()[-1])

    async def tenants(self, tx: asyncpg.Connection) -> Sequence[UUID]:
        """Every tenant with a chain (platform scope)."""
        return [r["tenant_id"] for r in await tx.fetch("SELECT tenant_id FROM audit_chains")]


def _entry(row: asyncpg.Record) -> StoredEntry:
    return StoredEntry(
        seq=int(row["seq"]),
        recorded_at=row["recorded_at"],
        record=row["record"],
        prev_hash=bytes(row["prev_hash"]),
        hash=bytes(row["hash"]),
    )
