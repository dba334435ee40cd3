"""SSO connections as tenant admins manage them (the service layer under the connection
routes): what a create or a change may hold, the IdP's metadata or discovery document
checked before anything is stored, secrets sealed, and the write.

Every change of a connection's state is written by SsoStore with its event
(`SsoStore._changed`): from here (admins) and from MetadataFetcher (the worker's refresh)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from uuid_utils.compat import uuid7

from tenantry_events.pg import Database
from tenantry_guardrails.plan_limits import guard_feature
from tenantry_http.problems import Problem
from tenantry_identity.sso import saml
from tenantry_identity.sso.domain import AttributeMapping, LoginRefused
from tenantry_identity.sso.logins import SsoLogins
from tenantry_identity.sso.metadata import MetadataFetcher
from tenantry_identity.sso.oidc import OidcConnectionConfig
from tenantry_identity.sso.store import ConnectionRow, SsoStore

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


def invalid(detail: str) -> Problem:
    return Problem(422, "invalid-sso-connection", "The SSO connection is not usable", detail)


# The input fields stored in a connection's config as given (the rest is derived).
SAML_FIELDS = (
    "idp_entity_id",
    "idp_sso_url",
    "idp_slo_url",
    "idp_certs",
    "request_binding",
    "want_assertions_signed",
    "want_response_signed",
    "want_assertions_encrypted",
)
OIDC_FIELDS = (
    "issuer",
    "client_id",
    "scopes",
    "token_endpoint_auth_method",
    "allowed_algorithms",
)


def _given_fields(given: msgspec.Struct, config: dict[str, Any], names: tuple[str, ...]) -> None:
    """Each named field the input gives (not None) replaces the config's."""
    for name in names:
        value = getattr(given, name)
        if value is not None:
            config[name] = value


def _settings_fields(data: NewConnection | ConnectionChange, config: dict[str, Any]) -> None:
    if data.default_redirect_uri is not None:
        config["default_redirect_uri"] = data.default_redirect_uri
    if data.restrict_email_domains is not None:
        config["restrict_email_domains"] = data.restrict_email_domains


