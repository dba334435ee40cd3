"""Notice subscriptions (issue 19 §2) on real Postgres (a scratch database of the local
stack): who may read and change an account's subscriptions through its routes (run in a
small Litestar app behind the real authentication step, with made-up credentials), that
changing them is idempotent and appends account.subscription_changed only on a change,
that erasure and the export see them, and that legal.subprocessor_changed is mailed to the
subscribed owners and admins only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import httpx
import msgspec
import pytest
import pytest_asyncio
from litestar import Litestar
from litestar.di import Provide
from uuid_utils.compat import uuid4, uuid7

from tenantry_credentials import apikeys
from tenantry_credentials.tokens import AccessTokenVerifier, InvalidToken
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.kafka_codec import from_record
from tenantry_events.payloads.identity import AccountSubscriptionChanged
from tenantry_events.payloads.tenancy import LegalSubprocessorChanged, SubprocessorChange
from tenantry_events.pg import package_migrations
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_http.auth import ApiKeyRecord, Authenticator
from tenantry_http.pipeline import PipelineMiddleware
from tenantry_http.problems import problem_response
from tenantry_identity import notices
from tenantry_identity.api import AccountAdminController
from tenantry_identity.consumers import identity_consumers
from tenantry_identity.domain import IdentityRuleBroken, check_subscriber, known_topic
from tenantry_identity.erasure import IDENTITY_ERASURE_STATEMENTS
from tenantry_identity.export import IDENTITY_EXPORTS, NOTICE_SUBSCRIPTIONS
from tenantry_identity.store import AccountRow, IdentityStore
from tenantry_identity.verification import EmailVerification
from tenantry_platform.clock import FakeClock
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.mailbox import MemoryMailer, recipients
from tenantry_testkit.stack import Stack

SOURCE, REGION = "/tenantry/identity", "local"
TOPIC = "legal-notices"


# ---------------------------------------------------------------------------- the rules
def test_legal_notices_is_the_one_topic_and_only_owners_and_admins_take_it() -> None:
    assert known_topic("legal-notices") == "legal-notices"
    for unknown in ("", "Legal-Notices", "legal-notices ", "marketing"):
        with pytest.raises(IdentityRuleBroken) as refused:
            known_topic(unknown)
        assert (refused.value.status, refused.value.slug) == (404, "unknown-topic")
    check_subscriber("legal-notices", "owner")
    check_subscriber("legal-notices", "admin")
    with pytest.raises(IdentityRuleBroken) as member:
        check_subscriber("legal-notices", "member")
    assert (member.value.status, member.value.slug) == (403, "topic-not-for-role")
    assert "owners and admins" in str(member.value)


def subprocessor_notice(**fields: Any) -> LegalSubprocessorChanged:
    return LegalSubprocessorChanged(
        notice_id=fields.pop("notice_id", UUID(int=42)),
        kind=fields.pop("kind", "subprocessors"),
        summary=fields.pop("summary", "We move transactional email to a new provider."),
        changes=fields.pop(
            "changes",
            [
                SubprocessorChange(
                    name="Postmark",
                    change="added",
                    purpose="transactional email",
                    country="US",
                    transfer_mechanism="SCCs Module 3",
                ),
                SubprocessorChange(name="Mailjet", change="removed"),
            ],
        ),
        published_at=datetime(2025, 3, 1, 9, 0, tzinfo=UTC),
        effective_at=datetime(2025, 4, 1, 0, 0, tzinfo=UTC),
        **fields,
    )


def test_the_notice_says_what_changes_when_and_how_to_object() -> None:
    tenant_id = UUID(int=7)
    notice = notices.legal_subprocessor_changed(tenant_id, subprocessor_notice())
    assert notice.kind == "legal-subprocessor-changed"
    assert "2025-04-01" in notice.subject
    assert "We move transactional email to a new provider." in notice.text
    assert (
        "- Postmark (added): transactional email [processing in US, transfers under SCCs"
        " Module 3]" in notice.text
    )
    assert "- Mailjet (removed)\n" in notice.text
    assert "2025-04-01 at 00:00 UTC" in notice.text
    objection = f"POST /v1/tenants/{tenant_id}/legal/notices/{UUID(int=42)}/objection"
    assert objection in notice.text
    assert '{"reason": "..."}' in notice.text

    document = notices.legal_subprocessor_changed(
        tenant_id,
        subprocessor_notice(kind="document", document="the DPA", version="2025-04", changes=[]),
    )
    assert "A new version of the DPA 2025-04 was published." in document.text
    assert "What changes" not in document.text


# ---------------------------------------------------------------------------- the database
@pytest_asyncio.fixture
async def identity_db(stack: Stack) -> AsyncIterator[ScratchDatabase]:
    scratch = await create_scratch_database(stack, package_migrations("tenantry_identity"), "ns")
    try:
        yield scratch
    finally:
        await drop_scratch_database(stack, scratch)


class Identity:
    def __init__(self, scratch: ScratchDatabase) -> None:
        self.db = scratch.db
        self.outbox = PostgresOutbox(scratch.db)
        self.store = IdentityStore(
            PostgresEventStore(self.outbox), outbox=self.outbox, source=SOURCE, region=REGION
        )

    async def account(
        self, tenant_id: UUID | None, role: str, *, verified: bool = True
    ) -> AccountRow:
        async with self.db.transaction(tenant_id=tenant_id, platform=tenant_id is None) as tx:
            return await self.store.create_account(
                tx,
                tenant_id=tenant_id,
                email=f"{role}-{uuid4().hex[:8]}@acme.example",
                role=role,
                password_hash=None,
                created_by="test",
                email_verified=verified,
            )

    async def subscribe(self, account: AccountRow, topic: str = TOPIC) -> bool:
        assert account.tenant_id is not None
        async with self.db.transaction(tenant_id=account.tenant_id) as tx:
            return await self.store.subscribe(tx, account.tenant_id, account.account_id, topic)

    async def topics(self, account: AccountRow) -> list[str]:
        assert account.tenant_id is not None
        async with self.db.transaction(tenant_id=account.tenant_id) as tx:
            return await self.store.subscriptions(tx, account.tenant_id, account.account_id)

    async def changes(self) -> list[Envelope[Any]]:
        entries = await self.outbox.fetch(10_000)
        return [
            from_record(e.record.headers, e.record.value)
            for e in entries
            if e.record.topic == "account.subscription_changed"
        ]


# ---------------------------------------------------------------------------- the routes
class Tokens:
    """Access tokens by their made-up text: the claims the verifier would give."""

    def __init__(self) -> None:
        self.claims: dict[str, dict[str, Any]] = {}

    def user(self, account: AccountRow, *, verified: bool = True) -> str:
        token = f"token-{uuid4().hex}"
        self.claims[token] = {
            "kind": "user",
            "sub": str(account.account_id),
            "tid": str(account.tenant_id),
            "roles": [account.role],
            "ev": verified,
        }
        return token

    def operator(self) -> str:
        token = f"token-{uuid4().hex}"
        self.claims[token] = {"kind": "operator", "sub": str(uuid7()), "tid": None}
        return token

    async def verify(self, token: str) -> dict[str, Any]:
        if token not in self.claims:
            raise InvalidToken("unknown token")
        return self.claims[token]


class Keys:
    def __init__(self) -> None:
        self.records: dict[bytes, ApiKeyRecord] = {}

    def add(self, tenant_id: UUID) -> str:
        key = apikeys.generate("live")
        self.records[apikeys.key_hash(key)] = ApiKeyRecord(
            key_id=f"key_{uuid4().hex[:20]}",
            tenant_id=tenant_id,
            scopes=frozenset({"accounts:read", "accounts:write"}),
            owner_account_id=None,
            expires_at=None,
            revoked=False,
        )
        return key

    async def by_hash(self, digest: bytes) -> ApiKeyRecord | None:
        return self.records.get(digest)


class NoneDisabled:
    async def is_disabled(self, account_id: UUID) -> bool:
        return False


class Routes:
    def __init__(
        self, identity: Identity, client: httpx.AsyncClient, tokens: Tokens, keys: Keys
    ) -> None:
        self.identity = identity
        self.client = client
        self.tokens = tokens
        self.keys = keys

    @staticmethod
    def url(account: AccountRow, topic: str | None = None) -> str:
        url = f"/tenants/{account.tenant_id}/accounts/{account.account_id}/subscriptions"
        return url if topic is None else f"{url}/{topic}"

    async def get(self, account: AccountRow, token: str) -> httpx.Response:
        return await self.client.get(self.url(account), headers=bearer(token))

    async def put(self, account: AccountRow, token: str, topic: str = TOPIC) -> httpx.Response:
        return await self.client.put(self.url(account, topic), headers=bearer(token))

    async def delete(self, account: AccountRow, token: str, topic: str = TOPIC) -> httpx.Response:
        return await self.client.delete(self.url(account, topic), headers=bearer(token))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest_asyncio.fixture
async def routes(identity_db: ScratchDatabase) -> AsyncIterator[Routes]:
    identity = Identity(identity_db)
    tokens, keys = Tokens(), Keys()
    authenticate = Authenticator(cast(AccessTokenVerifier, tokens), keys, NoneDisabled())
    app = Litestar(
        route_handlers=[AccountAdminController],
        dependencies={
            "db": Provide(lambda: identity.db, use_cache=True, sync_to_thread=False),
            "identity_store": Provide(lambda: identity.store, use_cache=True, sync_to_thread=False),
        },
        middleware=[PipelineMiddleware([authenticate])],
        exception_handlers={Exception: problem_response},
    )
    # In the test's event loop (the database's pool lives in it), without a server.
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # loose ASGI types
    async with httpx.AsyncClient(transport=transport, base_url="http://identity") as client:
        yield Routes(identity, client, tokens, keys)


async def test_an_owner_or_admin_subscribes_itself_idempotently_and_it_is_recorded(
    routes: Routes,
) -> None:
    tenant_id = uuid7()
    for role in ("owner", "admin"):
        account = await routes.identity.account(tenant_id, role)
        token = routes.tokens.user(account)
        got = await routes.get(account, token)
        assert (got.status_code, got.json()) == (200, {"topics": []})
        for _ in range(2):  # idempotent
            put = await routes.put(account, token)
            assert (put.status_code, put.json()) == (200, {"topics": [TOPIC]}), put.text
        assert (await routes.get(account, token)).json() == {"topics": [TOPIC]}
        for _ in range(2):  # idempotent too: 204 whether or not it was subscribed
            deleted = await routes.delete(account, token)
            assert deleted.status_code == 204, deleted.text
        assert (await routes.get(account, token)).json() == {"topics": []}

    changes = await routes.identity.changes()
    assert [(e.payload.topic, e.payload.subscribed) for e in changes] == [
        (TOPIC, True),
        (TOPIC, False),
        (TOPIC, True),
        (TOPIC, False),
    ], "one event per change, none for a repeat"
    assert all(e.tenant_id == tenant_id for e in changes)
    assert changes[0].payload == AccountSubscriptionChanged(
        account_id=UUID(changes[0].subject), topic=TOPIC, subscribed=True
    )


async def test_an_operator_manages_an_admins_subscriptions(routes: Routes) -> None:
    tenant_id = uuid7()
    admin = await routes.identity.account(tenant_id, "admin")
    operator = routes.tokens.operator()
    assert (await routes.put(admin, operator)).json() == {"topics": [TOPIC]}
    assert (await routes.get(admin, operator)).json() == {"topics": [TOPIC]}
    assert (await routes.delete(admin, operator)).status_code == 204
    assert await routes.identity.topics(admin) == []
    member = await routes.identity.account(tenant_id, "member")
    refused = await routes.put(member, operator)
    assert refused.status_code == 403
    assert refused.json()["type"].endswith("topic-not-for-role"), refused.text
    missing = msgspec.structs.replace(admin, account_id=uuid7())
    assert (await routes.get(missing, operator)).status_code == 404


async def test_nobody_else_reads_or_changes_an_accounts_subscriptions(routes: Routes) -> None:
    tenant_id = uuid7()
    owner = await routes.identity.account(tenant_id, "owner")
    admin = await routes.identity.account(tenant_id, "admin")
    member = await routes.identity.account(tenant_id, "member")
    stranger = await routes.identity.account(uuid7(), "owner")
    callers = {
        "another admin of the tenant": routes.tokens.user(admin),
        "a member of the tenant": routes.tokens.user(member),
        "the tenant's API key": routes.keys.add(tenant_id),
    }
    for who, credential in callers.items():
        for answer in (
            await routes.get(owner, credential),
            await routes.put(owner, credential),
            await routes.delete(owner, credential),
        ):
            assert answer.status_code == 403, f"{who}: {answer.text}"
    another_tenants = routes.tokens.user(stranger)
    for answer in (
        await routes.get(owner, another_tenants),
        await routes.put(owner, another_tenants),
        await routes.delete(owner, another_tenants),
    ):
        assert answer.status_code == 404, answer.text

    # A member may not subscribe itself, and a token that still says admin after the
    # account became a member is refused by the account's role.
    assert (await routes.put(member, routes.tokens.user(member))).status_code == 403
    stale = routes.tokens.user(member)
    routes.tokens.claims[stale]["roles"] = ["admin"]
    refused = await routes.put(member, stale)
    assert refused.status_code == 403
    assert "owners and admins" in refused.json()["detail"]
    # An unverified address first verifies it (the mail goes to verified addresses only).
    unverified = await routes.put(owner, routes.tokens.user(owner, verified=False))
    assert unverified.status_code == 403
    assert unverified.json()["type"].endswith("email-not-verified")

    assert await routes.identity.topics(owner) == []
    assert await routes.identity.topics(member) == []
    assert await routes.identity.changes() == []


async def test_an_unknown_topic_is_not_found(routes: Routes) -> None:
    owner = await routes.identity.account(uuid7(), "owner")
    token = routes.tokens.user(owner)
    for answer in (
        await routes.put(owner, token, "marketing"),
        await routes.delete(owner, token, "marketing"),
    ):
        assert answer.status_code == 404, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["type"].endswith("unknown-topic")
    assert await routes.identity.changes() == []


# ---------------------------------------------------------------------------- rows
async def test_row_level_security_keeps_subscriptions_in_their_tenant(
    identity_db: ScratchDatabase,
) -> None:
    identity = Identity(identity_db)
    owner = await identity.account(uuid7(), "owner")
    await identity.subscribe(owner)
    async with identity.db.transaction(tenant_id=uuid7()) as tx:
        assert await tx.fetchval("SELECT count(*) FROM notice_subscriptions") == 0
    async with identity.db.transaction(tenant_id=owner.tenant_id) as tx:
        assert await tx.fetchval("SELECT count(*) FROM notice_subscriptions") == 1


async def test_erasure_deletes_the_persons_subscriptions_and_the_export_has_them(
    identity_db: ScratchDatabase,
) -> None:
    identity = Identity(identity_db)
    tenant_id = uuid7()
    owner = await identity.account(tenant_id, "owner")
    admin = await identity.account(tenant_id, "admin")
    await identity.subscribe(owner)
    await identity.subscribe(admin)
    assert NOTICE_SUBSCRIPTIONS in IDENTITY_EXPORTS
    async with identity.db.transaction(tenant_id=tenant_id) as tx:
        everyone = await tx.fetch(NOTICE_SUBSCRIPTIONS.query, tenant_id, None)
        hers = await tx.fetch(NOTICE_SUBSCRIPTIONS.query, tenant_id, owner.account_id)
    assert {r["account_id"] for r in everyone} == {owner.account_id, admin.account_id}
    assert [(r["account_id"], r["topic"]) for r in hers] == [(owner.account_id, TOPIC)]

    (erase,) = [s for s in IDENTITY_ERASURE_STATEMENTS if s.table == "notice_subscriptions"]
    async with identity.db.transaction(tenant_id=tenant_id) as tx:
        assert await tx.execute(erase.sql, tenant_id, owner.account_id) == "DELETE 1"
    assert await identity.topics(owner) == []
    assert await identity.topics(admin) == [TOPIC], "only the erased person's"


# ---------------------------------------------------------------------------- the mail
async def deliver(identity: Identity, mailer: MemoryMailer, event: Envelope[Any]) -> None:
    verification = EmailVerification(
        identity.store, mailer, FakeClock(), confirm_url="http://127.0.0.1/c"
    )
    handlers = identity_consumers(identity.store, verification, mailer, identity.db)
    async with identity.db.transaction(tenant_id=event.tenant_id) as tx:
        await handlers["legal.subprocessor_changed"](tx, event)


def announced(tenant_id: UUID) -> Envelope[Any]:
    return new_event(
        subprocessor_notice(),
        tenant_id=tenant_id,
        subject=str(UUID(int=42)),
        aggregate_version=0,
        source="/tenantry/tenancy",
        region=REGION,
    )


async def test_the_notice_is_mailed_to_the_subscribed_owners_and_admins_only(
    identity_db: ScratchDatabase,
) -> None:
    identity = Identity(identity_db)
    tenant_id = uuid7()
    owner = await identity.account(tenant_id, "owner")
    admin = await identity.account(tenant_id, "admin")
    quiet_admin = await identity.account(tenant_id, "admin")  # not subscribed
    unverified = await identity.account(tenant_id, "admin", verified=False)
    disabled = await identity.account(tenant_id, "owner")
    demoted = await identity.account(tenant_id, "admin")
    elsewhere = await identity.account(uuid7(), "owner")  # another tenant's subscriber
    for account in (owner, admin, unverified, disabled, demoted, elsewhere):
        assert await identity.subscribe(account)
    async with identity.db.transaction(tenant_id=tenant_id) as tx:
        await identity.store.disable_account(
            tx, tenant_id, disabled.account_id, disabled_by="test", reason="test"
        )
        await identity.store.change_role(
            tx, tenant_id, demoted.account_id, "member", changed_by="test"
        )

    mailer = MemoryMailer()
    await deliver(identity, mailer, announced(tenant_id))
    assert sorted(address for m in mailer.sent for address in recipients(m)) == sorted(
        [owner.email.lower(), admin.email.lower()]
    )
    assert quiet_admin.email.lower() not in {a for m in mailer.sent for a in recipients(m)}
    for message in mailer.sent:
        assert message["X-Tenantry-Notice"] == "legal-subprocessor-changed"
        body = message.get_body(preferencelist=("plain",))
        assert body is not None
        text = str(body.get_content())
        assert "Postmark (added): transactional email" in text
        assert f"/v1/tenants/{tenant_id}/legal/notices/{UUID(int=42)}/objection" in text


async def test_no_subscriber_no_mail(identity_db: ScratchDatabase) -> None:
    identity = Identity(identity_db)
    tenant_id = uuid7()
    await identity.account(tenant_id, "owner")
    await identity.account(tenant_id, "admin")
    mailer = MemoryMailer()
    await deliver(identity, mailer, announced(tenant_id))
    await deliver(identity, mailer, announced(uuid7()))  # a tenant identity has no rows of
    assert mailer.sent == []
