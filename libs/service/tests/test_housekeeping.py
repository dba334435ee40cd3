"""Housekeeping on a scratch database: inbox and idempotency rows older than their
retention are deleted in bounded batches, newer ones kept; every service's worker runs it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from uuid_utils.compat import uuid4

from tenantry_platform.clock import FakeClock, utc
from tenantry_platform.settings import ServiceSettings
from tenantry_service.app import ServiceSpec
from tenantry_service.housekeeping import BATCH_PAUSE_SECONDS, Housekeeping
from tenantry_service.runtime import Runtime
from tenantry_service.worker import run_worker
from tenantry_testkit.fixtures import ScratchDatabase, eventually
from tenantry_testkit.stack import Stack


def settings_for(db: ScratchDatabase, **overrides: Any) -> ServiceSettings:
    return ServiceSettings(database_url=db.app_dsn, kafka_bootstrap="unused", **overrides)


async def add_inbox_rows(db: ScratchDatabase, processed_at: datetime, count: int) -> None:
    await db.db.pool.executemany(
        "INSERT INTO inbox (consumer, event_id, processed_at) VALUES ('tests', $1, $2)",
        [(uuid4(), processed_at) for _ in range(count)],
    )


async def add_idempotency_rows(db: ScratchDatabase, created_at: datetime, count: int) -> None:
    await db.db.pool.executemany(
        """INSERT INTO idempotency_keys (scope, key, fingerprint, state, created_at)
           VALUES ('tests', $1, 'f', 'done', $2)""",
        [(uuid4().hex, created_at) for _ in range(count)],
    )


async def ages(db: ScratchDatabase, table: str, column: str, now: datetime) -> list[float]:
    """The ages (hours) of the rows left, sorted."""
    rows = await db.db.pool.fetch(f"SELECT {column} AS at FROM {table}")
    return sorted(round((now - r["at"]).total_seconds() / 3600, 3) for r in rows)


class PauseRecorder:
    """The injected sleep between batches: records how many old inbox rows are left at
    each pause, which shows the batch size at work."""

    def __init__(self, db: ScratchDatabase, cutoff: datetime) -> None:
        self.db = db
        self.cutoff = cutoff
        self.pauses: list[tuple[float, int]] = []

    async def __call__(self, seconds: float) -> None:
        left = await self.db.db.pool.fetchval(
            "SELECT count(*) FROM inbox WHERE processed_at < $1", self.cutoff
        )
        self.pauses.append((seconds, left))


async def test_rows_past_their_retention_are_deleted_in_batches_and_newer_ones_kept(
    scratch_db: ScratchDatabase,
) -> None:
    clock = FakeClock()
    now = utc(clock)
    hour = timedelta(hours=1)
    await add_inbox_rows(scratch_db, now - 169 * hour, 7)
    await add_inbox_rows(scratch_db, now - 167 * hour, 3)
    await add_idempotency_rows(scratch_db, now - 25 * hour, 2)
    await add_idempotency_rows(scratch_db, now - 23 * hour, 2)
    settings = settings_for(scratch_db, housekeeping_batch_size=3)
    pauses = PauseRecorder(scratch_db, now - 168 * hour)
    housekeeping = Housekeeping(scratch_db.db, settings, clock=clock, sleep=pauses)

    assert await housekeeping.run_once() == {"inbox": 7, "idempotency_keys": 2}
    assert await ages(scratch_db, "inbox", "processed_at", now) == [167.0] * 3
    assert await ages(scratch_db, "idempotency_keys", "created_at", now) == [23.0] * 2
    # 7 old inbox rows, 3 a statement: a pause after each full batch (4, then 1 left),
    # none after the short one; the 2 idempotency rows go in one short batch.
    assert pauses.pauses == [(BATCH_PAUSE_SECONDS, 4), (BATCH_PAUSE_SECONDS, 1)]

    assert await housekeeping.run_once() == {"inbox": 0, "idempotency_keys": 0}
    clock.advance(2 * 3600)  # the kept rows are now past their retention too
    assert await housekeeping.run_once() == {"inbox": 3, "idempotency_keys": 2}
    assert await scratch_db.db.pool.fetchval("SELECT count(*) FROM inbox") == 0
    assert await scratch_db.db.pool.fetchval("SELECT count(*) FROM idempotency_keys") == 0


async def test_idempotency_keys_are_kept_at_least_as_long_as_they_are_replayed(
    scratch_db: ScratchDatabase,
) -> None:
    clock = FakeClock()
    now = utc(clock)
    await add_idempotency_rows(scratch_db, now - timedelta(hours=23), 1)
    await add_idempotency_rows(scratch_db, now - timedelta(hours=25), 1)
    await add_inbox_rows(scratch_db, now - timedelta(hours=3), 1)
    await add_inbox_rows(scratch_db, now - timedelta(hours=1), 1)
    settings = settings_for(scratch_db, idempotency_retention_hours=1, inbox_retention_hours=2)
    housekeeping = Housekeeping(scratch_db.db, settings, clock=clock)
    assert await housekeeping.run_once() == {"inbox": 1, "idempotency_keys": 1}
    assert await ages(scratch_db, "idempotency_keys", "created_at", now) == [23.0]
    assert await ages(scratch_db, "inbox", "processed_at", now) == [1.0]


@pytest.mark.kafka
async def test_every_services_worker_runs_housekeeping(
    stack: Stack, scratch_db: ScratchDatabase
) -> None:
    """A worker of a spec with no tasks of its own prunes its database at start."""
    now = datetime.now(UTC)
    await add_inbox_rows(scratch_db, now - timedelta(days=30), 4)
    await add_idempotency_rows(scratch_db, now - timedelta(days=30), 4)
    await add_inbox_rows(scratch_db, now - timedelta(hours=1), 1)
    settings = ServiceSettings(
        database_url=scratch_db.app_dsn, kafka_bootstrap=stack.kafka_bootstrap
    )
    spec = ServiceSpec(name=f"hk{uuid4().hex[:8]}", description="housekeeping test")
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(spec, Runtime.build(spec.name, settings), stop))
    try:
        await eventually(
            lambda: _only_recent_rows_left(scratch_db),
            timeout=60,
            message="the worker's housekeeping pruned the old rows",
        )
    finally:
        stop.set()
        await asyncio.wait_for(worker, timeout=60)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):  # run_worker's own handlers
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


async def _only_recent_rows_left(db: ScratchDatabase) -> bool:
    pool = db.db.pool
    inbox = await pool.fetchval("SELECT count(*) FROM inbox")
    keys = await pool.fetchval("SELECT count(*) FROM idempotency_keys")
    return bool(inbox == 1 and keys == 0)
