"""API key last-used times without a write per request.

The pipeline notes each accepted key in memory; every `interval` seconds the api process
writes one apikey.used event per key it saw to its own outbox, and identity (which owns
the key) keeps the latest time. A crash loses at most one interval of "last used" precision,
never a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from uuid import UUID

from tenantry_events.envelope import new_event
from tenantry_events.payloads.identity import ApiKeyUsed
from tenantry_events.pg import Database
from tenantry_events.storage import PostgresOutbox
from tenantry_platform.clock import Clock, SystemClock

log = logging.getLogger("tenantry.key_usage")


class KeyUsage:
    def __init__(
        self,
        db: Database,
        outbox: PostgresOutbox,
        *,
        service: str,
        region: str,
        interval: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self._db = db
        self._outbox = outbox
        self._service = service
        self._region = region
        self._interval = interval
        self._clock = clock or SystemClock()
        self._seen: dict[str, tuple[UUID, float]] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, key_id: str, tenant_id: UUID) -> None:
        self._seen[key_id] = (tenant_id, self._clock.now())

    async def flush(self) -> int:
        if not self._seen:
            return 0
        batch, self._seen = self._seen, {}
        events = [
            new_event(
                ApiKeyUsed(
                    key_id=key_id,
                    last_used_at=datetime.fromtimestamp(at, UTC),
                    service=self._service,
                ),
                tenant_id=tenant_id,
                subject=key_id,
                aggregate_version=0,  # an operational fact, not an aggregate change
                source=f"/tenantry/{self._service}",
                region=self._region,
            )
            for key_id, (tenant_id, at) in batch.items()
        ]
        try:
            async with self._db.transaction() as tx:
                await self._outbox.put(tx, events)
        except Exception:
            # Put them back (newer uses win) and try at the next interval.
            for key_id, value in batch.items():
                self._seen.setdefault(key_id, value)
            raise
        return len(events)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("could not record API key usage yet: %r", exc)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
