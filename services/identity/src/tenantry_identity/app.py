"""Wiring of the identity service: the one place that puts domain, store and edges together."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import asyncpg
from onelogin.saml2.constants import OneLogin_Saml2_Constants

from tenantry_credentials.crypto import SecretBox
from tenantry_events.consumer import Handler, merge_handlers
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.identity import AccountCreated, ApiKeyUsed
from tenantry_events.payloads.tenancy import TenantCreated
from tenantry_events.payloads.webhooks import WebhookEndpointDisabled
from tenantry_identity.api import (
    AccountAdminController,
    AccountsController,
    ApiKeysController,
    ProvisioningController,
    SessionsController,
    VerificationController,
    jwks,
)
from tenantry_identity.domain import IdentityRuleBroken, normalise_email
from tenantry_identity.keys import SigningKeys
from tenantry_identity.settings import IdentitySettings
from tenantry_identity.sso.api import (
    SsoBrowserController,
    SsoConnectionsController,
    SsoDomainsController,
    SsoProductController,
)
from tenantry_identity.sso.domains import TxtResolver
from tenantry_identity.sso.metadata import MetadataFetcher
from tenantry_identity.sso.oidc import OidcRelyingParty
from tenantry_identity.sso.service import SsoService
from tenantry_identity.sso.store import SsoStore
from tenantry_identity.store import EmailTaken, IdentityStore
from tenantry_identity.usage_report import reconcile_usage, usage_report_handlers
from tenantry_identity.verification import EmailVerification
from tenantry_outbound.mail import Mailer, MailError, SmtpSettings
from tenantry_outbound.outbound import OutboundClient, OutboundPolicy
from tenantry_platform.clock import SystemClock
from tenantry_projections.projections import standard_projections
from tenantry_resilience import BreakerConfig, BreakerRegistry
from tenantry_service.app import ServiceSpec, rate_limit_step
from tenantry_service.runtime import Runtime


async def start_signing_keys(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, IdentitySettings)
    keys = SigningKeys(
        runtime.db,
        SecretBox.from_base64(settings.master_key),
        token_ttl=timedelta(seconds=settings.access_token_ttl_seconds),
    )
    await keys.active()  # creates the first key on a new database
    runtime.extras["signing_keys"] = keys
    runtime.extras["verification"] = email_verification(runtime)


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


def sso_parts(runtime: Runtime, client: OutboundClient) -> tuple[SsoService, MetadataFetcher]:
    settings = runtime.settings
    assert isinstance(settings, IdentitySettings)
    # python3-saml's validity windows use this module-level allowance (300 s by default).
    OneLogin_Saml2_Constants.ALLOWED_CLOCK_DRIFT = settings.sso_clock_skew_seconds
    clock = SystemClock()
    store = SsoStore(runtime.events, source=runtime.source, region=settings.region)
    service = SsoService(
        runtime,
        identity=IdentityStore(runtime.events, source=runtime.source, region=settings.region),
        store=store,
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
        # The login routes are anonymous: each is billed to its connection's tenant.
        charge=(
            (lambda tenant_id: rate_limit_step(runtime).charge(tenant_id, "auth"))
            if settings.ratelimit_enabled
            else None
        ),
    )
    return service, MetadataFetcher(runtime, client, store, clock)


async def start_sso(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, IdentitySettings)
    client = sso_outbound(settings)
    service, fetcher = sso_parts(runtime, client)
    runtime.extras["sso_client"] = client
    runtime.extras["sso"] = service
    runtime.extras["sso_metadata"] = fetcher
    runtime.extras["sso_dns"] = TxtResolver(
        settings.dns_nameservers(), timeout=settings.sso_dns_timeout_seconds
    )


async def stop_sso(runtime: Runtime) -> None:
    client = runtime.extras.get("sso_client")
    if isinstance(client, OutboundClient):
        await client.aclose()


async def refresh_idp_metadata(runtime: Runtime, stop: asyncio.Event) -> None:
    """The worker keeps metadata-URL connections current and sweeps expired login state."""
    settings = runtime.settings
    assert isinstance(settings, IdentitySettings)
    async with sso_outbound(settings) as client:
        _, fetcher = sso_parts(runtime, client)
        await fetcher.run(stop, settings.sso_metadata_refresh_seconds)


def email_verification(runtime: Runtime) -> EmailVerification:
    settings = runtime.settings
    assert isinstance(settings, IdentitySettings)
    return EmailVerification(
        runtime.events,
        Mailer(SmtpSettings.from_env()),
        SystemClock(),
        confirm_url=settings.verification_url(),
        source=runtime.source,
        region=settings.region,
    )


def identity_consumers(runtime: Runtime) -> dict[str, Handler[asyncpg.Connection]]:
    """identity reacts to its own account.created by mailing the verification link (the
    operational mail is sent from the worker, retried like any other effect)."""
    verification = email_verification(runtime)

    async def on_account_created(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        payload: AccountCreated = event.payload
        if not payload.email_verified:
            try:
                await verification.send(
                    tx, payload.account_id, payload.email, enforce_spacing=False
                )
            except MailError as exc:
                if exc.temporary:
                    # The relay is down or busy: redeliver later, never dead-letter the invite.
                    raise ConnectionError(str(exc)) from exc
                raise

    async def on_tenant_created(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        """The tenant's owner gets an account (no password yet) and, through
        account.created, the invitation that verifies the address and sets the password."""
        payload: TenantCreated = event.payload
        if payload.owner_email is None:
            return
        try:
            email = normalise_email(payload.owner_email)
        except IdentityRuleBroken:
            return  # tenancy validated it; a bad address cannot be invited anyway
        try:
            async with tx.transaction():
                await IdentityStore(
                    runtime.events, source=runtime.source, region=runtime.settings.region
                ).create_account(
                    tx,
                    tenant_id=event.tenant_id,
                    email=email,
                    role="owner",
                    password_hash=None,
                    created_by="tenant.created",
                )
        except EmailTaken:
            pass  # already there (an earlier delivery, or an operator created it)

    async def on_apikey_used(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        payload: ApiKeyUsed = event.payload
        await tx.execute(
            """UPDATE api_keys SET last_used_at = greatest(last_used_at, $2)
               WHERE key_id = $1 AND tenant_id = $3""",
            payload.key_id,
            payload.last_used_at,
            event.tenant_id,
        )

    mailer = Mailer(SmtpSettings.from_env())

    async def on_endpoint_disabled(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        """The operational notice: the tenant's owners and admins learn that an endpoint
        stopped receiving webhooks, and why (identity sends every operational mail)."""
        payload: WebhookEndpointDisabled = event.payload
        admins = await tx.fetch(
            """SELECT email FROM accounts WHERE tenant_id = $1 AND status = 'active'
                 AND role IN ('owner', 'admin') AND email_verified""",
            event.tenant_id,
        )
        why = {
            "gone": "it answered 410 Gone",
            "failing": f"every delivery to it has failed since {payload.failing_since}",
        }.get(payload.reason, payload.reason)
        for admin in admins:
            try:
                await mailer.send(
                    admin["email"],
                    "A webhook endpoint was disabled",
                    f"Tenantry stopped sending webhooks to {payload.url} "
                    f"(endpoint {payload.endpoint_id}) because {why}.\n\n"
                    "Messages for it are kept. Fix the endpoint, enable it again, and recover "
                    "what failed meanwhile (POST .../webhooks/endpoints/"
                    f"{payload.endpoint_id}/recover).\n",
                    headers={"X-Tenantry-Notice": "webhook-endpoint-disabled"},
                )
            except MailError as exc:
                if exc.temporary:
                    raise ConnectionError(str(exc)) from exc  # redeliver later
                raise

    return merge_handlers(
        standard_projections(),
        {
            "account.created": on_account_created,
            "tenant.created": on_tenant_created,
            "apikey.used": on_apikey_used,
            "webhook.endpoint_disabled": on_endpoint_disabled,
        },
        usage_report_handlers(runtime),
    )


SPEC = ServiceSpec(
    name="identity",
    description=(
        "Login accounts, SSO connections, sessions and tokens, API keys, email verification."
    ),
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
    root_route_handlers=[jwks, SsoBrowserController],
    consumer_factory=identity_consumers,
    migration_packages=["tenantry_identity"],
    settings_cls=IdentitySettings,
    on_startup=[start_signing_keys, start_sso],
    on_shutdown=[stop_sso],
    worker_tasks=[refresh_idp_metadata, reconcile_usage],
)
