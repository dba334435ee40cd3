"""Housekeeping: every service's worker prunes the tables that would otherwise only grow.

- `inbox` (consumer dedupe, tenantry_events): a row must outlive every redelivery of its
  event. Kafka hands a record back only while the broker keeps it: after a crash (what was
  applied since the last offset commit, seconds), after a relay restart (one batch), and,
  at the far end, when a group's committed offsets are lost or reset and it re-reads the
  topic from the earliest record it still has. That bound is the topics' retention
  (`log.retention.hours`, 168 h by default), hence TENANTRY_INBOX_RETENTION_HOURS = 168.
- `idempotency_keys` (tenantry_http.idempotency): a key's record is replayed for
  idempotency.RETENTION (24 h, as Stripe); after that a retry runs anew, so older rows
  serve nothing. A shorter setting is raised to that window, so no key goes before its
  promise ends.

`dead_letter_replays` is not pruned: one row per replayed dead letter, and the memory
that stops a second replay.

Deletes go in batches (TENANTRY_HOUSEKEEPING_BATCH_SIZE rows per statement, each its own
transaction, oldest first through the age index), with a short pause between, until a
batch comes back short. So the purge never holds many locks nor long ones. Nothing else
locks rows that old; two workers of one service purging at once wait at most for each
other's batch (no FOR UPDATE SKIP LOCKED: it needs an UPDATE grant the app role does not
have on inbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from tenantry_events.pg import Database
from tenantry_http.idempotency import RETENTION as IDEMPOTENCY_REPLAY_WINDOW
from tenantry_platform.clock import Clock, SystemClock, utc
from tenantry_platform.settings import ServiceSettings
from tenantry_service.runtime import Runtime

log = logging.getLogger("tenantry.housekeeping")

Sleep = Callable[[float], Awaitable[None]]
BATCH_PAUSE_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class AgedTable:
    """A table pruned by the age of its rows (an indexed timestamp column)."""

    name: str
    age_column: str
    key_columns: tuple[str, ...]

    def delete_batch_sql(self) -> str:
        keys = ", ".join(self.key_columns)
        joined = " AND ".join(f"t.{k} = old.{k}" for k in self.key_columns)
        return f"""WITH old AS (
                       SELECT {keys} FROM {self.name} WHERE {self.age_column} < $1
                       ORDER BY {self.age_column} LIMIT $2
                   ), gone AS (
                       DELETE FROM {self.name} t USING old WHERE {joined} RETURNING 1
                   )
                   SELECT count(*) FROM gone"""


INBOX = AgedTable("inbox", "processed_at", ("consumer", "event_id"))
IDEMPOTENCY_KEYS = AgedTable("idempotency_keys", "created_at", ("scope", "key"))


async def prune(
    db: Database,
    table: AgedTable,
    cutoff: datetime,
    *,
    batch_size: int,
    pause: float = BATCH_PAUSE_SECONDS,
    sleep: Sleep = asyncio.sleep,
) -> int:
    """Delete the rows older than `cutoff`, `batch_size` per transaction; the count."""
    sql = table.delete_batch_sql()
    total = 0
    while True:
        async with db.transaction() as tx:
            deleted = int(await tx.fetchval(sql, cutoff, batch_size))
        total += deleted
        if deleted < batch_size:
            return total
        await sleep(pause)


class Housekeeping:
    """One service's housekeeping: `run_once` prunes every table, `run` repeats it."""

    def __init__(
        self,
        db: Database,
        settings: ServiceSettings,
        *,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._db = db
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._batch_size = settings.housekeeping_batch_size
        self._interval = settings.housekeeping_interval_seconds
        idempotency = timedelta(hours=settings.idempotency_retention_hours)
        if idempotency < IDEMPOTENCY_REPLAY_WINDOW:
            log.warning(
                "TENANTRY_IDEMPOTENCY_RETENTION_HOURS=%s is shorter than the %s for which "
                "keys are replayed; keeping them %s",
                settings.idempotency_retention_hours,
                IDEMPOTENCY_REPLAY_WINDOW,
                IDEMPOTENCY_REPLAY_WINDOW,
            )
            idempotency = IDEMPOTENCY_REPLAY_WINDOW
        self.retention = {
            INBOX: timedelta(hours=settings.inbox_retention_hours),
            IDEMPOTENCY_KEYS: idempotency,
        }

    async def run_once(self) -> dict[str, int]:
        """Prune each table of what is older than its retention; rows deleted, by table."""
        now = utc(self._clock)
        deleted = {}
        for table, keep in self.retention.items():
            count = await prune(
                self._db, table, now - keep, batch_size=self._batch_size, sleep=self._sleep
            )
            if count:
                hours = keep.total_seconds() / 3600
                log.info("pruned %d %s rows older than %g h", count, table.name, hours)
            deleted[table.name] = count
        return deleted

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval)


async def housekeeping(runtime: Runtime, stop: asyncio.Event) -> None:
    """The worker task every service runs (worker.py adds it to the spec's own)."""
    await Housekeeping(runtime.db, runtime.settings).run(stop)
