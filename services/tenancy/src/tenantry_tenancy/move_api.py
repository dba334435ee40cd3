"""HTTP edge of moving a tenant to another region (moves.py has the rules).

Operators, in the tenant's home region:

    POST /v1/tenants/{tenant_id}/moves            {"to_region": "eu", "reason": "..."}
    GET  /v1/tenants/{tenant_id}/moves            this region's moves of the tenant
    GET  /v1/tenants/{tenant_id}/moves/{move_id}

These answer in the region asked (no 307): each region shows its own row of a move.

Regions, between their tenancy services (the shared secret of the directory,
`Authorization: Tenantry-Directory <secret>`; not in the OpenAPI document):

    POST /internal/v1/moves                       the old region hands a move over
    GET  /internal/v1/moves/{move_id}             how it goes (either direction)
    GET  /internal/v1/moves/{move_id}/archive     the move's archive (the old region)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Router, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import Stream
from uuid_utils.compat import uuid7

from tenantry_events.pg import Database
from tenantry_http.auth import principal_of, requires
from tenantry_http.problems import Problem
from tenantry_regions.directory import AUTH_SCHEME
from tenantry_regions.routing import REGION_LOCAL
from tenantry_service.internal import INTERNAL_ROUTE_OPT, shared_secret_guard
from tenantry_service.runtime import Runtime
from tenantry_tenancy.export_api import Archives
from tenantry_tenancy.export_store import ExportStore
from tenantry_tenancy.exports import ExportJob
from tenantry_tenancy.move_store import MoveStore, MoveView
from tenantry_tenancy.moves import FIRST_STATE, Move, MoveRefused, check_move
from tenantry_tenancy.store import TenantRepository

OPERATOR_HERE = {**requires(operator_only=True), REGION_LOCAL: True, "priority": "critical"}


class StartMove(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    to_region: str
    reason: str


def _refused(exc: MoveRefused) -> Problem:
    return Problem(exc.status, exc.slug, "The move is refused", str(exc))


class MovesController(Controller):
    path = "/tenants/{tenant_id:uuid}/moves"
    tags = ["regions"]

    @post(
        "/",
        status_code=202,
        opt=OPERATOR_HERE,
        summary="Move the tenant to another region (operators, in its home region)",
    )
    async def start(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[StartMove],
        runtime: NamedDependency[Runtime],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
        export_store: NamedDependency[ExportStore],
    ) -> MoveView:
        """Suspends the tenant (if active) and exports every service's rows of it; the new
        region imports them, the directory routes the tenant there, its state before the
        move is restored there, and this region's copy is purged (with a deletion
        certificate). API keys, SCIM tokens and sessions end: they name this region. One
        move at a time (409 move-running); follow it with GET."""
        by = f"operator:{principal_of(request).subject}"
        reason = data.reason.strip()
        if not reason:
            raise Problem(400, "invalid-transition", "A reason is required", "reason is empty")
        now = datetime.now(UTC)
        async with db.transaction(tenant_id=tenant_id) as tx:
            tenant = await tenant_repository.load(tx, tenant_id)
            if tenant is None:
                raise Problem(404, "not-found", "Not found", "No such tenant")
            try:
                check_move(
                    own_region=runtime.regions.own.id,
                    to_region=data.to_region,
                    regions=runtime.regions.ids,
                    status=tenant.state.status,
                )
            except MoveRefused as exc:
                raise _refused(exc) from exc
            move = Move(
                move_id=uuid7(),
                tenant_id=tenant_id,
                direction="out",
                from_region=runtime.regions.own.id,
                to_region=data.to_region,
                state=FIRST_STATE["out"],
                previous_status=tenant.state.status,
                reason=reason,
                requested_by=by,
                export_id=uuid7(),
            )
            if not await MoveStore().insert(tx, move, now):
                raise Problem(409, "move-running", "A move is running", "one move at a time")
            if tenant.state.status == "active":
                change = tenant.suspend(reason=f"moving to region {move.to_region}", by=by)
                await tenant_repository.record(tx, tenant, change)
            assert move.export_id is not None
            job = ExportJob(
                export_id=move.export_id,
                tenant_id=tenant_id,
                subject_account_id=None,
                requested_by=by,
                requested_at=now,
                move_id=move.move_id,
            )
            if not await export_store.start(tx, job):
                raise Problem(
                    409, "export-running", "An export is running", "wait for it to end, then move"
                )
            return _found(await MoveStore().view(tx, move.move_id))

    @get("/", opt=OPERATOR_HERE, summary="The tenant's moves, as this region knows them")
    async def list_moves(
        self, tenant_id: FromPath[UUID], db: NamedDependency[Database]
    ) -> list[MoveView]:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return await MoveStore().views(tx, tenant_id)

    @get("/{move_id:uuid}", opt=OPERATOR_HERE, summary="One move, as this region knows it")
    async def read_move(
        self, tenant_id: FromPath[UUID], move_id: FromPath[UUID], db: NamedDependency[Database]
    ) -> MoveView:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return _found(await MoveStore().view(tx, move_id, tenant_id=tenant_id))


def _found(view: MoveView | None) -> MoveView:
    if view is None:
        raise Problem(404, "not-found", "Not found", "No such move")
    return view


# ---------------------------------------------------------------- between regions

region_caller = shared_secret_guard(
    AUTH_SCHEME,
    lambda settings: settings.directory_secret,
    "Moves are handed over between the deployment's regions only",
)


class HandOver(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    move_id: UUID
    tenant_id: UUID
    from_region: str
    to_region: str
    previous_status: str
    reason: str
    requested_by: str


@post("/moves", status_code=200, opt=INTERNAL_ROUTE_OPT)
async def hand_over(data: HandOver, runtime: Runtime, db: Database) -> MoveView:
    """The old region's tenancy hands a move to this one (repeatable: the same move id
    answers the row it made)."""
    regions = runtime.regions
    if data.to_region != regions.own.id or data.from_region not in regions.ids:
        raise Problem(422, "wrong-region", "Not this region's move", "to_region must be this one")
    if data.from_region == data.to_region or data.previous_status not in ("active", "suspended"):
        raise Problem(422, "invalid-move", "Invalid move", "from_region or previous_status")
    move = Move(
        move_id=data.move_id,
        tenant_id=data.tenant_id,
        direction="in",
        from_region=data.from_region,
        to_region=data.to_region,
        state=FIRST_STATE["in"],
        previous_status=data.previous_status,
        reason=data.reason,
        requested_by=data.requested_by,
    )
    async with db.transaction(tenant_id=data.tenant_id) as tx:
        if await tx.fetchval(
            "SELECT 1 FROM tenant_tombstones WHERE tenant_id = $1", data.tenant_id
        ):
            # Its purge here left records that drop its events for good (a tenant that
            # moved away, or was offboarded): it cannot come back. Not built yet.
            raise Problem(
                409, "tenant-purged-here", "The tenant was purged here", "it cannot move back"
            )
        if await tx.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", data.tenant_id):
            if await MoveStore().view(tx, data.move_id) is None:
                raise Problem(409, "tenant-exists", "The tenant lives here", "nothing to move")
        elif (
            not await MoveStore().insert(tx, move, datetime.now(UTC))
            and await MoveStore().view(tx, data.move_id) is None
        ):
            raise Problem(409, "move-running", "A move is running", "one move at a time")
        return _found(await MoveStore().view(tx, data.move_id))


@get("/moves/{move_id:uuid}", opt=INTERNAL_ROUTE_OPT)
async def move_state(move_id: UUID, db: Database) -> MoveView:
    async with db.transaction(platform=True) as tx:
        return _found(await MoveStore().view(tx, move_id))


@get("/moves/{move_id:uuid}/archive", opt=INTERNAL_ROUTE_OPT)
async def move_archive(
    move_id: UUID, db: Database, export_store: ExportStore, archives: Archives
) -> Stream:
    """The archive of an outgoing move's export, once it is complete."""
    async with db.transaction(platform=True) as tx:
        view = await MoveStore().view(tx, move_id)
        if view is None or view.direction != "out" or view.export_id is None:
            raise Problem(404, "not-found", "Not found", "No such move here")
        job = await export_store.load(tx, view.export_id)
    if job is None or job.status != "completed":
        raise Problem(409, "not-ready", "The archive is not ready", "the export is still running")
    return Stream(
        archives.store.get(job.archive_key),
        media_type="application/zip",
        headers={"Cache-Control": "no-store"},
    )


MOVES_API = Router(
    path="/internal/v1",
    route_handlers=[hand_over, move_state, move_archive],
    guards=[region_caller],
    include_in_schema=False,
)
