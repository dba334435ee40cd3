"""HTTP edge of SSO.

Tenant admins manage connections and domains under /v1/tenants/{id}/sso (plans with the
`sso` feature only). Browsers and IdPs use the public routes under /sso: start a login,
the SAML ACS, SP metadata and SLO, the OIDC callback. The SaaS product's backend trades
the one-time code for the profile and tokens at POST /v1/sso/token (WorkOS style).
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Any, Literal
from urllib.parse import unquote_plus
from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.response import Redirect as RedirectResponse

from tenantry_guardrails.plan_limits import guard_feature
from tenantry_http.api_docs import problems
from tenantry_http.auth import PUBLIC, principal_of, requires
from tenantry_http.problems import Problem
from tenantry_identity.api import TokenPair
from tenantry_identity.domain import ADMIN_ROLES
from tenantry_identity.settings import IdentitySettings
from tenantry_identity.sso import saml
from tenantry_identity.sso.domain import AttributeMapping, LoginRefused
from tenantry_identity.sso.domains import (
    DomainLookupFailed,
    DomainRefused,
    challenge_name,
    challenge_value,
    domain_of_email,
    is_consumer_domain,
    new_challenge_token,
    normalise_domain,
    record_matches,
)
from tenantry_identity.sso.metadata import MetadataFetcher
from tenantry_identity.sso.oidc import OidcConnectionConfig
from tenantry_identity.sso.service import LoginFailed, Redirect, SsoService
from tenantry_identity.sso.store import (
    ConnectionRow,
    DomainRow,
    DomainTaken,
    FailureRow,
    SsoStore,
)
from tenantry_service.runtime import Runtime

MANAGE = requires(roles=ADMIN_ROLES, scopes=("sso:write",), verified_email=True)
READ = requires(roles=ADMIN_ROLES, scopes=("sso:read",))
BROWSER = {"auth": PUBLIC, "priority": "critical", "rate_class": "auth"}


def sso(runtime: Runtime) -> SsoService:
    service = runtime.extras["sso"]
    assert isinstance(service, SsoService)
    return service


def fetcher(runtime: Runtime) -> MetadataFetcher:
    value = runtime.extras["sso_metadata"]
    assert isinstance(value, MetadataFetcher)
    return value


def conf(runtime: Runtime) -> IdentitySettings:
    assert isinstance(runtime.settings, IdentitySettings)
    return runtime.settings


# ---------------------------------------------------------------------------- bodies


# Bounds on what an admin may store (a URL or an identifier past these is no real IdP's).
Url = Annotated[str, msgspec.Meta(max_length=2048)]
Ident = Annotated[str, msgspec.Meta(max_length=1024)]
Pem = Annotated[str, msgspec.Meta(max_length=16_384)]


class SamlInput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Give the IdP as metadata (XML or a URL refreshed on a schedule) or field by field."""

    metadata_xml: Annotated[str, msgspec.Meta(max_length=1_000_000)] | None = None
    metadata_url: Url | None = None
    idp_entity_id: Ident | None = None
    idp_sso_url: Url | None = None
    idp_slo_url: Url | None = None
    idp_certs: Annotated[list[Pem], msgspec.Meta(max_length=10)] | None = None
    request_binding: Literal["redirect", "post"] | None = None
    want_assertions_signed: bool | None = None
    want_response_signed: bool | None = None
    want_assertions_encrypted: bool | None = None


class OidcInput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    issuer: Url | None = None
    client_id: Ident | None = None
    client_secret: Ident | None = None
    scopes: (
        Annotated[list[Annotated[str, msgspec.Meta(max_length=256)]], msgspec.Meta(max_length=50)]
        | None
    ) = None
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post"] | None = None
    # ID token signature algorithms accepted (asymmetric only; none and HS* never).
    allowed_algorithms: Annotated[list[Ident], msgspec.Meta(max_length=20)] | None = None


