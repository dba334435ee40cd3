"""The operational notices identity mails to a tenant's owners and admins (identity sends
every operational mail: it alone knows the addresses): what each says, and the one way
they are sent."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from tenantry_events.payloads.tenancy import LegalSubprocessorChanged, SubprocessorChange
from tenantry_identity.domain import LEGAL_NOTICES, TOPIC_ROLES, Topic
from tenantry_identity.store import IdentityStore
from tenantry_outbound.mail import MailError, MailSender


@dataclass(frozen=True, slots=True)
class Notice:
    subject: str
    text: str
    kind: str  # the X-Tenantry-Notice header: what a mail filter or a test looks for


@contextmanager
def redelivered_if_the_relay_fails() -> Iterator[None]:
    """A relay that is down or busy makes the event be redelivered later (ConnectionError),
    never dead-lettered: the mail is an effect the consumer retries like any other."""
    try:
        yield
    except MailError as exc:
        if exc.temporary:
            raise ConnectionError(str(exc)) from exc
        raise


async def mail_requester(
    tx: asyncpg.Connection,
    store: IdentityStore,
    mailer: MailSender,
    tenant_id: UUID,
    requested_by: str,
    notice: Notice,
) -> None:
    """To whoever asked ("user:<account id>" or "operator:<account id>"); a request made
    with an API key has no mailbox, so the tenant's owners and admins are told instead."""
    kind, _, subject = requested_by.partition(":")
    email = None
    if kind in ("user", "operator"):
        try:
            email = await store.active_email(tx, UUID(subject), operator=kind == "operator")
        except ValueError:
            email = None
    if email is None:
        await mail_admins(tx, store, mailer, tenant_id, notice)
        return
    with redelivered_if_the_relay_fails():
        await mailer.send(
            email, notice.subject, notice.text, headers={"X-Tenantry-Notice": notice.kind}
        )


async def mail_admins(
    tx: asyncpg.Connection,
    store: IdentityStore,
    mailer: MailSender,
    tenant_id: UUID,
    notice: Notice,
) -> None:
    """To each active owner and admin with a verified address."""
    for email in await store.admin_emails(tx, tenant_id):
        with redelivered_if_the_relay_fails():
            await mailer.send(
                email, notice.subject, notice.text, headers={"X-Tenantry-Notice": notice.kind}
            )


async def mail_subscribers(
    tx: asyncpg.Connection,
    store: IdentityStore,
    mailer: MailSender,
    tenant_id: UUID,
    topic: Topic,
    notice: Notice,
) -> None:
    """To each active owner and admin with a verified address who subscribed to `topic`
    (those of the roles the topic admits); nobody subscribed, nobody mailed."""
    for email in await store.subscriber_emails(tx, tenant_id, topic, TOPIC_ROLES[topic]):
        with redelivered_if_the_relay_fails():
            await mailer.send(
                email, notice.subject, notice.text, headers={"X-Tenantry-Notice": notice.kind}
            )


def endpoint_disabled(endpoint_id: str, url: str, reason: str, failing_since: object) -> Notice:
    why = {
        "gone": "it answered 410 Gone",
        "failing": f"every delivery to it has failed since {failing_since}",
    }.get(reason, reason)
    return Notice(
        "A webhook endpoint was disabled",
        f"Tenantry stopped sending webhooks to {url} (endpoint {endpoint_id}) because {why}.\n\n"
        "Messages for it are kept. Fix the endpoint, enable it again, and recover what failed "
        f"meanwhile (POST .../webhooks/endpoints/{endpoint_id}/recover).\n",
        "webhook-endpoint-disabled",
    )


def _what_to_do(tenant_id: UUID) -> str:
    tenant = f"/v1/tenants/{tenant_id}"
    return (
        "Until then the tenant's owners and admins can still sign in, read its data and "
        f"export it (POST {tenant}/exports). Nothing else is possible: other users, API "
        "keys and SCIM changes are refused, and webhooks are paused.\n\n"
        "Changed your mind? An owner can cancel the offboarding until the purge begins "
        f"(DELETE {tenant}/offboarding); the tenant then returns to the state it was in "
        "before.\n"
    )


