"""HTTP edge of tenancy (under /v1).

Routes receive the database and the stores by name, typed (`db`, `tenant_repository`,
`plan_store`: app.py provides them)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from uuid_utils.compat import uuid4

from tenantry_events.payloads.tenancy import Limits
from tenantry_events.pg import Database
from tenantry_http.auth import principal_of, requires
from tenantry_http.pagination import Page, clamp_limit, decode_cursor, page_of
from tenantry_http.problems import Problem
from tenantry_regions.directory import DirectoryUnavailable
from tenantry_regions.regions import UnknownRegion
from tenantry_regions.routing import wrong_region
from tenantry_service.residency import claim_or_refuse, directory_of
from tenantry_service.runtime import Runtime
from tenantry_tenancy.domain import (
    DEFAULT_PLAN,
    DomainError,
    InvalidOverride,
    Tenant,
    TenantChange,
    downgrade_blockers,
    effective_limits,
)
from tenantry_tenancy.purges import PurgeStore
from tenantry_tenancy.settings import TenancySettings
from tenantry_tenancy.store import (
    LimitsView,
    PlanRow,
    PlanStore,
    SlugTaken,
    TenantRepository,
    TenantRow,
    Usage,
    usage_of,
)
from tenantry_tenancy.store import Transition as TenantTransition


class CreateTenant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    slug: Annotated[str, msgspec.Meta(min_length=1, max_length=63)]
    plan: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = DEFAULT_PLAN
    home_region: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    # The first owner: identity creates the account and mails the invitation.
    owner_email: (
        Annotated[str, msgspec.Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)] | None
    ) = None


T = TypeVar("T")


def _slug_taken(slug: str) -> Problem:
    return Problem(
        409, "slug-taken", "This slug is taken", f"a tenant with slug {slug!r} already exists"
    )


def found(value: T | None) -> T:
    """What was read for the tenant in the path, or the 404 for an unknown tenant."""
    if value is None:
        raise Problem(404, "not-found", "Not found", "No such tenant")
    return value


class TenantsController(Controller):
    path = "/tenants"
    tags = ["tenants"]

    @post("/", status_code=201, opt=requires(operator_only=True), summary="Create a tenant")
    async def create_tenant(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[CreateTenant],
        settings: NamedDependency[TenancySettings],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
        plan_store: NamedDependency[PlanStore],
        purge_store: NamedDependency[PurgeStore],
    ) -> TenantRow:
        """Creates a tenant (active, on its plan, in its home region) and emits tenant.created.
        Honours Idempotency-Key. The slug is claimed in the global directory first, so it is
        unique across every region (409 when taken anywhere, 503 when the directory cannot
        be asked); a purged tenant's slug stays taken during its quarantine. A tenant is
        created only in its home region: another region's create is sent there (307)."""
        runtime: Runtime = request.app.state.runtime
        home_region = data.home_region or settings.region
        try:
            runtime.regions.require(home_region)
        except UnknownRegion as exc:
            raise Problem(422, "unknown-region", "No such region", str(exc)) from None
        if not runtime.regions.is_own(home_region):
            raise wrong_region(runtime.regions, runtime.service, request, home_region)
        tenant_id = uuid4()
        try:
            created = Tenant.create(
                tenant_id,
                name=data.name,
                slug=data.slug,
                plan=data.plan,
                home_region=home_region,
                owner_email=data.owner_email,
                created_by=f"operator:{principal_of(request).subject}",
            )
        except DomainError as exc:
            raise Problem(exc.status, exc.slug, "The tenant is not valid", str(exc)) from exc
        directory = directory_of(runtime)
        await claim_or_refuse(
            runtime,
            "slug",
            data.slug,
            tenant_id,
            taken=_slug_taken(data.slug),
            what="Creating a tenant",
        )
        try:
            async with db.transaction(platform=True) as tx:
                if await plan_store.plan(tx, data.plan) is None:
                    raise Problem(400, "unknown-plan", "No such plan", f"no plan {data.plan!r}")
                if await purge_store.quarantined(tx, data.slug, datetime.now(UTC)):
                    raise SlugTaken(data.slug)
                row = await tenant_repository.add(tx, tenant_id, created)
                await plan_store.publish(tx, tenant_id)
                return row
        except BaseException as exc:
            # Not created: the slug is given back (if this fails too, the claim stays
            # with a tenant that does not exist; docs/residency.md, "Failure modes").
            with contextlib.suppress(DirectoryUnavailable):
                await directory.release("slug", data.slug, tenant_id)
            if isinstance(exc, SlugTaken):
                raise _slug_taken(data.slug) from None
            raise

    @get("/{tenant_id:uuid}", opt=requires(scopes=("tenant:read",)), summary="Read a tenant")
    async def get_tenant(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
    ) -> TenantRow:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return found(await tenant_repository.get(tx, tenant_id))

    @get("/", opt=requires(operator_only=True), summary="List tenants")
    async def list_tenants(
        self,
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
        cursor: FromQuery[str | None] = None,
        limit: FromQuery[int | None] = None,
    ) -> Page[TenantRow]:
        size = clamp_limit(limit)
        key = decode_cursor(cursor)
        after: tuple[datetime, UUID] | None = None
        if key is not None:
            try:
                after = (datetime.fromisoformat(key[0]), UUID(key[1]))
            except (ValueError, IndexError, TypeError):
                raise Problem(400, "invalid-cursor", "The cursor is not valid") from None
        async with db.transaction(platform=True) as tx:
            rows = await tenant_repository.list(tx, after=after, limit=size + 1)
        return page_of(rows, size, lambda r: (r.created_at.isoformat(), str(r.tenant_id)))


