"""Wiring of the identity service: the one place that puts domain, store and edges together.

The api process builds its components once at startup (`COMPONENTS`); routes receive them
by name through Litestar's dependency injection (`COMPONENT_DEPENDENCIES`), typed, never
looked up by hand."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import asyncpg
from litestar import Router
from onelogin.saml2.constants import OneLogin_Saml2_Constants

from tenantry_credentials.crypto import SecretBox
from tenantry_events.consumer import Handler, merge_handlers
from tenantry_identity.accounts import Accounts
from tenantry_identity.api import (
    AccountAdminController,
    AccountsController,
    ApiKeysController,
    ProvisioningController,
    SessionsController,
    VerificationController,
    jwks,
)
from tenantry_identity.consumers import identity_consumers
from tenantry_identity.erasure import IDENTITY_ERASURE
from tenantry_identity.export import IDENTITY_EXPORTS
from tenantry_identity.keys import SigningKeys
from tenantry_identity.sessions import Sessions
from tenantry_identity.settings import IdentitySettings
from tenantry_identity.sso.admin_api import SsoConnectionsController, SsoDomainsController
from tenantry_identity.sso.connections import SsoConnections
from tenantry_identity.sso.directory_facts import directory_reconciliation
from tenantry_identity.sso.login_api import SsoBrowserController, SsoProductController
from tenantry_identity.sso.logins import SsoLogins, secret_context
from tenantry_identity.sso.metadata import MetadataFetcher
from tenantry_identity.sso.oidc import OidcRelyingParty
from tenantry_identity.sso.store import SSO_CONNECTIONS, SsoStore
from tenantry_identity.sso.txt_lookup import TxtResolver
from tenantry_identity.state_rows import ACCOUNTS, API_KEYS
from tenantry_identity.store import IdentityStore
from tenantry_identity.usage_report import reconcile_usage, usage_report_handlers
from tenantry_identity.verification import EmailVerification
from tenantry_outbound.mail import Mailer, SmtpSettings
from tenantry_outbound.outbound import OutboundClient, OutboundPolicy
from tenantry_platform.clock import SystemClock
from tenantry_projections.projections import standard_projections
from tenantry_resilience import BreakerConfig, BreakerRegistry
from tenantry_service.app import ServiceSpec, rate_limit_step
from tenantry_service.components import StartupComponents
from tenantry_service.move import Resealed
from tenantry_service.runtime import Runtime


def identity_settings(runtime: Runtime) -> IdentitySettings:
    return runtime.settings_as(IdentitySettings)


def identity_store(runtime: Runtime) -> IdentityStore:
    return IdentityStore(
        runtime.events,
        outbox=runtime.outbox,
        source=runtime.source,
        region=runtime.settings.region,
    )


def sso_store(runtime: Runtime) -> SsoStore:
    return SsoStore(
        runtime.events,
        outbox=runtime.outbox,
        source=runtime.source,
        region=runtime.settings.region,
    )


def email_verification(runtime: Runtime) -> EmailVerification:
    return EmailVerification(
        identity_store(runtime),
        Mailer(SmtpSettings.from_env()),
        SystemClock(),
        confirm_url=identity_settings(runtime).verification_url(),
    )


def sso_outbound(settings: IdentitySettings) -> OutboundClient:
    """The client for IdP metadata, discovery, JWKS, token and userinfo calls: the SSRF
    guard, a size cap, and a breaker per IdP host so a dead IdP fails fast (10 calls,
    half failing, open for 30 s)."""
    policy = OutboundPolicy(
        allow_networks=settings.sso_networks(),
        allow_http=settings.sso_allow_http,
        connect_timeout=min(5.0, settings.sso_fetch_timeout_seconds),
        total_timeout=settings.sso_fetch_timeout_seconds,
        max_response_bytes=settings.sso_max_document_bytes,
        user_agent="Tenantry-SSO/1",
    )
    breakers = BreakerRegistry(
        BreakerConfig(
            sliding_window_size=10,
            minimum_number_of_calls=10,
            failure_rate_threshold=50.0,
            wait_duration_in_open_state=30.0,
            permitted_calls_in_half_open_state=2,
        )
    )
    return OutboundClient(policy, breakers=breakers)


@dataclass(frozen=True)
class IdentityComponents:
    """What identity's routes use, built once per api process. Each field is injected by
    its name into the route handlers that declare it (`NamedDependency[<its type>]`)."""

    identity_settings: IdentitySettings
    identity_store: IdentityStore
    signing_keys: SigningKeys
    sessions: Sessions
    accounts: Accounts
    verification: EmailVerification
    sso_outbound: OutboundClient
    sso_store: SsoStore
    sso_logins: SsoLogins
    sso_connections: SsoConnections
    idp_metadata: MetadataFetcher
    txt_resolver: TxtResolver


async def build_components(runtime: Runtime) -> IdentityComponents:
    settings = identity_settings(runtime)
    store = identity_store(runtime)
    keys = SigningKeys(
        runtime.db,
        SecretBox.from_base64(settings.master_key),
        token_ttl=timedelta(seconds=settings.access_token_ttl_seconds),
    )
    await keys.active()  # creates the first key on a new database
    sessions = Sessions(
        runtime.db,
        store,
        keys,
        access_token_ttl=timedelta(seconds=settings.access_token_ttl_seconds),
        refresh_token_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
        issuer=runtime.regions.own.issuer,
    )
    accounts = Accounts(
        runtime.db, store, runtime.outbox, source=runtime.source, region=settings.region
    )
    # python3-saml's validity windows use this module-level allowance (300 s by default).
    OneLogin_Saml2_Constants.ALLOWED_CLOCK_DRIFT = settings.sso_clock_skew_seconds
    clock = SystemClock()
    client = sso_outbound(settings)
    logins_store = sso_store(runtime)
    logins = SsoLogins(
        runtime.db,
        runtime.outbox,
        identity=store,
        sessions=sessions,
        accounts=accounts,
        store=logins_store,
        box=SecretBox.from_base64(settings.master_key),
        rp=OidcRelyingParty(
            client,
            clock=clock,
            jwks_ttl=settings.sso_jwks_ttl_seconds,
            jwks_min_refetch_interval=settings.sso_jwks_min_refetch_seconds,
            leeway=float(settings.sso_clock_skew_seconds),
        ),
        clock=clock,
        public_url=settings.public_url(),
        login_ttl=timedelta(seconds=settings.sso_login_ttl_seconds),
        code_ttl=timedelta(seconds=settings.sso_code_ttl_seconds),
        source=runtime.source,
        region=settings.region,
        # The login routes are anonymous: each is billed to its connection's tenant.
        charge=(
            (lambda tenant_id: rate_limit_step(runtime).charge(tenant_id, "auth"))
            if settings.ratelimit_enabled
            else None
        ),
    )
    metadata = MetadataFetcher(runtime.db, client, logins_store, clock)
    return IdentityComponents(
        identity_settings=settings,
        identity_store=store,
        signing_keys=keys,
        sessions=sessions,
        accounts=accounts,
        verification=email_verification(runtime),
        sso_outbound=client,
        sso_store=logins_store,
        sso_logins=logins,
        sso_connections=SsoConnections(
            runtime.db,
            logins_store,
            logins,
            metadata,
            redirect_uris=settings.redirect_uris(),
        ),
        idp_metadata=metadata,
        txt_resolver=TxtResolver(
            settings.dns_nameservers(), timeout=settings.sso_dns_timeout_seconds
        ),
    )


async def close_components(components: IdentityComponents) -> None:
    await components.sso_outbound.aclose()


COMPONENTS = StartupComponents(IdentityComponents, build_components, close=close_components)
COMPONENT_DEPENDENCIES = COMPONENTS.dependencies()


async def refresh_idp_metadata(runtime: Runtime, stop: asyncio.Event) -> None:
    """The worker keeps metadata-URL connections current and sweeps expired login state."""
    settings = identity_settings(runtime)
    async with sso_outbound(settings) as client:
        fetcher = MetadataFetcher(runtime.db, client, sso_store(runtime), SystemClock())
        await fetcher.run(stop, settings.sso_metadata_refresh_seconds)


def worker_consumers(runtime: Runtime) -> dict[str, Handler[asyncpg.Connection]]:
    return merge_handlers(
        standard_projections(),
        identity_consumers(
            identity_store(runtime),
            email_verification(runtime),
            Mailer(SmtpSettings.from_env()),
            runtime.db,
        ),
        usage_report_handlers(runtime),
    )


SPEC = ServiceSpec(
    name="identity",
    description=(
        "Login accounts, SSO connections, sessions and tokens, API keys, email verification."
    ),
    route_handlers=[
        Router(
            path="/",
            route_handlers=[
                SessionsController,
                AccountsController,
                AccountAdminController,
                ApiKeysController,
                VerificationController,
                ProvisioningController,
                SsoConnectionsController,
                SsoDomainsController,
                SsoProductController,
            ],
            dependencies=COMPONENT_DEPENDENCIES,
        )
    ],
    root_route_handlers=[
        Router(
            path="/",
            route_handlers=[jwks, SsoBrowserController],
            dependencies=COMPONENT_DEPENDENCIES,
        )
    ],
    consumer_factory=worker_consumers,
    migration_packages=["tenantry_identity"],
    exports=IDENTITY_EXPORTS,
    resealed=[
        Resealed(
            "sso_connections", "secrets", lambda row: secret_context(UUID(row["connection_id"]))
        )
    ],
    erasure=IDENTITY_ERASURE,
    settings_cls=IdentitySettings,
    on_startup=[COMPONENTS.start],
    on_shutdown=[COMPONENTS.stop],
    worker_tasks=[refresh_idp_metadata, reconcile_usage, directory_reconciliation],
    aggregates=[ACCOUNTS, API_KEYS, SSO_CONNECTIONS],
)
