"""Wiring of the identity service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import asyncpg

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
from tenantry_identity.store import EmailTaken, IdentityStore
from tenantry_identity.verification import EmailVerification
from tenantry_servicekit.app import ServiceSpec
from tenantry_servicekit.clock import SystemClock
from tenantry_servicekit.crypto import SecretBox
from tenantry_servicekit.mail import Mailer, MailError, SmtpSettings
from tenantry_servicekit.projections import standard_projections
from tenantry_servicekit.runtime import Runtime


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
    ],
    root_route_handlers=[jwks],
    consumer_factory=identity_consumers,
    migration_packages=["tenantry_identity"],
    settings_cls=IdentitySettings,
    on_startup=[start_signing_keys],
)
