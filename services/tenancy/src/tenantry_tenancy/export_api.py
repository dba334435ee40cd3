"""HTTP edge of exports (under /v1): request an export, follow it, make download links.

Who: the tenant's owners and admins (an API key needs tenant:export), and operators; the
plan must include `data_export`. Exports stay available while the tenant is offboarding
(its people may take their data before the purge). The download itself is a public route:
its token is the capability (short-lived, limited uses, revocable, stored hashed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import Stream
from uuid_utils.compat import uuid7

from tenantry_events.pg import Database
from tenantry_http.auth import PUBLIC, principal_of, requires
from tenantry_http.problems import Problem
from tenantry_objectstore.store import ObjectStore
from tenantry_tenancy.api import found
from tenantry_tenancy.export_store import ExportStore, ExportView, LinkView
from tenantry_tenancy.exports import ExportJob, ExportRefused, LinkTerms, can_link
from tenantry_tenancy.store import PlanStore


@dataclass(frozen=True)
class Archives:
    """The object store holding the archives, as routes receive it (Litestar checks an
    injected value against its declared type, which a Protocol cannot be)."""

    store: ObjectStore


class RequestExport(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # One person's data (GDPR Art. 15/20) instead of the whole tenant's.
    subject_account_id: UUID | None = None


class MakeLink(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ttl_seconds: Annotated[int, msgspec.Meta(ge=60, le=86_400)] = 3600
    uses: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3


def _problem(exc: ExportRefused) -> Problem:
    return Problem(exc.status, exc.slug, "The export cannot do this", str(exc))


EXPORTERS = requires(roles=("owner", "admin"), scopes=("tenant:export",))
# An offboarding tenant's people may still take their data.
EXPORT_STATES = {"tenant_states": ("active", "offboarding")}


class ExportsController(Controller):
    path = "/tenants/{tenant_id:uuid}/exports"
    tags = ["data export"]

    @post(
        "/",
        status_code=202,
        opt={**EXPORTERS, **EXPORT_STATES},
        summary="Export the tenant's data (or one person's) from every service",
    )
    async def request_export(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[RequestExport],
        db: NamedDependency[Database],
        plan_store: NamedDependency[PlanStore],
        export_store: NamedDependency[ExportStore],
    ) -> ExportView:
        """Starts the export saga: each service writes its share, tenancy zips them with a
        signed manifest. One export at a time per tenant (409 export-running). Honours
        Idempotency-Key. Follow it with GET; tenant.export_completed or _failed ends it."""
        principal = principal_of(request)
        job = ExportJob(
            export_id=uuid7(),
            tenant_id=tenant_id,
            subject_account_id=data.subject_account_id,
            requested_by=f"{principal.kind}:{principal.subject}",
            requested_at=datetime.now(UTC),
        )
        async with db.transaction(tenant_id=tenant_id) as tx:
            view = found(await plan_store.view(tx, tenant_id))
            if not view.limits.data_export:
                raise Problem(
                    403,
                    "feature-not-in-plan",
                    "Your plan does not include this",
                    f"data_export is not in the {view.plan} plan",
                    feature="data_export",
                    plan=view.plan,
                )
            if not await export_store.start(tx, job):
                raise Problem(
                    409,
                    "export-running",
                    "An export is already running",
                    "one export at a time per tenant: wait for the running one to end",
                )
            return found(await export_store.view(tx, tenant_id, job.export_id))

    @get("/", opt={**EXPORTERS, **EXPORT_STATES}, summary="The tenant's exports, newest first")
    async def list_exports(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        export_store: NamedDependency[ExportStore],
    ) -> list[ExportView]:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return await export_store.list(tx, tenant_id, 50)

    @get(
        "/{export_id:uuid}",
        opt={**EXPORTERS, **EXPORT_STATES},
        summary="An export: status, each service's part, size, expiry",
    )
    async def read_export(
        self,
        tenant_id: FromPath[UUID],
        export_id: FromPath[UUID],
        db: NamedDependency[Database],
        export_store: NamedDependency[ExportStore],
    ) -> ExportView:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return found(await export_store.view(tx, tenant_id, export_id))

    @post(
        "/{export_id:uuid}/links",
        status_code=201,
        opt={**EXPORTERS, **EXPORT_STATES},
        summary="A short-lived download link for a completed export",
    )
    async def make_link(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        export_id: FromPath[UUID],
        data: JSONBody[MakeLink],
        db: NamedDependency[Database],
        export_store: NamedDependency[ExportStore],
    ) -> LinkView:
        """The answer holds the link's URL once (only its hash is kept): it allows `uses`
        downloads within `ttl_seconds` (default 3 within an hour) until revoked."""
        principal = principal_of(request)
        now = datetime.now(UTC)
        async with db.transaction(tenant_id=tenant_id) as tx:
            job = found(await export_store.load(tx, export_id, tenant_id=tenant_id))
            view = found(await export_store.view(tx, tenant_id, export_id))
            try:
                can_link(job, archive_expires_at=view.expires_at, now=now)
                terms = LinkTerms(ttl=timedelta(seconds=data.ttl_seconds), uses=data.uses)
            except ExportRefused as exc:
                raise _problem(exc) from exc
            return await export_store.make_link(
                tx, job, terms, created_by=f"{principal.kind}:{principal.subject}", now=now
            )

    @get(
        "/{export_id:uuid}/links",
        opt={**EXPORTERS, **EXPORT_STATES},
        summary="The export's download links (without their tokens)",
    )
    async def list_links(
        self,
        tenant_id: FromPath[UUID],
        export_id: FromPath[UUID],
        db: NamedDependency[Database],
        export_store: NamedDependency[ExportStore],
    ) -> list[LinkView]:
        async with db.transaction(tenant_id=tenant_id) as tx:
            found(await export_store.view(tx, tenant_id, export_id))
            return await export_store.links(tx, tenant_id, export_id)

    @delete(
        "/{export_id:uuid}/links/{link_id:uuid}",
        status_code=204,
        opt={**EXPORTERS, **EXPORT_STATES},
        summary="Revoke a download link",
    )
    async def revoke_link(
        self,
        tenant_id: FromPath[UUID],
        export_id: FromPath[UUID],
        link_id: FromPath[UUID],
        db: NamedDependency[Database],
        export_store: NamedDependency[ExportStore],
    ) -> None:
        async with db.transaction(tenant_id=tenant_id) as tx:
            revoked = await export_store.revoke_link(
                tx, tenant_id, export_id, link_id, datetime.now(UTC)
            )
        if not revoked:
            raise Problem(404, "not-found", "Not found", "No such link, or revoked already")


@get(
    "/export-downloads/{token:str}",
    opt={"auth": PUBLIC},
    tags=["data export"],
    summary="Download an export archive through a link",
)
async def download(
    token: FromPath[str],
    db: NamedDependency[Database],
    export_store: NamedDependency[ExportStore],
    archives: NamedDependency[Archives],
) -> Stream:
    """Each download spends one use of the link. An unknown, expired, used-up or revoked
    link is 404 (the same answer for each, so a token cannot be probed)."""
    async with db.transaction(platform=True) as tx:
        spent = await export_store.use_link(tx, token, datetime.now(UTC))
    if spent is None:
        raise Problem(404, "not-found", "Not found", "No such download link, or it has expired")
    return Stream(
        archives.store.get(spent.archive_key),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="tenantry-export-{spent.export_id}.zip"',
            "Content-Length": str(spent.bytes),
            "Cache-Control": "no-store",
            "X-Download-Uses-Left": str(spent.uses_left),
        },
    )
