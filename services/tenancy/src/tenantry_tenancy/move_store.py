"""tenant_moves (migration 0013): each region's row of a move (moves.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_tenancy.moves import Direction, Move


class MoveView(msgspec.Struct, frozen=True, kw_only=True):
    """A move as operators (and the other region) see it."""

    move_id: UUID
    tenant_id: UUID
    direction: Direction
    from_region: str
    to_region: str
    state: str
    previous_status: str
    reason: str
    requested_by: str
    export_id: UUID | None
    imported: dict[str, Any]
    failure: str | None
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime


_COLUMNS = ", ".join(MoveView.__struct_fields__)


class MoveStore:
    async def insert(self, tx: asyncpg.Connection, move: Move, now: datetime) -> bool:
        """False when the tenant has a move running in this direction already, or this
        move id is known (a repeated hand-over)."""
        try:
            async with tx.transaction():  # a savepoint: the caller's transaction goes on
                inserted = await tx.fetchval(
                    """INSERT INTO tenant_moves
                           (move_id, tenant_id, direction, from_region, to_region, state,
                            previous_status, reason, requested_by, export_id,
                            next_attempt_at, created_at, updated_at)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $11)
                       ON CONFLICT (move_id) DO NOTHING RETURNING true""",
                    move.move_id,
                    move.tenant_id,
                    move.direction,
                    move.from_region,
                    move.to_region,
                    move.state,
                    move.previous_status,
                    move.reason,
                    move.requested_by,
                    move.export_id,
                    now,
                )
        except asyncpg.UniqueViolationError:
            return False  # tenant_moves_running: one move of a tenant at a time
        return bool(inserted)

    async def load(self, tx: asyncpg.Connection, move_id: UUID) -> Move | None:
        row = await tx.fetchrow(
            "SELECT * FROM tenant_moves WHERE move_id = $1 FOR UPDATE SKIP LOCKED", move_id
        )
        return _move(row) if row else None

    async def save(self, tx: asyncpg.Connection, move: Move, next_attempt_at: datetime) -> None:
        await tx.execute(
            """UPDATE tenant_moves SET state = $2, export_id = $3, imported = $4, failure = $5,
                      attempts = $6, next_attempt_at = $7, updated_at = now()
               WHERE move_id = $1""",
            move.move_id,
            move.state,
            move.export_id,
            move.imported,
            move.failure,
            move.attempts,
            next_attempt_at,
        )

    async def due(self, tx: asyncpg.Connection, now: datetime, limit: int = 20) -> list[UUID]:
        rows = await tx.fetch(
            """SELECT move_id FROM tenant_moves
               WHERE state NOT IN ('completed', 'failed') AND next_attempt_at <= $1
               ORDER BY next_attempt_at LIMIT $2""",
            now,
            limit,
        )
        return [r["move_id"] for r in rows]

    async def view(
        self, tx: asyncpg.Connection, move_id: UUID, *, tenant_id: UUID | None = None
    ) -> MoveView | None:
        row = await tx.fetchrow(
            f"""SELECT {_COLUMNS} FROM tenant_moves
                WHERE move_id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)""",
            move_id,
            tenant_id,
        )
        return msgspec.convert(dict(row), MoveView) if row else None

    async def views(self, tx: asyncpg.Connection, tenant_id: UUID) -> list[MoveView]:
        rows = await tx.fetch(
            f"""SELECT {_COLUMNS} FROM tenant_moves WHERE tenant_id = $1
                ORDER BY created_at DESC""",
            tenant_id,
        )
        return [msgspec.convert(dict(r), MoveView) for r in rows]


def _move(row: asyncpg.Record) -> Move:
    return Move(
        move_id=row["move_id"],
        tenant_id=row["tenant_id"],
        direction=row["direction"],
        from_region=row["from_region"],
        to_region=row["to_region"],
        state=row["state"],
        previous_status=row["previous_status"],
        reason=row["reason"],
        requested_by=row["requested_by"],
        export_id=row["export_id"],
        imported=dict(row["imported"]),
        failure=row["failure"],
        attempts=row["attempts"],
    )
