"""The audit log's events from identity's SQL paths, on real Postgres (a scratch database
of the local stack, `make up`): sessions ended by a logout or a reused refresh token,
refused sign-ins (only in a tenant identity knows), SSO domain changes, a verification
link resent or used again. Each is read back from the outbox its transaction wrote."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
import pytest_asyncio
from uuid_utils.compat import uuid4, uuid7

from tenantry_credentials.crypto import SecretBox
from tenantry_events.envelope import Envelope
from tenantry_events.kafka_codec import from_record
from tenantry_events.payloads.identity import (
    AccountVerificationSent,
    SessionEnded,
    SsoDomainChanged,
    UserSignInFailed,
)
from tenantry_events.pg import package_migrations
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_identity.keys import SigningKeys
from tenantry_identity.passwords import hash_password
from tenantry_identity.sessions import RefreshTokenRefused, Sessions
from tenantry_identity.sso.store import DomainChange, SsoStore
from tenantry_identity.store import AccountRow, IdentityStore
from tenantry_identity.verification import EmailVerification
from tenantry_platform.clock import FakeClock
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.mailbox import MemoryMailer, links
from tenantry_testkit.stack import Stack

SOURCE, REGION = "/tenantry/identity", "local"
PASSWORD = "correct horse battery staple"


@pytest_asyncio.fixture
async def identity_db(stack: Stack) -> AsyncIterator[ScratchDatabase]:
    scratch = await create_scratch_database(stack, package_migrations("tenantry_identity"), "au")
    try:
        yield scratch
    finally:
        await drop_scratch_database(stack, scratch)


class Identity:
    def __init__(self, scratch: ScratchDatabase) -> None:
        self.db = scratch.db
        self.outbox = PostgresOutbox(scratch.db)
        events = PostgresEventStore(self.outbox)
        self.store = IdentityStore(events, outbox=self.outbox, source=SOURCE, region=REGION)
        self.sso = SsoStore(events, outbox=self.outbox, source=SOURCE, region=REGION)
        self.sessions = Sessions(
            scratch.db,
            self.store,
            SigningKeys(scratch.db, SecretBox(bytes(32)), token_ttl=timedelta(minutes=15)),
            access_token_ttl=timedelta(minutes=15),
            refresh_token_ttl=timedelta(days=30),
        )

    async def tenant(self, status: str = "active") -> UUID:
        tenant_id = uuid7()
        await self.db.pool.execute(
            """INSERT INTO tenant_projection (tenant_id, name, slug, status, plan, home_region,
                                              version)
               VALUES ($1, 'Acme', $2, $3, 'business', 'local', 1)""",
            tenant_id,
            f"acme-{tenant_id.hex[:8]}",
            status,
        )
        return tenant_id

    async def account(self, tenant_id: UUID | None, role: str = "member") -> AccountRow:
        async with self.db.transaction(tenant_id=tenant_id, platform=tenant_id is None) as tx:
            return await self.store.create_account(
                tx,
                tenant_id=tenant_id,
                email=f"{uuid4().hex[:8]}@acme.example",
                role=role,
                password_hash=await hash_password(PASSWORD),
                created_by="test",
            )

    async def events(self, event_type: str) -> list[Envelope[Any]]:
        entries = await self.outbox.fetch(10_000)
        return [
            from_record(e.record.headers, e.record.value)
            for e in entries
            if e.record.topic == event_type
        ]


async def test_logout_ends_the_session_once_and_says_so(identity_db: ScratchDatabase) -> None:
    identity = Identity(identity_db)
    tenant_id = await identity.tenant()
    account = await identity.account(tenant_id)
    tokens = await identity.sessions.sign_in_with_password(account.email, PASSWORD, tenant_id)
    assert tokens is not None
    (started,) = await identity.events("session.started")
    session_id = started.payload.session_id
    await identity.sessions.refresh(tokens.refresh_token)  # two tokens in the family now
    for _ in range(2):
        async with identity.db.transaction(platform=True) as tx:
            await identity.store.end_sessions(tx, [session_id], reason="logout")
    (ended,) = await identity.events("session.ended")
    assert (ended.tenant_id, ended.subject) == (tenant_id, str(session_id))
    assert ended.payload == SessionEnded(
        account_id=account.account_id, session_id=session_id, reason="logout"
    )
    live = await identity_db.db.pool.fetchval(
        "SELECT count(*) FROM refresh_tokens WHERE family_id = $1 AND revoked_at IS NULL",
        session_id,
    )
    assert live == 0


async def test_a_reused_refresh_token_says_session_ended(identity_db: ScratchDatabase) -> None:
    identity = Identity(identity_db)
    tenant_id = await identity.tenant()
    account = await identity.account(tenant_id)
    tokens = await identity.sessions.sign_in_with_password(account.email, PASSWORD, tenant_id)
    assert tokens is not None
    await identity.sessions.refresh(tokens.refresh_token)
    with pytest.raises(RefreshTokenRefused):
        await identity.sessions.refresh(tokens.refresh_token)
    (ended,) = await identity.events("session.ended")
    assert ended.payload.reason == "refresh_token_reused"
    assert ended.payload.account_id == account.account_id
    assert len(await identity.events("session.refreshed")) == 1


async def test_sign_in_failures_are_kept_only_for_tenants_identity_knows(
    identity_db: ScratchDatabase,
) -> None:
    identity = Identity(identity_db)
    tenant_id = await identity.tenant()
    account = await identity.account(tenant_id)
    assert await identity.sessions.sign_in_with_password(account.email, "wrong!", tenant_id) is None
    assert await identity.sessions.sign_in_with_password("x@acme.example", "pw", tenant_id) is None
    for _ in range(3):  # made-up tenants: nothing at all is written
        assert await identity.sessions.sign_in_with_password("x@a.example", "pw", uuid4()) is None
    purged = await identity.tenant("purged")
    assert await identity.sessions.sign_in_with_password("x@acme.example", "pw", purged) is None
    failures = await identity.events("user.sign_in_failed")
    assert [(e.tenant_id, e.subject, e.payload) for e in failures] == [
        (
            tenant_id,
            str(account.account_id),
            UserSignInFailed(
                method="password",
                reason="wrong-password",
                account_id=account.account_id,
                connection_id=None,
            ),
        ),
        (
            tenant_id,
            str(tenant_id),
            UserSignInFailed(
                method="password", reason="unknown-account", account_id=None, connection_id=None
            ),
        ),
    ]
    assert await identity_db.db.pool.fetchval("SELECT count(*) FROM outbox") == 2 + 1, (
        "the two failures and the account's creation, nothing else"
    )


async def test_every_domain_change_says_sso_domain_changed(identity_db: ScratchDatabase) -> None:
    identity = Identity(identity_db)
    tenant_id = await identity.tenant()
    sso = identity.sso
    async with identity.db.transaction(tenant_id=tenant_id) as tx:
        assert await sso.add_domain(tx, tenant_id, "acme.example", "t" * 43, None) is not None
        assert await sso.add_domain(tx, tenant_id, "acme.example", "t" * 43, None) is None
        await sso.record_check(tx, tenant_id, "acme.example", verified=False, error="no record")
        await sso.record_check(tx, tenant_id, "acme.example", verified=True, error=None)
        await sso.set_domain_connection(tx, tenant_id, "acme.example", None)
        assert await sso.set_domain_connection(tx, tenant_id, "other.example", None) is None
        assert await sso.delete_domain(tx, tenant_id, "acme.example")
        assert not await sso.delete_domain(tx, tenant_id, "acme.example")
    changes = await identity.events("sso.domain_changed")
    assert {(e.tenant_id, e.subject) for e in changes} == {(tenant_id, "acme.example")}
    expected: list[tuple[DomainChange, bool]] = [
        ("claimed", False),
        ("check_failed", False),
        ("verified", True),
        ("routed", True),
        ("released", True),
    ]
    assert [e.payload for e in changes] == [
        SsoDomainChanged(domain="acme.example", change=c, connection_id=None, verified=v)
        for c, v in expected
    ]


async def test_a_link_used_after_the_address_was_verified_says_so_again(
    identity_db: ScratchDatabase,
) -> None:
    identity = Identity(identity_db)
    tenant_id = await identity.tenant()
    account = await identity.account(tenant_id)
    mailer = MemoryMailer()
    verification = EmailVerification(identity.store, mailer, FakeClock(), confirm_url="http://x/c")
    tokens = []
    for _ in range(2):
        async with identity.db.transaction(tenant_id=tenant_id) as tx:
            expires_at = await verification.send(
                tx, account.account_id, account.email, enforce_spacing=False
            )
            assert expires_at > datetime.now(UTC) + timedelta(hours=23)
            sent = AccountVerificationSent(account_id=account.account_id, expires_at=expires_at)
            await identity.store.record(
                tx, sent, tenant_id=tenant_id, subject=str(account.account_id)
            )
        (link,) = links(mailer.sent[-1])
        tokens.append(link.split("token=", 1)[1])
    for token in tokens:
        async with identity.db.transaction(platform=True) as tx:
            await verification.confirm(tx, token)
    types = await identity_db.db.pool.fetch(
        "SELECT event_type FROM events WHERE stream_id = $1 ORDER BY version",
        f"account-{account.account_id}",
    )
    assert [r["event_type"] for r in types] == [
        "account.created",
        "user.email_verified",
        "user.email_verified",
    ]
    assert len(await identity.events("account.verification_sent")) == 2
