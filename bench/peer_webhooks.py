"""`peer_webhooks`: Tenantry's webhook dispatcher against the Svix server, side by side
(`make bench-peers`), to the same receiver with the same deliveries.

Svix's server is not in a registry this project installs from, so the bench does not build
it: it runs the binary at `SVIX_SERVER_BIN` (default .local/peers/svix-server) when there
is one, and otherwise reports the Tenantry side alone and says why. Svix runs on loopback
against the stack's Postgres (a database of its own, `svix_peer`, made afresh each run)
and Redis (database 9, flushed first), its queue in Redis, with whitelabel headers on so
it signs the Standard Webhooks way (webhook-id, webhook-timestamp, webhook-signature).

- drain: DRAIN_DELIVERIES deliveries queued while nobody delivers, then delivery starts
  (Svix: its worker process; Tenantry: `Dispatcher.drain()` as bench/webhooks.py runs it);
  the rate is deliveries over the time from the first arrival to the last at the receiver,
  for one endpoint and for 16 endpoints (4 apps or tenants x 4), ROUNDS rounds alternating.
- steady: STEADY_RATE messages a second for STEADY_SECONDS to one endpoint each of 4 apps or
  tenants; latency = the receiver's arrival of a message's first attempt minus the moment
  it was handed over (Svix: POST /msg sent; Tenantry: the fan-out transaction began).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from redis.asyncio import Redis

from bench import webhooks
from bench.common import BenchResult, Context, Row, median, p99, ratio
from bench.peers import PEERS_DIR, peer_process
from tenantry_testkit.stack import Stack
from tenantry_webhooks.consumers import fan_out
from tenantry_webhooks.domain import message_id_of

SVIX_BIN = Path(os.environ.get("SVIX_SERVER_BIN", str(PEERS_DIR / "svix-server")))
SVIX_PORT = 8271
SVIX_DATABASE = "svix_peer"
SVIX_REDIS_DB = 9
DRAIN_DELIVERIES = webhooks.DRAIN_DELIVERIES
DRAIN_SHAPES = ((1, 1), (4, 4))  # (apps or tenants, endpoints each)
ROUNDS = 2
STEADY_RATE = 100
STEADY_SECONDS = 10
STEADY_APPS = 4


@dataclass(frozen=True)
class Svix:
    url: str
    token: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}


async def _fresh_svix_storage(stack: Stack) -> None:
    admin = await asyncpg.connect(stack.super_dsn("postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {SVIX_DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {SVIX_DATABASE}")
    finally:
        await admin.close()
    redis = Redis.from_url(stack.redis_url.rsplit("/", 1)[0] + f"/{SVIX_REDIS_DB}")
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()


def _svix_env(stack: Stack, *, api: bool, worker: bool) -> dict[str, str]:
    redis = stack.redis_url.rsplit("/", 1)[0] + f"/{SVIX_REDIS_DB}"
    return {
        "PATH": os.environ.get("PATH", ""),
        "SVIX_DB_DSN": stack.super_dsn(SVIX_DATABASE),
        "SVIX_REDIS_DSN": redis,
        "SVIX_QUEUE_TYPE": "redis",
        "SVIX_CACHE_TYPE": "redis",
        "SVIX_JWT_SECRET": "svix-peer-bench-jwt-secret",
        "SVIX_MAIN_SECRET": "svix-peer-bench-main-secret",
        "SVIX_LISTEN_ADDRESS": f"127.0.0.1:{SVIX_PORT}",
        "SVIX_WHITELIST_SUBNETS": "[127.0.0.0/8]",
        "SVIX_WHITELABEL_HEADERS": "true",
        "SVIX_LOG_LEVEL": "info",
        "SVIX_API_ENABLED": "true" if api else "false",
        "SVIX_WORKER_ENABLED": "true" if worker else "false",
        "SVIX_RETRY_SCHEDULE": "[5,300,1800,7200,18000,36000,36000]",
    }


@contextlib.contextmanager
def _svix(stack: Stack, *, worker: bool = True) -> Iterator[str]:
    """svix-server on loopback (migrations run at start); yields its base URL."""
    url = f"http://127.0.0.1:{SVIX_PORT}"
    with peer_process(
        "svix-server",
        [str(SVIX_BIN), "--run-migrations"],
        _svix_env(stack, api=True, worker=worker),
        f"{url}/api/v1/health/",
    ):
        yield url


@contextlib.contextmanager
def _worker_only(stack: Stack) -> Iterator[subprocess.Popen[bytes]]:
    """A worker-only svix-server (it serves no HTTP to probe), killed on exit."""
    log = (Path(".local") / "log" / "peer-svix-worker.log").open("ab")
    process = subprocess.Popen(
        [str(SVIX_BIN)], env=_svix_env(stack, api=False, worker=True), stdout=log, stderr=log
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)
        log.close()


def _svix_token(stack: Stack) -> str:
    out = subprocess.run(
        [str(SVIX_BIN), "jwt", "generate"],
        env=_svix_env(stack, api=True, worker=False),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if line.startswith("Token (Bearer): "):
            return line.removeprefix("Token (Bearer): ").strip()
    raise RuntimeError(f"svix-server jwt generate printed no token: {out!r}")


async def _svix_apps(
    client: httpx.AsyncClient, svix: Svix, receiver: str, tag: str, apps: int, endpoints: int
) -> list[str]:
    ids: list[str] = []
    for a in range(apps):
        r = await client.post(
            f"{svix.url}/api/v1/app/", json={"name": f"bench-{tag}-{a}"}, headers=svix.headers()
        )
        r.raise_for_status()
        app_id = str(r.json()["id"])
        for e in range(endpoints):
            r = await client.post(
                f"{svix.url}/api/v1/app/{app_id}/endpoint/",
                json={"url": f"{receiver}/ok/svix-{tag}/{a}/{e}", "version": 1},
                headers=svix.headers(),
            )
            r.raise_for_status()
        ids.append(app_id)
    return ids


async def _svix_message(client: httpx.AsyncClient, svix: Svix, app_id: str, n: int) -> str:
    r = await client.post(
        f"{svix.url}/api/v1/app/{app_id}/msg/",
        json={"eventType": "account.email_verified", "payload": {"n": n, "note": "bench"}},
        headers=svix.headers(),
    )
    r.raise_for_status()
    return str(r.json()["id"])


async def _arrivals_of(
    receiver: webhooks.RemoteReceiver, prefix: str, expected: int, timeout: float
) -> list[float]:
    """Arrival times of the requests under `prefix`, once `expected` have come."""
    deadline = time.monotonic() + timeout
    while True:
        times = [at for _, path, at in await receiver.arrivals() if path.startswith(prefix)]
        if len(times) >= expected or time.monotonic() > deadline:
            return sorted(times)
        await asyncio.sleep(0.05)


def _rate(arrivals: Sequence[float]) -> tuple[int, float]:
    """(deliveries, seconds from the first arrival to the last)."""
    return len(arrivals), (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0


async def svix_drain(
    stack: Stack, receiver: webhooks.RemoteReceiver, tag: str, apps: int, endpoints: int
) -> tuple[int, float]:
    messages = DRAIN_DELIVERIES // (apps * endpoints)
    with _svix(stack, worker=False) as url:
        svix = Svix(url, await asyncio.to_thread(_svix_token, stack))
        async with httpx.AsyncClient(timeout=30) as client:
            app_ids = await _svix_apps(client, svix, receiver.url, tag, apps, endpoints)
            await asyncio.gather(
                *(
                    _svix_message(client, svix, app_id, n)
                    for app_id in app_ids
                    for n in range(messages)
                )
            )
    with _worker_only(stack):
        arrivals = await _arrivals_of(
            receiver, f"/ok/svix-{tag}/", messages * apps * endpoints, timeout=300
        )
    return _rate(arrivals)


async def svix_steady(stack: Stack, receiver: webhooks.RemoteReceiver, tag: str) -> list[float]:
    """First-attempt latencies at STEADY_RATE messages/s for STEADY_SECONDS."""
    sent: dict[str, float] = {}
    with _svix(stack) as url:
        svix = Svix(url, await asyncio.to_thread(_svix_token, stack))
        async with httpx.AsyncClient(timeout=30) as client:
            app_ids = await _svix_apps(client, svix, receiver.url, tag, STEADY_APPS, 1)
            start = time.monotonic()
            pending: list[asyncio.Task[None]] = []

            async def one(n: int) -> None:
                # From when the message was handed over: Svix may deliver it before the
                # API's answer is back here.
                handed_over = time.monotonic()
                message_id = await _svix_message(client, svix, app_ids[n % STEADY_APPS], n)
                sent[message_id] = handed_over

            for n in range(STEADY_RATE * STEADY_SECONDS):
                await asyncio.sleep(max(0.0, start + n / STEADY_RATE - time.monotonic()))
                pending.append(asyncio.create_task(one(n)))
            await asyncio.gather(*pending)
            total = STEADY_RATE * STEADY_SECONDS
            await _arrivals_of(receiver, f"/ok/svix-{tag}/", total, timeout=60)
    first: dict[str, float] = {}
    for webhook_id, path, at in receiver.seen:
        if path.startswith(f"/ok/svix-{tag}/") and webhook_id not in first:
            first[webhook_id] = at
    return [first[m] - t for m, t in sent.items() if m in first]


async def tenantry_drain(
    world: webhooks.World, tag: str, tenants: int, endpoints: int
) -> tuple[int, float]:
    """The same backlog through Tenantry's dispatcher, as bench/webhooks.py drains it."""
    made = [
        await webhooks._tenant(
            world, f"{tag}-{t}", [f"/ok/tenantry-{tag}/{t}/{e}" for e in range(endpoints)]
        )
        for t in range(tenants)
    ]
    messages = DRAIN_DELIVERIES // (tenants * endpoints)
    for tenant in made:
        await webhooks._backlog(world, tenant, messages)
    await webhooks._dispatcher(world).drain()
    arrivals = await _arrivals_of(
        world.receiver, f"/ok/tenantry-{tag}/", messages * tenants * endpoints, timeout=60
    )
    return _rate(arrivals)


