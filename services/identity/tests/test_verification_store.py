"""EmailVerification on real Postgres with a fake clock: single use, expiry, forgery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import pytest
import pytest_asyncio

from tenantry_events.pg import package_migrations
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_identity.store import IdentityStore
from tenantry_identity.verification import EmailVerification, TooSoon, VerificationRefused
from tenantry_platform.clock import FakeClock
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.mailbox import MemoryMailer, links
from tenantry_testkit.stack import Stack


@pytest_asyncio.fixture
async def identity_db(stack: Stack) -> AsyncIterator[ScratchDatabase]:
    scratch = await create_scratch_database(stack, package_migrations("tenantry_identity"), "id")
    try:
        yield scratch
    finally:
        await drop_scratch_database(stack, scratch)


async def setup(db: ScratchDatabase) -> tuple[EmailVerification, MemoryMailer, FakeClock, UUID]:
    outbox = PostgresOutbox(db.db)
    events = PostgresEventStore(outbox)
    clock, mailer = FakeClock(), MemoryMailer()
    store = IdentityStore(events, outbox=outbox, source="/tenantry/identity", region="local")
    verification = EmailVerification(store, mailer, clock, confirm_url="http://127.0.0.1/c")
    async with db.db.transaction(tenant_id=UUID(int=7)) as tx:
        account = await store.create_account(
            tx,
            tenant_id=UUID(int=7),
            email="a@example.com",
            role="admin",
            password_hash=None,
            created_by="test",
        )
    return verification, mailer, clock, account.account_id


def token_of(mailer: MemoryMailer) -> str:
    (link,) = links(mailer.sent[-1])
    return link.split("token=", 1)[1]


async def test_link_works_once_and_emits_user_email_verified(identity_db: ScratchDatabase) -> None:
    verification, mailer, _, account_id = await setup(identity_db)
    async with identity_db.db.transaction() as tx:
        await verification.send(tx, account_id, "a@example.com", enforce_spacing=False)
    token = token_of(mailer)
    stored = await identity_db.db.pool.fetchval(
        "SELECT count(*) FROM email_verifications WHERE token_sha256 = convert_to($1, 'UTF8')",
        token,
    )
    assert stored == 0, "the raw token is never stored"
    with pytest.raises(VerificationRefused) as no_password:
        async with identity_db.db.transaction(platform=True) as tx:
            await verification.confirm(tx, token)
    assert no_password.value.slug == "password-required", "an invite sets its password here"
    async with identity_db.db.transaction(platform=True) as tx:
        assert await verification.confirm(tx, token, "argon2-hash") == account_id
    async with identity_db.db.transaction(platform=True) as tx:
        row = await tx.fetchrow(
            "SELECT email_verified, version FROM accounts WHERE account_id = $1", account_id
        )
    assert row is not None
    assert row["email_verified"] is True
    assert row["version"] == 2
    types = await identity_db.db.pool.fetch(
        "SELECT event_type FROM events WHERE stream_id = $1 ORDER BY version",
        f"account-{account_id}",
    )
    assert [r["event_type"] for r in types] == ["account.created", "user.email_verified"]
    with pytest.raises(VerificationRefused) as reused:
        async with identity_db.db.transaction(platform=True) as tx:
            await verification.confirm(tx, token, "argon2-hash")
    assert reused.value.slug == "verification-link-used"


async def test_expired_and_forged_links_are_refused(identity_db: ScratchDatabase) -> None:
    verification, mailer, clock, account_id = await setup(identity_db)
    async with identity_db.db.transaction() as tx:
        await verification.send(tx, account_id, "a@example.com", enforce_spacing=False)
    clock.advance(24 * 3600 + 1)
    with pytest.raises(VerificationRefused) as expired:
        async with identity_db.db.transaction(platform=True) as tx:
            await verification.confirm(tx, token_of(mailer), "argon2-hash")
    assert expired.value.slug == "verification-link-expired"
    with pytest.raises(VerificationRefused) as forged:
        async with identity_db.db.transaction(platform=True) as tx:
            await verification.confirm(tx, token_of(mailer)[:-2] + "xx")
    assert forged.value.slug == "invalid-verification-link"
    async with identity_db.db.transaction(platform=True) as tx:
        verified = await tx.fetchval(
            "SELECT email_verified FROM accounts WHERE account_id = $1", account_id
        )
    assert verified is False


async def test_resends_are_spaced_by_the_clock(identity_db: ScratchDatabase) -> None:
    verification, mailer, clock, account_id = await setup(identity_db)
    async with identity_db.db.transaction() as tx:
        await verification.send(tx, account_id, "a@example.com", enforce_spacing=True)
    with pytest.raises(TooSoon):
        async with identity_db.db.transaction() as tx:
            await verification.send(tx, account_id, "a@example.com", enforce_spacing=True)
    clock.advance(61)
    async with identity_db.db.transaction() as tx:
        await verification.send(tx, account_id, "a@example.com", enforce_spacing=True)
    assert len(mailer.sent) == 2


async def test_row_level_security_hides_accounts_outside_their_tenant(
    identity_db: ScratchDatabase,
) -> None:
    """The second wall: an unscoped query returns no rows; another tenant's scope neither;
    the account's own tenant scope does. A write into another tenant is refused."""
    _, _, _, account_id = await setup(identity_db)
    query = "SELECT count(*) FROM accounts WHERE account_id = $1"
    assert await identity_db.db.pool.fetchval(query, account_id) == 0
    async with identity_db.db.transaction(tenant_id=UUID(int=8)) as tx:
        assert await tx.fetchval(query, account_id) == 0
        assert await tx.fetchval("SELECT count(*) FROM accounts") == 0
    async with identity_db.db.transaction(tenant_id=UUID(int=7)) as tx:
        assert await tx.fetchval(query, account_id) == 1
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        async with identity_db.db.transaction(tenant_id=UUID(int=8)) as tx:
            await tx.execute(
                """INSERT INTO accounts (account_id, tenant_id, email, role, status, version)
                   VALUES ($1, $2, 'x@example.com', 'member', 'active', 1)""",
                UUID(int=99),
                UUID(int=7),
            )
