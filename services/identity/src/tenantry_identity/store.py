"""Postgres edge of identity: accounts, refresh tokens and API keys (state rows written in
the same transaction as their events)."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
import msgspec
from uuid_utils.compat import uuid4, uuid7

from tenantry_events.envelope import new_event
from tenantry_events.payloads.identity import (
    AccountCreated,
    AccountDisabled,
    AccountEnabled,
    AccountRoleChanged,
    AccountSubscriptionChanged,
    ApiKeyCreated,
    ApiKeyRevoked,
    EmailVerified,
    SessionEnded,
)
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_regions.regions import routable_token

PLATFORM_TENANT = UUID(int=0)  # the envelope's tenant for operator-level events

# Usage counted in identity's own rows, inside the creating transaction (the plan's limits).
SEATS_IN_USE = "SELECT count(*) FROM accounts WHERE tenant_id = $1 AND status = 'active'"
API_KEYS_IN_USE = "SELECT count(*) FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NULL"


REFRESH_TOKEN = "rt"  # noqa: S105 (the kind of token, not a secret)
SSO_CODE = "code"


class AccountRow(msgspec.Struct, frozen=True, kw_only=True):
    account_id: UUID
    tenant_id: UUID | None
    email: str
    role: str
    status: str
    email_verified: bool
    created_at: datetime


class ApiKeyRow(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    tenant_id: UUID
    display_prefix: str
    name: str
    kind: str
    owner_account_id: UUID | None
    scopes: list[str]
    expires_at: datetime | None
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    last_used_at: datetime | None


class EmailTaken(Exception):
    pass


class RefreshRefused(Exception):
    """Unknown, expired or revoked refresh token."""


class RefreshUse(NamedTuple):
    """A refresh token presented: its account and session (refresh token family), and
    whether it had been used before (then the whole session is revoked by now)."""

    account_id: UUID
    family_id: UUID
    reused: bool


class PendingVerification(msgspec.Struct, frozen=True, kw_only=True):
    """A mailed verification link's row, with the account it is for (locked by the read)."""

    account_id: UUID
    email: str  # the address the link was mailed to
    expires_at: datetime
    used_at: datetime | None
    current_email: str  # the account's address now
    tenant_id: UUID | None
    email_verified: bool
    needs_password: bool


_ACCOUNT = "account_id, tenant_id, email, role, status, email_verified, created_at"
_KEY = (
    "key_id, tenant_id, display_prefix, name, kind, owner_account_id, scopes, expires_at,"
    " created_at, created_by, revoked_at, last_used_at"
)


