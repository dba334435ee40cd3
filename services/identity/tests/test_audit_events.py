"""The events identity's sign-ins, sessions and SSO logins append for the audit log, each in
the transaction that does what it says (no database: an in-memory one that keeps what a
transaction put in the outbox only when it commits). The SQL paths, on real Postgres, are
in test_audit_events_store.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import asyncpg
import msgspec
import pytest
from uuid_utils.compat import uuid4, uuid7

from tenantry_credentials.crypto import SecretBox
from tenantry_credentials.tokens import new_signing_key
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.identity import (
    SessionEnded,
    SessionRefreshed,
    SessionStarted,
    SsoMetadataRefreshed,
    UserSignedIn,
    UserSignInFailed,
    UserSsoAuthenticated,
)
from tenantry_events.pg import Database
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_http.problems import Problem
from tenantry_identity.keys import SigningKeys
from tenantry_identity.passwords import hash_password
from tenantry_identity.sessions import RefreshTokenRefused, Sessions
from tenantry_identity.sso import saml
from tenantry_identity.sso.domain import IdpIdentity, LoginRefused, MappedProfile
from tenantry_identity.sso.logins import SsoLogins
from tenantry_identity.sso.metadata import MetadataFetcher
from tenantry_identity.sso.oidc import OidcRelyingParty
from tenantry_identity.sso.store import ConnectionRow, IssuedCode, SsoStore
from tenantry_identity.store import AccountRow, IdentityStore, RefreshRefused, RefreshUse
from tenantry_outbound.outbound import OutboundClient
from tenantry_platform.clock import FakeClock

TENANT = UUID("0191a3c0-0000-7000-8000-000000000001")
SOURCE, REGION = "/tenantry/identity", "local"
PASSWORD = "correct horse battery staple"


# ---------------------------------------------------------------------------- the fakes
class Tx:
    """Stands for a transaction's connection: what was put in the outbox within it."""

    def __init__(self, tenant_id: UUID | None, platform: bool) -> None:
        self.tenant_id = tenant_id
        self.platform = platform
        self.outbox: list[Envelope[Any]] = []


class Pool:
    def __init__(self, statuses: dict[UUID, str]) -> None:
        self.statuses = statuses

    async def fetchval(self, query: str, tenant_id: UUID) -> str | None:
        assert "tenant_projection" in query
        return self.statuses.get(tenant_id)


