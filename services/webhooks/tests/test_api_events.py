"""What the webhooks API tells the audit log: every change a request makes appends its
event to the outbox in the change's own transaction (tenant = the tenant acted on, subject
= the endpoint or message), and a request that fails appends none.

The route handlers run as the app runs them, minus the HTTP pipeline: called with a
runtime on a scratch database (real Postgres) whose outbox the test reads. The first test
needs no database: a body refused before any transaction."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID, uuid4

import msgspec
import pytest
import pytest_asyncio

from tenantry_credentials.crypto import SecretBox
from tenantry_events.catalog import Catalog, EventType
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.kafka_codec import from_record
from tenantry_events.payloads.identity import EmailVerified
from tenantry_events.payloads.webhooks import (
    WebhookEndpointChanged,
    WebhookMessageExpunged,
    WebhookMessagesReplayed,
)
from tenantry_events.pg import Database, package_migrations
from tenantry_events.storage import PostgresOutbox
from tenantry_http.problems import Problem
from tenantry_service.runtime import Runtime
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.plans import FREE_LIMITS
from tenantry_testkit.stack import Stack
from tenantry_webhooks import store
from tenantry_webhooks.api import (
    EndpointIn,
    EndpointPatch,
    EndpointsController,
    MessagesController,
    Recover,
)
from tenantry_webhooks.consumers import fan_out
from tenantry_webhooks.domain import message_id_of
from tenantry_webhooks.endpoint_secrets import EndpointSecrets
from tenantry_webhooks.settings import WebhooksSettings

pytestmark = pytest.mark.timeout(30)

WEBHOOK_EVENTS = (
    "webhook.endpoint_changed",
    "webhook.messages_replayed",
    "webhook.message_expunged",
)
ONE_ENDPOINT = FREE_LIMITS


@dataclass
class FakeRuntime:
    """What the routes use of a Runtime."""

    db: Database
    outbox: PostgresOutbox
    settings: WebhooksSettings
    source: str = "/tenantry/webhooks"


def settings_for(database_url: str) -> WebhooksSettings:
    return WebhooksSettings(
        database_url=database_url,
        kafka_bootstrap="127.0.0.1:9",
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )


@dataclass
class World:
    scratch: ScratchDatabase
    runtime: FakeRuntime
    endpoint_secrets: EndpointSecrets
    tenant_id: UUID

    @property
    def settings(self) -> WebhooksSettings:
        return self.runtime.settings

    @property
    def rt(self) -> Runtime:
        return cast(Runtime, self.runtime)


@pytest_asyncio.fixture
async def world(stack: Stack) -> AsyncIterator[World]:
    scratch = await create_scratch_database(stack, package_migrations("tenantry_webhooks"), "wh")
    tenant_id = uuid4()
    try:
        async with scratch.db.transaction(platform=True) as tx:
            await tx.execute(
                """INSERT INTO tenant_projection (tenant_id, name, slug, status, plan,
                       home_region, version)
                   VALUES ($1, 'Acme', $2, 'active', 'free', 'local', 1)""",
                tenant_id,
                f"acme-{tenant_id.hex[:8]}",
            )
            await tx.execute(
                "INSERT INTO tenant_limits (tenant_id, plan, limits, plans, limits_version)"
                " VALUES ($1, 'free', $2, '[]', 1)",
                tenant_id,
                msgspec.to_builtins(ONE_ENDPOINT),
            )
        settings = settings_for(scratch.app_dsn)
        yield World(
            scratch=scratch,
            runtime=FakeRuntime(scratch.db, PostgresOutbox(scratch.db), settings),
            endpoint_secrets=EndpointSecrets(SecretBox.from_base64(settings.master_key)),
            tenant_id=tenant_id,
        )
    finally:
        await drop_scratch_database(stack, scratch)


async def told(world: World) -> list[Envelope[Any]]:
    """The webhook.* events in the outbox, oldest first."""
    entries = await world.runtime.outbox.fetch(1000)
    events = [from_record(e.record.headers, e.record.value) for e in entries]
    return [e for e in events if e.type in WEBHOOK_EVENTS]


async def create(world: World, **body: Any) -> str:
    data = EndpointIn(
        url=body.pop("url", "https://hooks.example.com/in"),
        event_types=body.pop("event_types", ["*"]),
        **body,
    )
    created = await EndpointsController.create.fn(
        None,
        tenant_id=world.tenant_id,
        data=data,
        runtime=world.rt,
        webhooks_settings=world.settings,
        endpoint_secrets=world.endpoint_secrets,
    )
    return str(created.endpoint.endpoint_id)


async def patch(world: World, endpoint_id: str, **changes: Any) -> None:
    await EndpointsController.change.fn(
        None,
        tenant_id=world.tenant_id,
        endpoint_id=endpoint_id,
        data=EndpointPatch(**changes),
        runtime=world.rt,
        webhooks_settings=world.settings,
    )


async def rotate(world: World, endpoint_id: str) -> str:
    secret = await EndpointsController.rotate.fn(
        None,
        tenant_id=world.tenant_id,
        endpoint_id=endpoint_id,
        runtime=world.rt,
        webhooks_settings=world.settings,
        endpoint_secrets=world.endpoint_secrets,
    )
    return str(secret.secret)


async def remove(world: World, endpoint_id: str) -> None:
    await EndpointsController.remove.fn(
        None, tenant_id=world.tenant_id, endpoint_id=endpoint_id, runtime=world.rt
    )


async def recover(world: World, endpoint_id: str) -> int:
    recovered = await EndpointsController.recover.fn(
        None,
        tenant_id=world.tenant_id,
        endpoint_id=endpoint_id,
        data=Recover(since=datetime.now(UTC) - timedelta(hours=1)),
        runtime=world.rt,
    )
    return int(recovered.deliveries)


async def resend(world: World, endpoint_id: str, message_id: str) -> None:
    await EndpointsController.resend.fn(
        None,
        tenant_id=world.tenant_id,
        endpoint_id=endpoint_id,
        message_id=message_id,
        runtime=world.rt,
    )


async def send_test(world: World, endpoint_id: str) -> str:
    sent = await EndpointsController.send_test.fn(
        None, tenant_id=world.tenant_id, endpoint_id=endpoint_id, runtime=world.rt
    )
    return str(sent.message_id)


async def expunge(world: World, message_id: str) -> None:
    await MessagesController.expunge.fn(
        None, tenant_id=world.tenant_id, message_id=message_id, runtime=world.rt
    )


async def refused(status: int, call: Any) -> None:
    with pytest.raises(Problem) as problem:
        await call
    assert problem.value.status == status


async def published(world: World) -> str:
    """One public event fanned out to the tenant's endpoints; its message id."""
    account_id = uuid4()
    event = new_event(
        EmailVerified(account_id=account_id, email="a@example.com"),
        tenant_id=world.tenant_id,
        subject=str(account_id),
        aggregate_version=2,
        source="/tenantry/identity",
        region="local",
    )
    async with world.scratch.db.transaction(tenant_id=world.tenant_id) as tx:
        await fan_out(tx, event)
    return message_id_of(event)


