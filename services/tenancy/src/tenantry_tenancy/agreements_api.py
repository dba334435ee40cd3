"""HTTP edge of a tenant's legal agreements (agreements.py has the rules; docs/legal).

    POST /v1/tenants/{tenant_id}/agreements            accept a DPA version (owner, admin)
    GET  /v1/tenants/{tenant_id}/agreements            the tenant's acceptances, newest first
    GET  /v1/tenants/{tenant_id}/agreements/{id}/document   the DPA as accepted, filled in
                                                            for the tenant (HTML)
    GET  /v1/legal/documents/{document}/acceptances    each tenant's acceptance of the
                                                       newest version (operators)

Accepting is a person's act: only a signed-in owner or admin of the tenant with a verified
email (not an API key, not an operator) accepts, and the acceptance keeps their name,
title and email as they give them, the time, the address the request came from, and the
SHA-256 of the text. It emits tenant.agreement_accepted (public: the tenant's webhooks
receive it; its personal fields are sealed with the tenant's key).
"""

from __future__ import annotations

import asyncio
import html
import re
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from uuid import UUID

import msgspec
import weasyprint
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from markdown_it import MarkdownIt
from uuid_utils.compat import uuid7

from tenantry_events.envelope import new_event
from tenantry_events.payloads.tenancy import TenantAgreementAccepted
from tenantry_events.pg import Database
from tenantry_http.auth import principal_of, requires
from tenantry_http.pagination import clamp_limit, decode_cursor, encode_cursor
from tenantry_http.problems import Problem
from tenantry_service.runtime import Runtime
from tenantry_tenancy.agreements import (
    AgreementRefused,
    Version,
    body,
    chosen,
    filled,
    signatory,
    tenant_annexes,
)
from tenantry_tenancy.legal_api import catalog
from tenantry_tenancy.settings import TenancySettings
from tenantry_tenancy.store import PlanStore, TenantRepository


