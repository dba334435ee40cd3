"""Payload retention, a worker task: message bodies older than
TENANTRY_WEBHOOK_PAYLOAD_RETENTION_DAYS are expunged, in batches, every few minutes. The log
of attempts stays; pending deliveries of an expunged message fail (store.expunge_older_than)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from tenantry_events.pg import Database
from tenantry_webhooks.store import expunge_older_than

log = logging.getLogger("tenantry.webhooks")
BATCH = 1000
EVERY_SECONDS = 300


async def expunge_forever(db: Database, keep: timedelta, stop: asyncio.Event) -> None:
    while not stop.is_set():
        while True:
            async with db.transaction(platform=True) as tx:
                done = await expunge_older_than(tx, datetime.now(UTC) - keep, BATCH)
            if done:
                log.info("expunged %d message payloads past retention", done)
            if done < BATCH:
                break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=EVERY_SECONDS)