async def fail_every_delivery(world: World) -> None:
    async with world.scratch.db.transaction(tenant_id=world.tenant_id) as tx:
        await tx.execute(
            "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL WHERE tenant_id = $1",
            world.tenant_id,
        )


# ---------------------------------------------------------------- no database needed


class Untouchable:
    """A database and outbox that fail the test when used."""

    def transaction(self, **_: Any) -> Any:
        raise AssertionError("a refused body must not reach the database")

    async def put(self, *_: Any) -> None:
        raise AssertionError("a refused body must append no event")


async def test_a_body_refused_on_validation_appends_nothing() -> None:
    nothing = Untouchable()
    settings = settings_for("postgresql://unused")
    runtime = cast(
        Runtime, FakeRuntime(cast(Database, nothing), cast(PostgresOutbox, nothing), settings)
    )
    for url, types in (("ftp://hooks.example.com/", ["*"]), ("https://10.0.0.1/", ["*"])):
        with pytest.raises(Problem) as problem:
            await EndpointsController.create.fn(
                None,
                tenant_id=uuid4(),
                data=EndpointIn(url=url, event_types=types),
                runtime=runtime,
                webhooks_settings=settings,
                endpoint_secrets=EndpointSecrets(SecretBox.from_base64(settings.master_key)),
            )
        assert problem.value.status == 422