def sha256(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


ACCOUNT_STREAM = "account-"  # + account_id
API_KEY_STREAM = "apikey-"  # + key_id


def account_stream(account_id: UUID) -> str:
    return f"{ACCOUNT_STREAM}{account_id}"


def api_key_stream(key_id: str) -> str:
    return f"{API_KEY_STREAM}{key_id}"


class EventsOfIdentity:
    """What identity's stores share: the event store their aggregates append to, and the
    outbox that takes operational events (of no stream) in the caller's transaction."""

    def __init__(
        self,
        events: PostgresEventStore,
        *,
        source: str,
        region: str,
        outbox: PostgresOutbox | None = None,
    ) -> None:
        """`outbox` takes the operational events (`record`); the services always give it
        (a store built without one, as a test's sweep is, cannot record them)."""
        self._events = events
        self._outbox = outbox
        self._source = source
        self._region = region

    def _event(self, payload: Any, tenant_id: UUID | None, subject: str, version: int) -> Any:
        return new_event(
            payload,
            tenant_id=tenant_id or PLATFORM_TENANT,
            subject=subject,
            aggregate_version=version,
            source=self._source,
            region=self._region,
        )

    async def record(
        self, tx: asyncpg.Connection, payload: Any, *, tenant_id: UUID, subject: str
    ) -> None:
        """An operational event (of no stream: aggregate version 0), straight to the outbox
        in the caller's transaction: sessions, sign-in failures, verification mails, SSO
        domain changes."""
        if self._outbox is None:
            raise RuntimeError(f"this {type(self).__name__} was built without an outbox")
        await self._outbox.put(tx, [self._event(payload, tenant_id, subject, 0)])


class IdentityStore(EventsOfIdentity):
    async def tenant_known(self, tx: asyncpg.Connection, tenant_id: UUID) -> bool:
        """Whether identity's tenant projection knows the tenant, and it is not purged."""
        status = await tx.fetchval(
            "SELECT status FROM tenant_projection WHERE tenant_id = $1", tenant_id
        )
        return status is not None and status != "purged"

    # ------------------------------------------------------------------ accounts
    # Every change of an account's state goes through `_account_changed`: the row is written
    # here, and the event that says so is appended to the account's stream at the version
    # the row now holds (the one seam to turn into an event-sourced aggregate).
    async def _account_changed(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID | None,
        account_id: UUID,
        version: int,
        payload: Any,
    ) -> None:
        await self._events.append(
            tx,
            account_stream(account_id),
            version - 1,
            [self._event(payload, tenant_id, str(account_id), version)],
        )

    async def create_account(
        self,
        tx: asyncpg.Connection,
        *,
        tenant_id: UUID | None,
        email: str,
        role: str,
        password_hash: str | None,
        created_by: str,
        email_verified: bool = False,
        account_id: UUID | None = None,
    ) -> AccountRow:
        """`account_id` is the caller's when it allocates one (provisioning names the
        account of a SCIM user, so a retry or a re-create finds the same account)."""
        account_id = account_id or uuid7()
        try:
            async with tx.transaction():
                row = await tx.fetchrow(
                    f"""INSERT INTO accounts (account_id, tenant_id, email, role, status,
                                              password_hash, email_verified, version)
                        VALUES ($1, $2, $3, $4, 'active', $5, $6, 1) RETURNING {_ACCOUNT}""",
                    account_id,
                    tenant_id,
                    email,
                    role,
                    password_hash,
                    email_verified,
                )
        except asyncpg.UniqueViolationError:
            raise EmailTaken(email) from None
        assert row is not None
        account = AccountRow(**dict(row))
        if tenant_id is not None:
            payload = AccountCreated(
                account_id=account_id,
                email=email,
                role=role,  # type: ignore[arg-type]
                status="active",
                email_verified=email_verified,
                created_by=created_by,
            )
            await self._account_changed(tx, tenant_id, account_id, 1, payload)
        return account

    async def lock_operator_bootstrap(self, tx: asyncpg.Connection) -> None:
        """Bootstraps wait for each other: of two at once, only one finds no operator."""
        await tx.execute("SELECT pg_advisory_xact_lock(hashtext('identity.bootstrap'))")

    async def operators_exist(self, tx: asyncpg.Connection) -> bool:
        return bool(
            await tx.fetchval("SELECT EXISTS (SELECT 1 FROM accounts WHERE role = 'operator')")
        )

    async def account_for_login(
        self, tx: asyncpg.Connection, email: str, tenant_id: UUID | None
    ) -> tuple[AccountRow, str | None] | None:
        row = await tx.fetchrow(
            f"""SELECT {_ACCOUNT}, password_hash FROM accounts
                WHERE lower(email) = lower($1) AND tenant_id IS NOT DISTINCT FROM $2""",
            email,
            tenant_id,
        )
        if row is None:
            return None
        data = dict(row)
        password_hash = data.pop("password_hash")
        return AccountRow(**data), password_hash

    async def get_account(self, tx: asyncpg.Connection, account_id: UUID) -> AccountRow | None:
        row = await tx.fetchrow(
            f"SELECT {_ACCOUNT} FROM accounts WHERE account_id = $1", account_id
        )
        return AccountRow(**dict(row)) if row else None

    async def list_accounts(
        self, tx: asyncpg.Connection, tenant_id: UUID, *, after: str | None, limit: int
    ) -> list[AccountRow]:
        rows = await tx.fetch(
            f"""SELECT {_ACCOUNT} FROM accounts WHERE tenant_id = $1
                AND ($2::uuid IS NULL OR account_id > $2::uuid)
                ORDER BY account_id LIMIT $3""",
            tenant_id,
            after,
            limit,
        )
        return [AccountRow(**dict(r)) for r in rows]

    # ------------------------------------------------------------------ refresh tokens
    # Refresh tokens and SSO codes name their region (docs/residency.md): their exchange
    # is sent home from any region.
    async def issue_refresh(
        self, tx: asyncpg.Connection, account_id: UUID, family_id: UUID, ttl: timedelta
    ) -> str:
        token = routable_token(REFRESH_TOKEN, self._region)  # rt_<region>.<random>
        await tx.execute(
            """INSERT INTO refresh_tokens (token_sha256, family_id, account_id, expires_at)
               VALUES ($1, $2, $3, now() + $4::interval)""",
            sha256(token),
            family_id,
            account_id,
            ttl,
        )
        return token

    async def use_refresh(self, tx: asyncpg.Connection, token: str) -> RefreshUse:
        """Mark a refresh token used and return its account and family. A token used twice
        is a theft signal: the whole family is revoked (RFC 9700 refresh token rotation)
        and the use says `reused`, so the caller commits the revocation before refusing."""
        row = await tx.fetchrow(
            """SELECT family_id, account_id, used_at, revoked_at, expires_at < now() AS expired
               FROM refresh_tokens WHERE token_sha256 = $1 FOR UPDATE""",
            sha256(token),
        )
        if row is None or row["revoked_at"] is not None or row["expired"]:
            raise RefreshRefused()
        if row["used_at"] is not None:
            await tx.execute(
                "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1"
                " AND revoked_at IS NULL",
                row["family_id"],
            )
            return RefreshUse(row["account_id"], row["family_id"], reused=True)
        await tx.execute(
            "UPDATE refresh_tokens SET used_at = now() WHERE token_sha256 = $1", sha256(token)
        )
        return RefreshUse(row["account_id"], row["family_id"], reused=False)

    # ------------------------------------------------------------------ API keys
    async def create_api_key(
        self,
        tx: asyncpg.Connection,
        *,
        tenant_id: UUID,
        key: str,
        display_prefix: str,
        name: str,
        kind: str,
        owner_account_id: UUID | None,
        scopes: list[str],
        expires_at: datetime | None,
        created_by: str,
    ) -> ApiKeyRow:
        key_id = f"key_{uuid4().hex[:20]}"
        digest = sha256(key)
        row = await tx.fetchrow(
            f"""INSERT INTO api_keys (key_id, tenant_id, key_sha256, display_prefix, name, kind,
                                      owner_account_id, scopes, expires_at, created_by, version)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1) RETURNING {_KEY}""",
            key_id,
            tenant_id,
            digest,
            display_prefix,
            name,
            kind,
            owner_account_id,
            scopes,
            expires_at,
            created_by,
        )
        payload = ApiKeyCreated(
            key_id=key_id,
            key_sha256=digest.hex(),
            display_prefix=display_prefix,
            name=name,
            kind="personal" if kind == "personal" else "service",
            owner_account_id=owner_account_id,
            scopes=scopes,
            expires_at=expires_at,
            created_by=created_by,
        )
        await self._events.append(
            tx, api_key_stream(key_id), 0, [self._event(payload, tenant_id, key_id, 1)]
        )
        assert row is not None
        return ApiKeyRow(**dict(row))

    async def list_api_keys(self, tx: asyncpg.Connection, tenant_id: UUID) -> list[ApiKeyRow]:
        rows = await tx.fetch(
            f"SELECT {_KEY} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id",
            tenant_id,
        )
        return [ApiKeyRow(**dict(r)) for r in rows]

    async def revoke_api_key(
        self, tx: asyncpg.Connection, tenant_id: UUID, key_id: str, revoked_by: str, reason: str
    ) -> ApiKeyRow | None:
        row = await tx.fetchrow(
            f"""UPDATE api_keys SET revoked_at = now(), version = version + 1
                WHERE tenant_id = $1 AND key_id = $2 AND revoked_at IS NULL
                RETURNING {_KEY}, key_sha256, version""",
            tenant_id,
            key_id,
        )
        if row is None:
            return None
        data = dict(row)
        digest, version = data.pop("key_sha256"), data.pop("version")
        payload = ApiKeyRevoked(
            key_id=key_id, key_sha256=digest.hex(), reason=reason, revoked_by=revoked_by
        )
        await self._events.append(
            tx,
            api_key_stream(key_id),
            version - 1,
            [self._event(payload, tenant_id, key_id, version)],
        )
        return ApiKeyRow(**data)

    async def _change_status(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        account_id: UUID,
        status: str,
        payload: AccountEnabled | AccountDisabled,
    ) -> AccountRow | None:
        """Move an account to `status` and append the event that says so; None if it was
        already there (or is not in this tenant)."""
        row = await tx.fetchrow(
            f"""UPDATE accounts SET status = $3, version = version + 1
                WHERE tenant_id = $1 AND account_id = $2 AND status <> $3
                RETURNING {_ACCOUNT}, version""",
            tenant_id,
            account_id,
            status,
        )
        if row is None:
            return None
        data = dict(row)
        await self._account_changed(tx, tenant_id, account_id, data.pop("version"), payload)
        return AccountRow(**data)

    async def enable_account(
        self, tx: asyncpg.Connection, tenant_id: UUID, account_id: UUID, *, enabled_by: str
    ) -> AccountRow | None:
        """Active again; None if it was not disabled. What ended when it was disabled
        (sessions, personal keys) stays ended: the user signs in afresh."""
        payload = AccountEnabled(account_id=account_id, enabled_by=enabled_by)
        return await self._change_status(tx, tenant_id, account_id, "active", payload)

    async def disable_account(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        account_id: UUID,
        *,
        disabled_by: str,
        reason: str,
    ) -> AccountRow | None:
        """Disable the account, end its sessions and revoke its personal API keys (they die
        with the user), all in one transaction."""
        payload = AccountDisabled(account_id=account_id, reason=reason, disabled_by=disabled_by)
        account = await self._change_status(tx, tenant_id, account_id, "disabled", payload)
        if account is None:
            return None
        await tx.execute(
            "UPDATE refresh_tokens SET revoked_at = now()"
            " WHERE account_id = $1 AND revoked_at IS NULL",
            account_id,
        )
        personal = await tx.fetch(
            "SELECT key_id FROM api_keys WHERE owner_account_id = $1 AND revoked_at IS NULL",
            account_id,
        )
        for key in personal:
            await self.revoke_api_key(
                tx, tenant_id, key["key_id"], disabled_by, "the owning account was disabled"
            )
        return account

    async def account_by_email(
        self, tx: asyncpg.Connection, tenant_id: UUID, email: str
    ) -> AccountRow | None:
        row = await tx.fetchrow(
            f"SELECT {_ACCOUNT} FROM accounts WHERE tenant_id = $1 AND lower(email) = lower($2)",
            tenant_id,
            email,
        )
        return AccountRow(**dict(row)) if row else None

    async def change_role(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        account_id: UUID,
        role: str,
        *,
        changed_by: str,
    ) -> AccountRow | None:
        """Give the account `role`; None if it had it already. Owners keep their role: an
        IdP group cannot demote the tenant's owner."""
        before = await tx.fetchval(
            "SELECT role FROM accounts WHERE tenant_id = $1 AND account_id = $2 FOR UPDATE",
            tenant_id,
            account_id,
        )
        if before is None or before == role or before == "owner":
            return None
        row = await tx.fetchrow(
            f"""UPDATE accounts SET role = $3, version = version + 1
                WHERE tenant_id = $1 AND account_id = $2 RETURNING {_ACCOUNT}, version""",
            tenant_id,
            account_id,
            role,
        )
        assert row is not None
        data = dict(row)
        version = data.pop("version")
        payload = AccountRoleChanged(
            account_id=account_id,
            role=role,  # type: ignore[arg-type]
            previous_role=before,
            changed_by=changed_by,
        )
        await self._account_changed(tx, tenant_id, account_id, version, payload)
        return AccountRow(**data)

    async def end_sessions(
        self, tx: asyncpg.Connection, family_ids: list[UUID], *, reason: str
    ) -> int:
        """End sessions (refresh token families): logout, single logout. Each session of a
        tenant's account that this ends says so (session.ended, `reason`); one that had
        ended already says nothing again. Returns how many sessions ended."""
        rows = await tx.fetch(
            """WITH ended AS (
                   UPDATE refresh_tokens SET revoked_at = now()
                   WHERE family_id = ANY($1::uuid[]) AND revoked_at IS NULL
                   RETURNING family_id, account_id)
               SELECT DISTINCT e.family_id, e.account_id, a.tenant_id
               FROM ended e LEFT JOIN accounts a USING (account_id)
               ORDER BY e.family_id""",
            family_ids,
        )
        for row in rows:
            await self.session_ended(
                tx, row["tenant_id"], row["account_id"], row["family_id"], reason
            )
        return len(rows)

    async def session_ended(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID | None,
        account_id: UUID,
        family_id: UUID,
        reason: str,
    ) -> None:
        """session.ended for a tenant's account (an operator's session is no tenant's)."""
        if tenant_id is not None:
            payload = SessionEnded(account_id=account_id, session_id=family_id, reason=reason)
            await self.record(tx, payload, tenant_id=tenant_id, subject=str(family_id))

    # ------------------------------------------------------------------ email verification
    async def verification_send_times(
        self, tx: asyncpg.Connection, account_id: UUID
    ) -> list[datetime]:
        rows = await tx.fetch(
            "SELECT created_at FROM email_verifications WHERE account_id = $1", account_id
        )
        return [r["created_at"] for r in rows]

    async def save_verification(
        self,
        tx: asyncpg.Connection,
        token: str,
        *,
        account_id: UUID,
        email: str,
        created_at: datetime,
        expires_at: datetime,
    ) -> None:
        """Only the token's SHA-256 is stored: the link in the mailbox is the one copy."""
        await tx.execute(
            """INSERT INTO email_verifications (token_sha256, account_id, email, created_at,
                                                expires_at)
               VALUES ($1, $2, $3, $4, $5)""",
            sha256(token),
            account_id,
            email,
            created_at,
            expires_at,
        )

    async def verification_to_confirm(
        self, tx: asyncpg.Connection, token: str
    ) -> PendingVerification | None:
        row = await tx.fetchrow(
            """SELECT v.account_id, v.email, v.expires_at, v.used_at, a.email AS current_email,
                      a.tenant_id, a.email_verified, a.password_hash IS NULL AS needs_password
               FROM email_verifications v JOIN accounts a USING (account_id)
               WHERE v.token_sha256 = $1 FOR UPDATE OF v, a""",
            sha256(token),
        )
        return PendingVerification(**dict(row)) if row else None

    async def use_verification(self, tx: asyncpg.Connection, token: str, at: datetime) -> None:
        await tx.execute(
            "UPDATE email_verifications SET used_at = $2 WHERE token_sha256 = $1",
            sha256(token),
            at,
        )

    async def set_first_password(
        self, tx: asyncpg.Connection, account_id: UUID, password_hash: str
    ) -> None:
        """An invited account's password, set through its verification link (a secret: no
        event says what it is, and the account's version does not move)."""
        await tx.execute(
            "UPDATE accounts SET password_hash = $2 WHERE account_id = $1",
            account_id,
            password_hash,
        )

    async def mark_email_verified(
        self, tx: asyncpg.Connection, account_id: UUID, email: str
    ) -> None:
        """The account's address is proven (user.email_verified), also when it was proven
        before (another of its links used now: the address is proven again, and says so)."""
        row = await tx.fetchrow(
            """UPDATE accounts SET email_verified = true, version = version + 1
               WHERE account_id = $1 RETURNING tenant_id, version""",
            account_id,
        )
        if row is not None:
            payload = EmailVerified(account_id=account_id, email=email)
            await self._account_changed(tx, row["tenant_id"], account_id, row["version"], payload)

    # ------------------------------------------------------------------ what consumers record
    async def record_api_key_use(
        self, tx: asyncpg.Connection, tenant_id: UUID, key_id: str, used_at: datetime
    ) -> None:
        """apikey.used from any service: the latest use wins, whatever the delivery order."""
        await tx.execute(
            """UPDATE api_keys SET last_used_at = greatest(last_used_at, $2)
               WHERE key_id = $1 AND tenant_id = $3""",
            key_id,
            used_at,
            tenant_id,
        )

    async def active_email(
        self, tx: asyncpg.Connection, account_id: UUID, *, operator: bool = False
    ) -> str | None:
        """The address of an active account (a tenant's user, or an operator), if any.
        Operators belong to no tenant, so a tenant-scoped transaction (a consumer's) cannot
        see their row: for this one read the scope is widened, then put back."""
        scope = await tx.fetchval("SELECT current_setting('app.platform', true)")
        if operator:
            await tx.execute("SELECT set_config('app.platform', 'on', true)")
        try:
            email = await tx.fetchval(
                "SELECT email FROM accounts WHERE account_id = $1 AND status = 'active'"
                " AND (tenant_id IS NULL) = $2",
                account_id,
                operator,
            )
        finally:
            if operator:
                await tx.execute("SELECT set_config('app.platform', $1, true)", scope or "")
        return str(email) if email is not None else None

    async def admin_emails(self, tx: asyncpg.Connection, tenant_id: UUID) -> list[str]:
        """Where a tenant's operational notices go: its active owners and admins whose
        addresses are verified."""
        rows = await tx.fetch(
            """SELECT email FROM accounts WHERE tenant_id = $1 AND status = 'active'
                 AND role IN ('owner', 'admin') AND email_verified""",
            tenant_id,
        )
        return [r["email"] for r in rows]

    # ------------------------------------------------------------------ notice subscriptions
    # Operational rows (no stream): each change appends account.subscription_changed to the
    # outbox in the caller's transaction, so the audit log records who changed what.
    async def subscriptions(
        self, tx: asyncpg.Connection, tenant_id: UUID, account_id: UUID
    ) -> list[str]:
        """The topics the account is subscribed to, in name order."""
        rows = await tx.fetch(
            """SELECT topic FROM notice_subscriptions
               WHERE tenant_id = $1 AND account_id = $2 ORDER BY topic""",
            tenant_id,
            account_id,
        )
        return [r["topic"] for r in rows]

    async def subscribe(
        self, tx: asyncpg.Connection, tenant_id: UUID, account_id: UUID, topic: str
    ) -> bool:
        """Subscribe the account to `topic`; False (and no event) if it was already."""
        added = await tx.fetchval(
            """INSERT INTO notice_subscriptions (tenant_id, account_id, topic)
               VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true""",
            tenant_id,
            account_id,
            topic,
        )
        if added:
            payload = AccountSubscriptionChanged(
                account_id=account_id, topic=topic, subscribed=True
            )
            await self.record(tx, payload, tenant_id=tenant_id, subject=str(account_id))
        return bool(added)

    async def unsubscribe(
        self, tx: asyncpg.Connection, tenant_id: UUID, account_id: UUID, topic: str
    ) -> bool:
        """End the account's subscription to `topic`; False (and no event) if it had none."""
        removed = await tx.fetchval(
            """DELETE FROM notice_subscriptions
               WHERE tenant_id = $1 AND account_id = $2 AND topic = $3 RETURNING true""",
            tenant_id,
            account_id,
            topic,
        )
        if removed:
            payload = AccountSubscriptionChanged(
                account_id=account_id, topic=topic, subscribed=False
            )
            await self.record(tx, payload, tenant_id=tenant_id, subject=str(account_id))
        return bool(removed)

    async def subscriber_emails(
        self, tx: asyncpg.Connection, tenant_id: UUID, topic: str, roles: tuple[str, ...]
    ) -> list[str]:
        """Where a notice of `topic` goes: the tenant's active accounts of `roles` with a
        verified address that subscribed to it (as admin_emails, opted in)."""
        rows = await tx.fetch(
            """SELECT a.email FROM accounts a
                 JOIN notice_subscriptions s ON s.account_id = a.account_id
               WHERE a.tenant_id = $1 AND s.tenant_id = $1 AND s.topic = $2
                 AND a.status = 'active' AND a.role = ANY($3::text[]) AND a.email_verified
               ORDER BY a.email""",
            tenant_id,
            topic,
            list(roles),
        )
        return [r["email"] for r in rows]
