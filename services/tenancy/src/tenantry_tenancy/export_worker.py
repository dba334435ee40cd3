"""The export worker (a task of tenancy's worker process): assembles the jobs whose parts
are all in, asks again for parts that are late (and fails the job after MAX_REQUESTS), and
deletes archives past their expiry. Like the lifecycle scheduler it keeps nothing in
memory: each pass reads what is due, so a worker killed mid-assembly leaves the job
`assembling` and the next pass (here or in another worker) builds it again from the parts,
which stay until the archive is safely stored.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from tenantry_events.pg import Database
from tenantry_objectstore.store import ObjectStore
from tenantry_platform.clock import Clock, utc
from tenantry_service.periodic import run_periodically
from tenantry_tenancy.export_archive import PartMismatch, Sign, assemble
from tenantry_tenancy.export_store import ExportStore

log = logging.getLogger("tenantry.tenancy.exports")


@dataclass(frozen=True)
class ExportPass:
    assembled: int = 0
    failed: int = 0
    asked_again: int = 0
    expired: int = 0

    def __bool__(self) -> bool:
        return self != ExportPass()


class ExportWorker:
    def __init__(
        self,
        db: Database,
        exports: ExportStore,
        objects: ObjectStore,
        sign: Sign,
        *,
        clock: Clock,
        region: str,
        resend_after: timedelta,
        keep: timedelta,
    ) -> None:
        self._db = db
        self._exports = exports
        self._objects = objects
        self._sign = sign
        self._clock = clock
        self._region = region
        self._resend_after = resend_after
        self._keep = keep

    async def run(self, stop: asyncio.Event, every: float) -> None:
        await run_periodically(self.run_once, stop, every, log=log, what="export pass")

    async def run_once(self) -> ExportPass:
        now = utc(self._clock)
        async with self._db.transaction(platform=True) as tx:
            assembling = await self._exports.ids(tx, "assembling")
            late = await self._exports.ids(tx, "running", before=now - self._resend_after)
            expiring = await self._exports.ids(tx, "completed", before=now)
        assembled = failed = asked = expired = 0
        for export_id in assembling:
            if await self._assemble(export_id):
                assembled += 1
            else:
                failed += 1
        for export_id in late:
            async with self._db.transaction(platform=True) as tx:
                job = await self._exports.load(tx, export_id)
                if job is None or job.status != "running":
                    continue
                after = job.ask_again()
                await self._exports.save(tx, job, after, utc(self._clock))
                asked += after.status == "running"
                failed += after.status == "failed"
        for export_id in expiring:
            async with self._db.transaction(platform=True) as tx:
                job = await self._exports.load(tx, export_id)
                if job is None or job.status != "completed":
                    continue
                await self._objects.delete_prefix(job.prefix)
                await self._exports.expired(tx, job)
                expired += 1
        return ExportPass(assembled=assembled, failed=failed, asked_again=asked, expired=expired)

    async def _assemble(self, export_id: UUID) -> bool:
        """Build and store the archive, then record the job completed; the row stays
        locked meanwhile, so two workers never build the same archive at once."""
        async with self._db.transaction(platform=True) as tx:
            job = await self._exports.load(tx, export_id)
            if job is None or job.status != "assembling":
                return True
            now = utc(self._clock)
            try:
                stored, records = await assemble(
                    job, self._objects, self._sign, region=self._region, now=now
                )
            except PartMismatch as exc:
                await self._exports.fail(tx, job, str(exc), now)
                return False
            await self._exports.completed(
                tx,
                job,
                archive_bytes=stored.bytes,
                archive_sha256=stored.sha256,
                records=records,
                now=now,
                keep=self._keep,
            )
        # The parts are in the stored archive now; only then are they removed.
        for file in job.files():
            await self._objects.delete(file.object_key)
        return True