# ---------------------------------------------------------------- endpoints


async def test_each_change_to_an_endpoint_is_told_and_a_change_of_nothing_is_not(
    world: World,
) -> None:
    endpoint_id = await create(world, headers={"Authorization": "Bearer hush"})
    await patch(world, endpoint_id, url="https://hooks.example.com/v2", enabled=False)
    await patch(world, endpoint_id, url="https://hooks.example.com/v2", event_types=["*"])
    secret = await rotate(world, endpoint_id)
    await remove(world, endpoint_id)

    events = await told(world)
    assert all(e.tenant_id == world.tenant_id for e in events)
    assert all(e.subject == endpoint_id for e in events)
    payloads = [e.payload for e in events]
    assert all(isinstance(p, WebhookEndpointChanged) for p in payloads)
    created, updated, rotated, deleted = payloads
    assert created == WebhookEndpointChanged(
        endpoint_id=endpoint_id,
        change="created",
        url="https://hooks.example.com/in",
        enabled=True,
        event_types=["*"],
        fields=[],
    )
    assert updated == WebhookEndpointChanged(
        endpoint_id=endpoint_id,
        change="updated",
        url="https://hooks.example.com/v2",
        enabled=False,
        event_types=["*"],
        fields=["url", "enabled"],
    ), "the second PATCH changed nothing: no event"
    assert (rotated.change, rotated.url, rotated.enabled, rotated.fields) == (
        "secret_rotated",
        "https://hooks.example.com/v2",
        False,
        [],
    )
    assert rotated.previous_secret_expires_at is not None
    expires = datetime.fromisoformat(rotated.previous_secret_expires_at)
    grace = expires - datetime.now(UTC)
    assert timedelta(hours=23) < grace <= world.settings.secret_grace
    assert deleted == WebhookEndpointChanged(
        endpoint_id=endpoint_id,
        change="deleted",
        url=None,
        enabled=None,
        event_types=None,
        fields=[],
    )
    raw = b"".join(e.record.value for e in await world.runtime.outbox.fetch(1000))
    assert secret.encode() not in raw, "no secret in any event"
    assert b"whsec_" not in raw, "no secret in any event"
    assert b"hush" not in raw, "no header value in any event"


async def test_a_request_that_fails_changes_nothing_and_tells_nothing(world: World) -> None:
    endpoint_id = await create(world)
    before = len(await told(world))
    nowhere = "ep_" + uuid4().hex

    await refused(403, create(world))  # the plan allows one endpoint
    await refused(404, patch(world, nowhere, enabled=False))
    await refused(422, patch(world, endpoint_id, url="https://10.0.0.1/"))
    await refused(422, patch(world, endpoint_id, event_types=["no.such_event"]))
    await refused(404, rotate(world, nowhere))
    await refused(404, remove(world, nowhere))
    await refused(404, send_test(world, nowhere))
    await refused(404, recover(world, nowhere))
    await refused(404, resend(world, endpoint_id, "msg_nope"))
    await refused(404, resend(world, nowhere, "msg_nope"))
    await refused(404, expunge(world, "msg_nope"))
    assert len(await told(world)) == before
    assert await recover(world, endpoint_id) == 0, "nothing failed: nothing to queue again"
    assert len(await told(world)) == before + 1, "the request is on record all the same"
    async with world.scratch.db.transaction(tenant_id=world.tenant_id) as tx:
        row = await store.get_endpoint(tx, world.tenant_id, endpoint_id)
    assert row is not None
    assert (row.url, row.enabled, row.event_types) == ("https://hooks.example.com/in", True, ["*"])


