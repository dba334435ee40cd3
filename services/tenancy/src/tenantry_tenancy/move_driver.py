"""Drives each region's moves one step at a time (moves.py has the states), in tenancy's
worker. A move is looked at when due; each step runs in one transaction holding the move's
row (SKIP LOCKED: two workers never drive the same move), and every step may be repeated
after a crash: the other region's hand-over and the services' imports are idempotent by
the move id, the directory's switch by its `from_region`, and the archive's files are
written again whole.

The two regions talk over their tenancy's internal move API (move_api.py), authenticated
with the secret every region shares (`TENANTRY_DIRECTORY_SECRET`); the new region's
tenancy asks each service of its own region to import with the internal API secret."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import zipfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import IO, Any
from uuid import UUID, uuid4

import asyncpg
import httpx

from tenantry_events.payloads.tenancy import TenantStatus
from tenantry_events.pg import Database
from tenantry_objectstore import ObjectStore
from tenantry_platform.clock import Clock
from tenantry_projections.directory_replica import record_arrival
from tenantry_regions.directory import (
    AUTH_SCHEME,
    Directory,
    DirectoryUnavailable,
    HomeRegionMismatch,
)
from tenantry_regions.regions import RegionMap
from tenantry_service.data_keys import INTERNAL_AUTH_SCHEME
from tenantry_service.periodic import Counted
from tenantry_tenancy.domain import DomainError
from tenantry_tenancy.export_store import ExportStore
from tenantry_tenancy.lifecycle import request_purge
from tenantry_tenancy.move_store import MoveStore
from tenantry_tenancy.moves import Move, next_attempt
from tenantry_tenancy.purges import PurgeStore
from tenantry_tenancy.settings import TenancySettings
from tenantry_tenancy.store import TenantRepository

log = logging.getLogger("tenantry.tenancy.moves")

MOVES_PATH = "/internal/v1/moves"
BY = "system:move"
CHUNK = 1024 * 1024
MAX_STEPS_PER_PASS = 10  # a move has fewer steps: bounds a pass whatever happens


class Unreachable(Exception):
    """The other region or a service did not answer usefully: try again later."""


class Refused(Exception):
    """The other side said no for a reason retrying will not cure: the move fails."""


def _problem_detail(response: httpx.Response) -> str:
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        return f"answered {response.status_code}"
    reason = ": ".join(str(body[k]) for k in ("title", "detail") if body.get(k))
    return f"answered {response.status_code}: {reason}"


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 500 or response.status_code in (401, 403, 408, 429):
        raise Unreachable(_problem_detail(response))
    if response.status_code >= 400:
        raise Refused(_problem_detail(response))
    return response


class MoveDriver:
    def __init__(
        self,
        *,
        db: Database,
        moves: MoveStore,
        tenants: TenantRepository,
        exports: ExportStore,
        purges: PurgeStore,
        objects: ObjectStore,
        directory: Directory,
        regions: RegionMap,
        settings: TenancySettings,
        clock: Clock,
        every: timedelta,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._db = db
        self._moves = moves
        self._tenants = tenants
        self._exports = exports
        self._purges = purges
        self._objects = objects
        self._directory = directory
        self._regions = regions
        self._settings = settings
        self._clock = clock
        self._every = every
        # Deployment URLs only (regions' and services' own), never a customer's: no proxy
        # from the environment, no redirects. Imports of large tenants take a while.
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(600.0, connect=5.0), trust_env=False, follow_redirects=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.now(), UTC)

    async def run_once(self) -> Counted:
        async with self._db.transaction(platform=True) as tx:
            due = await self._moves.due(tx, self._now())
        stepped = 0
        for move_id in due:
            # A step that got further is followed by the next at once (a move is a few
            # quick steps; one per scan would add a scan period to each).
            for _ in range(MAX_STEPS_PER_PASS):
                if not await self.step(move_id):
                    break
                stepped += 1
        return Counted(stepped, "move step(s) taken")

    async def step(self, move_id: UUID) -> int:
        """One step of the move; 1 when it got further."""
        async with self._db.transaction(platform=True) as tx:
            move = await self._moves.load(tx, move_id)
            if move is None or move.state in ("completed", "failed"):
                return 0
            try:
                after = await self._advance(tx, move)
            except (Unreachable, httpx.HTTPError, DirectoryUnavailable) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("move %s (%s): %s; trying again later", move_id, move.state, reason)
                after = move.waiting(reason[:500])
            except Refused as exc:
                log.error("move %s failed at %s: %s", move_id, move.state, exc)
                after = move.failed(f"{move.state}: {exc}"[:500])
            await self._moves.save(tx, after, next_attempt(after, self._now(), self._every))
        if after.state != move.state:
            log.info(
                "move %s of tenant %s: %s -> %s", move_id, move.tenant_id, move.state, after.state
            )
        return int(after.state != move.state or after.imported != move.imported)

    async def _advance(self, tx: asyncpg.Connection, move: Move) -> Move:
        match move.state:
            case "exporting":
                return await self._exported(tx, move)
            case "handing_over":
                await self._hand_over(move)
                return move.advanced("moving")
            case "moving":
                return await self._moved(tx, move)
            case "purging":
                gone = await self._tenants.load(tx, move.tenant_id) is None
                return move.advanced("completed") if gone else move.waiting()
            case "importing":
                return await self._import(move)
            case "switching":
                return await self._switch(move)
            case "restoring":
                await self._restore(tx, move)
                # The unpacked files were for the imports, which are done.
                await self._objects.delete_prefix(move.prefix)
                return move.advanced("completed")
        raise Refused(f"no step from {move.state}")

    # ------------------------------------------------------------ the old region

    async def _exported(self, tx: asyncpg.Connection, move: Move) -> Move:
        assert move.export_id is not None
        job = await self._exports.load(tx, move.export_id)
        if job is None or job.status in ("failed", "expired"):
            reason = job.failure if job else "the export is gone"
            return move.failed(f"exporting: the export failed ({reason})")
        return move.advanced("handing_over") if job.status == "completed" else move.waiting()

    def _region_url(self, region: str) -> str:
        return self._regions.require(region).url("tenancy").rstrip("/")

    def _region_auth(self) -> dict[str, str]:
        return {"Authorization": f"{AUTH_SCHEME} {self._settings.directory_secret}"}

    async def _hand_over(self, move: Move) -> None:
        body = {
            "move_id": str(move.move_id),
            "tenant_id": str(move.tenant_id),
            "from_region": move.from_region,
            "to_region": move.to_region,
            "previous_status": move.previous_status,
            "reason": move.reason,
            "requested_by": move.requested_by,
        }
        _checked(
            await self._http.post(
                self._region_url(move.to_region) + MOVES_PATH,
                json=body,
                headers=self._region_auth(),
            )
        )

    async def _moved(self, tx: asyncpg.Connection, move: Move) -> Move:
        response = _checked(
            await self._http.get(
                f"{self._region_url(move.to_region)}{MOVES_PATH}/{move.move_id}",
                headers=self._region_auth(),
            )
        )
        there = response.json()
        if there["state"] == "failed":
            return move.failed(f"the new region: {there.get('failure')}")
        if there["state"] != "completed":
            return move.waiting()
        await self._purge_here(tx, move)
        return move.advanced("purging")

    async def _purge_here(self, tx: asyncpg.Connection, move: Move) -> None:
        """The tenant lives in the new region now: this region's copy goes through the
        purge saga (offboarding that says where it moved, then the purge at once), which
        leaves a deletion certificate for this region."""
        now = self._now()
        reason = f"moved to region {move.to_region} (move {move.move_id})"
        await tx.execute("SELECT set_config('app.tenant_id', $1, true)", str(move.tenant_id))
        tenant = await self._tenants.load(tx, move.tenant_id)
        if tenant is None:
            return  # purged already
        if tenant.state.status != "offboarding":
            change = tenant.start_offboarding(
                now=now,
                grace=timedelta(0),
                certificate_id=uuid4(),
                reason=reason,
                by=BY,
                purge_at=now,
                moved_to=move.to_region,
            )
            await self._tenants.record(tx, tenant, change, occurred_at=now)
            tenant = await self._tenants.load(tx, move.tenant_id)
            assert tenant is not None
        if tenant.offboarding is not None and tenant.offboarding.purge_id is None:
            await request_purge(
                tx, self._tenants, self._purges, tenant, now=now, reason=reason, by=BY, early=True
            )

    # ------------------------------------------------------------ the new region

    async def _import(self, move: Move) -> Move:
        files = await self._files(move)
        while (service := move.next_service()) is not None:
            response = _checked(
                await self._http.post(
                    f"{self._settings.service_url(service).rstrip('/')}"
                    f"/internal/v1/tenants/{move.tenant_id}/import",
                    json={"move_id": str(move.move_id), "files": files.get(service, {})},
                    headers={
                        "Authorization": f"{INTERNAL_AUTH_SCHEME} "
                        f"{self._settings.internal_api_secret}"
                    },
                )
            )
            move = move.with_import(service, response.json()["tables"])
        return move.advanced("switching")

    async def _files(self, move: Move) -> dict[str, dict[str, str]]:
        """The archive's files in this region's object store, by service and table: fetched
        from the old region and unpacked the first time (the manifest is written last, so
        its presence means every file is there)."""
        manifest_key = f"{move.prefix}manifest.json"
        if await self._objects.stat(manifest_key) is None:
            await self._fetch_archive(move, manifest_key)
        manifest = json.loads(b"".join([c async for c in self._objects.get(manifest_key)]))
        files: dict[str, dict[str, str]] = {}
        for entry in manifest["files"]:
            service, _, name = entry["name"].partition("/")
            files.setdefault(service, {})[name.removesuffix(".ndjson")] = (
                move.prefix + entry["name"]
            )
        return files

    async def _fetch_archive(self, move: Move, manifest_key: str) -> None:
        url = f"{self._region_url(move.from_region)}{MOVES_PATH}/{move.move_id}/archive"
        with tempfile.TemporaryFile() as spool:
            async with self._http.stream("GET", url, headers=self._region_auth()) as response:
                if response.status_code != 200:
                    await response.aread()
                    _checked(response)
                    raise Unreachable(f"archive answered {response.status_code}")
                async for chunk in response.aiter_bytes(CHUNK):
                    await asyncio.to_thread(spool.write, chunk)
            spool.seek(0)
            with zipfile.ZipFile(spool) as archive:
                manifest = json.loads(archive.read("manifest.json"))
                if str(manifest.get("tenant_id")) != str(move.tenant_id):
                    raise Refused("the archive is another tenant's")
                for entry in manifest["files"]:
                    await self._unpack(archive, entry, move.prefix)
                await self._objects.put(
                    manifest_key,
                    _once(archive.read("manifest.json")),
                    content_type="application/json",
                )

    async def _unpack(self, archive: zipfile.ZipFile, entry: dict[str, Any], prefix: str) -> None:
        name = entry["name"]
        if name.startswith("/") or ".." in name.split("/"):
            raise Refused(f"unsafe file name in the archive: {name!r}")
        with archive.open(name) as member:
            stored = await self._objects.put(
                prefix + name, _read(member), content_type="application/x-ndjson"
            )
        if (stored.sha256, stored.bytes) != (entry["sha256"], entry["bytes"]):
            raise Refused(f"{name} does not match the archive's manifest")

    async def _switch(self, move: Move) -> Move:
        try:
            await self._directory.move(move.tenant_id, move.from_region, move.to_region)
        except HomeRegionMismatch as exc:
            if exc.home_region != move.to_region:  # else: switched by an earlier attempt
                raise Refused(str(exc)) from exc
        except LookupError as exc:
            raise Refused(str(exc)) from exc
        return move.advanced("restoring")

    async def _restore(self, tx: asyncpg.Connection, move: Move) -> None:
        """tenant.moved: the tenant's home region is this one, in the state it had before
        the move (every service of this region hears it; its status reaches the
        directory from here)."""
        await tx.execute("SELECT set_config('app.tenant_id', $1, true)", str(move.tenant_id))
        tenant = await self._tenants.load(tx, move.tenant_id)
        if tenant is None:
            raise Refused("the tenant was not imported")
        if tenant.state.home_region == move.to_region:
            return  # restored by an earlier attempt
        status: TenantStatus = "active" if move.previous_status == "active" else "suspended"
        try:
            change = tenant.arrive(
                from_region=move.from_region,
                to_region=move.to_region,
                move_id=move.move_id,
                status=status,
                by=BY,
            )
        except DomainError as exc:
            raise Refused(str(exc)) from exc
        await self._tenants.record(tx, tenant, change)
        # tenancy routes it here from this commit on (the other services as they consume
        # tenant.moved; every region once its replica pulls the directory's switch).
        await record_arrival(tx, move.tenant_id, move.to_region)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read(member: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(member.read, CHUNK):
        yield chunk
