"""HTTP edge of offboarding and the purge (under /v1), and the public deletion certificate.

Who may do what (DESIGN.md "Data lifecycle", docs/lifecycle.md):
- start offboarding: the tenant's owner (typing the tenant's slug to confirm) or an
  operator (who may also set purge_at, e.g. to honour a contract's end date);
- cancel during the grace period: the owner or an operator;
- purge before purge_at: operators only, with a reason;
- read the offboarding and the purge's progress: anyone with tenant:read, and operators;
- the deletion certificate: anyone holding its id (it names no person).
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from uuid_utils.compat import uuid4

from tenantry_events.pg import Database
from tenantry_http.auth import PUBLIC, principal_of, requires
from tenantry_http.problems import Problem
from tenantry_tenancy.api import found
from tenantry_tenancy.documents import DocumentSigner
from tenantry_tenancy.domain import DomainError, Tenant
from tenantry_tenancy.lifecycle import request_purge
from tenantry_tenancy.purges import PurgeStore, PurgeView
from tenantry_tenancy.store import PlanStore, TenantRepository, TenantRow

Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class StartOffboarding(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Reason
    # The owner types the tenant's slug, as GitHub asks for a repository's name.
    confirm_slug: Annotated[str, msgspec.Meta(max_length=63)] | None = None
    # Operators only: when the purge is due instead of the plan's grace period.
    purge_at: datetime | None = None


class EarlyPurge(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Reason


class OffboardingView(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    status: str
    previous_status: str
    started_at: datetime
    purge_at: datetime
    # Where the signed deletion certificate will be once the purge is done.
    certificate_url: str


def _refused(exc: DomainError, tenant: Tenant) -> Problem:
    return Problem(
        exc.status,
        exc.slug,
        "This transition is not allowed",
        str(exc),
        status_now=tenant.status,
    )


def _view(tenant: Tenant) -> OffboardingView:
    off = tenant.offboarding
    if off is None:
        raise Problem(404, "not-found", "Not found", "The tenant is not offboarding")
    return OffboardingView(
        tenant_id=tenant.tenant_id,
        status=tenant.status,
        previous_status=off.previous_status,
        started_at=off.started_at,
        purge_at=off.purge_at,
        certificate_url=f"/v1/deletion-certificates/{off.certificate_id}",
    )


# Offboarding changes who gets in everywhere: never shed under load.
CRITICAL = {"priority": "critical"}
OWNER_OR_OPERATOR = requires(roles=("owner",), scopes=("tenant:write",), verified_email=True)
EVERY_STATE_BUT_PURGED = ("active", "suspended", "offboarding", "purging")


class OffboardingController(Controller):
    path = "/tenants/{tenant_id:uuid}"
    tags = ["tenant lifecycle"]

    @post(
        "/offboarding",
        status_code=200,
        opt={**OWNER_OR_OPERATOR, **CRITICAL},
        summary="Start offboarding: a grace period, then every service erases the tenant",
    )
    async def start(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[StartOffboarding],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
        plan_store: NamedDependency[PlanStore],
    ) -> OffboardingView:
        """The tenant enters `offboarding`: its admins may still sign in, read and export
        until `purge_at` (now + the plan's `offboarding_grace_days`); everything else is
        refused in every service. Emits tenant.offboarding_started."""
        principal = principal_of(request)
        if data.purge_at is not None and not principal.is_operator:
            raise Problem(403, "forbidden", "Only an operator may set purge_at")
        async with db.transaction(tenant_id=tenant_id) as tx:
            tenant = found(await tenant_repository.load(tx, tenant_id))
            if not principal.is_operator and data.confirm_slug != tenant.state.slug:
                raise Problem(
                    400,
                    "confirmation-required",
                    "Confirm with the tenant's slug",
                    "confirm_slug must be the tenant's slug",
                )
            limits = found(await plan_store.view(tx, tenant_id)).limits
            purge_at = data.purge_at.astimezone(UTC) if data.purge_at else None
            now = datetime.now(UTC)
            try:
                change = tenant.start_offboarding(
                    now=now,
                    grace=timedelta(days=limits.offboarding_grace_days),
                    certificate_id=uuid4(),
                    reason=data.reason,
                    by=f"{principal.kind}:{principal.subject}",
                    purge_at=purge_at,
                )
            except DomainError as exc:
                raise _refused(exc, tenant) from exc
            await tenant_repository.record(tx, tenant, change, occurred_at=now)
            return _view(found(await tenant_repository.load(tx, tenant_id)))

    @get(
        "/offboarding",
        opt={**requires(scopes=("tenant:read",)), "tenant_states": EVERY_STATE_BUT_PURGED},
        summary="The tenant's offboarding: when it started and when the purge is due",
    )
    async def read(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
    ) -> OffboardingView:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return _view(found(await tenant_repository.load(tx, tenant_id)))

    @delete(
        "/offboarding",
        status_code=200,
        # The guard reads tenancy's projection, which may not have heard of the offboarding
        # yet: it admits active too, and the rules below refuse what is not offboarding.
        opt={**OWNER_OR_OPERATOR, **CRITICAL, "tenant_states": ("active", "offboarding")},
        summary="Cancel offboarding during the grace period (the previous state returns)",
    )
    async def cancel(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
        reason: FromQuery[Annotated[str, msgspec.Meta(min_length=1, max_length=500)]] = (
            "offboarding cancelled"
        ),
    ) -> TenantRow:
        """Emits tenant.offboarding_cancelled; the audit trail records who and why."""
        principal = principal_of(request)
        async with db.transaction(tenant_id=tenant_id) as tx:
            tenant = found(await tenant_repository.load(tx, tenant_id))
            try:
                change = tenant.cancel_offboarding(
                    reason=reason, by=f"{principal.kind}:{principal.subject}"
                )
            except DomainError as exc:
                raise _refused(exc, tenant) from exc
            return await tenant_repository.record(tx, tenant, change)

    @post(
        "/purge",
        status_code=202,
        opt={**requires(operator_only=True), **CRITICAL},
        summary="Purge an offboarding tenant now, before its grace period ends (operators)",
    )
    async def purge_now(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[EarlyPurge],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
        purge_store: NamedDependency[PurgeStore],
    ) -> PurgeView:
        """Starts the purge saga at once (the reason is kept in the tenant's audit trail
        until the purge deletes it; the certificate says the purge was early)."""
        by = f"operator:{principal_of(request).subject}"
        async with db.transaction(tenant_id=tenant_id) as tx:
            tenant = found(await tenant_repository.load(tx, tenant_id))
            try:
                await request_purge(
                    tx,
                    tenant_repository,
                    purge_store,
                    tenant,
                    now=datetime.now(UTC),
                    reason=data.reason,
                    by=by,
                    early=True,
                )
            except DomainError as exc:
                raise _refused(exc, tenant) from exc
            return found(await purge_store.view(tx, tenant_id))

    @get(
        "/purge",
        opt=requires(operator_only=True),
        summary="The purge's progress: which services have reported, and the certificate",
    )
    async def purge_progress(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        purge_store: NamedDependency[PurgeStore],
    ) -> PurgeView:
        async with db.transaction(platform=True) as tx:
            return found(await purge_store.view(tx, tenant_id))


@get(
    "/deletion-certificates/{certificate_id:uuid}",
    opt={"auth": PUBLIC},
    tags=["tenant lifecycle"],
    summary="A signed deletion certificate (JSON, or a page for people)",
)
async def deletion_certificate(
    request: Request[Any, Any, Any],
    certificate_id: FromPath[UUID],
    db: NamedDependency[Database],
    purge_store: NamedDependency[PurgeStore],
) -> Response[Any]:
    """`certificate`: the claims; `jws`: the same claims signed (alg Ed25519) with the region's
    document key, verifiable with /.well-known/document-jwks.json. With `Accept: text/html`, a page
    to print."""
    async with db.transaction(platform=True) as tx:
        found_certificate = await purge_store.certificate(tx, certificate_id)
    if found_certificate is None:
        raise Problem(404, "not-found", "Not found", "No such certificate (yet)")
    certificate, jws = found_certificate
    if "text/html" in request.headers.get("accept", ""):
        return Response(_page(certificate), media_type="text/html")
    return Response(
        {"certificate": certificate, "jws": jws, "jwks_url": "/.well-known/document-jwks.json"}
    )


def _page(certificate: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{service['rows']}</td>"
        f"<td>{service['redis_keys']}</td>"
        f"<td>{'yes' if service['data_key_destroyed'] else 'no'}</td>"
        f"<td>{html.escape(service['completed_at'])}</td></tr>"
        for name, service in certificate["services"].items()
    )
    e = html.escape
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Deletion certificate {e(certificate["jti"])}</title>
<style>body{{font-family:sans-serif;max-width:48rem;margin:2rem auto}}
td,th{{border:1px solid #ccc;padding:.3rem .6rem}}table{{border-collapse:collapse}}</style>
</head><body>
<h1>Deletion certificate</h1>
<p>{e(certificate["statement"])}</p>
<dl>
<dt>Certificate</dt><dd>{e(certificate["jti"])}</dd>
<dt>Tenant</dt><dd>{e(certificate["sub"])}</dd>
<dt>Region</dt><dd>{e(certificate["region"])}</dd>
<dt>Offboarding started</dt><dd>{e(str(certificate["offboarding_started_at"]))}</dd>
<dt>Purge requested</dt><dd>{e(certificate["purge_requested_at"])}</dd>
<dt>Purged</dt><dd>{e(certificate["purged_at"])}</dd>
<dt>Purged before the grace period ended</dt><dd>{"yes" if certificate["early"] else "no"}</dd>
<dt>Records deleted</dt><dd>{certificate["rows_deleted"]}</dd>
</dl>
<table><tr><th>Service</th><th>Rows</th><th>Cache keys</th><th>Data key destroyed</th>
<th>Completed</th></tr>{rows}</table>
<p>The machine-readable certificate, signed with this region's key, is at this address
with <code>Accept: application/json</code>; verify its <code>jws</code> with
<a href="/.well-known/document-jwks.json">the region's keys</a>.</p>
<pre>{e(json.dumps(certificate, indent=2))}</pre>
</body></html>"""


@get(
    "/.well-known/document-jwks.json",
    opt={"auth": PUBLIC},
    tags=["tenant lifecycle"],
    summary="The region's document keys (verify deletion certificates and export manifests)",
)
async def document_jwks(document_signer: NamedDependency[DocumentSigner]) -> dict[str, Any]:
    return await document_signer.jwks()
