"""What the purge and erasure sagas' rows share: finding the ones still missing reports.

A saga's row records when its request last went out (`last_sent_at`) and when every
service had answered (`completed_at`). The scheduler asks again for the open ones whose
request is older than the resend interval, so a lost or dead-lettered request never
leaves a saga hanging; services answer a repeated request with the report they made.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import asyncpg

SagaTable = Literal["purges", "erasures"]
_KEYS: dict[SagaTable, str] = {"purges": "purge_id", "erasures": "erasure_id"}


async def due_again(
    tx: asyncpg.Connection, table: SagaTable, now: datetime, after: timedelta, *, returning: str
) -> list[asyncpg.Record]:
    """The open sagas of `table` last asked before `now - after`, marked asked now (rows
    another scheduler holds are skipped: each is asked once per interval)."""
    key = _KEYS[table]
    return await tx.fetch(
        f"""UPDATE {table} SET last_sent_at = $1
            WHERE {key} IN (SELECT {key} FROM {table}
                            WHERE completed_at IS NULL AND last_sent_at <= $2
                            FOR UPDATE SKIP LOCKED)
            RETURNING {returning}""",
        now,
        now - after,
    )