# ---------------------------------------------------------------- messages


async def test_resend_recover_test_and_expunge_are_told(world: World) -> None:
    endpoint_id = await create(world)
    message_id = await published(world)
    await fail_every_delivery(world)

    assert await recover(world, endpoint_id) == 1
    await resend(world, endpoint_id, message_id)
    test_message = await send_test(world, endpoint_id)
    await expunge(world, message_id)
    await refused(404, expunge(world, message_id))  # already gone: nothing more to tell

    events = (await told(world))[1:]  # after the endpoint's creation
    assert all(e.tenant_id == world.tenant_id for e in events)
    assert [e.subject for e in events] == [endpoint_id, endpoint_id, endpoint_id, message_id]
    assert [e.payload for e in events] == [
        WebhookMessagesReplayed(
            endpoint_id=endpoint_id, kind="recover", message_ids=[message_id], count=1
        ),
        WebhookMessagesReplayed(
            endpoint_id=endpoint_id, kind="resend", message_ids=[message_id], count=1
        ),
        WebhookMessagesReplayed(
            endpoint_id=endpoint_id, kind="test", message_ids=[test_message], count=1
        ),
        WebhookMessageExpunged(message_id=message_id, event_type="user.email_verified"),
    ]


async def test_a_recovery_lists_at_most_the_cap_and_counts_them_all(world: World) -> None:
    endpoint_id = await create(world)
    first = [await published(world) for _ in range(3)]
    await fail_every_delivery(world)
    async with world.scratch.db.transaction(tenant_id=world.tenant_id) as tx:
        recovered = await store.recover(
            tx, world.tenant_id, endpoint_id, datetime.now(UTC) - timedelta(hours=1), 2
        )
    assert (recovered.count, recovered.message_ids) == (3, first[:2]), "oldest first"


# ---------------------------------------------------------------- opt-in types


class _Recorded(msgspec.Struct, frozen=True):
    what: str


def opt_in_catalog() -> Catalog:
    catalog = Catalog()
    catalog.register(
        EventType(
            name="noisy.recorded",
            payload=_Recorded,
            owner="tests",
            public=True,
            version=1,
            description="",
            opt_in=True,
        )
    )
    return catalog


async def test_an_opt_in_type_goes_only_to_endpoints_that_name_it(world: World) -> None:
    catalog = opt_in_catalog()
    box = world.endpoint_secrets

    async def endpoint(event_types: list[str]) -> str:
        endpoint_id = f"ep_{uuid4().hex}"
        fields = store.EndpointFields(
            url="https://hooks.example.com/in",
            description="",
            event_types=event_types,
            channels=[],
            headers={},
            enabled=True,
            rate_limit_per_second=None,
            fifo=False,
        )
        async with world.scratch.db.transaction(tenant_id=world.tenant_id) as tx:
            await store.insert_endpoint(
                tx, endpoint_id, world.tenant_id, fields, box.seal(endpoint_id, "whsec_x")
            )
        return endpoint_id

    def recorded() -> Envelope[_Recorded]:
        return new_event(
            _Recorded(what="x"),
            tenant_id=world.tenant_id,
            subject="x",
            aggregate_version=0,
            source="/tenantry/tenancy",
            region="local",
            catalog=catalog,
        )

    await endpoint(["*"])
    await endpoint(["noisy.*"])
    unasked = recorded()
    async with world.scratch.db.transaction(tenant_id=world.tenant_id) as tx:
        assert await fan_out(tx, unasked, catalog) == 0
        assert not await store.has_message(tx, world.tenant_id, message_id_of(unasked)), (
            "nobody asked for it: not even a message"
        )

    named = await endpoint(["noisy.recorded"])
    asked = recorded()
    async with world.scratch.db.transaction(tenant_id=world.tenant_id) as tx:
        assert await fan_out(tx, asked, catalog) == 1
        deliveries = await store.deliveries_of(tx, world.tenant_id, message_id_of(asked))
    assert [d.endpoint_id for d in deliveries] == [named]