def offboarding_started(tenant_id: UUID, purge_at: datetime, reason: str) -> Notice:
    purge_at = purge_at.astimezone(UTC)
    return Notice(
        f"Your tenant will be deleted on {purge_at:%Y-%m-%d}",
        f"Offboarding of tenant {tenant_id} has started ({reason}). All of its data will be "
        f"permanently deleted on {purge_at:%Y-%m-%d at %H:%M} UTC; a deletion certificate "
        "follows.\n\n" + _what_to_do(tenant_id),
        "tenant-offboarding-started",
    )


def offboarding_reminder(tenant_id: UUID, purge_at: datetime, days_left: int) -> Notice:
    purge_at = purge_at.astimezone(UTC)
    days = "1 day" if days_left == 1 else f"{days_left} days"
    return Notice(
        f"Your tenant will be deleted in {days}",
        f"Tenant {tenant_id} is being offboarded: all of its data will be permanently deleted "
        f"in {days}, on {purge_at:%Y-%m-%d at %H:%M} UTC.\n\n" + _what_to_do(tenant_id),
        "tenant-offboarding-reminder",
    )


def export_completed(
    tenant_id: UUID, export_id: UUID, size: int, records: int, expires_at: datetime
) -> Notice:
    exports = f"/v1/tenants/{tenant_id}/exports/{export_id}"
    return Notice(
        "Your data export is ready",
        f"The export {export_id} of tenant {tenant_id} is ready: {records} records,"
        f" {size} bytes, kept until {expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC.\n\n"
        f"Make a download link with POST {exports}/links (it is shown once, lives an hour"
        " and allows a few downloads), then download the archive from it. The archive's"
        " manifest is signed: its README says how to verify it.\n",
        "tenant-export-completed",
    )


def export_failed(tenant_id: UUID, export_id: UUID, reason: str) -> Notice:
    return Notice(
        "Your data export failed",
        f"The export {export_id} of tenant {tenant_id} could not be made: {reason}.\n\n"
        f"Request a new one (POST /v1/tenants/{tenant_id}/exports); if it fails again,"
        " contact the platform operator with the export's id.\n",
        "tenant-export-failed",
    )


def _change_line(change: SubprocessorChange) -> str:
    where = ", ".join(
        part
        for part in (
            f"processing in {change.country}" if change.country else "",
            f"transfers under {change.transfer_mechanism}" if change.transfer_mechanism else "",
        )
        if part
    )
    purpose = f": {change.purpose}" if change.purpose else ""
    return f"- {change.name} ({change.change}){purpose}" + (f" [{where}]" if where else "")


def legal_subprocessor_changed(tenant_id: UUID, notice: LegalSubprocessorChanged) -> Notice:
    """What changes in the tenant's data processing terms, from when, and how an owner or
    admin objects for the tenant before then (LEGAL_NOTICES subscribers only)."""
    effective_at = notice.effective_at.astimezone(UTC)
    if notice.kind == "document":
        what = " ".join(part for part in (notice.document or "a document", notice.version) if part)
        changed = f"A new version of {what} was published."
    else:
        changed = "Our list of sub-processors is changing."
    lines = "\n".join(_change_line(change) for change in notice.changes)
    objection = f"/v1/tenants/{tenant_id}/legal/notices/{notice.notice_id}/objection"
    return Notice(
        f"Changes to your data processing terms take effect on {effective_at:%Y-%m-%d}",
        f"{changed} {notice.summary}\n\n"
        + (f"What changes:\n{lines}\n\n" if lines else "")
        + f"It takes effect on {effective_at:%Y-%m-%d at %H:%M} UTC for tenant {tenant_id}"
        f" (notice {notice.notice_id}, published"
        f" {notice.published_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC).\n\n"
        "To object for the tenant before then, an owner or admin sends"
        f' POST {objection} with {{"reason": "..."}}; the platform follows up under the'
        " DPA.\n\n"
        f"You receive this because you subscribed to {LEGAL_NOTICES}. Unsubscribe with DELETE"
        f" /v1/tenants/{tenant_id}/accounts/<your account id>/subscriptions/{LEGAL_NOTICES}.\n",
        "legal-subprocessor-changed",
    )
