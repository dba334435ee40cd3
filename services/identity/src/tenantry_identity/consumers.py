"""What identity does with events (the worker's consumers): the verification mail for a new
account, the tenant owner's account, API key use from every service, and the operational
notices (notices.py) of a disabled webhook endpoint, of the tenant's offboarding, and of a
change to its data processing terms (to the owners and admins who subscribed)."""

from __future__ import annotations

from typing import Any

import asyncpg

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.identity import AccountCreated, ApiKeyUsed
from tenantry_events.payloads.tenancy import (
    LegalSubprocessorChanged,
    TenantCreated,
    TenantExportCompleted,
    TenantExportFailed,
    TenantOffboardingReminder,
    TenantOffboardingStarted,
)
from tenantry_events.payloads.webhooks import WebhookEndpointDisabled
from tenantry_events.pg import Database
from tenantry_identity import notices
from tenantry_identity.domain import LEGAL_NOTICES, IdentityRuleBroken, normalise_email
from tenantry_identity.store import EmailTaken, IdentityStore
from tenantry_identity.verification import EmailVerification
from tenantry_outbound.mail import MailSender


def identity_consumers(
    store: IdentityStore, verification: EmailVerification, mailer: MailSender, db: Database
) -> dict[str, Handler[asyncpg.Connection]]:
    async def on_account_created(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        """identity reacts to its own account.created by mailing the verification link (the
        operational mail is sent from the worker, retried like any other effect)."""
        payload: AccountCreated = event.payload
        if not payload.email_verified:
            with notices.redelivered_if_the_relay_fails():
                await verification.send(
                    tx, payload.account_id, payload.email, enforce_spacing=False, committed_in=db
                )

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
                await store.create_account(
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
        await store.record_api_key_use(tx, event.tenant_id, payload.key_id, payload.last_used_at)

    async def on_endpoint_disabled(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        """The tenant's owners and admins learn that an endpoint stopped receiving webhooks,
        and why."""
        payload: WebhookEndpointDisabled = event.payload
        notice = notices.endpoint_disabled(
            payload.endpoint_id, payload.url, payload.reason, payload.failing_since
        )
        await notices.mail_admins(tx, store, mailer, event.tenant_id, notice)

    async def on_offboarding_started(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        """The purge date, and how to export or cancel before it."""
        payload: TenantOffboardingStarted = event.payload
        if payload.moved_to is not None:
            return  # the tenant moved to another region: its admins are not leaving
        notice = notices.offboarding_started(event.tenant_id, payload.purge_at, payload.reason)
        await notices.mail_admins(tx, store, mailer, event.tenant_id, notice)

    async def on_offboarding_reminder(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        payload: TenantOffboardingReminder = event.payload
        notice = notices.offboarding_reminder(event.tenant_id, payload.purge_at, payload.days_left)
        await notices.mail_admins(tx, store, mailer, event.tenant_id, notice)

    async def on_export_completed(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        payload: TenantExportCompleted = event.payload
        notice = notices.export_completed(
            event.tenant_id, payload.export_id, payload.bytes, payload.records, payload.expires_at
        )
        await notices.mail_requester(
            tx, store, mailer, event.tenant_id, payload.requested_by, notice
        )

    async def on_export_failed(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        payload: TenantExportFailed = event.payload
        notice = notices.export_failed(event.tenant_id, payload.export_id, payload.reason)
        await notices.mail_requester(
            tx, store, mailer, event.tenant_id, payload.requested_by, notice
        )

    async def on_subprocessor_changed(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        """An announced change of the tenant's data processing terms: what changes, when,
        and how to object before then, to the owners and admins subscribed to
        legal-notices (nobody subscribed: no mail)."""
        payload: LegalSubprocessorChanged = event.payload
        notice = notices.legal_subprocessor_changed(event.tenant_id, payload)
        await notices.mail_subscribers(tx, store, mailer, event.tenant_id, LEGAL_NOTICES, notice)

    return {
        "account.created": on_account_created,
        "tenant.export_completed": on_export_completed,
        "tenant.export_failed": on_export_failed,
        "tenant.created": on_tenant_created,
        "apikey.used": on_apikey_used,
        "webhook.endpoint_disabled": on_endpoint_disabled,
        "tenant.offboarding_started": on_offboarding_started,
        "tenant.offboarding_reminder": on_offboarding_reminder,
        "legal.subprocessor_changed": on_subprocessor_changed,
    }