class SsoConnections:
    def __init__(
        self,
        db: Database,
        store: SsoStore,
        logins: SsoLogins,
        metadata: MetadataFetcher,
        *,
        redirect_uris: frozenset[str],
    ) -> None:
        self._db = db
        self._store = store
        self._logins = logins
        self._metadata = metadata
        self._redirect_uris = redirect_uris

    @property
    def public_url(self) -> str:
        return self._logins.public_url

    @property
    def oidc_callback(self) -> str:
        """The redirect URI every OIDC connection registers at its IdP."""
        return self._logins.oidc_callback

    def check_redirect(self, uri: str | None) -> None:
        """`uri` (when given) is one of the product's registered redirect URIs."""
        if uri is not None and uri not in self._redirect_uris:
            raise invalid(f"{uri} is not one of the product's registered redirect URIs")

    async def of_tenant(self, tenant_id: UUID, connection_id: UUID) -> ConnectionRow:
        """The tenant's connection (404 for another tenant's: it does not exist here)."""
        async with self._db.transaction(tenant_id=tenant_id) as tx:
            row = await self._store.get_connection(tx, connection_id)
        if row is None or row.tenant_id != tenant_id:
            raise Problem(404, "not-found", "Not found", "No such SSO connection")
        return row

    async def create(self, tenant_id: UUID, data: NewConnection, *, actor: str) -> ConnectionRow:
        async with self._db.transaction(tenant_id=tenant_id) as tx:
            await guard_feature(tx, tenant_id, "sso")
        self.check_redirect(data.default_redirect_uri)
        connection_id = uuid7()
        sealed: bytes
        if data.kind == "saml":
            if data.saml is None or data.oidc is not None:
                raise invalid("a saml connection takes the saml object (and no oidc)")
            config = await self._saml_config(data.saml, None)
            # RSA key generation takes tens of ms: not on the event loop.
            cert, key = await asyncio.to_thread(
                saml.new_sp_keypair, f"tenantry-sso-{connection_id}"
            )
            config["sp_cert"] = cert
            sealed = self._logins.seal(connection_id, {"sp_private_key": key})
        else:
            if data.oidc is None or data.saml is not None:
                raise invalid("an oidc connection takes the oidc object (and no saml)")
            if data.allow_idp_initiated:
                raise invalid("allow_idp_initiated applies to SAML connections only")
            config, secret = await self._oidc_config(data.oidc, None)
            if not secret:
                raise invalid("oidc.client_secret is required")
            sealed = self._logins.seal(connection_id, {"client_secret": secret})
        _settings_fields(data, config)
        async with self._db.transaction(tenant_id=tenant_id) as tx:
            return await self._store.create_connection(
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
                created_by=actor,
            )

    async def change(
        self, tenant_id: UUID, connection_id: UUID, data: ConnectionChange, *, actor: str
    ) -> ConnectionRow:
        row = await self.of_tenant(tenant_id, connection_id)
        if data.enabled:
            async with self._db.transaction(tenant_id=tenant_id) as tx:
                await guard_feature(tx, tenant_id, "sso")
        self.check_redirect(data.default_redirect_uri)
        config = dict(row.config)
        sealed: bytes | None = None
        if data.saml is not None:
            if row.kind != "saml":
                raise invalid("this is not a SAML connection")
            sp_cert = config.get("sp_cert")
            config = await self._saml_config(data.saml, config)
            config["sp_cert"] = sp_cert
        if data.oidc is not None:
            if row.kind != "oidc":
                raise invalid("this is not an OIDC connection")
            config, secret = await self._oidc_config(data.oidc, config)
            if secret:
                sealed = self._logins.seal(connection_id, {"client_secret": secret})
        if data.allow_idp_initiated and row.kind != "saml":
            raise invalid("allow_idp_initiated applies to SAML connections only")
        _settings_fields(data, config)
        changes: dict[str, Any] = {"config": config}
        for field in ("name", "enabled", "allow_idp_initiated"):
            if getattr(data, field) is not None:
                changes[field] = getattr(data, field)
        if data.attribute_mapping is not None:
            changes["attribute_mapping"] = msgspec.to_builtins(data.attribute_mapping)
        async with self._db.transaction(tenant_id=tenant_id) as tx:
            try:
                return await self._store.update_connection(
                    tx, row, changed_by=actor, secrets=sealed, **changes
                )
            except Exception as exc:
                if type(exc).__name__ in ("SerializationError", "ConcurrencyError"):
                    raise Problem(409, "conflict", "The connection changed meanwhile") from None
                raise

    async def delete(self, tenant_id: UUID, connection_id: UUID, *, actor: str) -> None:
        row = await self.of_tenant(tenant_id, connection_id)
        async with self._db.transaction(tenant_id=tenant_id) as tx:
            await self._store.delete_connection(tx, row, deleted_by=actor)

    async def refresh_metadata(
        self, tenant_id: UUID, connection_id: UUID, *, actor: str
    ) -> ConnectionRow:
        """Fetch the metadata now, for an admin: what it found is said (see
        MetadataFetcher.refresh), whether or not the IdP's settings changed."""
        row = await self.of_tenant(tenant_id, connection_id)
        if not row.config.get("metadata_url"):
            raise invalid("this connection has no metadata URL")
        return await self._metadata.refresh(row, by=actor)

    async def _saml_config(self, given: SamlInput, base: dict[str, Any] | None) -> dict[str, Any]:
        """The SAML config from the input, over `base` (the current config on a change)."""
        config = dict(base or {})
        if given.metadata_url is not None or given.metadata_xml is not None:
            try:
                if given.metadata_url is not None:
                    meta = await self._metadata.fetch(given.metadata_url)
                    config["metadata_url"] = given.metadata_url
                else:
                    meta = await asyncio.to_thread(
                        saml.parse_idp_metadata, given.metadata_xml or ""
                    )
                    config.pop("metadata_url", None)
            except ValueError as exc:
                raise invalid(str(exc)) from None
            config.update(saml.config_fields(meta))
        _given_fields(given, config, SAML_FIELDS)
        for needed in ("idp_entity_id", "idp_sso_url", "idp_certs"):
            if not config.get(needed):
                raise invalid(
                    f"saml.{needed} is required (or give saml.metadata_xml / metadata_url)"
                )
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

    async def _oidc_config(
        self, given: OidcInput, base: dict[str, Any] | None
    ) -> tuple[dict[str, Any], str | None]:
        config = dict(base or {})
        _given_fields(given, config, OIDC_FIELDS)
        for needed in ("issuer", "client_id"):
            if not config.get(needed):
                raise invalid(f"oidc.{needed} is required")
        try:  # the relying party's own rules (openid scope, algorithm allow-list)
            msgspec.convert({**config, "client_secret": ""}, OidcConnectionConfig)
        except msgspec.ValidationError as exc:
            raise invalid(f"oidc: {exc}") from None
        try:
            await self._logins.rp.discover(config["issuer"])
        except LoginRefused as refused:
            raise invalid(f"oidc.issuer: {refused.detail}") from None
        return config, given.client_secret
