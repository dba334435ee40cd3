"""HTTP edge of the legal notices (legal_notices.py has the rules).

    POST /v1/legal/notices                              announce a change (operators)
    GET  /v1/legal/notices                              every notice (operators)
    GET  /v1/legal/notices/{notice_id}/objections       the tenants that objected (operators)
    GET  /v1/tenants/{tenant_id}/legal/notices          the tenant's notices, objected or not
    POST /v1/tenants/{tenant_id}/legal/notices/{notice_id}/objection
                                                        object for the tenant (owner, admin)

The worker tells every tenant (legal_notices_store.LegalNoticeStore.fan_out_once): a
webhook event per tenant, and identity mails the owners and admins who subscribed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from tenantry_events.actors import current_actor
from tenantry_events.payloads.tenancy import SubprocessorChange
from tenantry_events.pg import Database
from tenantry_http.auth import principal_of, requires
from tenantry_http.problems import Problem
from tenantry_service.runtime import Runtime
from tenantry_tenancy.agreements_api import published
from tenantry_tenancy.legal_notices import NoticeKind, NoticeRefused, check_objection, notice_terms
from tenantry_tenancy.legal_notices_store import (
    LegalNoticeStore,
    NoticeView,
    Objection,
    TenantNotice,
)
from tenantry_tenancy.settings import TenancySettings

OPERATORS = requires(operator_only=True)
OBJECTORS = requires(roles=("owner", "admin"), verified_email=True)
READERS = requires(roles=("owner", "admin"), scopes=("tenant:read",))


class Announce(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: NoticeKind
    summary: Annotated[str, msgspec.Meta(max_length=2000)]
    changes: Annotated[list[SubprocessorChange], msgspec.Meta(max_length=50)] = []
    document: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    version: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    notice_days: int | None = None  # the deployment's TENANTRY_LEGAL_NOTICE_DAYS when left out


class Object(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=2000)]


def _problem(exc: NoticeRefused) -> Problem:
    return Problem(exc.status, exc.slug, "The notice cannot do this", str(exc))


def notice_store(runtime: Runtime) -> LegalNoticeStore:
    return LegalNoticeStore(runtime.outbox, source=runtime.source, region=runtime.settings.region)


class LegalNoticesController(Controller):
    path = "/legal/notices"
    tags = ["legal"]

    @post("/", status_code=201, opt=OPERATORS, summary="Announce a change of the processing terms")
    async def announce(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[Announce],
        runtime: NamedDependency[Runtime],
        db: NamedDependency[Database],
    ) -> NoticeView:
        """Sub-processors added, removed or changed, or a new DPA version: every tenant of
        the moment is told (legal.subprocessor_changed) and may object until
        `effective_at`, `notice_days` from now."""
        settings = runtime.settings_as(TenancySettings)
        try:
            terms = notice_terms(
                kind=data.kind,
                summary=data.summary,
                changes=data.changes,
                document=data.document,
                version=data.version,
                notice_days=(
                    settings.legal_notice_days if data.notice_days is None else data.notice_days
                ),
                now=datetime.now(UTC),
                published=published(),
            )
        except NoticeRefused as exc:
            raise _problem(exc) from exc
        principal = principal_of(request)
        async with db.transaction(platform=True) as tx:
            return await notice_store(runtime).publish(
                tx, terms, f"{principal.kind}:{principal.subject}", current_actor()
            )

    @get("/", opt=OPERATORS, summary="Every announced change, newest first")
    async def list_notices(
        self, runtime: NamedDependency[Runtime], db: NamedDependency[Database]
    ) -> list[NoticeView]:
        async with db.transaction(platform=True) as tx:
            return await notice_store(runtime).notices(tx)

    @get("/{notice_id:uuid}/objections", opt=OPERATORS, summary="The tenants that objected")
    async def objections(
        self,
        notice_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
        db: NamedDependency[Database],
    ) -> list[Objection]:
        store = notice_store(runtime)
        async with db.transaction(platform=True) as tx:
            if await store.notice(tx, notice_id) is None:
                raise Problem(404, "not-found", "Not found", "No such notice")
            return await store.objections(tx, notice_id)


class TenantLegalNoticesController(Controller):
    path = "/tenants/{tenant_id:uuid}/legal/notices"
    tags = ["legal"]

    @get("/", opt=READERS, summary="The changes announced to the tenant, and its objections")
    async def tenant_notices(
        self,
        tenant_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
        db: NamedDependency[Database],
    ) -> list[TenantNotice]:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return await notice_store(runtime).of_tenant(tx, tenant_id)

    @post(
        "/{notice_id:uuid}/objection",
        status_code=201,
        opt=OBJECTORS,
        summary="Object to an announced change, for the tenant",
    )
    async def object_to(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        notice_id: FromPath[UUID],
        data: JSONBody[Object],
        runtime: NamedDependency[Runtime],
        db: NamedDependency[Database],
    ) -> TenantNotice:
        """Within the notice period, once: tenant.legal_objection goes to the platform
        (and the tenant's audit log). A signed-in owner or admin only, not an API key."""
        principal = principal_of(request)
        if principal.kind != "user":
            raise Problem(403, "forbidden", "A person objects", "Sign in as an owner or admin")
        store = notice_store(runtime)
        now = datetime.now(UTC)
        async with db.transaction(tenant_id=tenant_id) as tx:
            notice = await store.notice(tx, notice_id)
            copy = await store.tenant_copy(tx, tenant_id, notice_id)
            if notice is None or copy is None:
                raise Problem(404, "not-found", "Not found", "No such notice for this tenant")
            try:
                reason = check_objection(
                    effective_at=notice.effective_at,
                    objected_at=copy["objected_at"],
                    reason=data.reason,
                    now=now,
                )
            except NoticeRefused as exc:
                raise _problem(exc) from exc
            await store.object(tx, tenant_id, notice_id, reason, f"user:{principal.subject}", now)
            (mine,) = [
                n for n in await store.of_tenant(tx, tenant_id) if n.notice.notice_id == notice_id
            ]
            return mine