class Accept(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    title: str
    email: str
    document: str = "dpa"
    version: str | None = None  # the newest when left out


class Acceptance(msgspec.Struct, frozen=True, kw_only=True):
    acceptance_id: UUID
    tenant_id: UUID
    document: str
    version: str
    sha256: str
    name: str
    title: str
    email: str
    ip: str | None
    accepted_by: str
    accepted_at: datetime


ACCEPTERS = requires(roles=("owner", "admin"), verified_email=True)
READERS = requires(roles=("owner", "admin"), scopes=("tenant:read",))
_COLUMNS = ", ".join(Acceptance.__struct_fields__)


def published() -> list[Version]:
    return [
        Version(document=d.document, version=v.version, effective=v.effective, sha256=v.sha256)
        for d in catalog().documents
        for v in d.versions
    ]


@cache
def text_of(document: str, version: str) -> str:
    texts = resources.files("tenantry_tenancy.legal").joinpath("texts")
    return texts.joinpath(document).joinpath(f"{version}.md").read_text()


@cache
def annexes_text() -> str:
    """This release's generated annexes, without their generator's comment."""
    text = resources.files("tenantry_tenancy.legal").joinpath("texts/annexes.md").read_text()
    return re.sub(r"\A<!--.*?-->\n", "", text, flags=re.S)


MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def _refused(exc: AgreementRefused) -> Problem:
    return Problem(exc.status, exc.slug, "The agreement is refused", str(exc))


class AgreementsController(Controller):
    path = "/tenants/{tenant_id:uuid}/agreements"
    tags = ["legal"]

    @post("/", status_code=201, opt=ACCEPTERS, summary="Accept a DPA version for the tenant")
    async def accept(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[Accept],
        runtime: NamedDependency[Runtime],
        db: NamedDependency[Database],
    ) -> Acceptance:
        """A signed-in owner or admin of the tenant accepts (by default the newest version
        of the DPA). Honours Idempotency-Key. Emits tenant.agreement_accepted."""
        principal = principal_of(request)
        if principal.kind != "user":
            raise Problem(
                403,
                "forbidden",
                "A person accepts",
                "a signed-in owner or admin of the tenant accepts, not an API key or operator",
            )
        try:
            version = chosen(published(), data.document, data.version)
            name, title, email = signatory(data.name, data.title, data.email)
        except AgreementRefused as exc:
            raise _refused(exc) from exc
        accepted = TenantAgreementAccepted(
            acceptance_id=uuid7(),
            document=version.document,
            version=version.version,
            sha256=version.sha256,
            name=name,
            title=title,
            email=email,
            ip=request.client.host if request.client else None,
            accepted_by=f"user:{principal.subject}",
            accepted_at=datetime.now(UTC),
        )
        async with db.transaction(tenant_id=tenant_id) as tx:
            await tx.execute(
                f"""INSERT INTO agreement_acceptances ({_COLUMNS})
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
                accepted.acceptance_id,
                tenant_id,
                accepted.document,
                accepted.version,
                accepted.sha256,
                accepted.name,
                accepted.title,
                accepted.email,
                accepted.ip,
                accepted.accepted_by,
                accepted.accepted_at,
            )
            event = new_event(
                accepted,
                tenant_id=tenant_id,
                subject=f"tenant/{tenant_id}",
                aggregate_version=0,
                source=runtime.source,
                region=runtime.settings.region,
            )
            await runtime.outbox.put(tx, [event])
        return Acceptance(tenant_id=tenant_id, **msgspec.structs.asdict(accepted))

    @get("/", opt=READERS, summary="The tenant's acceptances of legal documents, newest first")
    async def history(
        self, tenant_id: FromPath[UUID], db: NamedDependency[Database]
    ) -> list[Acceptance]:
        async with db.transaction(tenant_id=tenant_id) as tx:
            rows = await tx.fetch(
                f"""SELECT {_COLUMNS} FROM agreement_acceptances WHERE tenant_id = $1
                    ORDER BY accepted_at DESC""",
                tenant_id,
            )
        return [msgspec.convert(dict(r), Acceptance) for r in rows]

    @get(
        "/{acceptance_id:uuid}/document",
        opt=READERS,
        summary="The accepted DPA, filled in for the tenant (HTML)",
        media_type=MediaType.HTML,
    )
    async def document(
        self,
        tenant_id: FromPath[UUID],
        acceptance_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
        plan_store: NamedDependency[PlanStore],
    ) -> Response[str]:
        """The text of the version accepted, its placeholders filled from the tenant, its
        plan, the deployment and the acceptance; the annexes are this release's."""
        page = await _rendered(runtime, db, tenant_repository, plan_store, tenant_id, acceptance_id)
        return Response(page, media_type=MediaType.HTML, headers=NO_LOADS)

    @get(
        "/{acceptance_id:uuid}/document.pdf",
        opt=READERS,
        summary="The accepted DPA, filled in for the tenant (PDF)",
        media_type="application/pdf",
    )
    async def document_pdf(
        self,
        tenant_id: FromPath[UUID],
        acceptance_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
        plan_store: NamedDependency[PlanStore],
    ) -> Response[bytes]:
        """The same document as the HTML one, as a PDF (WeasyPrint, loading nothing)."""
        page = await _rendered(runtime, db, tenant_repository, plan_store, tenant_id, acceptance_id)
        pdf = await asyncio.to_thread(as_pdf, page)
        return Response(
            pdf,
            media_type="application/pdf",
            headers={
                "Content-Disposition": f'inline; filename="dpa-{acceptance_id}.pdf"',
                "Cache-Control": "no-store",
            },
        )


NO_LOADS = {"Content-Security-Policy": "default-src 'none'", "Cache-Control": "no-store"}
PRINT_CSS = """body { font-family: serif; font-size: 10.5pt; line-height: 1.4; }
table { border-collapse: collapse; font-size: 8.5pt; }
td, th { border: 0.5pt solid #888; padding: 2pt 4pt; vertical-align: top; }
blockquote { border-left: 2pt solid #b00; margin-left: 0; padding-left: 8pt; }"""


class NothingFetched(weasyprint.URLFetcher):  # type: ignore[misc]  # untyped library
    """The PDF renderer may load nothing: no file, no URL (the text is the tenant's)."""

    def fetch(self, url: str, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(f"the DPA's PDF loads nothing ({url[:40]})")


def as_pdf(page: str) -> bytes:
    document = weasyprint.HTML(string=page, url_fetcher=NothingFetched())
    pdf: bytes = document.write_pdf(stylesheets=[weasyprint.CSS(string=PRINT_CSS)])
    return pdf


async def _rendered(
    runtime: Runtime,
    db: Database,
    tenant_repository: TenantRepository,
    plan_store: PlanStore,
    tenant_id: UUID,
    acceptance_id: UUID,
) -> str:
    async with db.transaction(tenant_id=tenant_id) as tx:
        row = await tx.fetchrow(
            f"""SELECT {_COLUMNS} FROM agreement_acceptances
                WHERE tenant_id = $1 AND acceptance_id = $2""",
            tenant_id,
            acceptance_id,
        )
        tenant = await tenant_repository.load(tx, tenant_id)
        plan = await plan_store.view(tx, tenant_id)
    if row is None or tenant is None or plan is None:
        raise Problem(404, "not-found", "Not found", "No such acceptance")
    acceptance = msgspec.convert(dict(row), Acceptance)
    settings = runtime.settings_as(TenancySettings)
    values = {
        "customer.legal_name": tenant.state.name,
        "tenant.id": str(tenant_id),
        "tenant.home_region": tenant.state.home_region,
        "processor.legal_name": settings.legal_processor_name,
        "processor.address": settings.legal_processor_address,
        "service.name": settings.legal_service_name,
        "notice_days": str(settings.legal_notice_days),
        "breach_notice_hours": str(settings.legal_breach_notice_hours),
        "grace_days": str(plan.limits.offboarding_grace_days),
        "governing_law": settings.legal_governing_law,
        "acceptance.name": acceptance.name,
        "acceptance.title": acceptance.title,
        "acceptance.email": acceptance.email,
        "acceptance.time": acceptance.accepted_at.isoformat(),
        "document.sha256": acceptance.sha256,
    }
    text = filled(body(text_of(acceptance.document, acceptance.version)), values)
    # Raw HTML off: the customer's values and the texts render as text only (links to
    # javascript: and the like are dropped by the renderer); the page loads nothing.
    annexes = tenant_annexes(annexes_text(), tenant.state.home_region)
    page = MARKDOWN.render(f"{text}\n\n{annexes}")
    title = html.escape(f"DPA {acceptance.version}")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body>{page}</body></html>"
    )


class TenantAcceptance(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    name: str
    slug: str
    status: str
    plan: str
    accepted_version: str | None  # the newest version the tenant accepted, if any
    accepted_at: datetime | None
    current: bool  # whether that is the newest published version


class AcceptancePage(msgspec.Struct, frozen=True, kw_only=True):
    document: str
    current_version: str
    data: list[TenantAcceptance]
    next_cursor: str | None = None


@get(
    "/legal/documents/{document:str}/acceptances",
    tags=["legal"],
    opt=requires(operator_only=True),
    summary="Each tenant's acceptance of a document's newest version (operators)",
)
async def acceptances(
    document: FromPath[str],
    db: NamedDependency[Database],
    pending: bool = False,
    cursor: str | None = None,
    limit: int | None = None,
) -> AcceptancePage:
    """Every tenant (purged ones left out), by tenant id, with the newest version of
    `document` it accepted; `pending=true` lists only those that have not accepted the
    newest published version (whom to remind)."""
    try:
        current = chosen(published(), document, None)
    except AgreementRefused:
        raise Problem(
            404, "not-found", "Not found", "No document is accepted by that name"
        ) from None
    size = clamp_limit(limit)
    after = decode_cursor(cursor)
    if after is not None and (len(after) != 1 or not isinstance(after[0], str)):
        raise Problem(400, "invalid-cursor", "The cursor is not valid")
    async with db.transaction(platform=True) as tx:
        rows = await tx.fetch(
            """SELECT t.tenant_id, t.name, t.slug, t.status, t.plan,
                      a.version AS accepted_version, a.accepted_at
               FROM tenants t
               LEFT JOIN LATERAL (
                   SELECT version, accepted_at FROM agreement_acceptances
                   WHERE tenant_id = t.tenant_id AND document = $1
                   ORDER BY version DESC, accepted_at DESC LIMIT 1) a ON true
               WHERE t.status <> 'purged'
                 AND ($2::uuid IS NULL OR t.tenant_id > $2)
                 AND (NOT $3 OR a.version IS DISTINCT FROM $4)
               ORDER BY t.tenant_id LIMIT $5""",
            document,
            UUID(after[0]) if after else None,
            pending,
            current.version,
            size + 1,
        )
    data = [
        TenantAcceptance(**dict(r), current=r["accepted_version"] == current.version)
        for r in rows[:size]
    ]
    more = len(rows) > size and bool(data)
    return AcceptancePage(
        document=document,
        current_version=current.version,
        data=data,
        next_cursor=encode_cursor([str(data[-1].tenant_id)]) if more else None,
    )
