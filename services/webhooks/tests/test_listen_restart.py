"""The dispatcher's LISTEN survives a real Postgres crash and restart (issue 20).

The fault is a real server stop of a throwaway cluster of the test's own (`pg_cluster`:
`pg_ctl stop -m immediate`, a crash: every backend dies without a goodbye, recovery on
start), never the stack's shared Postgres. The dispatcher runs with a 30 s poll, so a
round within seconds of a NOTIFY can only come from LISTEN; before the fix its LISTEN
connection died with the server and it was left polling (and one started while the
server was down polled forever).

Only the dispatcher's public surface is used (the settings, `run`, a subclass counting
its rounds), so the same tests run against the dispatcher before the fix and fail there.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import uuid4

import asyncpg
import pytest
import pytest_asyncio

from tenantry_credentials.crypto import SecretBox
from tenantry_events.pg import package_migrations
from tenantry_events.storage import PostgresOutbox
from tenantry_outbound.outbound import OutboundClient, OutboundPolicy
from tenantry_resilience.testing import ManualClock
from tenantry_testkit.fixtures import create_scratch_database, eventually
from tenantry_testkit.pg_cluster import PgCluster
from tenantry_webhooks import store
from tenantry_webhooks.dispatcher import Dispatcher, DispatcherSettings
from tenantry_webhooks.domain import message_id_of
from tenantry_webhooks.sender import OutboundSender

from .receiver import running_receiver
from .test_dispatcher import SCHEDULE, Env, add_endpoint, add_tenant, publish

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

POLL = 30.0  # only LISTEN can explain a round within seconds of a NOTIFY
PROMPT = 5.0  # "promptly": generous for a loaded machine, and far below the poll


@dataclass
class Counting(Dispatcher):
    """Counts the rounds that reached the database (a claim that failed is not one)."""

    rounds: int = 0

    async def claim_and_start(self) -> int:
        claimed = await super().claim_and_start()
        self.rounds += 1
        return claimed


@pytest_asyncio.fixture
async def env(pg_cluster: PgCluster) -> AsyncIterator[Env]:
    """The dispatcher test world (test_dispatcher.py), its database on the throwaway
    cluster."""
    scratch = await create_scratch_database(
        pg_cluster.stack, package_migrations("tenantry_webhooks"), "wl"
    )
    policy = OutboundPolicy(
        allow_networks=["127.0.0.0/8"],
        allow_http=True,
        connect_timeout=1.0,
        total_timeout=1.0,
        max_response_bytes=4096,
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
        await scratch.db.close()  # the cluster and its databases go with its fixture


def counting_dispatcher(env: Env) -> Counting:
    return Counting(
        db=env.db,
        listen_dsn=env.scratch.app_dsn,
        sender=env.sender,
        box=env.box,
        outbox=PostgresOutbox(env.db),
        schedule=SCHEDULE,
        settings=DispatcherSettings(poll_seconds=POLL),
        clock=env.clock,
    )


async def woken_by_notify(env: Env, worker: Counting, within: float) -> bool:
    """A NOTIFY on the dispatcher's channel starts a round within `within` seconds."""
    before = worker.rounds
    try:
        conn = await asyncpg.connect(env.scratch.app_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return False  # the server is not accepting connections yet
    try:
        await conn.execute(f"NOTIFY {store.NOTIFY_CHANNEL}")
    finally:
        await conn.close()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if worker.rounds > before:
            return True
        await asyncio.sleep(0.01)
    return False


async def idle(worker: Counting) -> None:
    """No round for 0.5 s: the dispatcher sleeps its poll, and only a wake-up (NOTIFY,
    or the listener's own look right after reconnecting) ends that sleep early."""
    last, quiet_since = worker.rounds, time.monotonic()
    deadline = quiet_since + 10
    while time.monotonic() - quiet_since < 0.5:
        assert time.monotonic() < deadline, "the dispatcher never went idle"
        await asyncio.sleep(0.05)
        if worker.rounds != last:
            last, quiet_since = worker.rounds, time.monotonic()


async def assert_event_goes_out_promptly(env: Env) -> None:
    """A fan-out (which NOTIFYs at commit) reaches its endpoint well within the poll."""
    (event,) = await publish(env)

    async def delivered() -> bool:
        return any(r.webhook_id == message_id_of(event) for r in env.receiver.requests)

    await eventually(delivered, timeout=PROMPT, message="the event's first attempt via LISTEN")


async def stopped(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, timeout=15)


async def test_the_dispatcher_listens_again_after_postgres_crashes_and_restarts(
    env: Env, pg_cluster: PgCluster
) -> None:
    await add_endpoint(env, "/ok")
    worker = counting_dispatcher(env)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        async def first_round() -> bool:
            return worker.rounds >= 1

        await eventually(first_round, timeout=10, message="the first (empty) round")
        await idle(worker)
        assert await woken_by_notify(env, worker, PROMPT), "LISTEN works before the crash"

        await pg_cluster.stop("immediate")  # a crash: backends die, no checkpoint
        await pg_cluster.start()

        # The first round after the restart may be the listener's own look once it is
        # back; then the dispatcher is idle again, and a NOTIFY alone must wake it.
        async def listening_again() -> bool:
            return await woken_by_notify(env, worker, 1.0)

        await eventually(listening_again, timeout=30, message="a NOTIFY waking the dispatcher")
        await idle(worker)
        assert await woken_by_notify(env, worker, PROMPT), "woken by NOTIFY after the restart"
        await assert_event_goes_out_promptly(env)
    finally:
        await stopped(stop, task)


async def test_a_dispatcher_started_while_postgres_is_down_listens_once_it_is_up(
    env: Env, pg_cluster: PgCluster, caplog: pytest.LogCaptureFixture
) -> None:
    await add_endpoint(env, "/ok")
    await pg_cluster.stop("fast")
    caplog.set_level(logging.WARNING, logger="tenantry.webhooks")
    worker = counting_dispatcher(env)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:

        async def told_no_listen() -> bool:
            return any("no LISTEN" in r.getMessage() for r in caplog.records)

        await eventually(told_no_listen, timeout=10, message="the failed LISTEN connection")
        assert worker.rounds == 0, "no round can reach a stopped server"

        await pg_cluster.start()

        async def listening() -> bool:
            return await woken_by_notify(env, worker, 1.0)

        await eventually(listening, timeout=30, message="a NOTIFY waking the dispatcher")
        await idle(worker)
        assert await woken_by_notify(env, worker, PROMPT), "woken by NOTIFY once Postgres is up"
        await assert_event_goes_out_promptly(env)
    finally:
        await stopped(stop, task)