class NewConnection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: Literal["saml", "oidc"]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    enabled: bool = True
    allow_idp_initiated: bool = False  # SAML only
    default_redirect_uri: Url | None = None  # where IdP-initiated logins land
    restrict_email_domains: bool = False  # only emails in the tenant's verified domains
    attribute_mapping: AttributeMapping | None = None
    saml: SamlInput | None = None
    oidc: OidcInput | None = None


class ConnectionChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    enabled: bool | None = None
    allow_idp_initiated: bool | None = None
    default_redirect_uri: Url | None = None
    restrict_email_domains: bool | None = None
    attribute_mapping: AttributeMapping | None = None
    saml: SamlInput | None = None
    oidc: OidcInput | None = None


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


def view(row: ConnectionRow, service: SsoService) -> ConnectionView:
    config = dict(row.config)
    saml_view = oidc_view = None
    if row.kind == "saml":
        urls = saml.sp_urls(service.public_url, str(row.connection_id))
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
            "redirect_uri": service.oidc_callback,  # register this at the IdP
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


def invalid(detail: str) -> Problem:
    return Problem(422, "invalid-sso-connection", "The SSO connection is not usable", detail)


def check_redirect(runtime: Runtime, uri: str | None) -> None:
    if uri is not None and uri not in conf(runtime).redirect_uris():
        raise invalid(f"{uri} is not one of the product's registered redirect URIs")


async def saml_config(
    runtime: Runtime, given: SamlInput, base: dict[str, Any] | None
) -> dict[str, Any]:
    """The SAML config from the input, over `base` (the current config on a change)."""
    config = dict(base or {})
    if given.metadata_url is not None or given.metadata_xml is not None:
        try:
            if given.metadata_url is not None:
                meta = await fetcher(runtime).fetch(given.metadata_url)
                config["metadata_url"] = given.metadata_url
            else:
                meta = await asyncio.to_thread(saml.parse_idp_metadata, given.metadata_xml or "")
                config.pop("metadata_url", None)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        config.update(saml.config_fields(meta))
    for field in (
        "idp_entity_id",
        "idp_sso_url",
        "idp_slo_url",
        "idp_certs",
        "request_binding",
        "want_assertions_signed",
        "want_response_signed",
        "want_assertions_encrypted",
    ):
        value = getattr(given, field)
        if value is not None:
            config[field] = value
    for needed in ("idp_entity_id", "idp_sso_url", "idp_certs"):
        if not config.get(needed):
            raise invalid(f"saml.{needed} is required (or give saml.metadata_xml / metadata_url)")
    try:
        config["idp_certs"] = [saml.cert_der(c) and c for c in config["idp_certs"]]
    except ValueError as exc:
        raise invalid(f"saml.idp_certs: {exc}") from None
    try:
        for url_field in saml.IDP_URL_FIELDS:
            saml.check_idp_url(f"saml.{url_field}", config.get(url_field))
    except ValueError as exc:
        raise invalid(str(exc)) from None
    return config


async def oidc_config(
    runtime: Runtime, given: OidcInput, base: dict[str, Any] | None
) -> tuple[dict[str, Any], str | None]:
    config = dict(base or {})
    for field in (
        "issuer",
        "client_id",
        "scopes",
        "token_endpoint_auth_method",
        "allowed_algorithms",
    ):
        value = getattr(given, field)
        if value is not None:
            config[field] = value
    for needed in ("issuer", "client_id"):
        if not config.get(needed):
            raise invalid(f"oidc.{needed} is required")
    try:  # the relying party's own rules (openid scope, algorithm allow-list)
        msgspec.convert({**config, "client_secret": ""}, OidcConnectionConfig)
    except msgspec.ValidationError as exc:
        raise invalid(f"oidc: {exc}") from None
    try:
        await sso(runtime).rp.discover(config["issuer"])
    except LoginRefused as refused:
        raise invalid(f"oidc.issuer: {refused.detail}") from None
    return config, given.client_secret


def _settings_fields(data: NewConnection | ConnectionChange, config: dict[str, Any]) -> None:
    if data.default_redirect_uri is not None:
        config["default_redirect_uri"] = data.default_redirect_uri
    if data.restrict_email_domains is not None:
        config["restrict_email_domains"] = data.restrict_email_domains


