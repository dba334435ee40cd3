"""NotifyListener (listener.py) on the shared stack's Postgres, without restarting it: a
session killed by the server (pg_terminate_backend of its own backend), a connection that
goes silent (a loopback TCP proxy that stops forwarding), and a server that cannot be
reached (a closed loopback port). The real server restart is test_listen_restart.py.

Each listener LISTENs on a channel of its own and names its session (application_name in
the DSN), so tests never see each other's notifications or backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from uuid import uuid4

import asyncpg
import pytest
from opentelemetry.metrics import CallbackOptions
from tenacity import RetryCallState
from tenacity.wait import wait_base

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.pg_cluster import free_loopback_port
from tenantry_testkit.stack import Stack
from tenantry_webhooks.listener import NotifyListener, listen_backoff, observe_active

pytestmark = pytest.mark.timeout(60)


class Wakes:
    """The owner's side: how often the listener called it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def a_channel() -> str:
    return f"wl_{uuid4().hex[:12]}"


def named(dsn: str, name: str) -> str:
    return f"{dsn}?application_name={name}"  # asyncpg passes it on as a server setting


async def notify(stack: Stack, channel: str) -> None:
    conn = await asyncpg.connect(stack.owner_dsn("postgres"), timeout=5)
    try:
        await conn.execute(f"NOTIFY {channel}")
    finally:
        await conn.close()


async def backends(stack: Stack, name: str) -> list[int]:
    conn = await asyncpg.connect(stack.super_dsn(), timeout=5)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid", name
        )
    finally:
        await conn.close()
    return [int(r["pid"]) for r in rows]


@contextlib.asynccontextmanager
async def running(listener: NotifyListener) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(listener.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.cancelled(), "run ends only by cancellation"


def active_gauge(channel: str) -> list[int | float]:
    return [
        o.value for o in observe_active(CallbackOptions()) if o.attributes == {"channel": channel}
    ]


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_a_session_the_server_ends_is_replaced_and_wakes_its_owner_once(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantry.webhooks.listener")
    channel, name, wakes = a_channel(), f"wl-{uuid4().hex[:8]}", Wakes()
    listener = NotifyListener(named(stack.owner_dsn("postgres"), name), channel, wakes)
    async with running(listener):

        async def up() -> bool:
            return listener.active and wakes.count == 1

        await eventually(up, timeout=10, message="LISTEN up, and one look after connecting")
        assert active_gauge(channel) == [1]
        (first,) = await backends(stack, name)

        await notify(stack, channel)

        async def notified() -> bool:
            return wakes.count == 2

        await eventually(notified, timeout=5, message="the NOTIFY")

        conn = await asyncpg.connect(stack.super_dsn(), timeout=5)
        try:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await conn.close()

        async def replaced() -> bool:
            pids = await backends(stack, name)
            return listener.active and wakes.count == 3 and pids != [first] and len(pids) == 1

        await eventually(replaced, timeout=10, message="a new session and one look after it")
        await notify(stack, channel)

        async def notified_again() -> bool:
            return wakes.count == 4

        await eventually(notified_again, timeout=5, message="the NOTIFY on the new session")
        assert active_gauge(channel) == [1]

    assert not listener.active
    assert active_gauge(channel) == [], "a stopped listener is not reported"

    async def closed() -> bool:
        return not await backends(stack, name)

    await eventually(closed, timeout=5, message="its session closed on cancellation")
    assert len(messages(caplog, "connection lost (connection closed)")) == 1
    assert len(messages(caplog, "connection back after")) == 1
    assert all(stack.env["TENANTRY_PG_OWNER_PASSWORD"] not in r.message for r in caplog.records)


class FreezingProxy:
    """A loopback TCP proxy to Postgres. `freeze()` stops forwarding on every connection
    open now without closing any: a peer that vanished (a partition, a dead host), which
    no FIN or RST tells the client about. Connections made later are forwarded."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self._frozen: set[int] = set()  # generations whose bytes are dropped
        self._generation = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self._frozen.add(self._generation)
        self._generation += 1

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        generation = self._generation
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer, generation),
            self._pipe(up_reader, writer, generation),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int
    ) -> None:
        while data := await reader.read(65536):
            if generation not in self._frozen:
                writer.write(data)
                await writer.drain()
        writer.close()


async def test_a_connection_that_goes_silent_is_found_by_the_liveness_check(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tenantry.webhooks.listener")
    proxy = FreezingProxy(stack.pg_port)
    through = Stack({**stack.env, "TENANTRY_PG_PORT": str(await proxy.start())})
    channel, wakes = a_channel(), Wakes()
    listener = NotifyListener(
        through.owner_dsn("postgres"), channel, wakes, check_seconds=0.2, check_timeout=0.5
    )
    try:
        async with running(listener):

            async def up() -> bool:
                return listener.active and wakes.count == 1

            await eventually(up, timeout=10, message="LISTEN up")
            proxy.freeze()  # no FIN, no RST: only the liveness check can tell

            async def reconnected() -> bool:
                return proxy.accepted >= 2 and listener.active and wakes.count == 2

            await eventually(reconnected, timeout=10, message="a new connection past the dead one")
            await notify(stack, channel)

            async def notified() -> bool:
                return wakes.count == 3

            await eventually(notified, timeout=5, message="the NOTIFY on the new connection")
    finally:
        await proxy.close()
    (lost,) = messages(caplog, "connection lost")
    assert "liveness check failed" in lost
    assert len(messages(caplog, "connection back after")) == 1


class Steps(wait_base):
    """A backoff whose delays tell the attempts apart: 0.01 s times the attempt number."""

    def __call__(self, retry_state: RetryCallState) -> float:
        return 0.01 * retry_state.attempt_number


async def test_an_unreachable_server_is_retried_on_the_backoff_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tenantry.webhooks.listener")
    slept: list[float] = []
    enough = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) >= 6:
            enough.set()
            await asyncio.Event().wait()  # park here until cancelled

    nobody = f"postgresql://nobody:secret-password@127.0.0.1:{free_loopback_port()}/postgres"
    wakes = Wakes()
    listener = NotifyListener(nobody, a_channel(), wakes, backoff=Steps(), sleep=sleep)
    async with running(listener):
        await asyncio.wait_for(enough.wait(), timeout=10)
        assert not listener.active
    assert slept == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    assert wakes.count == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, "one warning per outage, not per attempt"
    assert "no LISTEN" in warnings[0].getMessage()
    assert "secret-password" not in caplog.text, "the DSN is never logged"
    assert "secret-password" not in repr(listener)


def retry_states(attempts: int) -> Iterator[RetryCallState]:
    for number in range(1, attempts + 1):
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = number
        yield state


def test_the_backoff_grows_exponentially_to_its_cap_with_full_jitter() -> None:
    wait = listen_backoff(cap=2.0)
    for state in retry_states(12):
        ceiling = min(2.0, 0.2 * 2 ** (state.attempt_number - 1))
        delays = [wait(state) for _ in range(200)]
        assert all(0.05 <= d <= ceiling for d in delays), (state.attempt_number, ceiling)
        assert len(set(delays)) > 100, "jittered, so replicas do not reconnect in step"
    capped = [wait(state) for state in retry_states(40)][-20:]
    assert max(capped) <= 2.0, "never past the cap, however long the outage"