async def tenantry_steady(world: webhooks.World, tag: str) -> list[float]:
    """First-attempt latencies at STEADY_RATE messages/s, the dispatcher running (LISTEN
    woken) as the webhooks worker runs it; handed over = the fan-out transaction began."""
    made = [
        await webhooks._tenant(world, f"{tag}-{t}", [f"/ok/tenantry-{tag}/{t}"])
        for t in range(STEADY_APPS)
    ]
    dispatcher = webhooks._dispatcher(world)
    stop = asyncio.Event()
    runner = asyncio.create_task(dispatcher.run(stop))
    handed: dict[str, float] = {}
    try:
        await asyncio.sleep(0.5)  # LISTEN connected
        start = time.monotonic()
        pending: list[asyncio.Task[None]] = []

        async def one(n: int) -> None:
            tenant = made[n % STEADY_APPS]
            event = webhooks._event(tenant)
            handed[message_id_of(event)] = time.monotonic()
            async with world.scratch.db.transaction(tenant_id=tenant.tenant_id) as tx:
                await fan_out(tx, event)

        for n in range(STEADY_RATE * STEADY_SECONDS):
            await asyncio.sleep(max(0.0, start + n / STEADY_RATE - time.monotonic()))
            pending.append(asyncio.create_task(one(n)))
        await asyncio.gather(*pending)
        await _arrivals_of(
            world.receiver, f"/ok/tenantry-{tag}/", STEADY_RATE * STEADY_SECONDS, timeout=60
        )
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)
    first: dict[str, float] = {}
    for webhook_id, path, at in world.receiver.seen:
        if path.startswith(f"/ok/tenantry-{tag}/") and webhook_id not in first:
            first[webhook_id] = at
    return [first[m] - t for m, t in handed.items() if m in first]


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        "peer_webhooks",
        "webhook delivery: backlog drain and first-attempt latency, Tenantry vs Svix",
        "deliveries",
        params={
            "svix_server": str(SVIX_BIN),
            "drain_deliveries": DRAIN_DELIVERIES,
            "drain_shapes": [f"{a} x {e}" for a, e in DRAIN_SHAPES],
            "rounds": ROUNDS,
            "steady": f"{STEADY_RATE} msg/s for {STEADY_SECONDS} s over {STEADY_APPS} endpoints",
            "tenantry": "one Dispatcher in this process, built as the webhooks worker builds it",
            "svix": "one svix-server process (worker only for the drain)",
            "receiver": "bench/webhooks.py's loopback receiver in a child process, shared",
        },
    )
    have_svix = await asyncio.to_thread(SVIX_BIN.exists)
    if have_svix:
        version = (
            await asyncio.to_thread(
                subprocess.run,
                [str(SVIX_BIN), "--version"],
                capture_output=True,
                text=True,
                check=True,
            )
        ).stdout.strip()
        result.params["svix_version"] = version
        await _fresh_svix_storage(ctx.stack)
    else:
        result.notes.append(
            f"no Svix server at {SVIX_BIN} (set SVIX_SERVER_BIN): Tenantry's rows alone"
        )
    async with webhooks._world(ctx) as world:
        for apps, endpoints in DRAIN_SHAPES:
            shape = f"{apps * endpoints} endpoint{'s' if apps * endpoints > 1 else ''}"
            ours = Row(f"Tenantry drain, {shape}", "first -> last arrival")
            theirs = Row(f"Svix drain, {shape}", "first -> last arrival", baseline=True)
            for round_no in range(ROUNDS):
                tag = f"d{apps}x{endpoints}r{round_no}"
                systems = ["tenantry", "svix"] if round_no % 2 == 0 else ["svix", "tenantry"]
                for system in systems:
                    if system == "tenantry":
                        ours.add([], *await tenantry_drain(world, tag, apps, endpoints))
                    elif have_svix:
                        theirs.add(
                            [], *await svix_drain(ctx.stack, world.receiver, tag, apps, endpoints)
                        )
            result.rows += [ours, theirs] if have_svix else [ours]
            result.ratios[f"drain, {shape}: Tenantry / Svix deliveries/s"] = ratio(
                ours.rate, theirs.rate
            )
        ours_steady = Row(
            f"Tenantry, {STEADY_RATE} msg/s: first attempt",
            "handed over -> arrival",
            await tenantry_steady(world, "steady"),
        )
        result.rows.append(ours_steady)
        if have_svix:
            theirs_steady = Row(
                f"Svix, {STEADY_RATE} msg/s: first attempt",
                "handed over -> arrival",
                await svix_steady(ctx.stack, world.receiver, "steady"),
                baseline=True,
            )
            result.rows.append(theirs_steady)
            for name, stat in (("p50", median), ("p99", p99)):
                result.ratios[f"first attempt {name}, Tenantry / Svix"] = ratio(
                    stat(ours_steady.latencies), stat(theirs_steady.latencies)
                )
    result.notes.append(
        "drain rate: deliveries over the time from the first arrival to the last at the "
        "receiver (startup left out for both)"
    )
    return result