class SsoConnectionsController(Controller):
    path = "/tenants/{tenant_id:uuid}/sso/connections"
    tags = ["sso"]

    @post("/", status_code=201, opt=MANAGE, summary="Create an SSO connection (SAML or OIDC)")
    async def create(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[NewConnection],
        runtime: NamedDependency[Runtime],
    ) -> ConnectionView:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            await guard_feature(tx, tenant_id, "sso")
        check_redirect(runtime, data.default_redirect_uri)
        service = sso(runtime)
        from uuid_utils.compat import uuid7

        connection_id = uuid7()
        sealed: bytes
        if data.kind == "saml":
            if data.saml is None or data.oidc is not None:
                raise invalid("a saml connection takes the saml object (and no oidc)")
            config = await saml_config(runtime, data.saml, None)
            # RSA key generation takes tens of ms: not on the event loop.
            cert, key = await asyncio.to_thread(
                saml.new_sp_keypair, f"tenantry-sso-{connection_id}"
            )
            config["sp_cert"] = cert
            sealed = service.seal(connection_id, {"sp_private_key": key})
        else:
            if data.oidc is None or data.saml is not None:
                raise invalid("an oidc connection takes the oidc object (and no saml)")
            if data.allow_idp_initiated:
                raise invalid("allow_idp_initiated applies to SAML connections only")
            config, secret = await oidc_config(runtime, data.oidc, None)
            if not secret:
                raise invalid("oidc.client_secret is required")
            sealed = service.seal(connection_id, {"client_secret": secret})
        _settings_fields(data, config)
        principal = principal_of(request)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            row = await service.store.create_connection(
                tx,
                connection_id=connection_id,
                tenant_id=tenant_id,
                kind=data.kind,
                name=data.name,
                enabled=data.enabled,
                allow_idp_initiated=data.allow_idp_initiated,
                config=config,
                secrets=sealed,
                attribute_mapping=msgspec.to_builtins(data.attribute_mapping or AttributeMapping()),
                created_by=f"{principal.kind}:{principal.subject}",
            )
        return view(row, service)

    @get("/", opt=READ, summary="List the tenant's SSO connections")
    async def list_connections(
        self, tenant_id: FromPath[UUID], runtime: NamedDependency[Runtime]
    ) -> list[ConnectionView]:
        service = sso(runtime)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            rows = await service.store.list_connections(tx, tenant_id)
        return [view(r, service) for r in rows]

    @get("/{connection_id:uuid}", opt=READ, summary="Read an SSO connection")
    async def read(
        self,
        tenant_id: FromPath[UUID],
        connection_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
    ) -> ConnectionView:
        return view(await self._row(runtime, tenant_id, connection_id), sso(runtime))

    @staticmethod
    async def _row(runtime: Runtime, tenant_id: UUID, connection_id: UUID) -> ConnectionRow:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            row = await sso(runtime).store.get_connection(tx, connection_id)
        if row is None or row.tenant_id != tenant_id:
            raise Problem(404, "not-found", "Not found", "No such SSO connection")
        return row

    @patch("/{connection_id:uuid}", opt=MANAGE, summary="Change an SSO connection")
    async def change(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        connection_id: FromPath[UUID],
        data: JSONBody[ConnectionChange],
        runtime: NamedDependency[Runtime],
    ) -> ConnectionView:
        service = sso(runtime)
        row = await self._row(runtime, tenant_id, connection_id)
        if data.enabled:
            async with runtime.db.transaction(tenant_id=tenant_id) as tx:
                await guard_feature(tx, tenant_id, "sso")
        check_redirect(runtime, data.default_redirect_uri)
        config = dict(row.config)
        sealed: bytes | None = None
        if data.saml is not None:
            if row.kind != "saml":
                raise invalid("this is not a SAML connection")
            sp_cert = config.get("sp_cert")
            config = await saml_config(runtime, data.saml, config)
            config["sp_cert"] = sp_cert
        if data.oidc is not None:
            if row.kind != "oidc":
                raise invalid("this is not an OIDC connection")
            config, secret = await oidc_config(runtime, data.oidc, config)
            if secret:
                sealed = service.seal(connection_id, {"client_secret": secret})
        if data.allow_idp_initiated and row.kind != "saml":
            raise invalid("allow_idp_initiated applies to SAML connections only")
        _settings_fields(data, config)
        changes: dict[str, Any] = {"config": config}
        for field in ("name", "enabled", "allow_idp_initiated"):
            if getattr(data, field) is not None:
                changes[field] = getattr(data, field)
        if data.attribute_mapping is not None:
            changes["attribute_mapping"] = msgspec.to_builtins(data.attribute_mapping)
        principal = principal_of(request)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            try:
                updated = await service.store.update_connection(
                    tx,
                    row,
                    changed_by=f"{principal.kind}:{principal.subject}",
                    secrets=sealed,
                    **changes,
                )
            except Exception as exc:
                if type(exc).__name__ in ("SerializationError", "ConcurrencyError"):
                    raise Problem(409, "conflict", "The connection changed meanwhile") from None
                raise
        return view(updated, service)

    @delete(
        "/{connection_id:uuid}", status_code=204, opt=MANAGE, summary="Delete an SSO connection"
    )
    async def remove(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        connection_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
    ) -> None:
        row = await self._row(runtime, tenant_id, connection_id)
        principal = principal_of(request)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            await sso(runtime).store.delete_connection(
                tx, row, deleted_by=f"{principal.kind}:{principal.subject}"
            )

    @get(
        "/{connection_id:uuid}/login-failures",
        opt=READ,
        summary="Why SSO logins failed (newest first)",
    )
    async def failures(
        self,
        tenant_id: FromPath[UUID],
        connection_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
        before: Annotated[UUID | None, Parameter(query="before")] = None,
        limit: Annotated[int, Parameter(query="limit", ge=1, le=200)] = 50,
    ) -> list[FailureRow]:
        await self._row(runtime, tenant_id, connection_id)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            return await sso(runtime).store.list_failures(
                tx, connection_id, before=before, limit=limit
            )

    @post(
        "/{connection_id:uuid}/metadata/refresh",
        status_code=200,
        opt=MANAGE,
        summary="Fetch the IdP metadata URL now",
    )
    async def refresh(
        self,
        tenant_id: FromPath[UUID],
        connection_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
    ) -> ConnectionView:
        row = await self._row(runtime, tenant_id, connection_id)
        if not row.config.get("metadata_url"):
            raise invalid("this connection has no metadata URL")
        updated = await fetcher(runtime).refresh(row)
        return view(updated, sso(runtime))


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


