"""Email verification: issue a single-use link, mail it, confirm it.

The link carries a 256-bit random token; only its SHA-256 is stored. Confirming marks the
token used, sets email_verified on the account (aggregate version + 1) and emits
user.email_verified, all in one transaction.

Unverified accounts may sign in and read, but may not change anything: routes that write
declare `verified_email=True`, which the pipeline enforces for user principals (operators
and API keys are not people with mailboxes).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from tenantry_events.envelope import new_event
from tenantry_events.payloads.identity import EmailVerified
from tenantry_events.storage import PostgresEventStore
from tenantry_identity.domain import VERIFICATION_TTL_SECONDS, resend_wait
from tenantry_identity.store import sha256
from tenantry_outbound.mail import MailSender
from tenantry_platform.clock import Clock, utc


class VerificationRefused(Exception):
    def __init__(self, slug: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.slug = slug
        self.status = status


class TooSoon(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry in {retry_after:.0f}s")
        self.retry_after = retry_after


class EmailVerification:
    def __init__(
        self,
        events: PostgresEventStore,
        mailer: MailSender,
        clock: Clock,
        *,
        confirm_url: str,
        source: str,
        region: str,
    ) -> None:
        self._events = events
        self._mailer = mailer
        self._clock = clock
        self._confirm_url = confirm_url
        self._source = source
        self._region = region

    async def send(
        self, tx: asyncpg.Connection, account_id: UUID, email: str, *, enforce_spacing: bool
    ) -> None:
        now = self._clock.now()
        if enforce_spacing:
            rows = await tx.fetch(
                "SELECT created_at FROM email_verifications WHERE account_id = $1", account_id
            )
            wait = resend_wait([r["created_at"].timestamp() for r in rows], now)
            if wait > 0:
                raise TooSoon(wait)
        token = secrets.token_urlsafe(32)
        created = utc(self._clock)
        await tx.execute(
            """INSERT INTO email_verifications (token_sha256, account_id, email, created_at,
                                                expires_at)
               VALUES ($1, $2, $3, $4, $5)""",
            sha256(token),
            account_id,
            email,
            created,
            created + timedelta(seconds=VERIFICATION_TTL_SECONDS),
        )
        link = f"{self._confirm_url}?token={token}"
        await self._mailer.send(
            email,
            "Verify your email address",
            "Confirm that this address is yours by opening this link within 24 hours:\n\n"
            f"{link}\n\nIf you did not expect this message, ignore it.\n",
        )

    async def confirm(
        self, tx: asyncpg.Connection, token: str, password_hash: str | None = None
    ) -> UUID:
        """Confirm the address. An invited account without a password (a tenant's owner,
        an invite without one) sets it here: the link proves the mailbox."""
        row = await tx.fetchrow(
            """SELECT v.account_id, v.email, v.expires_at, v.used_at, a.email AS current_email,
                      a.tenant_id, a.version, a.email_verified,
                      a.password_hash IS NULL AS needs_password
               FROM email_verifications v JOIN accounts a USING (account_id)
               WHERE v.token_sha256 = $1 FOR UPDATE OF v, a""",
            sha256(token),
        )
        if row is None:
            raise VerificationRefused("invalid-verification-link", "This link is not valid", 404)
        if row["used_at"] is not None:
            raise VerificationRefused("verification-link-used", "This link was already used", 410)
        if row["expires_at"] <= datetime.fromtimestamp(self._clock.now(), UTC):
            raise VerificationRefused("verification-link-expired", "This link has expired", 410)
        if row["email"].lower() != row["current_email"].lower():
            raise VerificationRefused("verification-link-stale", "The address has changed", 410)
        if row["needs_password"]:
            if password_hash is None:
                raise VerificationRefused(
                    "password-required", "Choose a password to finish setting up the account"
                )
            await tx.execute(
                "UPDATE accounts SET password_hash = $2 WHERE account_id = $1",
                row["account_id"],
                password_hash,
            )
        await tx.execute(
            "UPDATE email_verifications SET used_at = $2 WHERE token_sha256 = $1",
            sha256(token),
            utc(self._clock),
        )
        account_id: UUID = row["account_id"]
        if not row["email_verified"]:
            version = row["version"] + 1
            await tx.execute(
                "UPDATE accounts SET email_verified = true, version = $2 WHERE account_id = $1",
                account_id,
                version,
            )
            event = new_event(
                EmailVerified(account_id=account_id, email=row["email"]),
                tenant_id=row["tenant_id"],
                subject=str(account_id),
                aggregate_version=version,
                source=self._source,
                region=self._region,
            )
            await self._events.append(tx, f"account-{account_id}", version - 1, [event])
        return account_id
