"""HTTP edge of erasing one person (under /v1; erasures.py, docs/lifecycle.md "Erasing one
person").

Who: operators, and the tenant's owners and admins (an API key needs tenant:write), while
the tenant is active or offboarding (a suspended tenant is reactivated first; a purge
erases everyone anyway). The person is one account of the tenant, named by its id (which
is also their SCIM user's id).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from uuid_utils.compat import uuid7

from tenantry_events.payloads.tenancy import SubjectErasureRequested
from tenantry_events.pg import Database
from tenantry_http.auth import principal_of, requires
from tenantry_http.problems import Problem
from tenantry_tenancy.api import found
from tenantry_tenancy.erasures import ErasureStore, ErasureView
from tenantry_tenancy.store import TenantRepository


class RequestErasure(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    account_id: UUID
    # Kept with the erasure for the audit: say why, never who (no name, no email).
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


ERASERS = requires(roles=("owner", "admin"), scopes=("tenant:write",), verified_email=True)
ERASURE_STATES = {"tenant_states": ("active", "offboarding")}


def _not_found(what: str) -> Problem:
    return Problem(404, "not-found", "Not found", what)


class ErasuresController(Controller):
    path = "/tenants/{tenant_id:uuid}/erasures"
    tags = ["data lifecycle"]

    @post(
        "/",
        status_code=202,
        opt={**ERASERS, **ERASURE_STATES},
        summary="Erase one person everywhere (GDPR Art. 17)",
    )
    async def request_erasure(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[RequestErasure],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
        erasure_store: NamedDependency[ErasureStore],
    ) -> ErasureView:
        """Destroys the person's subject key at once (what events said of them reads as
        "[erased]" from then on) and asks every service to delete or anonymize its rows of
        them; follow it with GET until `completed`. Asking again for the same person
        answers with the erasure already under way."""
        principal = principal_of(request)
        async with db.transaction(tenant_id=tenant_id) as tx:
            tenant = found(await tenant_repository.load(tx, tenant_id))
            if tenant.status not in ("active", "offboarding"):
                raise Problem(
                    409,
                    "tenant-state",
                    "The tenant cannot erase anyone now",
                    f"the tenant is {tenant.status}: erasure needs it active or offboarding",
                )
            # Every service's projection of accounts knows the tenant's accounts by id.
            known = await tx.fetchval(
                "SELECT true FROM account_projection WHERE tenant_id = $1 AND account_id = $2",
                tenant_id,
                data.account_id,
            )
            existing = await erasure_store.of_subject(tx, tenant_id, data.account_id)
            if existing is not None:
                return existing
            if not known:
                raise _not_found("No such account in this tenant")
            erasure = SubjectErasureRequested(
                erasure_id=uuid7(),
                subject_id=data.account_id,
                by=f"{principal.kind}:{principal.subject}",
            )
            now = datetime.now(UTC)
            if not await erasure_store.open(tx, tenant_id, erasure, reason=data.reason, now=now):
                # A concurrent request for the same person won: its erasure stands.
                return found(await erasure_store.of_subject(tx, tenant_id, data.account_id))
            return found(await erasure_store.view(tx, tenant_id, erasure.erasure_id))

    @get(
        "/{erasure_id:uuid}",
        opt={**ERASERS, **ERASURE_STATES},
        summary="An erasure's progress: which services have erased the person",
    )
    async def read_erasure(
        self,
        tenant_id: FromPath[UUID],
        erasure_id: FromPath[UUID],
        db: NamedDependency[Database],
        erasure_store: NamedDependency[ErasureStore],
    ) -> ErasureView:
        async with db.transaction(tenant_id=tenant_id) as tx:
            view = await erasure_store.view(tx, tenant_id, erasure_id)
        if view is None:
            raise _not_found("No such erasure")
        return view