class SsoDomainsController(Controller):
    path = "/tenants/{tenant_id:uuid}/sso/domains"
    tags = ["sso"]

    @post("/", status_code=201, opt=MANAGE, summary="Claim an email domain (DNS TXT challenge)")
    async def claim(
        self,
        tenant_id: FromPath[UUID],
        data: JSONBody[NewDomain],
        runtime: NamedDependency[Runtime],
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
        service = sso(runtime)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            await guard_feature(tx, tenant_id, "sso")
            await check_own_connection(service.store, tx, tenant_id, data.connection_id)
            row = await service.store.add_domain(
                tx, tenant_id, domain, new_challenge_token(), data.connection_id
            )
        if row is None:
            raise Problem(409, "domain-claimed", "This tenant already claims the domain")
        return domain_view(row)

    @get("/", opt=READ, summary="List the tenant's email domains")
    async def list_domains(
        self, tenant_id: FromPath[UUID], runtime: NamedDependency[Runtime]
    ) -> list[DomainView]:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            rows = await sso(runtime).store.list_domains(tx, tenant_id)
        return [domain_view(r) for r in rows]

    @post(
        "/{domain:str}/verify",
        status_code=200,
        opt=MANAGE,
        summary="Check the domain's DNS TXT challenge now",
    )
    async def verify(
        self,
        tenant_id: FromPath[UUID],
        domain: FromPath[str],
        runtime: NamedDependency[Runtime],
    ) -> DomainView:
        service = sso(runtime)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            row = await service.store.get_domain(tx, tenant_id, domain.lower())
        if row is None:
            raise Problem(404, "not-found", "Not found", "This tenant does not claim the domain")
        resolver = runtime.extras["sso_dns"]
        try:
            records = await resolver.txt(challenge_name(row.domain))  # type: ignore[attr-defined]
        except DomainLookupFailed as exc:
            async with runtime.db.transaction(tenant_id=tenant_id) as tx:
                await service.store.record_check(
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
        error = (
            None
            if found
            else (
                f"no TXT record {challenge_value(row.challenge_token)!r} at "
                f"{challenge_name(row.domain)} (found {len(records)} other record(s))"
            )
        )
        try:
            async with runtime.db.transaction(tenant_id=tenant_id) as tx:
                updated = await service.store.record_check(
                    tx, tenant_id, row.domain, verified=found, error=error
                )
        except DomainTaken:
            raise Problem(
                409, "domain-taken", "Another organisation verified this domain first"
            ) from None
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
        runtime: NamedDependency[Runtime],
    ) -> DomainView:
        store = sso(runtime).store
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            await check_own_connection(store, tx, tenant_id, data.connection_id)
            row = await store.set_domain_connection(
                tx, tenant_id, domain.lower(), data.connection_id
            )
        if row is None:
            raise Problem(404, "not-found", "Not found", "This tenant does not claim the domain")
        return domain_view(row)

    @delete("/{domain:str}", status_code=204, opt=MANAGE, summary="Release a claimed domain")
    async def release(
        self,
        tenant_id: FromPath[UUID],
        domain: FromPath[str],
        runtime: NamedDependency[Runtime],
    ) -> None:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            if not await sso(runtime).store.delete_domain(tx, tenant_id, domain.lower()):
                raise Problem(
                    404, "not-found", "Not found", "This tenant does not claim the domain"
                )


# ---------------------------------------------------------------------------- the product


class CodeExchange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    code: str
    client_secret: str | None = None  # or HTTP Basic / Bearer with the secret


class Logout(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    redirect_uri: str | None = None  # where the browser lands after the IdP logged out


class SsoProfile(msgspec.Struct, kw_only=True):
    profile: dict[str, Any]
    tokens: TokenPair


def _presented_secret(request: Request[Any, Any, Any], body: CodeExchange) -> str:
    if body.client_secret:
        return body.client_secret
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "basic":
        import base64

        try:
            # RFC 6749 2.3.1: the client secret is form-urlencoded inside Basic.
            return unquote_plus(base64.b64decode(value).decode().partition(":")[2])
        except ValueError:
            return ""
    return value if scheme.lower() == "bearer" else ""


class SsoProductController(Controller):
    path = "/sso"
    tags = ["sso"]

    @post(
        "/token",
        status_code=200,
        opt={"auth": PUBLIC, "priority": "critical", "rate_class": "auth"},
        summary="Exchange a one-time SSO code for the profile and tokens (product backend)",
        responses=problems(401),
    )
    async def token(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[CodeExchange],
        runtime: NamedDependency[Runtime],
    ) -> SsoProfile:
        expected = conf(runtime).sso_client_secret
        presented = _presented_secret(request, data)
        if not expected or not hmac.compare_digest(expected.encode(), presented.encode()):
            raise Problem(
                401,
                "invalid-client",
                "Client authentication failed",
                headers={"WWW-Authenticate": 'Basic realm="tenantry-sso"'},
            )
        try:
            issued, _, tokens = await sso(runtime).exchange(data.code)
        except LookupError:
            raise Problem(
                400, "invalid-grant", "The code is unknown, expired or was used already"
            ) from None
        return SsoProfile(profile=issued.profile, tokens=tokens)

    @post(
        "/logout",
        status_code=200,
        opt=requires(),
        summary="End the caller's session, and at the IdP when it supports single logout",
    )
    async def logout(
        self,
        request: Request[Any, Any, Any],
        runtime: NamedDependency[Runtime],
        data: JSONBody[Logout] | None = None,
    ) -> dict[str, str | None]:
        """Ends the session now. For a SAML session whose IdP does single logout, returns
        `idp_logout_url`: send the browser there; the IdP's answer comes back to us and the
        browser lands on `redirect_uri` (one of the product's registered URIs)."""
        principal = principal_of(request)
        if principal.kind != "user" or not principal.credential_id:
            raise Problem(400, "not-a-session", "Only a signed-in user's session can log out")
        return_to = data.redirect_uri if data is not None else None
        check_redirect(runtime, return_to)
        url = await sso(runtime).sp_logout(UUID(principal.credential_id), return_to)
        return {"idp_logout_url": url}


# ---------------------------------------------------------------------------- browsers


def _failure_response(failed: LoginFailed) -> Response[Any]:
    if failed.redirect is not None:
        return RedirectResponse(path=failed.redirect, status_code=303)
    problem = Problem(
        403 if failed.refused.code != "malformed" else 400,
        "sso-login-failed",
        failed.refused.user_message,
        "Your administrator can see the detailed reason in the SSO login log.",
        code=failed.refused.code,
    )
    return Response(
        content=problem.body(),
        status_code=problem.status,
        media_type="application/problem+json",
    )


def _to_browser(target: Redirect) -> Response[Any]:
    if target.url is not None:
        return RedirectResponse(path=target.url, status_code=302)
    return Response(content=target.html or "", media_type="text/html", status_code=200)


async def _resolve_connection(
    runtime: Runtime,
    *,
    connection_id: UUID | None,
    email: str | None,
    tenant_id: UUID | None,
) -> ConnectionRow:
    """Which connection a login uses: named, found from the email's verified domain (home
    realm discovery), or the tenant's only enabled one."""
    service = sso(runtime)
    async with runtime.db.transaction(platform=True) as tx:
        if connection_id is not None:
            row = await service.store.get_connection(tx, connection_id)
            if row is None:
                raise Problem(404, "unknown-connection", "No such SSO connection")
            return row
        if email is not None:
            try:
                domain = normalise_domain(domain_of_email(email))
            except DomainRefused:
                raise Problem(400, "invalid-email", "Not an email address") from None
            claimed = await service.store.verified_domain(tx, domain)
            if claimed is None:
                raise Problem(
                    404,
                    "no-sso-for-domain",
                    "Single sign-on is not set up for this email domain",
                    "Sign in with a password, or ask your administrator",
                )
            tenant_id = claimed.tenant_id
            if claimed.connection_id is not None:
                row = await service.store.get_connection(tx, claimed.connection_id)
                if row is not None:
                    return row
        if tenant_id is None:
            raise Problem(400, "connection-required", "Give connection_id, email or tenant_id")
        rows = [r for r in await service.store.list_connections(tx, tenant_id) if r.enabled]
    if len(rows) != 1:
        raise Problem(
            404 if not rows else 409,
            "no-sso-connection" if not rows else "connection-ambiguous",
            "No single enabled SSO connection for this organisation",
            None if not rows else "name the connection_id",
        )
    return rows[0]


class SsoBrowserController(Controller):
    """Public routes browsers and IdPs reach (no /v1: these URLs are registered at IdPs)."""

    path = "/sso"
    tags = ["sso"]
    include_in_schema = True

    @get("/authorize", opt=BROWSER, summary="Start an SSO login (redirects to the IdP)")
    async def authorize(
        self,
        runtime: NamedDependency[Runtime],
        redirect_uri: FromQuery[str],
        connection_id: Annotated[UUID | None, Parameter(query="connection_id")] = None,
        email: Annotated[str | None, Parameter(query="email")] = None,
        tenant_id: Annotated[UUID | None, Parameter(query="tenant_id")] = None,
        client_state: Annotated[str | None, Parameter(query="state", max_length=1024)] = None,
    ) -> Response[Any]:
        if redirect_uri not in conf(runtime).redirect_uris():
            raise Problem(
                400,
                "invalid-redirect-uri",
                "redirect_uri is not registered",
                "the product registers its callback URLs in TENANTRY_SSO_REDIRECT_URIS",
            )
        row = await _resolve_connection(
            runtime, connection_id=connection_id, email=email, tenant_id=tenant_id
        )
        service = sso(runtime)
        await service.charge(row.tenant_id)  # anonymous: billed to the tenant it concerns
        async with runtime.db.transaction(tenant_id=row.tenant_id) as tx:
            await guard_feature(tx, row.tenant_id, "sso")
            blob = await service.store.connection_secrets(tx, row.connection_id)
        secrets_ = service.unseal(row.connection_id, blob)
        try:
            target = await service.start(
                row,
                secrets_,
                redirect_uri=redirect_uri,
                client_state=client_state,
                login_hint=email,
            )
        except LoginFailed as failed:
            return _failure_response(failed)
        return _to_browser(target)

    @get(
        "/saml/{connection_id:uuid}/metadata",
        opt={"auth": PUBLIC},
        media_type="application/samlmetadata+xml",
        summary="SAML SP metadata of a connection",
    )
    async def metadata(
        self, connection_id: FromPath[UUID], runtime: NamedDependency[Runtime]
    ) -> Response[str]:
        service = sso(runtime)
        try:
            row, secrets_ = await service.connection(connection_id)
        except LookupError:
            raise Problem(404, "unknown-connection", "No such SSO connection") from None
        if row.kind != "saml":
            raise Problem(404, "unknown-connection", "Not a SAML connection")
        _, _, settings = service.saml_settings(row, secrets_)
        return Response(
            content=saml.sp_metadata(settings), media_type="application/samlmetadata+xml"
        )

    @post(
        "/saml/{connection_id:uuid}/acs",
        status_code=303,
        opt={**BROWSER, "body": "form"},  # the HTTP-POST binding posts a form
        summary="SAML assertion consumer service (HTTP-POST binding)",
    )
    async def acs(
        self,
        request: Request[Any, Any, Any],
        connection_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
    ) -> Response[Any]:
        form = await request.form()
        saml_response = form.get("SAMLResponse")
        if not isinstance(saml_response, str) or not saml_response:
            raise Problem(400, "invalid-saml-response", "The form has no SAMLResponse")
        try:
            url = await sso(runtime).saml_acs(connection_id, saml_response)
        except LookupError:
            raise Problem(404, "unknown-connection", "No such SSO connection") from None
        except LoginFailed as failed:
            return _failure_response(failed)
        return RedirectResponse(path=url, status_code=303)

    @get(
        "/saml/{connection_id:uuid}/slo",
        opt=BROWSER,
        summary="SAML single logout (HTTP-Redirect binding)",
    )
    async def slo(
        self,
        request: Request[Any, Any, Any],
        connection_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
    ) -> Response[Any]:
        # python3-saml checks the signature over the query exactly as received.
        query = {k: v for k, v in request.query_params.items()}
        service = sso(runtime)
        try:
            if "SAMLRequest" in query:
                url = await service.idp_logout(connection_id, query)
                return RedirectResponse(path=url, status_code=302)
            if "SAMLResponse" in query:
                target = await service.idp_logout_response(connection_id, query)
                if target is not None:
                    return RedirectResponse(path=target, status_code=303)
                return Response(content={"logged_out": True}, status_code=200)
        except LookupError:
            raise Problem(404, "unknown-connection", "No such SSO connection") from None
        except LoginRefused as refused:
            raise Problem(
                400, "invalid-logout", "Logout refused", refused.detail, code=refused.code
            ) from None
        raise Problem(400, "invalid-logout", "Neither SAMLRequest nor SAMLResponse given")

    @get("/oidc/callback", opt=BROWSER, summary="OIDC redirect URI (authorization code)")
    async def oidc_callback(
        self, request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
    ) -> Response[Any]:
        params = {k: v for k, v in request.query_params.items()}
        try:
            url = await sso(runtime).oidc_callback_(params)
        except LookupError:
            raise Problem(
                400,
                "sso-login-failed",
                "This sign-in attempt expired or was already used. Please start again.",
                code="unknown-request",
            ) from None
        except LoginFailed as failed:
            return _failure_response(failed)
        return RedirectResponse(path=url, status_code=303)
