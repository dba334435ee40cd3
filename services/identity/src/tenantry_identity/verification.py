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

from tenantry_events.pg import Database
from tenantry_identity.domain import VERIFICATION_TTL_SECONDS, resend_wait
from tenantry_identity.store import IdentityStore
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
        self, store: IdentityStore, mailer: MailSender, clock: Clock, *, confirm_url: str
    ) -> None:
        self._store = store
        self._mailer = mailer
        self._clock = clock
        self._confirm_url = confirm_url

    async def send(
        self,
        tx: asyncpg.Connection,
        account_id: UUID,
        email: str,
        *,
        enforce_spacing: bool,
        committed_in: Database | None = None,
    ) -> datetime:
        """Mail a new verification link; returns when it expires. With `committed_in`, the
        link is saved in a transaction of its own, committed before the mail goes: a
        recipient who clicks at once must find it (a consumer's transaction commits only
        after its handler, the mail, returns). A redelivered event then mails a second
        link; both work."""
        now = self._clock.now()
        if enforce_spacing:
            sent = await self._store.verification_send_times(tx, account_id)
            wait = resend_wait([at.timestamp() for at in sent], now)
            if wait > 0:
                raise TooSoon(wait)
        token = secrets.token_urlsafe(32)
        created = utc(self._clock)
        expires_at = created + timedelta(seconds=VERIFICATION_TTL_SECONDS)
        if committed_in is None:
            await self._store.save_verification(
                tx, token, account_id=account_id, email=email, created_at=created,
                expires_at=expires_at,
            )  # fmt: skip
        else:
            async with committed_in.transaction(platform=True) as own:
                await self._store.save_verification(
                    own, token, account_id=account_id, email=email, created_at=created,
                    expires_at=expires_at,
                )  # fmt: skip
        link = f"{self._confirm_url}?token={token}"
        await self._mailer.send(
            email,
            "Verify your email address",
            "Confirm that this address is yours by opening this link within 24 hours:\n\n"
            f"{link}\n\nIf you did not expect this message, ignore it.\n",
        )
        return expires_at

    async def confirm(
        self, tx: asyncpg.Connection, token: str, password_hash: str | None = None
    ) -> UUID:
        """Confirm the address. An invited account without a password (a tenant's owner,
        an invite without one) sets it here: the link proves the mailbox."""
        pending = await self._store.verification_to_confirm(tx, token)
        if pending is None:
            raise VerificationRefused("invalid-verification-link", "This link is not valid", 404)
        if pending.used_at is not None:
            raise VerificationRefused("verification-link-used", "This link was already used", 410)
        if pending.expires_at <= datetime.fromtimestamp(self._clock.now(), UTC):
            raise VerificationRefused("verification-link-expired", "This link has expired", 410)
        if pending.email.lower() != pending.current_email.lower():
            raise VerificationRefused("verification-link-stale", "The address has changed", 410)
        if pending.needs_password:
            if password_hash is None:
                raise VerificationRefused(
                    "password-required", "Choose a password to finish setting up the account"
                )
            await self._store.set_first_password(tx, pending.account_id, password_hash)
        await self._store.use_verification(tx, token, utc(self._clock))
        # Said also when an earlier link proved the address already: every link used is
        # a change someone made, and the audit log shows each.
        await self._store.mark_email_verified(tx, pending.account_id, pending.email)
        return pending.account_id
