"""The dispatcher against real Postgres (a scratch database with the webhooks migrations)
and a real HTTP receiver on loopback, through tenantry_outbound's OutboundClient.

Time is the dispatcher's injected clock. It starts a minute ahead of the wall clock, so
every row a test creates with the database's now() is due at once; tests move it forward
to make retries, leases and the breaker's wait come due. Nothing sleeps to wait for a
condition: a test awaits `drain()` (which returns when nothing is due and nothing is in
flight) or polls with `eventually`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
import pytest_asyncio
from standardwebhooks.webhooks import Webhook

from tenantry_credentials.crypto import SecretBox
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.kafka_codec import from_record
from tenantry_events.payloads.identity import EmailVerified
from tenantry_events.payloads.tenancy import TenantOffboardingStarted, TenantState
from tenantry_events.pg import Database, package_migrations
from tenantry_events.storage import PostgresOutbox
from tenantry_outbound.outbound import OutboundClient, OutboundPolicy
from tenantry_resilience import BreakerRegistry, BreakerState
from tenantry_resilience.testing import ManualClock
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    eventually,
)
from tenantry_testkit.stack import Stack
from tenantry_webhooks import store
from tenantry_webhooks.consumers import fan_out
from tenantry_webhooks.dispatcher import (
    ENDPOINT_BREAKER,
    Dispatcher,
    DispatcherSettings,
    wake_delay,
)
from tenantry_webhooks.domain import RetrySchedule, message_id_of, new_secret
from tenantry_webhooks.endpoint_secrets import SECRET_CONTEXT
from tenantry_webhooks.sender import USER_AGENT, OutboundSender
from tenantry_webhooks.store import AttemptRow, Claimed, DeliveryRow, EndpointFields, EndpointRow

from .receiver import HUGE_BYTES, Receiver, running_receiver

pytestmark = pytest.mark.timeout(30)

TOTAL_TIMEOUT = 1.0
MAX_RESPONSE = 4096
SCHEDULE = RetrySchedule(delays=(1, 2, 4), jitter=0)


# ---------------------------------------------------------------- the world of a test


@dataclass
class Env:
    scratch: ScratchDatabase
    receiver: Receiver
    sender: OutboundSender
    box: SecretBox
    clock: ManualClock
    tenant_id: UUID

    @property
    def db(self) -> Database:
        return self.scratch.db


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    tenant_id: UUID
    secret: str
    path: str


@pytest_asyncio.fixture
async def env(stack: Stack) -> AsyncIterator[Env]:
    scratch = await create_scratch_database(stack, package_migrations("tenantry_webhooks"), "wh")
    policy = OutboundPolicy(
        allow_networks=["127.0.0.0/8"],
        allow_http=True,
        connect_timeout=TOTAL_TIMEOUT,
        total_timeout=TOTAL_TIMEOUT,
        max_response_bytes=MAX_RESPONSE,
    )
    try:
        async with running_receiver() as receiver, OutboundClient(policy) as client:
            world = Env(
                scratch=scratch,
                receiver=receiver,
                sender=OutboundSender(client),
                box=SecretBox(secrets.token_bytes(32)),
                clock=ManualClock(time.time() + 60),
                tenant_id=uuid4(),
            )
            await add_tenant(world, world.tenant_id)
            yield world
    finally:
        await drop(stack, scratch)


async def drop(stack: Stack, scratch: ScratchDatabase) -> None:
    """Like drop_scratch_database, without FORCE: the app role's backends take a moment to
    exit after the pool is closed, and DROP DATABASE ... WITH (FORCE) run as the owner may
    not terminate another role's backend (it fails). A plain DROP waits for them itself."""
    await scratch.db.close()
    admin = await asyncpg.connect(stack.owner_dsn("postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{scratch.name}"')
    finally:
        await admin.close()


def dispatcher(
    env: Env,
    *,
    schedule: RetrySchedule = SCHEDULE,
    breakers: BreakerRegistry | None = None,
    clock: Callable[[], float] | None = None,
    **settings: Any,
) -> Dispatcher:
    """A dispatcher on the test's clock, or on `clock` (its breakers too)."""
    clock = clock or env.clock
    return Dispatcher(
        db=env.db,
        listen_dsn=env.scratch.app_dsn,
        sender=env.sender,
        box=env.box,
        outbox=PostgresOutbox(env.db),
        schedule=schedule,
        settings=DispatcherSettings(**settings),
        clock=clock,
        breakers=(
            breakers if breakers is not None else BreakerRegistry(ENDPOINT_BREAKER, clock=clock)
        ),
    )


async def add_tenant(env: Env, tenant_id: UUID, status: str = "active") -> None:
    await env.db.pool.execute(
        """INSERT INTO tenant_projection (tenant_id, name, slug, status, plan, home_region,
               version)
           VALUES ($1, 'Acme', $2, $3, 'free', 'local', 1)""",
        tenant_id,
        f"acme-{tenant_id.hex[:8]}",
        status,
    )


async def set_tenant_status(env: Env, tenant_id: UUID, status: str) -> None:
    await env.db.pool.execute(
        "UPDATE tenant_projection SET status = $2 WHERE tenant_id = $1", tenant_id, status
    )


def fields(
    env: Env,
    path: str,
    *,
    event_types: Sequence[str] = ("*",),
    channels: Sequence[str] = (),
    headers: dict[str, str] | None = None,
    enabled: bool = True,
    fifo: bool = False,
) -> EndpointFields:
    return EndpointFields(
        url=env.receiver.url(path),
        description="",
        event_types=list(event_types),
        channels=list(channels),
        headers=headers or {},
        enabled=enabled,
        rate_limit_per_second=None,
        fifo=fifo,
    )


async def add_endpoint(
    env: Env, path: str, *, tenant_id: UUID | None = None, **options: Any
) -> Endpoint:
    tenant = tenant_id or env.tenant_id
    endpoint_id = f"ep_{uuid4().hex}"
    secret = new_secret()
    sealed = env.box.encrypt(secret.encode(), f"{SECRET_CONTEXT}:{endpoint_id}")
    async with env.db.transaction(tenant_id=tenant) as tx:
        await store.insert_endpoint(tx, endpoint_id, tenant, fields(env, path, **options), sealed)
    return Endpoint(endpoint_id, tenant, secret, path)


def an_event(env: Env, tenant_id: UUID | None = None) -> Envelope[EmailVerified]:
    account_id = uuid4()
    return new_event(
        EmailVerified(account_id=account_id, email=f"{account_id.hex[:8]}@example.com"),
        tenant_id=tenant_id or env.tenant_id,
        subject=str(account_id),
        aggregate_version=2,
        source="/tenantry/identity",
        region="local",
    )


async def publish(
    env: Env, count: int = 1, tenant_id: UUID | None = None
) -> list[Envelope[EmailVerified]]:
    """`count` public events fanned out in one transaction (in order: FIFO follows it)."""
    events = [an_event(env, tenant_id) for _ in range(count)]
    async with env.db.transaction(tenant_id=tenant_id or env.tenant_id) as tx:
        for event in events:
            await fan_out(tx, event)
    return events


async def deliveries(env: Env, event: Envelope[Any]) -> list[DeliveryRow]:
    async with env.db.transaction(tenant_id=event.tenant_id) as tx:
        return await store.deliveries_of(tx, event.tenant_id, message_id_of(event))


async def delivery(env: Env, event: Envelope[Any]) -> DeliveryRow:
    (row,) = await deliveries(env, event)
    return row


async def attempts(env: Env, event: Envelope[Any]) -> list[AttemptRow]:
    """Oldest first."""
    async with env.db.transaction(tenant_id=event.tenant_id) as tx:
        rows = await store.list_attempts(
            tx, event.tenant_id, message_id=message_id_of(event), before=None, limit=100
        )
    return rows[::-1]


async def endpoint_row(env: Env, endpoint: Endpoint) -> EndpointRow:
    async with env.db.transaction(tenant_id=endpoint.tenant_id) as tx:
        row = await store.get_endpoint(tx, endpoint.tenant_id, endpoint.endpoint_id)
    assert row is not None
    return row


async def outbox_events(env: Env) -> list[Envelope[Any]]:
    entries = await PostgresOutbox(env.db).fetch(100)
    return [from_record(e.record.headers, e.record.value) for e in entries]


async def leased(env: Env) -> int:
    async with env.db.transaction(platform=True) as tx:
        return int(
            await tx.fetchval("SELECT count(*) FROM deliveries WHERE leased_until IS NOT NULL")
        )


def assert_at(actual: datetime | None, seconds: float) -> None:
    """`actual` is the instant `seconds` (epoch) to the microsecond Postgres keeps."""
    assert actual is not None
    expected = datetime.fromtimestamp(seconds, UTC)
    assert abs((actual - expected).total_seconds()) < 0.001, (actual, expected)


# ---------------------------------------------------------------- one delivery


async def test_a_delivery_is_signed_and_the_reference_verifier_accepts_it(env: Env) -> None:
    assert DispatcherSettings().secret_context == SECRET_CONTEXT, "what the API encrypts with"
    endpoint = await add_endpoint(env, "/ok", headers={"X-Team": "blue"})
    (event,) = await publish(env)
    await dispatcher(env).drain()

    (request,) = env.receiver.requests
    assert request.path == "/ok"
    payload = Webhook(endpoint.secret).verify(request.body, request.headers)
    assert payload == {
        "type": "user.email_verified",
        "timestamp": event.occurred_at.isoformat(),
        "data": {
            "tenant_id": str(env.tenant_id),
            "subject": event.subject,
            "account_id": str(event.payload.account_id),
            "email": event.payload.email,
        },
    }
    assert request.webhook_id == message_id_of(event)
    assert request.headers["webhook-timestamp"] == str(int(env.clock.now))
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers["x-team"] == "blue", "the endpoint's custom header"

    row = await delivery(env, event)
    assert (row.status, row.attempts, row.last_status, row.next_attempt_at) == (
        "succeeded",
        1,
        200,
        None,
    )
    (attempt,) = await attempts(env, event)
    assert (attempt.attempt, attempt.status_code, attempt.error) == (1, 200, None)
    assert (attempt.response_body, attempt.response_truncated, attempt.trigger) == (
        "ok",
        False,
        "scheduled",
    )
    assert_at(attempt.started_at, env.clock.now)
    assert (await endpoint_row(env, endpoint)).failing_since is None


async def test_two_failures_then_success_follow_the_schedule(env: Env) -> None:
    endpoint = await add_endpoint(env, "/fail/2")
    (event,) = await publish(env)
    start = env.clock.now
    worker = dispatcher(env)

    await worker.drain()
    row = await delivery(env, event)
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, 500)
    assert_at(row.next_attempt_at, start + 1)
    assert_at((await endpoint_row(env, endpoint)).failing_since, start)

    env.clock.advance(0.5)
    await worker.drain()
    assert len(env.receiver.requests) == 1, "not due yet"

    env.clock.advance(0.5)
    await worker.drain()
    row = await delivery(env, event)
    assert (row.status, row.attempts) == ("pending", 2)
    assert_at(row.next_attempt_at, start + 1 + 2)

    env.clock.advance(2)
    await worker.drain()
    row = await delivery(env, event)
    assert (row.status, row.attempts, row.last_status, row.next_attempt_at) == (
        "succeeded",
        3,
        200,
        None,
    )
    log = await attempts(env, event)
    assert [(a.attempt, a.status_code) for a in log] == [(1, 500), (2, 500), (3, 200)]
    assert_at(log[0].next_attempt_at, start + 1)
    assert_at(log[1].next_attempt_at, start + 3)
    assert log[2].next_attempt_at is None
    assert [a.response_body for a in log] == ["boom", "boom", "ok"]

    requests = env.receiver.requests
    assert len(requests) == 3
    assert {r.webhook_id for r in requests} == {message_id_of(event)}
    assert {r.body for r in requests} == {requests[0].body}, "a retry sends the same bytes"
    for request in requests:
        Webhook(endpoint.secret).verify(request.body, request.headers)
    assert (await endpoint_row(env, endpoint)).failing_since is None, "a success clears it"


async def test_when_the_schedule_is_exhausted_the_delivery_fails(env: Env) -> None:
    endpoint = await add_endpoint(env, "/fail/99")
    (event,) = await publish(env)
    worker = dispatcher(env)
    await worker.drain()
    for delay in SCHEDULE.delays:
        env.clock.advance(delay)
        await worker.drain()

    row = await delivery(env, event)
    assert (row.status, row.attempts, row.next_attempt_at, row.last_status) == (
        "failed",
        SCHEDULE.max_attempts,
        None,
        500,
    )
    assert [a.attempt for a in await attempts(env, event)] == [1, 2, 3, 4]
    env.clock.advance(3600)
    await worker.drain()
    assert len(env.receiver.requests) == SCHEDULE.max_attempts, "nothing after the last"
    row_after = await endpoint_row(env, endpoint)
    assert row_after.enabled, "a failed message alone does not disable the endpoint"


async def test_410_disables_the_endpoint_and_its_other_deliveries_wait(env: Env) -> None:
    endpoint = await add_endpoint(env, "/gone")
    events = await publish(env, 3)
    worker = dispatcher(env, per_endpoint=1)
    await worker.drain()

    (gone,) = env.receiver.requests
    row = await endpoint_row(env, endpoint)
    assert (row.enabled, row.disabled_reason) == (False, "gone")
    (disabled,) = await outbox_events(env)
    assert disabled.type == "webhook.endpoint_disabled"
    assert disabled.tenant_id == env.tenant_id
    assert disabled.subject == endpoint.endpoint_id
    assert (disabled.payload.endpoint_id, disabled.payload.reason) == (endpoint.endpoint_id, "gone")
    assert disabled.payload.url == env.receiver.url("/gone")
    assert disabled.payload.failing_since is None

    by_id = {message_id_of(e): e for e in events}
    gone_row = await delivery(env, by_id.pop(gone.webhook_id))
    assert (gone_row.status, gone_row.attempts, gone_row.last_status) == ("failed", 1, 410)
    waiting = list(by_id.values())
    for event in waiting:
        assert (await delivery(env, event)).status == "pending"
        assert (await delivery(env, event)).attempts == 0

    env.clock.advance(3600)
    await worker.drain()
    assert len(env.receiver.requests) == 1, "nothing goes to a disabled endpoint"

    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        updated = await store.update_endpoint(
            tx, env.tenant_id, endpoint.endpoint_id, fields(env, "/ok")
        )
    assert updated is not None
    assert (updated.enabled, updated.disabled_reason, updated.failing_since) == (True, None, None)
    await worker.drain()
    assert {r.webhook_id for r in env.receiver.to("/ok")} == set(by_id)
    assert len(env.receiver.to("/ok")) == 2
    for event in waiting:
        assert (await delivery(env, event)).status == "succeeded"
    assert len(await outbox_events(env)) == 1, "disabled once, told once"


async def test_429_retry_after_is_honoured(env: Env) -> None:
    await add_endpoint(env, "/throttled")
    (event,) = await publish(env)
    start = env.clock.now
    worker = dispatcher(env)
    await worker.drain()

    row = await delivery(env, event)
    assert (row.status, row.last_status) == ("pending", 429)
    # Retry-After: 7, not the schedule's 1 s (nor its doubled 2 s for a 429 without one).
    assert_at(row.next_attempt_at, start + 7)
    (attempt,) = await attempts(env, event)
    assert_at(attempt.next_attempt_at, start + 7)

    env.clock.advance(6.5)
    await worker.drain()
    assert len(env.receiver.requests) == 1
    env.clock.advance(0.5)
    await worker.drain()
    assert len(env.receiver.requests) == 2


async def test_retry_after_is_back_pressure_that_the_breaker_ignores(env: Env) -> None:
    """429 with Retry-After six times (more than the breaker's minimum of calls, every one
    of which would have been a failure), then 200: each retry goes at its Retry-After time,
    not before and not postponed by an open breaker, and the endpoint is not failing."""
    throttled = ENDPOINT_BREAKER.minimum_number_of_calls + 1
    endpoint = await add_endpoint(env, f"/throttle/{throttled}/3")
    (event,) = await publish(env)
    breakers = BreakerRegistry(ENDPOINT_BREAKER, clock=env.clock)
    schedule = RetrySchedule(delays=(1,) * (throttled + 1), jitter=0)
    worker = dispatcher(env, breakers=breakers, schedule=schedule)
    breaker = breakers.get(endpoint.endpoint_id)

    for made in range(1, throttled + 1):
        sent_at = env.clock.now
        await worker.drain()
        assert len(env.receiver.requests) == made
        row = await delivery(env, event)
        assert (row.status, row.attempts, row.last_status) == ("pending", made, 429)
        assert_at(row.next_attempt_at, sent_at + 3)  # Retry-After, not the schedule's 1 s
        assert breaker.state is BreakerState.CLOSED
        assert (await endpoint_row(env, endpoint)).failing_since is None
        env.clock.advance(2.9)
        await worker.drain()
        assert len(env.receiver.requests) == made, "not before the time it asked for"
        env.clock.advance(0.1)

    await worker.drain()
    row = await delivery(env, event)
    assert (row.status, row.attempts, row.last_status) == ("succeeded", throttled + 1, 200)
    snapshot = breaker.snapshot()
    assert breaker.state is BreakerState.CLOSED
    assert (snapshot.buffered_calls, snapshot.failed_calls) == (1, 0), "429s count neither way"


async def test_without_retry_after_a_429_is_still_a_failure_for_the_breaker(env: Env) -> None:
    endpoint = await add_endpoint(env, "/status/429")
    count = ENDPOINT_BREAKER.minimum_number_of_calls
    await publish(env, count)
    breakers = BreakerRegistry(ENDPOINT_BREAKER, clock=env.clock)
    await dispatcher(env, breakers=breakers, per_endpoint=count).drain()
    assert len(env.receiver.requests) == count
    assert breakers.get(endpoint.endpoint_id).state is BreakerState.OPEN
    assert (await endpoint_row(env, endpoint)).failing_since is not None


async def test_a_redirect_is_a_failure_and_never_followed(env: Env) -> None:
    await add_endpoint(env, "/redirect")
    (event,) = await publish(env)
    start = env.clock.now
    await dispatcher(env).drain()

    (attempt,) = await attempts(env, event)
    assert attempt.status_code == 302
    row = await delivery(env, event)
    assert (row.status, row.last_status) == ("pending", 302)
    assert_at(row.next_attempt_at, start + 1)
    assert env.receiver.to("/ok") == [], "the Location was not visited"


async def test_a_huge_response_is_truncated_and_the_client_stops_reading(env: Env) -> None:
    await add_endpoint(env, "/huge")
    (event,) = await publish(env)
    began = time.monotonic()
    await dispatcher(env).drain()
    assert time.monotonic() - began < TOTAL_TIMEOUT, "returned at the cap, not at the timeout"

    (attempt,) = await attempts(env, event)
    assert (attempt.status_code, attempt.response_truncated) == (200, True)
    assert attempt.response_body == "x" * MAX_RESPONSE
    assert (await delivery(env, event)).status == "succeeded"
    await asyncio.wait_for(env.receiver.huge_finished.wait(), timeout=10)
    assert env.receiver.streamed < HUGE_BYTES / 2, "the receiver stopped: nobody was reading"


async def test_a_response_with_a_nul_byte_is_recorded(env: Env) -> None:
    """Postgres text cannot hold NUL: an answer containing one must still be recorded,
    or the attempt is lost and the delivery is sent again at every lease, forever."""
    await add_endpoint(env, "/nul")
    (event,) = await publish(env)
    await dispatcher(env).drain()

    row = await delivery(env, event)
    assert (row.status, row.attempts) == ("succeeded", 1)
    (attempt,) = await attempts(env, event)
    assert attempt.response_body is not None
    assert attempt.response_body.startswith("ok")
    assert "\x00" not in attempt.response_body


async def test_the_total_timeout_is_recorded(env: Env) -> None:
    await add_endpoint(env, "/slow")
    (event,) = await publish(env)
    start = env.clock.now
    began = time.monotonic()
    await dispatcher(env).drain()
    assert time.monotonic() - began < TOTAL_TIMEOUT + 2

    (attempt,) = await attempts(env, event)
    assert (attempt.status_code, attempt.error) == (None, "timed out (total)")
    assert attempt.latency_ms >= TOTAL_TIMEOUT * 1000 * 0.9
    row = await delivery(env, event)
    assert (row.status, row.last_status, row.last_error) == ("pending", None, "timed out (total)")
    assert_at(row.next_attempt_at, start + 1)


async def test_an_endpoint_failing_for_the_whole_window_is_disabled(env: Env) -> None:
    endpoint = await add_endpoint(env, "/fail/99")
    (event,) = await publish(env)
    start = env.clock.now
    schedule = RetrySchedule(delays=(1800,) * 5, jitter=0)
    worker = dispatcher(env, schedule=schedule, auto_disable_after=timedelta(hours=1))

    await worker.drain()
    env.clock.advance(1800)
    await worker.drain()
    row = await endpoint_row(env, endpoint)
    assert row.enabled, "failing for 30 minutes of a one-hour window"
    assert_at(row.failing_since, start)
    assert await outbox_events(env) == []

    env.clock.advance(1801)  # a second past the window (whatever the float rounding)
    await worker.drain()
    row = await endpoint_row(env, endpoint)
    assert (row.enabled, row.disabled_reason) == (False, "failing")
    (disabled,) = await outbox_events(env)
    assert disabled.type == "webhook.endpoint_disabled"
    assert disabled.payload.reason == "failing"
    assert_at(datetime.fromisoformat(disabled.payload.failing_since), start)
    assert (await delivery(env, event)).status == "pending", "it waits for a re-enable"

    env.clock.advance(1800)
    await worker.drain()
    assert len(env.receiver.requests) == 3


async def test_a_rotated_secret_signs_alongside_the_new_one_for_the_grace(env: Env) -> None:
    endpoint = await add_endpoint(env, "/ok")
    new = new_secret()
    sealed = env.box.encrypt(new.encode(), f"{SECRET_CONTEXT}:{endpoint.endpoint_id}")
    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        assert await store.rotate_secret(
            tx, env.tenant_id, endpoint.endpoint_id, sealed, timedelta(hours=1)
        )
    worker = dispatcher(env)
    await publish(env)
    await worker.drain()

    (during,) = env.receiver.requests
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(during.body, during.headers)
    Webhook(endpoint.secret).verify(during.body, during.headers)

    env.clock.advance(2 * 3600)  # past the grace
    (event,) = await publish(env)
    await worker.drain()
    after = env.receiver.requests[-1]
    assert after.webhook_id == message_id_of(event)
    # The verifier refuses a timestamp two hours off the wall clock: sign with it instead.
    stamp = datetime.fromtimestamp(int(after.headers["webhook-timestamp"]), UTC)
    body = after.body.decode()
    signatures = after.headers["webhook-signature"]
    assert signatures == Webhook(new).sign(after.webhook_id, stamp, body), "the new one only"
    assert Webhook(endpoint.secret).sign(after.webhook_id, stamp, body) not in signatures


# ---------------------------------------------------------------- who gets to go


async def test_a_suspended_tenants_deliveries_wait_until_it_is_active(env: Env) -> None:
    other = uuid4()
    await add_tenant(env, other)
    await add_endpoint(env, "/ok")
    await add_endpoint(env, "/ok/other", tenant_id=other)
    await set_tenant_status(env, env.tenant_id, "suspended")
    (held,) = await publish(env)
    (free,) = await publish(env, tenant_id=other)
    worker = dispatcher(env)

    await worker.drain()
    assert [r.webhook_id for r in env.receiver.requests] == [message_id_of(free)]
    row = await delivery(env, held)
    assert (row.status, row.attempts) == ("pending", 0)
    assert await worker.claim_and_start() == 0

    await set_tenant_status(env, env.tenant_id, "active")
    await worker.drain()
    assert [r.webhook_id for r in env.receiver.to("/ok")] == [message_id_of(held)]
    assert (await delivery(env, held)).status == "succeeded"


def offboarding_started(env: Env) -> Envelope[TenantOffboardingStarted]:
    state = TenantState(
        name="Acme", slug="acme", status="offboarding", plan="free", home_region="local"
    )
    payload = TenantOffboardingStarted(
        tenant=state,
        previous_status="active",
        purge_at=datetime.now(UTC) + timedelta(days=30),
        reason="contract ended",
        by="owner",
        certificate_id=uuid4(),
    )
    return new_event(
        payload,
        tenant_id=env.tenant_id,
        subject=str(env.tenant_id),
        aggregate_version=2,
        source="/tenantry/tenancy",
        region="local",
    )


async def test_an_offboarding_tenant_gets_its_notice_then_nothing_until_it_is_called_off(
    env: Env,
) -> None:
    await add_endpoint(env, "/fail/1")  # every message fails once, then succeeds
    (before,) = await publish(env)
    worker = dispatcher(env)
    await worker.drain()
    assert (await delivery(env, before)).attempts == 1  # failed once, a retry is due in 1 s

    await set_tenant_status(env, env.tenant_id, "offboarding")
    notice = offboarding_started(env)
    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        await fan_out(tx, notice)
    (during,) = await publish(env)
    await worker.drain()
    env.clock.advance(60)  # the retry and the notice's own retry come due
    await worker.drain()
    sent = [r.webhook_id for r in env.receiver.to("/fail/1")]
    assert sent == [message_id_of(before), message_id_of(notice), message_id_of(notice)]
    assert (await delivery(env, notice)).status == "succeeded"
    # Paused: the retry clock stands still (no attempt counted), nothing new goes out.
    assert ((await delivery(env, before)).status, (await delivery(env, before)).attempts) == (
        "pending",
        1,
    )
    assert ((await delivery(env, during)).status, (await delivery(env, during)).attempts) == (
        "pending",
        0,
    )
    assert await worker.claim_and_start() == 0

    await set_tenant_status(env, env.tenant_id, "active")  # offboarding called off
    await worker.drain()
    env.clock.advance(60)
    await worker.drain()
    assert (await delivery(env, before)).status == "succeeded"
    assert (await delivery(env, during)).status == "succeeded"


@pytest.mark.parametrize("state", ["suspended", "purging", "purged"])
async def test_no_notice_leaves_a_tenant_that_is_not_active_or_offboarding(
    env: Env, state: str
) -> None:
    await add_endpoint(env, "/ok")
    await set_tenant_status(env, env.tenant_id, state)
    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        await fan_out(tx, offboarding_started(env))
    worker = dispatcher(env)
    await worker.drain()
    assert env.receiver.requests == []
    assert await worker.claim_and_start() == 0


async def test_fifo_keeps_order_through_a_failure(env: Env) -> None:
    """Each message fails once. A FIFO endpoint gets m1, m1, m2, m2, m3, m3; an ordinary
    one gets all three before any retry."""
    await add_endpoint(env, "/fail/1/fifo", fifo=True)
    await add_endpoint(env, "/fail/1/any")
    events = await publish(env, 3)
    ids = [message_id_of(e) for e in events]
    # Half the calls fail here: the default breaker would open after five (its own test).
    lenient = replace(ENDPOINT_BREAKER, minimum_number_of_calls=10)
    worker = dispatcher(env, breakers=BreakerRegistry(lenient, clock=env.clock))

    await worker.drain()
    assert [r.webhook_id for r in env.receiver.to("/fail/1/fifo")] == ids[:1]
    assert sorted(r.webhook_id for r in env.receiver.to("/fail/1/any")) == sorted(ids)
    for _ in range(3):
        env.clock.advance(1)
        await worker.drain()

    fifo = [r.webhook_id for r in env.receiver.to("/fail/1/fifo")]
    assert fifo == [ids[0], ids[0], ids[1], ids[1], ids[2], ids[2]], [ids.index(i) for i in fifo]
    assert env.receiver.max_in_flight["/fail/1/fifo"] == 1
    assert len(env.receiver.to("/fail/1/any")) == 6
    for event in events:
        assert {d.status for d in await deliveries(env, event)} == {"succeeded"}


async def test_drain_claims_again_after_a_send_that_finished_during_its_claim(env: Env) -> None:
    """drain() returns only after a claim that started with nothing in flight. Here a FIFO
    head finishes while a claim is running (the claim saw it pending, so the next message
    was not yet allowed); that claim finds nothing, and nothing is left in flight."""

    @dataclass
    class SlowClaims(Dispatcher):
        async def _claim(self, limit: int) -> list[Claimed]:
            claimed = await super()._claim(limit)
            if self._tasks:  # sends in flight complete while this claim is "still running"
                await asyncio.wait(set(self._tasks))
            return claimed

    await add_endpoint(env, "/hold/200", fifo=True)
    ordered = await publish(env, 2)
    other = uuid4()  # a fast delivery of another tenant: it triggers the claim that races
    await add_tenant(env, other)
    await add_endpoint(env, "/ok", tenant_id=other)
    await publish(env, tenant_id=other)
    worker = SlowClaims(
        db=env.db,
        listen_dsn=env.scratch.app_dsn,
        sender=env.sender,
        box=env.box,
        outbox=PostgresOutbox(env.db),
        schedule=SCHEDULE,
        clock=env.clock,
    )
    await worker.drain()
    assert [r.webhook_id for r in env.receiver.to("/hold/200")] == [
        message_id_of(e) for e in ordered
    ], "the second FIFO message was due when drain() returned"


async def test_no_more_than_per_endpoint_sends_in_flight(env: Env) -> None:
    await add_endpoint(env, "/hold/50")
    events = await publish(env, 12)
    await dispatcher(env, per_endpoint=3, concurrency=32).drain()

    assert len(env.receiver.requests) == 12, "every message sent, each once"
    assert await leased(env) == 0
    assert env.receiver.max_in_flight["/hold/50"] == 3
    for event in events:
        row = await delivery(env, event)
        assert (row.status, row.attempts) == ("succeeded", 1)


async def test_a_tenant_with_one_delivery_is_not_stuck_behind_a_backlog(env: Env) -> None:
    """Tenant A has 40 due to a slow endpoint, tenant B (later) one to a fast endpoint: the
    first claim already takes B's, though A's are older and fill every slot."""
    tenant_b = uuid4()
    await add_tenant(env, tenant_b)
    await add_endpoint(env, "/hold/50")
    await add_endpoint(env, "/ok", tenant_id=tenant_b)
    backlog = await publish(env, 40)
    (single,) = await publish(env, tenant_id=tenant_b)
    worker = dispatcher(env, concurrency=4, per_endpoint=4, per_tenant_claim=16)

    assert await worker.claim_and_start() == 4

    async def b_received() -> bool:
        return bool(env.receiver.to("/ok"))

    await eventually(b_received, timeout=5, message="B's delivery")
    assert env.receiver.to("/ok")[0].webhook_id == message_id_of(single)
    assert len(env.receiver.to("/hold/50")) <= 3, "only the first round has been claimed"

    await worker.drain()
    assert len(env.receiver.to("/hold/50")) == 40
    assert await leased(env) == 0
    for event in backlog:
        assert (await delivery(env, event)).status == "succeeded"


async def test_the_breaker_stops_attempts_until_its_wait_is_over(env: Env) -> None:
    """Five messages, each failing once: five failures (the breaker's minimum) open it.
    While it is open the due deliveries are postponed without an attempt; after its wait,
    a trial succeeds and the rest follow."""
    endpoint = await add_endpoint(env, "/fail/1")
    count = ENDPOINT_BREAKER.minimum_number_of_calls
    events = await publish(env, count)
    start = env.clock.now
    breakers = BreakerRegistry(ENDPOINT_BREAKER, clock=env.clock)
    worker = dispatcher(env, breakers=breakers, per_endpoint=count)
    wait = ENDPOINT_BREAKER.wait_duration_in_open_state

    await worker.drain()
    assert len(env.receiver.requests) == count
    assert breakers.get(endpoint.endpoint_id).state is BreakerState.OPEN

    env.clock.advance(1)  # every retry is due; the breaker is not
    await worker.drain()
    assert len(env.receiver.requests) == count, "no request while the breaker is open"
    for event in events:
        row = await delivery(env, event)
        assert (row.status, row.attempts) == ("pending", 1), "no attempt spent"
        assert_at(row.next_attempt_at, start + wait)
        assert len(await attempts(env, event)) == 1
    assert await leased(env) == 0, "postponed deliveries are not left leased"

    env.clock.advance(wait - 1)  # the wait is over: one trial goes
    await worker.drain()
    assert len(env.receiver.requests) > count
    assert breakers.get(endpoint.endpoint_id).state is BreakerState.CLOSED

    env.clock.advance(5)
    await worker.drain()
    assert len(env.receiver.requests) == 2 * count, "each message: one failure, one success"
    for event in events:
        assert (await delivery(env, event)).status == "succeeded"


# ---------------------------------------------------------------- durability


async def test_a_lost_lease_is_claimed_again_and_sent_with_the_same_id(env: Env) -> None:
    await add_endpoint(env, "/ok")
    (event,) = await publish(env)
    dead = dispatcher(env, lease_seconds=30)
    (claimed,) = await dead._claim(10)  # claimed, committed, then the process "died"
    assert claimed.message_id == message_id_of(event)

    alive = dispatcher(env, lease_seconds=30)
    await alive.drain()
    assert env.receiver.requests == [], "leased by the other dispatcher"
    env.clock.advance(29)
    await alive.drain()
    assert env.receiver.requests == [], "the lease still holds"

    env.clock.advance(2)
    await alive.drain()
    (request,) = env.receiver.requests
    assert request.webhook_id == message_id_of(event)
    row = await delivery(env, event)
    assert (row.status, row.attempts) == ("succeeded", 1)


async def test_a_delivery_claimed_as_its_endpoint_is_disabled_goes_back_at_once(
    env: Env,
) -> None:
    """Disabled between claim and send: nothing is sent and the lease is given back, so
    re-enabling sends it now, not once the lease has run out."""
    endpoint = await add_endpoint(env, "/ok")
    (event,) = await publish(env)
    worker = dispatcher(env, lease_seconds=600)
    (claimed,) = await worker._claim(10)
    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        await store.update_endpoint(
            tx, env.tenant_id, endpoint.endpoint_id, fields(env, "/ok", enabled=False)
        )
    await worker._deliver(claimed)
    assert env.receiver.requests == []
    assert await leased(env) == 0

    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        await store.update_endpoint(tx, env.tenant_id, endpoint.endpoint_id, fields(env, "/ok"))
    await worker.drain()  # the clock has not moved: the lease must be gone
    assert [r.webhook_id for r in env.receiver.requests] == [message_id_of(event)]
    assert (await delivery(env, event)).status == "succeeded"


async def test_expunging_a_message_fails_its_pending_deliveries(env: Env) -> None:
    """A pending delivery whose body is gone can never be sent; left pending, it is claimed
    and given back forever (drain() would never return, run() would spin)."""
    await add_endpoint(env, "/fail/1")
    (event,) = await publish(env)
    worker = dispatcher(env)
    await worker.drain()
    assert (await delivery(env, event)).status == "pending"

    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        assert await store.expunge(tx, env.tenant_id, message_id_of(event))
    env.clock.advance(1)
    await asyncio.wait_for(worker.drain(), timeout=5)
    assert len(env.receiver.requests) == 1, "nothing left to send"
    row = await delivery(env, event)
    assert (row.status, row.last_error, row.next_attempt_at) == ("failed", "payload expunged", None)


async def test_retention_expunges_old_bodies_and_fails_what_was_pending(env: Env) -> None:
    await add_endpoint(env, "/fail/1")
    (event,) = await publish(env)
    worker = dispatcher(env)
    await worker.drain()
    async with env.db.transaction(platform=True) as tx:
        assert await store.expunge_older_than(tx, datetime.now(UTC) + timedelta(days=1), 10) == 1
    env.clock.advance(1)
    await asyncio.wait_for(worker.drain(), timeout=5)
    assert len(env.receiver.requests) == 1
    row = await delivery(env, event)
    assert (row.status, row.last_error) == ("failed", "payload expunged")
    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        message = await store.get_message(tx, env.tenant_id, message_id_of(event))
        log = await store.list_attempts(
            tx, env.tenant_id, message_id=message_id_of(event), before=None, limit=10
        )
    assert message is not None
    assert (message.payload, message.expunged_at is not None) == (None, True)
    assert len(log) == 1, "the log of attempts stays"


async def test_resend_and_recover_send_the_same_message_again(env: Env) -> None:
    endpoint = await add_endpoint(env, "/fail/2")
    (event,) = await publish(env)
    worker = dispatcher(env, schedule=RetrySchedule(delays=(1,), jitter=0))
    await worker.drain()
    env.clock.advance(1)
    await worker.drain()
    assert (await delivery(env, event)).status == "failed"  # two 500s: the schedule is over

    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        recovered = await store.recover(
            tx, env.tenant_id, endpoint.endpoint_id, datetime.now(UTC) - timedelta(hours=1), 10
        )
    assert (recovered.count, recovered.message_ids) == (1, [message_id_of(event)])
    await worker.drain()  # the third request succeeds
    row = await delivery(env, event)
    assert (row.status, row.attempts) == ("succeeded", 1), "a fresh schedule"

    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        assert await store.resend(tx, env.tenant_id, endpoint.endpoint_id, message_id_of(event))
    await worker.drain()
    assert len(env.receiver.requests) == 4
    assert {r.webhook_id for r in env.receiver.requests} == {message_id_of(event)}
    assert (await delivery(env, event)).status == "succeeded"
    assert [a.status_code for a in await attempts(env, event)] == [500, 500, 200, 200]


async def test_the_same_event_twice_is_one_message_and_one_delivery_per_endpoint(
    env: Env,
) -> None:
    await add_endpoint(env, "/ok/a", event_types=["user.*"])
    await add_endpoint(env, "/ok/b", event_types=["user.email_verified"], channels=["region:local"])
    await add_endpoint(env, "/ok/not-subscribed", event_types=["tenant.*"])
    await add_endpoint(env, "/ok/other-region", channels=["region:eu"])
    await add_endpoint(env, "/ok/disabled", enabled=False)
    event = an_event(env)
    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        assert await fan_out(tx, event) == 2
    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        assert await fan_out(tx, event) == 0, "a redelivered event creates nothing"

    async with env.db.transaction(tenant_id=env.tenant_id) as tx:
        messages = await store.list_messages(
            tx, env.tenant_id, before=None, limit=10, event_type=None, since=None
        )
    assert [m.message_id for m in messages] == [message_id_of(event)]
    assert messages[0].channels == ["region:local", "source:identity"]
    assert len(await deliveries(env, event)) == 2

    await dispatcher(env).drain()
    assert sorted(r.path for r in env.receiver.requests) == ["/ok/a", "/ok/b"]


async def test_run_is_woken_by_the_fan_outs_notify(env: Env) -> None:
    """With a 30 s poll, a delivery within seconds can only come from NOTIFY."""

    @dataclass
    class Counting(Dispatcher):
        claims: int = 0

        async def claim_and_start(self) -> int:
            claimed = await super().claim_and_start()
            self.claims += 1  # counted once done: run() then goes straight to its wait
            return claimed

    await add_endpoint(env, "/ok")
    worker = Counting(
        db=env.db,
        listen_dsn=env.scratch.app_dsn,
        sender=env.sender,
        box=env.box,
        outbox=PostgresOutbox(env.db),
        schedule=SCHEDULE,
        settings=DispatcherSettings(poll_seconds=30),
        clock=env.clock,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        async def idle() -> bool:
            return worker.claims >= 1

        async def delivered() -> bool:
            return bool(env.receiver.requests)

        await eventually(idle, timeout=5, message="the first (empty) claim")
        (event,) = await publish(env)
        await eventually(delivered, timeout=5, message="the delivery")
        assert env.receiver.requests[0].webhook_id == message_id_of(event)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert worker.claims <= 5, "woken, not polling"


async def test_run_sends_each_retry_within_milliseconds_of_its_due_time(env: Env) -> None:
    """On the wall clock: three failures, then success, with retries 0.4 s apart. The poll
    is 5 s, so only waking at the next due time can send a retry on time. Each retry must
    reach the receiver within 100 ms of the next_attempt_at its attempt recorded (the
    wake-up is a correctness property; the bound leaves room for a loaded machine)."""
    await add_endpoint(env, "/fail/3")
    schedule = RetrySchedule(delays=(0.4, 0.4, 0.4), jitter=0)
    worker = dispatcher(env, schedule=schedule, clock=time.time, poll_seconds=5)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        (event,) = await publish(env)

        async def succeeded() -> bool:
            return (await delivery(env, event)).status == "succeeded"

        await eventually(succeeded, timeout=10, message="four attempts, the last a success")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    log = await attempts(env, event)
    assert [a.status_code for a in log] == [500, 500, 500, 200]
    arrivals = [r.at for r in env.receiver.requests]
    assert len(arrivals) == 4
    for attempt, arrived in zip(log[:-1], arrivals[1:], strict=True):
        assert attempt.next_attempt_at is not None
        late = arrived - attempt.next_attempt_at.timestamp()
        assert -0.001 <= late < 0.1, f"attempt {attempt.attempt + 1} sent {late * 1000:.1f} ms late"


def test_the_sleep_between_rounds_ends_at_the_next_due_time() -> None:
    assert wake_delay(None, 100.0, 0.5) == 0.5, "nothing pending: the poll"
    assert wake_delay(100.2, 100.0, 0.5) == pytest.approx(0.2)
    assert wake_delay(160.0, 100.0, 0.5) == 0.5, "never longer than the poll"
    assert wake_delay(99.0, 100.0, 0.5) == 0.0
