"""Accounts (the service layer under the account, provisioning and SSO routes): every new
account of a tenant takes a seat here, whichever way it comes (an invite, SCIM, an SSO
just-in-time login), and SCIM's provisioned state is applied here.

The account's own state changes (created, enabled, disabled, role, email verified) are
written by IdentityStore, each with its event (see `IdentityStore._account_changed`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.envelope import new_event
from tenantry_events.payloads.identity import UserJitProvisioned
from tenantry_events.pg import Database
from tenantry_events.storage import PostgresOutbox
from tenantry_guardrails.plan_limits import guard_quantity
from tenantry_http.problems import Problem
from tenantry_identity.store import SEATS_IN_USE, AccountRow, EmailTaken, IdentityStore

DEPROVISIONED = "deprovisioned by the identity provider (SCIM)"


@dataclass(frozen=True)
class Accounts:
    db: Database
    store: IdentityStore
    outbox: PostgresOutbox
    source: str  # of the operational events emitted here
    region: str

    async def bootstrap_operator(self, email: str, password_hash: str) -> AccountRow:
        """The first platform operator (409 once one exists)."""
        async with self.db.transaction(platform=True) as tx:
            await self.store.lock_operator_bootstrap(tx)
            if await self.store.operators_exist(tx):
                raise Problem(409, "already-bootstrapped", "An operator already exists")
            return await self.store.create_account(
                tx,
                tenant_id=None,
                email=email,
                role="operator",
                password_hash=password_hash,
                created_by="bootstrap",
            )

    async def seat(
        self,
        tenant_id: UUID,
        *,
        email: str,
        role: str,
        password_hash: str | None,
        created_by: str,
        email_verified: bool = False,
        jit_connection_id: UUID | None = None,
        on_created: Callable[[asyncpg.Connection, AccountRow], Awaitable[None]] | None = None,
        account_id: UUID | None = None,
    ) -> AccountRow:
        """A new account of the tenant within its seat limit: invites, SCIM and SSO's
        just-in-time accounts all come through here, so they share one seat count in one
        transaction. A JIT account also emits user.jit_provisioned; `on_created` runs in the
        same transaction (SSO links the IdP identity, so a concurrent login finds it)."""
        try:
            async with self.db.transaction(tenant_id=tenant_id) as tx:
                await guard_quantity(tx, tenant_id, "seats", SEATS_IN_USE)
                account = await self.store.create_account(
                    tx,
                    tenant_id=tenant_id,
                    email=email,
                    role=role,
                    password_hash=password_hash,
                    created_by=created_by,
                    email_verified=email_verified,
                    account_id=account_id,
                )
                if jit_connection_id is not None:
                    payload = UserJitProvisioned(
                        account_id=account.account_id,
                        email=account.email,
                        role=role,  # type: ignore[arg-type]
                        connection_id=jit_connection_id,
                    )
                    await self.outbox.put(
                        tx,
                        [
                            new_event(
                                payload,
                                tenant_id=tenant_id,
                                subject=str(account.account_id),
                                aggregate_version=0,  # an operational event, not a stream's
                                source=self.source,
                                region=self.region,
                            )
                        ],
                    )
                if on_created is not None:
                    await on_created(tx, account)
                return account
        except EmailTaken:
            raise Problem(409, "email-taken", "An account with this email exists") from None

    async def provisioned_state(
        self, tenant_id: UUID, account_id: UUID, active: bool, actor: str
    ) -> AccountRow | None:
        """Put an existing account of the tenant in the state SCIM asks for (enabling takes a
        seat, within the limit); None if there is no such account."""
        async with self.db.transaction(tenant_id=tenant_id) as tx:
            account = await self.store.get_account(tx, account_id)
            if account is None or account.tenant_id != tenant_id:
                return None
            if active and account.status == "disabled":
                await guard_quantity(tx, tenant_id, "seats", SEATS_IN_USE)
                changed = await self.store.enable_account(
                    tx, tenant_id, account_id, enabled_by=actor
                )
            elif not active and account.status == "active":
                changed = await self.store.disable_account(
                    tx, tenant_id, account_id, disabled_by=actor, reason=DEPROVISIONED
                )
            else:
                changed = None
            return changed or account

    async def provision(
        self, tenant_id: UUID, *, email: str, account_id: UUID | None, active: bool, actor: str
    ) -> AccountRow:
        """A member account for a SCIM user, its address vouched for by the tenant's IdP.
        `account_id` names the account provisioning allocated: a retry or a re-create finds
        it (put in the state `active` asks) instead of taking a second seat."""
        if account_id is not None:
            existing = await self.provisioned_state(tenant_id, account_id, active, actor)
            if existing is not None:
                return existing

        async def disabled_at_once(tx: asyncpg.Connection, account: AccountRow) -> None:
            await self.store.disable_account(
                tx, tenant_id, account.account_id, disabled_by=actor, reason=DEPROVISIONED
            )

        try:
            account = await self.seat(
                tenant_id,
                email=email,
                role="member",
                password_hash=None,
                created_by=actor,
                email_verified=True,
                on_created=None if active else disabled_at_once,
                account_id=account_id,
            )
        except Problem as problem:
            # A concurrent request created this very account first: answer as a retry.
            if account_id is None or problem.status != 409:
                raise
            existing = await self.provisioned_state(tenant_id, account_id, active, actor)
            if existing is None:
                raise
            return existing
        if not active:
            return msgspec.structs.replace(account, status="disabled")
        return account

    async def deprovision(self, tenant_id: UUID, account_id: UUID, actor: str) -> AccountRow | None:
        """Disable (sessions and personal keys end); an account already disabled is returned
        as it is; None if there is no such account."""
        async with self.db.transaction(tenant_id=tenant_id) as tx:
            row = await self.store.disable_account(
                tx, tenant_id, account_id, disabled_by=actor, reason=DEPROVISIONED
            )
            return row or await self.store.get_account(tx, account_id)