class Transition(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


# Suspending and reactivating change who gets in everywhere: operators only, and critical,
# so admission control never sheds them under load.
OPERATOR_ACCESS_CHANGE = {**requires(operator_only=True), "priority": "critical"}


class LifecycleCommand(Protocol):
    """Tenant.suspend or Tenant.reactivate."""

    def __call__(self, tenant: Tenant, /, *, reason: str, by: str) -> TenantChange: ...


class LifecycleController(Controller):
    """Suspension and reactivation: operator actions, so they pass the suspended check."""

    path = "/tenants/{tenant_id:uuid}"
    tags = ["tenant lifecycle"]

    async def _transition(
        self,
        request: Request[Any, Any, Any],
        db: Database,
        tenant_repository: TenantRepository,
        tenant_id: UUID,
        reason: str,
        command: LifecycleCommand,
    ) -> TenantRow:
        by = f"operator:{principal_of(request).subject}"
        async with db.transaction(tenant_id=tenant_id) as tx:
            tenant = found(await tenant_repository.load(tx, tenant_id))
            try:
                change = command(tenant, reason=reason, by=by)
            except DomainError as exc:
                raise Problem(
                    exc.status,
                    exc.slug,
                    "This transition is not allowed",
                    str(exc),
                    status_now=tenant.state.status,
                ) from exc
            return await tenant_repository.record(tx, tenant, change)

    @post(
        "/suspend",
        status_code=200,
        opt=OPERATOR_ACCESS_CHANGE,
        summary="Suspend a tenant (every service refuses its requests)",
    )
    async def suspend(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[Transition],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
    ) -> TenantRow:
        return await self._transition(
            request, db, tenant_repository, tenant_id, data.reason, Tenant.suspend
        )

    @post("/reactivate", status_code=200, opt=OPERATOR_ACCESS_CHANGE, summary="Lift a suspension")
    async def reactivate(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[Transition],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
    ) -> TenantRow:
        return await self._transition(
            request, db, tenant_repository, tenant_id, data.reason, Tenant.reactivate
        )

    @get("/history", opt=requires(scopes=("tenant:read",)), summary="The tenant's audit trail")
    async def history(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
    ) -> list[TenantTransition]:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return await tenant_repository.history(tx, tenant_id)


@get("/plans", tags=["plans"], summary="Every plan and its limits")
async def list_plans(
    db: NamedDependency[Database], plan_store: NamedDependency[PlanStore]
) -> list[PlanRow]:
    async with db.transaction() as tx:
        return await plan_store.plans(tx)


class PlanUpdated(msgspec.Struct, kw_only=True):
    plan: PlanRow
    tenants_updated: int


@put(
    "/plans/{plan_id:str}",
    opt=requires(operator_only=True),
    tags=["plans"],
    summary="Change a plan's limits (operators); every tenant on it follows",
)
async def update_plan(
    plan_id: FromPath[str],
    data: JSONBody[Limits],
    db: NamedDependency[Database],
    plan_store: NamedDependency[PlanStore],
) -> PlanUpdated:
    """Each tenant on the plan gets a tenant.limits_changed with its new effective limits,
    in the same transaction. (Tenants over a lowered quantity keep what they have; only
    new creations are refused.)"""
    async with db.transaction(platform=True) as tx:
        plan = await plan_store.plan(tx, plan_id)
        if plan is None:
            raise Problem(404, "not-found", "Not found", f"no plan {plan_id!r}")
        try:
            effective_limits(data, msgspec.structs.asdict(data))  # checks every kind
        except InvalidOverride as exc:
            raise Problem(400, "invalid-plan", "The plan is not valid", str(exc)) from None
        tenants = await plan_store.update_plan(tx, plan_id, data)
        for tenant_id in tenants:
            await plan_store.publish(tx, tenant_id)
        updated = await plan_store.plan(tx, plan_id)
    assert updated is not None
    return PlanUpdated(plan=updated, tenants_updated=len(tenants))


class LimitsController(Controller):
    path = "/tenants/{tenant_id:uuid}"
    tags = ["plans"]

    @get(
        "/limits",
        opt=requires(scopes=("tenant:read",)),
        summary="The tenant's plan, effective limits and overrides",
    )
    async def limits(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        plan_store: NamedDependency[PlanStore],
    ) -> LimitsView:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return found(await plan_store.view(tx, tenant_id))

    @post(
        "/limit-overrides",
        status_code=200,
        opt=requires(operator_only=True),
        summary="Override some of the tenant's limits (operators)",
    )
    async def set_overrides(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[dict[str, Any]],
        db: NamedDependency[Database],
        plan_store: NamedDependency[PlanStore],
    ) -> LimitsView:
        async with db.transaction(tenant_id=tenant_id) as tx:
            view = found(await plan_store.view(tx, tenant_id))
            plan = await plan_store.plan(tx, view.plan)
            assert plan is not None
            try:
                effective_limits(plan.limits, {**view.overrides, **data})
            except InvalidOverride as exc:
                raise Problem(
                    400, "invalid-override", "The override is not valid", str(exc)
                ) from None
            await plan_store.set_overrides(
                tx, tenant_id, data, f"operator:{principal_of(request).subject}"
            )
            return await plan_store.publish(tx, tenant_id)

    @delete(
        "/limit-overrides/{limit_name:str}",
        status_code=200,
        opt=requires(operator_only=True),
        summary="Remove an override",
    )
    async def clear_override(
        self,
        tenant_id: FromPath[UUID],
        limit_name: FromPath[str],
        db: NamedDependency[Database],
        plan_store: NamedDependency[PlanStore],
    ) -> LimitsView:
        async with db.transaction(tenant_id=tenant_id) as tx:
            if not await plan_store.clear_override(tx, tenant_id, limit_name):
                raise Problem(404, "not-found", "Not found", "No such override")
            return await plan_store.publish(tx, tenant_id)


class PlanChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    plan: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class PlanOptions(msgspec.Struct, kw_only=True):
    plan: str
    usage: Usage
    limits: Limits
    options: list[PlanOption]


class PlanOption(msgspec.Struct, kw_only=True):
    plan_id: str
    direction: str  # upgrade | downgrade
    allowed: bool
    blockers: list[dict[str, Any]]


class PlanController(Controller):
    """Self-service plan changes. Upgrades and downgrades both apply at once (Tenantry has
    no billing period of its own; a billing system calls this when a period ends). A
    downgrade that current usage would break is refused with the limits in the way."""

    path = "/tenants/{tenant_id:uuid}/plan"
    tags = ["plans"]

    @get(
        "/",
        opt=requires(scopes=("tenant:read",)),
        summary="Usage against each limit and the plans the tenant could move to",
    )
    async def options(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        plan_store: NamedDependency[PlanStore],
    ) -> PlanOptions:
        async with db.transaction(tenant_id=tenant_id) as tx:
            view = found(await plan_store.view(tx, tenant_id))
            usage = await usage_of(tx, tenant_id)
            plans = await plan_store.plans(tx)
        rank = {p.plan_id: p.rank for p in plans}
        counts = msgspec.structs.asdict(usage)
        options = []
        for p in plans:
            if p.plan_id == view.plan:
                continue
            blockers = downgrade_blockers(effective_limits(p.limits, view.overrides), counts)
            options.append(
                PlanOption(
                    plan_id=p.plan_id,
                    direction="upgrade" if p.rank > rank[view.plan] else "downgrade",
                    allowed=not blockers,
                    blockers=blockers,
                )
            )
        return PlanOptions(plan=view.plan, usage=usage, limits=view.limits, options=options)

    @post(
        "/",
        status_code=200,
        opt=requires(roles=("owner",), scopes=("tenant:write",), verified_email=True),
        summary="Change plan (the tenant owner, or an operator)",
    )
    async def change(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[PlanChange],
        db: NamedDependency[Database],
        tenant_repository: NamedDependency[TenantRepository],
        plan_store: NamedDependency[PlanStore],
    ) -> TenantRow:
        principal = principal_of(request)
        async with db.transaction(tenant_id=tenant_id) as tx:
            tenant = found(await tenant_repository.load(tx, tenant_id))
            target = await plan_store.plan(tx, data.plan)
            if target is None:
                raise Problem(400, "unknown-plan", "No such plan", f"no plan {data.plan!r}")
            overrides = await plan_store.overrides(tx, tenant_id)
            usage = msgspec.structs.asdict(await usage_of(tx, tenant_id))
            blockers = downgrade_blockers(effective_limits(target.limits, overrides), usage)
            if blockers:
                raise Problem(
                    409,
                    "downgrade-blocked",
                    "Current usage does not fit that plan",
                    f"reduce usage first: {', '.join(b['limit'] for b in blockers)}",
                    blockers=blockers,
                )
            try:
                change = tenant.change_plan(data.plan, by=f"{principal.kind}:{principal.subject}")
            except DomainError as exc:
                raise Problem(exc.status, exc.slug, "The plan cannot change", str(exc)) from exc
            row = await tenant_repository.record(tx, tenant, change)
            await plan_store.publish(tx, tenant_id)
            return row