class MemoryDatabase:
    """`transaction()` as Database has it: what a transaction put is committed when it ends
    normally, dropped when it raises."""

    def __init__(self, statuses: dict[UUID, str] | None = None) -> None:
        self.statuses = statuses if statuses is not None else {TENANT: "active"}
        self.pool = Pool(self.statuses)
        self.committed: list[Envelope[Any]] = []
        self.commits: list[Tx] = []

    @asynccontextmanager
    async def transaction(
        self, *, tenant_id: UUID | None = None, platform: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        tx = Tx(tenant_id, platform)
        yield cast(asyncpg.Connection, tx)
        self.committed.extend(tx.outbox)
        self.commits.append(tx)

    def as_db(self) -> Database:
        return cast(Database, self)


class MemoryOutbox(PostgresOutbox):
    def __init__(self) -> None:
        self.keys = None

    async def put(self, tx: asyncpg.Connection, events: Sequence[Envelope[Any]]) -> None:
        cast(Tx, tx).outbox.extend(events)


class Accounts:
    """The accounts and refresh tokens of the fake identity store."""

    def __init__(self) -> None:
        self.rows: dict[UUID, AccountRow] = {}
        self.hashes: dict[UUID, str] = {}
        self.refresh: dict[str, tuple[UUID, UUID, bool]] = {}  # token: account, family, used

    def add(
        self, *, tenant_id: UUID | None = TENANT, status: str = "active", role: str = "member"
    ) -> AccountRow:
        row = AccountRow(
            account_id=uuid7(),
            tenant_id=tenant_id,
            email=f"{uuid4().hex[:8]}@acme.example",
            role=role,
            status=status,
            email_verified=True,
            created_at=datetime.now(UTC),
        )
        self.rows[row.account_id] = row
        return row


class FakeIdentityStore(IdentityStore):
    """The real event building (record, session_ended, ...); the rows in memory."""

    def __init__(self, db: MemoryDatabase, outbox: MemoryOutbox, accounts: Accounts) -> None:
        super().__init__(PostgresEventStore(outbox), outbox=outbox, source=SOURCE, region=REGION)
        self.db = db
        self.accounts = accounts

    async def tenant_known(self, tx: asyncpg.Connection, tenant_id: UUID) -> bool:
        status = self.db.statuses.get(tenant_id)
        return status is not None and status != "purged"

    async def account_for_login(
        self, tx: asyncpg.Connection, email: str, tenant_id: UUID | None
    ) -> tuple[AccountRow, str | None] | None:
        for row in self.accounts.rows.values():
            if row.email == email.lower() and row.tenant_id == tenant_id:
                return row, self.accounts.hashes.get(row.account_id)
        return None

    async def get_account(self, tx: asyncpg.Connection, account_id: UUID) -> AccountRow | None:
        return self.accounts.rows.get(account_id)

    async def issue_refresh(
        self, tx: asyncpg.Connection, account_id: UUID, family_id: UUID, ttl: timedelta
    ) -> str:
        token = f"rt_local.{uuid4().hex}"
        self.accounts.refresh[token] = (account_id, family_id, False)
        return token

    async def use_refresh(self, tx: asyncpg.Connection, token: str) -> RefreshUse:
        if token not in self.accounts.refresh:
            raise RefreshRefused()
        account_id, family_id, used = self.accounts.refresh[token]
        self.accounts.refresh[token] = (account_id, family_id, True)
        return RefreshUse(account_id, family_id, reused=used)


class FakeSigningKeys:
    def __init__(self) -> None:
        self.key = new_signing_key("k-test")

    async def active(self) -> Any:
        return self.key


class World:
    def __init__(self, statuses: dict[UUID, str] | None = None) -> None:
        self.db = MemoryDatabase(statuses)
        self.outbox = MemoryOutbox()
        self.accounts = Accounts()
        self.store = FakeIdentityStore(self.db, self.outbox, self.accounts)
        self.sessions = Sessions(
            self.db.as_db(),
            self.store,
            cast(SigningKeys, FakeSigningKeys()),
            access_token_ttl=timedelta(minutes=15),
            refresh_token_ttl=timedelta(days=30),
        )

    async def account(self, **kwargs: Any) -> AccountRow:
        row = self.accounts.add(**kwargs)
        self.accounts.hashes[row.account_id] = await hash_password(PASSWORD)
        return row

    def events(self, event_type: str) -> list[Envelope[Any]]:
        return [e for e in self.db.committed if e.type == event_type]


def only(events: list[Envelope[Any]]) -> Envelope[Any]:
    assert len(events) == 1, [e.type for e in events]
    return events[0]


# ---------------------------------------------------------------------------- passwords
async def test_a_password_sign_in_starts_a_session_and_says_so() -> None:
    world = World()
    account = await world.account()
    tokens = await world.sessions.sign_in_with_password(account.email, PASSWORD, TENANT)
    assert tokens is not None
    event = only(world.db.committed)
    assert event.type == "session.started"
    assert event.tenant_id == TENANT
    (family_id,) = {family for _, family, _ in world.accounts.refresh.values()}
    assert event.subject == str(family_id), "the subject is the session"
    assert event.aggregate_version == 0
    assert event.payload == SessionStarted(
        account_id=account.account_id, session_id=family_id, method="password", connection_id=None
    )


@pytest.mark.parametrize(
    ("known_account", "password", "status", "reason"),
    [
        (True, "a wrong password!", "active", "wrong-password"),
        (False, PASSWORD, "active", "unknown-account"),
        (True, PASSWORD, "disabled", "account-disabled"),
    ],
)
async def test_a_refused_password_sign_in_says_why_and_survives_the_refusal(
    known_account: bool, password: str, status: str, reason: str
) -> None:
    world = World()
    account = await world.account(status=status)
    email = account.email if known_account else "nobody@acme.example"
    assert await world.sessions.sign_in_with_password(email, password, TENANT) is None
    event = only(world.db.committed)
    assert event.type == "user.sign_in_failed"
    assert event.tenant_id == TENANT
    account_id = account.account_id if known_account else None
    assert event.payload == UserSignInFailed(
        method="password", reason=reason, account_id=account_id, connection_id=None
    )
    assert event.subject == str(account_id or TENANT)
    body = repr(event.payload)
    assert password not in body, "no password"
    assert email not in body, "no address"
    (failure_tx,) = [tx for tx in world.db.commits if tx.outbox]
    assert failure_tx.tenant_id == TENANT, "written in the tenant's own small transaction"


async def test_a_refusal_by_the_tenant_state_keeps_its_problem_and_says_so() -> None:
    world = World({TENANT: "suspended"})
    account = await world.account()
    with pytest.raises(Problem) as refused:
        await world.sessions.sign_in_with_password(account.email, PASSWORD, TENANT)
    assert (refused.value.status, refused.value.slug) == (403, "tenant-suspended")
    event = only(world.events("user.sign_in_failed"))
    assert event.payload.reason == "tenant-suspended"
    assert event.payload.account_id == account.account_id
    assert world.events("session.started") == []


@pytest.mark.parametrize("tenant", [uuid4(), None], ids=["unknown tenant", "operator"])
async def test_failures_in_no_known_tenant_write_nothing(tenant: UUID | None) -> None:
    """A made-up tenant id (or an operator's sign-in, which is no tenant's) makes no event
    and no transaction that writes: nobody can make identity write for tenants that are
    not there."""
    world = World()
    await world.account()
    for _ in range(5):
        assert await world.sessions.sign_in_with_password("x@acme.example", "pw", tenant) is None
    assert world.db.committed == []


async def test_a_purged_tenant_is_no_known_tenant() -> None:
    world = World({TENANT: "purged"})
    assert await world.sessions.sign_in_with_password("x@acme.example", "pw", TENANT) is None
    assert world.db.committed == []


async def test_an_operator_session_is_no_tenants_event() -> None:
    world = World()
    operator = await world.account(tenant_id=None, role="operator")
    assert await world.sessions.sign_in_with_password(operator.email, PASSWORD, None)
    assert world.db.committed == []


# ---------------------------------------------------------------------------- refresh
async def test_a_refresh_says_session_refreshed() -> None:
    world = World()
    account = await world.account()
    tokens = await world.sessions.sign_in_with_password(account.email, PASSWORD, TENANT)
    assert tokens is not None
    started = only(world.events("session.started"))
    await world.sessions.refresh(tokens.refresh_token)
    event = only(world.events("session.refreshed"))
    assert event.subject == started.subject
    assert event.payload == SessionRefreshed(
        account_id=account.account_id, session_id=started.payload.session_id
    )


async def test_a_reused_refresh_token_ends_the_session_and_says_so() -> None:
    world = World()
    account = await world.account()
    tokens = await world.sessions.sign_in_with_password(account.email, PASSWORD, TENANT)
    assert tokens is not None
    session_id = only(world.events("session.started")).payload.session_id
    await world.sessions.refresh(tokens.refresh_token)
    with pytest.raises(RefreshTokenRefused) as refused:
        await world.sessions.refresh(tokens.refresh_token)
    assert refused.value.reused
    event = only(world.events("session.ended"))
    assert (event.tenant_id, event.subject) == (TENANT, str(session_id))
    assert event.payload == SessionEnded(
        account_id=account.account_id, session_id=session_id, reason="refresh_token_reused"
    )


async def test_a_refused_refresh_says_nothing() -> None:
    world = World()
    account = await world.account()
    tokens = await world.sessions.sign_in_with_password(account.email, PASSWORD, TENANT)
    assert tokens is not None
    world.accounts.rows[account.account_id] = msgspec.structs.replace(account, status="disabled")
    with pytest.raises(RefreshTokenRefused):
        await world.sessions.refresh(tokens.refresh_token)
    assert world.events("session.refreshed") == world.events("session.ended") == []


# ---------------------------------------------------------------------------- SSO
CONNECTION = uuid7()


def connection(kind: str = "saml") -> ConnectionRow:
    now = datetime.now(UTC)
    return ConnectionRow(
        connection_id=CONNECTION,
        tenant_id=TENANT,
        kind=kind,
        name="Okta",
        enabled=True,
        allow_idp_initiated=True,
        config={},
        attribute_mapping={},
        metadata_fetched_at=None,
        metadata_error=None,
        version=1,
        created_at=now,
        updated_at=now,
    )


class FakeSsoStore(SsoStore):
    """The real event building; rows in memory."""

    def __init__(self, outbox: MemoryOutbox) -> None:
        super().__init__(PostgresEventStore(outbox), outbox=outbox, source=SOURCE, region=REGION)
        self.failures: list[str] = []
        self.codes: dict[str, IssuedCode] = {}
        self.connection = connection()
        self.updated: list[dict[str, Any]] = []

    async def record_failure(self, tx: asyncpg.Connection, **kwargs: Any) -> None:
        self.failures.append(kwargs["code"])

    async def link_identity(self, tx: asyncpg.Connection, **kwargs: Any) -> None:
        pass

    async def save_code(
        self, tx: asyncpg.Connection, code: str, issued: IssuedCode, expires_at: Any
    ) -> None:
        self.codes[code] = issued

    async def take_code(self, tx: asyncpg.Connection, code: str, now: Any) -> IssuedCode | None:
        return self.codes.pop(code, None)

    async def record_session(self, tx: asyncpg.Connection, family_id: UUID, issued: Any) -> None:
        pass

    async def get_connection(
        self, tx: asyncpg.Connection, connection_id: UUID
    ) -> ConnectionRow | None:
        return self.connection

    async def record_metadata_error(
        self, tx: asyncpg.Connection, connection_id: UUID, error: str
    ) -> None:
        pass

    async def record_metadata_fresh(self, tx: asyncpg.Connection, connection_id: UUID) -> None:
        pass

    async def update_connection(
        self,
        tx: asyncpg.Connection,
        connection: ConnectionRow,
        *,
        changed_by: str,
        secrets: bytes | None = None,
        **changes: Any,
    ) -> ConnectionRow:
        self.updated.append({"changed_by": changed_by, **changes})
        self.connection = msgspec.structs.replace(
            connection, config=changes["config"], version=connection.version + 1
        )
        return self.connection


def sso_world() -> tuple[World, FakeSsoStore, SsoLogins]:
    world = World()
    store = FakeSsoStore(world.outbox)
    logins = SsoLogins(
        world.db.as_db(),
        world.outbox,
        identity=world.store,
        sessions=world.sessions,
        accounts=cast(Any, None),
        store=store,
        box=SecretBox(bytes(32)),
        rp=cast(OidcRelyingParty, None),
        clock=FakeClock(),
        public_url="http://127.0.0.1:8102",
        login_ttl=timedelta(minutes=10),
        code_ttl=timedelta(minutes=1),
        source=SOURCE,
        region=REGION,
    )
    return world, store, logins


PROFILE = MappedProfile(
    email="ann@acme.example",
    given_name="Ann",
    family_name=None,
    groups=[],
    role=None,
    email_verified_by_idp=None,
)


@pytest.mark.parametrize("initiated_by", ["sp", "idp"])
async def test_an_accepted_sso_login_says_user_sso_authenticated_with_its_code(
    initiated_by: Any,
) -> None:
    world, store, logins = sso_world()
    account = await world.account()
    async with world.db.transaction(tenant_id=TENANT) as tx:
        await logins._complete(
            tx,
            store.connection,
            IdpIdentity(subject="ann", attributes={}),
            PROFILE,
            account,
            "code_local.x",
            "https://app.example/cb",
            initiated_by,
        )
    assert "code_local.x" in store.codes
    event = only(world.db.committed)
    assert (event.type, event.tenant_id, event.subject) == (
        "user.sso_authenticated",
        TENANT,
        str(account.account_id),
    )
    assert event.payload == UserSsoAuthenticated(
        account_id=account.account_id,
        connection_id=CONNECTION,
        kind="saml",
        initiated_by=initiated_by,
    )


async def test_a_refused_sso_login_says_user_sign_in_failed() -> None:
    world, store, logins = sso_world()
    account_id = uuid7()
    failed = await logins.refuse(
        store.connection,
        LoginRefused("bad-signature", "the signature does not verify"),
        subject="ann@acme.example",
        account_id=account_id,
    )
    assert failed.refused.code == "bad-signature"
    assert store.failures == ["bad-signature"], "the failure log keeps its row"
    event = only(world.db.committed)
    assert (event.type, event.tenant_id, event.subject) == (
        "user.sign_in_failed",
        TENANT,
        str(account_id),
    )
    assert event.payload == UserSignInFailed(
        method="sso", reason="bad-signature", account_id=account_id, connection_id=CONNECTION
    )
    assert "ann@acme.example" not in repr(event.payload), "the IdP subject is not in it"
    await logins.refuse(store.connection, LoginRefused("replay", "seen"))
    assert world.events("user.sign_in_failed")[1].subject == str(CONNECTION)


def issued(account: AccountRow) -> IssuedCode:
    return IssuedCode(
        tenant_id=TENANT,
        connection_id=CONNECTION,
        account_id=account.account_id,
        subject="ann",
        session_index=None,
        redirect_uri="https://app.example/cb",
        profile={},
    )


async def test_exchanging_the_code_says_session_started_and_user_signed_in() -> None:
    world, store, logins = sso_world()
    account = await world.account()
    store.codes["c1"] = issued(account)
    _, _, tokens = await logins.exchange("c1")
    assert tokens.refresh_token
    started = only(world.events("session.started"))
    (family_id,) = {family for _, family, _ in world.accounts.refresh.values()}
    assert (started.tenant_id, started.subject) == (TENANT, str(family_id))
    assert started.payload == SessionStarted(
        account_id=account.account_id, session_id=family_id, method="sso", connection_id=CONNECTION
    )
    signed_in = only(world.events("user.signed_in"))
    assert signed_in.payload == UserSignedIn(
        account_id=account.account_id, method="sso", connection_id=CONNECTION
    )


async def test_a_code_for_a_disabled_account_is_refused_and_says_so() -> None:
    world, store, logins = sso_world()
    account = await world.account(status="disabled")
    store.codes["c1"] = issued(account)
    with pytest.raises(LookupError):
        await logins.exchange("c1")
    event = only(world.db.committed)
    assert event.payload == UserSignInFailed(
        method="sso",
        reason="account-disabled",
        account_id=account.account_id,
        connection_id=CONNECTION,
    )


# ---------------------------------------------------------------------------- metadata
class Fetcher(MetadataFetcher):
    def __init__(self, store: FakeSsoStore, db: MemoryDatabase, answer: Any) -> None:
        super().__init__(db.as_db(), cast(OutboundClient, None), store, FakeClock())
        self.answer = answer

    async def fetch(self, url: str) -> saml.IdpMetadata:
        if isinstance(self.answer, Exception):
            raise self.answer
        return cast(saml.IdpMetadata, self.answer)


META = saml.IdpMetadata(
    entity_id="https://idp.example",
    sso_url="https://idp.example/sso",
    sso_post_url=None,
    slo_url=None,
    certs=["CERT"],
)


@pytest.mark.parametrize(
    ("before", "answer", "outcome"),
    [
        ({}, META, "updated"),
        (saml.config_fields(META), META, "unchanged"),
        ({}, ValueError("metadata URL answered HTTP 500"), "failed"),
    ],
)
async def test_an_admins_metadata_refresh_always_says_what_it_found(
    before: dict[str, Any], answer: Any, outcome: Any
) -> None:
    world, store, _ = sso_world()
    config = {**before, "metadata_url": "https://idp.example/metadata"}
    store.connection = msgspec.structs.replace(store.connection, config=config)
    fetcher = Fetcher(store, world.db, answer)
    await fetcher.refresh(store.connection, by="user:admin")
    event = only(world.events("sso.metadata_refreshed"))
    assert (event.tenant_id, event.subject) == (TENANT, str(CONNECTION))
    error = "metadata URL answered HTTP 500" if outcome == "failed" else None
    assert event.payload == SsoMetadataRefreshed(
        connection_id=CONNECTION, outcome=outcome, error=error
    )
    if outcome == "updated":
        assert store.updated[0]["changed_by"] == "user:admin", "the change is the admin's"


async def test_the_workers_scheduled_refresh_stays_quiet_unless_it_changes_something() -> None:
    world, store, _ = sso_world()
    config = {**saml.config_fields(META), "metadata_url": "https://idp.example/metadata"}
    store.connection = msgspec.structs.replace(store.connection, config=config)
    await Fetcher(store, world.db, META).refresh(store.connection)
    await Fetcher(store, world.db, ValueError("down")).refresh(store.connection)
    assert world.db.committed == []
