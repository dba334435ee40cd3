"""HTTP edge of SSO for tenant admins, under /v1/tenants/{id}/sso (plans with the `sso`
feature only): connections (SAML or OIDC) and the email domains the tenant claims and
verifies. The login flow's routes are in login_api.py."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, Request, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, Parameter

from tenantry_events.pg import Database
from tenantry_guardrails.plan_limits import guard_feature
from tenantry_http.auth import principal_of, requires
from tenantry_http.problems import Problem
from tenantry_identity.domain import ADMIN_ROLES
from tenantry_identity.sso import saml
from tenantry_identity.sso.connections import (
    ConnectionChange,
    NewConnection,
    SsoConnections,
    invalid,
)
from tenantry_identity.sso.directory_facts import register_connection, unregister_connection
from tenantry_identity.sso.email_domains import (
    DomainRefused,
    challenge_name,
    challenge_value,
    is_consumer_domain,
    new_challenge_token,
    normalise_domain,
    record_matches,
)
from tenantry_identity.sso.store import (
    ConnectionRow,
    DomainRow,
    DomainTaken,
    FailureRow,
    SsoStore,
)
from tenantry_identity.sso.txt_lookup import DomainLookupFailed, TxtResolver
from tenantry_service.residency import claim_or_refuse, release_or_refuse

MANAGE = requires(roles=ADMIN_ROLES, scopes=("sso:write",), verified_email=True)
READ = requires(roles=ADMIN_ROLES, scopes=("sso:read",))


# ---------------------------------------------------------------------------- connections


class ConnectionView(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: UUID
    kind: str
    name: str
    enabled: bool
    allow_idp_initiated: bool
    default_redirect_uri: str | None
    restrict_email_domains: bool
    attribute_mapping: dict[str, Any]
    saml: dict[str, Any] | None
    oidc: dict[str, Any] | None
    metadata_fetched_at: str | None
    metadata_error: str | None
    version: int
    created_at: str
    updated_at: str


def view(row: ConnectionRow, connections: SsoConnections) -> ConnectionView:
    config = dict(row.config)
    saml_view = oidc_view = None
    if row.kind == "saml":
        urls = saml.sp_urls(connections.public_url, str(row.connection_id))
        saml_view = {
            "idp_entity_id": config.get("idp_entity_id"),
            "idp_sso_url": config.get("idp_sso_url"),
            "idp_slo_url": config.get("idp_slo_url"),
            "idp_certificates": [
                {"sha256": saml.fingerprint(c)} for c in config.get("idp_certs", [])
            ],
            "metadata_url": config.get("metadata_url"),
            "request_binding": config.get("request_binding", "redirect"),
            "want_assertions_signed": config.get("want_assertions_signed", True),
            "want_response_signed": config.get("want_response_signed", False),
            "want_assertions_encrypted": config.get("want_assertions_encrypted", False),
            "sp_entity_id": urls.entity_id,
            "sp_acs_url": urls.acs,
            "sp_slo_url": urls.slo,
            "sp_metadata_url": urls.entity_id,
            "sp_certificate": config.get("sp_cert"),
        }
    else:
        oidc_view = {
            "issuer": config.get("issuer"),
            "client_id": config.get("client_id"),
            "scopes": config.get("scopes"),
            "token_endpoint_auth_method": config.get("token_endpoint_auth_method"),
            "allowed_algorithms": config.get("allowed_algorithms"),
            "redirect_uri": connections.oidc_callback,  # register this at the IdP
        }
    return ConnectionView(
        id=row.connection_id,
        tenant_id=row.tenant_id,
        kind=row.kind,
        name=row.name,
        enabled=row.enabled,
        allow_idp_initiated=row.allow_idp_initiated,
        default_redirect_uri=config.get("default_redirect_uri"),
        restrict_email_domains=bool(config.get("restrict_email_domains", False)),
        attribute_mapping=row.attribute_mapping,
        saml=saml_view,
        oidc=oidc_view,
        metadata_fetched_at=row.metadata_fetched_at.isoformat()
        if row.metadata_fetched_at
        else None,
        metadata_error=row.metadata_error,
        version=row.version,
        created_at=row.created_at.isoformat(),
        updated_at=row.updated_at.isoformat(),
    )


def actor(request: Request[Any, Any, Any]) -> str:
    principal = principal_of(request)
    return f"{principal.kind}:{principal.subject}"


class SsoConnectionsController(Controller):
    path = "/tenants/{tenant_id:uuid}/sso/connections"
    tags = ["sso"]

    @post("/", status_code=201, opt=MANAGE, summary="Create an SSO connection (SAML or OIDC)")
    async def create(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[NewConnection],
        sso_connections: NamedDependency[SsoConnections],
    ) -> ConnectionView:
        row = await sso_connections.create(tenant_id, data, actor=actor(request))
        await register_connection(request.app.state.runtime, tenant_id, row.connection_id)
        return view(row, sso_connections)

    @get("/", opt=READ, summary="List the tenant's SSO connections")
    async def list_connections(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        sso_store: NamedDependency[SsoStore],
        sso_connections: NamedDependency[SsoConnections],
    ) -> list[ConnectionView]:
        async with db.transaction(tenant_id=tenant_id) as tx:
            rows = await sso_store.list_connections(tx, tenant_id)
        return [view(r, sso_connections) for r in rows]

    @get("/{connection_id:uuid}", opt=READ, summary="Read an SSO connection")
    async def read(
        self,
        tenant_id: FromPath[UUID],
        connection_id: FromPath[UUID],
        sso_connections: NamedDependency[SsoConnections],
    ) -> ConnectionView:
        return view(await sso_connections.of_tenant(tenant_id, connection_id), sso_connections)

    @patch("/{connection_id:uuid}", opt=MANAGE, summary="Change an SSO connection")
    async def change(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        connection_id: FromPath[UUID],
        data: JSONBody[ConnectionChange],
        sso_connections: NamedDependency[SsoConnections],
    ) -> ConnectionView:
        row = await sso_connections.change(tenant_id, connection_id, data, actor=actor(request))
        return view(row, sso_connections)

    @delete(
        "/{connection_id:uuid}", status_code=204, opt=MANAGE, summary="Delete an SSO connection"
    )
    async def remove(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        connection_id: FromPath[UUID],
        sso_connections: NamedDependency[SsoConnections],
    ) -> None:
        await sso_connections.delete(tenant_id, connection_id, actor=actor(request))
        await unregister_connection(request.app.state.runtime, tenant_id, connection_id)

    @get(
        "/{connection_id:uuid}/login-failures",
        opt=READ,
        summary="Why SSO logins failed (newest first)",
    )
    async def failures(
        self,
        tenant_id: FromPath[UUID],
        connection_id: FromPath[UUID],
        db: NamedDependency[Database],
        sso_store: NamedDependency[SsoStore],
        sso_connections: NamedDependency[SsoConnections],
        before: Annotated[UUID | None, Parameter(query="before")] = None,
        limit: Annotated[int, Parameter(query="limit", ge=1, le=200)] = 50,
    ) -> list[FailureRow]:
        await sso_connections.of_tenant(tenant_id, connection_id)
        async with db.transaction(tenant_id=tenant_id) as tx:
            return await sso_store.list_failures(tx, connection_id, before=before, limit=limit)

    @post(
        "/{connection_id:uuid}/metadata/refresh",
        status_code=200,
        opt=MANAGE,
        summary="Fetch the IdP metadata URL now",
    )
    async def refresh(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        connection_id: FromPath[UUID],
        sso_connections: NamedDependency[SsoConnections],
    ) -> ConnectionView:
        row = await sso_connections.refresh_metadata(tenant_id, connection_id, actor=actor(request))
        return view(row, sso_connections)


# ---------------------------------------------------------------------------- domains


class NewDomain(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    domain: str
    connection_id: UUID | None = None  # the connection its users sign in with


class DomainRoute(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    connection_id: UUID | None


class DomainView(msgspec.Struct, kw_only=True):
    domain: str
    connection_id: UUID | None
    verified: bool
    verified_at: str | None
    txt_record_name: str
    txt_record_value: str
    last_checked_at: str | None
    last_error: str | None


def domain_view(row: DomainRow) -> DomainView:
    return DomainView(
        domain=row.domain,
        connection_id=row.connection_id,
        verified=row.verified_at is not None,
        verified_at=row.verified_at.isoformat() if row.verified_at else None,
        txt_record_name=challenge_name(row.domain),
        txt_record_value=challenge_value(row.challenge_token),
        last_checked_at=row.last_checked_at.isoformat() if row.last_checked_at else None,
        last_error=row.last_error,
    )


async def check_own_connection(
    store: SsoStore, tx: asyncpg.Connection, tenant_id: UUID, connection_id: UUID | None
) -> None:
    """A domain may only point at a connection of its own tenant (None: no connection)."""
    if connection_id is None:
        return
    owner = await store.get_connection(tx, connection_id)
    if owner is None or owner.tenant_id != tenant_id:
        raise invalid("connection_id names no connection of this tenant")


def domain_problem(exc: DomainRefused) -> Problem:
    return Problem(422, exc.code, "The domain cannot be claimed", str(exc))


def _domain_taken() -> Problem:
    return Problem(409, "domain-taken", "Another organisation verified this domain first")


class SsoDomainsController(Controller):
    path = "/tenants/{tenant_id:uuid}/sso/domains"
    tags = ["sso"]

    @post("/", status_code=201, opt=MANAGE, summary="Claim an email domain (DNS TXT challenge)")
    async def claim(
        self,
        tenant_id: FromPath[UUID],
        data: JSONBody[NewDomain],
        db: NamedDependency[Database],
        sso_store: NamedDependency[SsoStore],
    ) -> DomainView:
        try:
            domain = normalise_domain(data.domain)
        except DomainRefused as exc:
            raise domain_problem(exc) from None
        if is_consumer_domain(domain):
            raise Problem(
                422,
                "consumer-domain",
                "The domain cannot be claimed",
                f"{domain} is a public mail provider; claim your organisation's own domain",
            )
        async with db.transaction(tenant_id=tenant_id) as tx:
            await guard_feature(tx, tenant_id, "sso")
            await check_own_connection(sso_store, tx, tenant_id, data.connection_id)
            row = await sso_store.add_domain(
                tx, tenant_id, domain, new_challenge_token(), data.connection_id
            )
        if row is None:
            raise Problem(409, "domain-claimed", "This tenant already claims the domain")
        return domain_view(row)

    @get("/", opt=READ, summary="List the tenant's email domains")
    async def list_domains(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        sso_store: NamedDependency[SsoStore],
    ) -> list[DomainView]:
        async with db.transaction(tenant_id=tenant_id) as tx:
            rows = await sso_store.list_domains(tx, tenant_id)
        return [domain_view(r) for r in rows]

    @post(
        "/{domain:str}/verify",
        status_code=200,
        opt=MANAGE,
        summary="Check the domain's DNS TXT challenge now",
    )
    async def verify(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        domain: FromPath[str],
        db: NamedDependency[Database],
        sso_store: NamedDependency[SsoStore],
        txt_resolver: NamedDependency[TxtResolver],
    ) -> DomainView:
        async with db.transaction(tenant_id=tenant_id) as tx:
            row = await sso_store.get_domain(tx, tenant_id, domain.lower())
        if row is None:
            raise Problem(404, "not-found", "Not found", "This tenant does not claim the domain")
        try:
            records = await txt_resolver.txt(challenge_name(row.domain))
        except DomainLookupFailed as exc:
            async with db.transaction(tenant_id=tenant_id) as tx:
                await sso_store.record_check(
                    tx, tenant_id, row.domain, verified=False, error=f"DNS lookup failed: {exc}"
                )
            raise Problem(
                503,
                "dns-unavailable",
                "DNS did not answer",
                f"looking up {challenge_name(row.domain)} failed ({exc}); try again",
                headers={"Retry-After": "30"},
            ) from None
        found = record_matches(records, row.challenge_token)
        if found:  # the domain becomes the tenant's in every region, or in none
            await claim_or_refuse(
                request.app.state.runtime,
                "domain",
                row.domain,
                tenant_id,
                taken=_domain_taken(),
                what="Verifying a domain",
            )
        error = (
            None
            if found
            else (
                f"no TXT record {challenge_value(row.challenge_token)!r} at "
                f"{challenge_name(row.domain)} (found {len(records)} other record(s))"
            )
        )
        try:
            async with db.transaction(tenant_id=tenant_id) as tx:
                updated = await sso_store.record_check(
                    tx, tenant_id, row.domain, verified=found, error=error
                )
        except DomainTaken:
            # Verified here by another tenant before the directory knew domains: the
            # claim just made is given back.
            with contextlib.suppress(Problem):
                await release_or_refuse(
                    request.app.state.runtime, "domain", row.domain, tenant_id, what="Releasing"
                )
            raise _domain_taken() from None
        return domain_view(updated)

    @patch(
        "/{domain:str}",
        opt=MANAGE,
        summary="Route the domain's logins to a connection (null: the tenant's only one)",
    )
    async def route(
        self,
        tenant_id: FromPath[UUID],
        domain: FromPath[str],
        data: JSONBody[DomainRoute],
        db: NamedDependency[Database],
        sso_store: NamedDependency[SsoStore],
    ) -> DomainView:
        async with db.transaction(tenant_id=tenant_id) as tx:
            await check_own_connection(sso_store, tx, tenant_id, data.connection_id)
            row = await sso_store.set_domain_connection(
                tx, tenant_id, domain.lower(), data.connection_id
            )
        if row is None:
            raise Problem(404, "not-found", "Not found", "This tenant does not claim the domain")
        return domain_view(row)

    @delete("/{domain:str}", status_code=204, opt=MANAGE, summary="Release a claimed domain")
    async def release(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        domain: FromPath[str],
        db: NamedDependency[Database],
        sso_store: NamedDependency[SsoStore],
    ) -> None:
        async with db.transaction(tenant_id=tenant_id) as tx:
            if await sso_store.get_domain(tx, tenant_id, domain.lower()) is None:
                raise Problem(
                    404, "not-found", "Not found", "This tenant does not claim the domain"
                )
        # Released in the directory first: a failure leaves the domain claimed everywhere
        # (retry), never free elsewhere while still routed here.
        runtime = request.app.state.runtime
        await release_or_refuse(
            runtime, "domain", domain.lower(), tenant_id, what="Releasing a domain"
        )
        async with db.transaction(tenant_id=tenant_id) as tx:
            await sso_store.delete_domain(tx, tenant_id, domain.lower())
