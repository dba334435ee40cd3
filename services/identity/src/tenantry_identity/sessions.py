"""Signing in and staying signed in (the service layer under the session routes and SSO):
access tokens signed with the active key, refresh tokens rotated once each, with reuse
revoking the whole family."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from uuid_utils.compat import uuid7

from tenantry_credentials.tokens import AUDIENCE, ISSUER, sign
from tenantry_events.pg import Database
from tenantry_http.auth import tenant_refusal
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

    async def sign_in_with_password(
        self, email: str, password: str, tenant_id: UUID | None
    ) -> TokenPair | None:
        """A new session; None for a wrong email or password or an account not active (the
        caller cannot tell which)."""
        async with self._db.transaction(platform=True) as tx:
            found = await self._store.account_for_login(tx, email.strip(), tenant_id)
            account, stored_hash = found if found else (None, None)
            if not await password_matches(stored_hash, password) or account is None:
                return None
            if account.status != "active":
                return None
            await self.refuse_by_tenant_state(account)
            return await self.issue(tx, account, uuid7())

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Each refresh token works once. Presenting a used one revokes its whole family
        (committed before RefreshTokenRefused is raised)."""
        reused = False
        try:
            async with self._db.transaction(platform=True) as tx:
                used = await self._store.use_refresh(tx, refresh_token)
                if used is None:
                    reused = True  # the family's revocation commits with this transaction
                else:
                    account = await self._store.get_account(tx, used[0])
                    if account is None or account.status != "active":
                        raise RefreshRefused()
                    await self.refuse_by_tenant_state(account)
                    return await self.issue(tx, account, used[1])
        except RefreshRefused:
            pass
        raise RefreshTokenRefused(reused=reused)
