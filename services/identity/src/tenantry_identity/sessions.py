"""Signing in and staying signed in (the service layer under the session routes and SSO):
access tokens signed with the active key, refresh tokens rotated once each, with reuse
revoking the whole family.

A session is a refresh token family. For a tenant's account, each sign-in says
session.started, each refresh session.refreshed and a reuse session.ended, in the
transaction that does it; a refused password sign-in says user.sign_in_failed in a small
transaction of its own (the refusal itself changes nothing), and only for a tenant identity
knows, so made-up tenant ids cannot make it write."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec
from uuid_utils.compat import uuid7

from tenantry_credentials.tokens import AUDIENCE, ISSUER, sign
from tenantry_events.actors import identify
from tenantry_events.payloads.identity import SessionRefreshed, SessionStarted, UserSignInFailed
from tenantry_events.pg import Database
from tenantry_http.auth import tenant_refusal
from tenantry_http.problems import Problem
from tenantry_identity.domain import ADMIN_ROLES
from tenantry_identity.keys import SigningKeys
from tenantry_identity.passwords import password_matches
from tenantry_identity.store import AccountRow, IdentityStore, RefreshRefused
from tenantry_projections.projections import PostgresTenantStatus


class TokenPair(msgspec.Struct, kw_only=True):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str


class RefreshTokenRefused(Exception):
    """A refresh token that gives no new tokens; `reused` when it had been used before (its
    whole session is revoked by now)."""

    def __init__(self, *, reused: bool) -> None:
        super().__init__("refresh token reused" if reused else "refresh token refused")
        self.reused = reused


class Sessions:
    def __init__(
        self,
        db: Database,
        store: IdentityStore,
        signing_keys: SigningKeys,
        *,
        access_token_ttl: timedelta,
        refresh_token_ttl: timedelta,
        issuer: str = ISSUER,
    ) -> None:
        self._issuer = issuer  # the region's (docs/residency.md): tokens name their region
        self._db = db
        self._store = store
        self._signing_keys = signing_keys
        self._tenants = PostgresTenantStatus(db)
        self._access_token_ttl = int(access_token_ttl.total_seconds())
        self._refresh_token_ttl = refresh_token_ttl

    async def refuse_by_tenant_state(self, account: AccountRow) -> None:
        """No new tokens for the users of a tenant that is not active (identity's own tenant
        projection), but for the owners and admins of an offboarding one (they may sign in
        to read and export): suspended, offboarding, or any state a later lifecycle adds
        is refused by default, with the tenant guard's answer (tenant_refusal)."""
        if account.tenant_id is not None:
            status = await self._tenants.status(account.tenant_id)
            if status is None:
                return  # the projection has not heard of the tenant yet
            refusal = tenant_refusal(status, admin_access=account.role in ADMIN_ROLES)
            if refusal is not None:
                raise refusal

    async def issue(
        self, tx: asyncpg.Connection, account: AccountRow, family_id: UUID
    ) -> TokenPair:
        """An access token for `account` and a refresh token of the session `family_id`."""
        now = int(time.time())
        kind = "operator" if account.role == "operator" else "user"
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": AUDIENCE,
            "sub": str(account.account_id),
            "kind": kind,
            "roles": [account.role],
            "ev": account.email_verified,
            "sid": str(family_id),
            "jti": str(uuid7()),
            "iat": now,
            "nbf": now,
            "exp": now + self._access_token_ttl,
        }
        if account.tenant_id is not None:
            claims["tid"] = str(account.tenant_id)
        token = sign(claims, await self._signing_keys.active())
        refresh = await self._store.issue_refresh(
            tx, account.account_id, family_id, self._refresh_token_ttl
        )
        return TokenPair(
            access_token=token,
            token_type="Bearer",  # noqa: S106  (the OAuth token type, not a secret)
            expires_in=self._access_token_ttl,
            refresh_token=refresh,
        )

    async def started(
        self,
        tx: asyncpg.Connection,
        account: AccountRow,
        family_id: UUID,
        method: Literal["password", "sso"],
        connection_id: UUID | None = None,
    ) -> None:
        """session.started, for a tenant's account (an operator's session is no tenant's)."""
        if account.tenant_id is not None:
            identify("user" if method == "password" else "sso", str(account.account_id))
            payload = SessionStarted(
                account_id=account.account_id,
                session_id=family_id,
                method=method,
                connection_id=connection_id,
            )
            await self._store.record(
                tx, payload, tenant_id=account.tenant_id, subject=str(family_id)
            )

    async def sign_in_with_password(
        self, email: str, password: str, tenant_id: UUID | None
    ) -> TokenPair | None:
        """A new session; None for a wrong email or password or an account not active (the
        caller cannot tell which). The tenant's state may refuse it (its Problem)."""
        refused: Problem | None = None
        async with self._db.transaction(platform=True) as tx:
            found = await self._store.account_for_login(tx, email.strip(), tenant_id)
            account, stored_hash = found if found else (None, None)
            if not await password_matches(stored_hash, password) or account is None:
                reason = "unknown-account" if account is None else "wrong-password"
            elif account.status != "active":
                reason = "account-disabled"
            else:
                try:
                    await self.refuse_by_tenant_state(account)
                except Problem as problem:
                    refused, reason = problem, problem.slug
                else:
                    family_id = uuid7()
                    tokens = await self.issue(tx, account, family_id)
                    await self.started(tx, account, family_id, "password")
                    return tokens
        await self.sign_in_failed(tenant_id, account, reason)
        if refused is not None:
            raise refused
        return None

    async def sign_in_failed(
        self, tenant_id: UUID | None, account: AccountRow | None, reason: str
    ) -> None:
        """user.sign_in_failed for a refused password sign-in, in its own transaction (the
        refusal commits nothing else). Only in a tenant identity knows (its account was
        found, or the tenant projection has it): a sign-in naming a made-up tenant writes
        nothing. An operator's (no tenant) is no tenant's audit."""
        if tenant_id is None:
            return
        async with self._db.transaction(tenant_id=tenant_id) as tx:
            if account is None and not await self._store.tenant_known(tx, tenant_id):
                return
            account_id = account.account_id if account is not None else None
            payload = UserSignInFailed(
                method="password", reason=reason, account_id=account_id, connection_id=None
            )
            subject = str(account_id or tenant_id)
            await self._store.record(tx, payload, tenant_id=tenant_id, subject=subject)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Each refresh token works once. Presenting a used one revokes its whole family
        (committed before RefreshTokenRefused is raised)."""
        reused = False
        try:
            async with self._db.transaction(platform=True) as tx:
                used = await self._store.use_refresh(tx, refresh_token)
                account = await self._store.get_account(tx, used.account_id)
                if used.reused:
                    # The family's revocation commits with this transaction, and says so.
                    reused = True
                    tenant_id = account.tenant_id if account is not None else None
                    await self._store.session_ended(
                        tx, tenant_id, used.account_id, used.family_id, "refresh_token_reused"
                    )
                else:
                    if account is None or account.status != "active":
                        raise RefreshRefused()
                    await self.refuse_by_tenant_state(account)
                    tokens = await self.issue(tx, account, used.family_id)
                    if account.tenant_id is not None:
                        identify("user", str(account.account_id))
                        payload = SessionRefreshed(
                            account_id=account.account_id, session_id=used.family_id
                        )
                        await self._store.record(
                            tx, payload, tenant_id=account.tenant_id, subject=str(used.family_id)
                        )
                    return tokens
        except RefreshRefused:
            pass
        raise RefreshTokenRefused(reused=reused)
