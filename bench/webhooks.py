"""Webhook delivery: what the dispatcher sustains, how soon an event's first attempt goes
out, and whether one tenant's hanging endpoints slow the others down.

A `Dispatcher` built like the service builds it (`app.build_dispatcher`: concurrency 64,
4 per endpoint, lease = timeout + 30 s, Svix's retry schedule, the endpoint breakers) runs
in this process on a scratch database (backbone, projections and webhooks migrations, app
role), sending through tenantry_outbound's `OutboundClient` (allowed onto 127.0.0.0/8,
plain http) to tenantry_testkit's loopback `Receiver` (uvicorn on 127.0.0.1, in a child process, so
it does not share this event loop; every request's arrival time recorded). Messages and
deliveries are made by `consumers.fan_out` from real `EmailVerified` envelopes, in a
tenant-scoped transaction, as the consumer does.

- drain: DRAIN_DELIVERIES pending deliveries (DRAIN_TENANTS tenants x DRAIN_ENDPOINTS
  endpoints, each message to every endpoint of its tenant) inserted untimed, then
  `await dispatcher.drain()`. Baseline in the same run: the same signed POSTs (same URLs,
  bodies and headers, the signature computed per request) sent straight with the same
  OutboundSender/OutboundClient by CONCURRENCY workers (the dispatcher's concurrency), no
  database. ROUNDS rounds, alternating.
- steady (good tenants only): `dispatcher.run(stop)` (LISTEN/NOTIFY-woken, polling every
  0.5 s as well) while one task fans out STEADY_RATE messages/s for STEADY_SECONDS across
  GOOD_TENANTS tenants (GOOD_ENDPOINTS endpoints each). Latency: the receiver's arrival
  time of a delivery's first attempt minus the time its fan-out transaction returned
  (committed), both CLOCK_MONOTONIC (system-wide on Linux).
- steady + a bad tenant (one run per BAD_ENDPOINTS count, 8 and 16: half and all of the
  dispatcher's slots at 4 per endpoint): the same, plus one tenant whose endpoints answer
  only after BAD_HANG s (receiver /slow/<s>), beyond the client's total timeout
  (TOTAL_TIMEOUT), with BAD_BACKLOG messages (to each of them) due when the run starts.
  Reported: the good tenants' latency against the run without the bad tenant, and what
  the bad tenant held (dispatcher slots sampled every 50 ms, attempts, breaker states).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import httpx
from uuid_utils.compat import uuid4

from bench.common import BenchResult, Context, Row, median, now, p99, ratio
from tenantry_credentials.crypto import SecretBox
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.identity import EmailVerified
from tenantry_events.pg import package_migrations
from tenantry_events.storage import PostgresOutbox
from tenantry_outbound.outbound import OutboundClient, OutboundPolicy
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.receiver import Receiver
from tenantry_webhooks import store
from tenantry_webhooks.consumers import fan_out
from tenantry_webhooks.dispatcher import Dispatcher, DispatcherSettings
from tenantry_webhooks.domain import (
    RetrySchedule,
    body_of,
    message_id_of,
    new_secret,
    signature_header,
)
from tenantry_webhooks.endpoint_secrets import SECRET_CONTEXT
from tenantry_webhooks.sender import USER_AGENT, OutboundSender
from tenantry_webhooks.store import Claimed, EndpointFields

ROUNDS = 2
DRAIN_DELIVERIES = 2000
DRAIN_TENANTS = 4
DRAIN_ENDPOINTS = 4  # per tenant: 16 endpoints x 4 per endpoint = the concurrency, 64
CONCURRENCY = 64  # webhook_concurrency's default
PER_ENDPOINT = 4  # webhook_per_endpoint_concurrency's default
LEASE_MARGIN = 30.0  # webhook_lease_margin_seconds's default
STEADY_RATE = 100.0  # messages/s (each to GOOD_ENDPOINTS endpoints)
STEADY_SECONDS = 10.0
GOOD_TENANTS = 3
GOOD_ENDPOINTS = 2  # per good tenant
BAD_ENDPOINTS = (8, 16)  # one run each: x 4 per endpoint = half / all of the concurrency
BAD_BACKLOG = 50  # messages due at the start, each to every bad endpoint
BAD_HANG = 5.0  # s the bad endpoints take to answer
TOTAL_TIMEOUT = 2.0  # OutboundPolicy.total_timeout (production: 15 s)
SETTLE = 10.0  # after the last fan-out, wait at most this for the good deliveries
SAMPLE_EVERY = 0.05
# The dispatcher's clock runs this far ahead of the wall clock, as in test_dispatcher.py:
# a delivery made with the database's now() is due at once even if Postgres's clock is a
# hair ahead of this process's. It only moves webhook-timestamp and the due times.
CLOCK_LEAD = 1.0


# --------------------------------------------------------------------------- the world


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _claim_stats(claims: Sequence[float], wall: float | None) -> dict[str, Any]:
    return {
        "claim_queries": len(claims),
        "claim_p50_ms": _ms(median(claims)),
        "claim_p99_ms": _ms(p99(claims)),
        "claim_time_share_of_wall": sum(claims) / wall if wall else None,
    }


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    url: str
    path: str
    secret: str


@dataclass
class Tenant:
    tenant_id: UUID
    endpoints: list[Endpoint] = field(default_factory=list)


ARRIVALS_PATH = "/_bench/arrivals"


class _Recording(Receiver):
    """tenantry_testkit's Receiver, plus ARRIVALS_PATH?since=N: the recorded requests from the
    N-th on, as JSON (webhook-id, path, monotonic arrival time)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != ARRIVALS_PATH:
            await super().__call__(scope, receive, send)
            return
        since = int(scope["query_string"].decode().partition("=")[2] or 0)
        body = json.dumps(
            [[r.headers.get("webhook-id", ""), r.path, r.at] for r in self.requests[since:]]
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def serve_receiver() -> None:
    """The child process: a _Recording receiver on 127.0.0.1; prints its port, serves
    until its stdin closes."""

    async def main() -> None:
        receiver = _Recording()
        await receiver.start()
        print(receiver.port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await receiver.stop()

    asyncio.run(main())


@dataclass
class RemoteReceiver:
    """The parent's view of the child process's receiver. CLOCK_MONOTONIC is system-wide
    on Linux, so the child's arrival times compare with this process's monotonic()."""

    url: str
    http: httpx.AsyncClient
    seen: list[tuple[str, str, float]] = field(default_factory=list)

    async def arrivals(self) -> list[tuple[str, str, float]]:
        """Every request so far (webhook-id, path, arrival), fetching only the new ones."""
        answer = await self.http.get(f"{self.url}{ARRIVALS_PATH}?since={len(self.seen)}")
        answer.raise_for_status()
        self.seen += [(w, p, float(at)) for w, p, at in answer.json()]
        return self.seen


@contextlib.asynccontextmanager
async def running_remote_receiver() -> AsyncIterator[RemoteReceiver]:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from bench.webhooks import serve_receiver; serve_receiver()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
        if not line.strip():
            raise RuntimeError("the receiver process did not start")
        async with httpx.AsyncClient(timeout=10) as http:
            yield RemoteReceiver(f"http://127.0.0.1:{int(line)}", http)
    finally:
        child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), timeout=15)
        except TimeoutError:
            child.kill()
            await child.wait()


@dataclass
class World:
    scratch: ScratchDatabase
    receiver: RemoteReceiver
    sender: OutboundSender
    box: SecretBox


def _clock() -> float:
    return time.time() + CLOCK_LEAD


@dataclass
class _Timed(Dispatcher):
    """The dispatcher, with its claim queries timed and its postponements counted (the
    benchmark's instrumentation; the behaviour is Dispatcher's)."""

    claims: list[float] = field(default_factory=list)
    postponed: int = 0

    async def _claim(self, limit: int) -> list[Claimed]:
        t0 = now()
        try:
            return await super()._claim(limit)
        finally:
            self.claims.append(now() - t0)

    async def _postpone(self, delivery_id: int, seconds: float) -> None:
        self.postponed += 1
        await super()._postpone(delivery_id, seconds)


def _dispatcher(world: World) -> _Timed:
    """As app.build_dispatcher builds it, with the service's default settings."""
    return _Timed(
        db=world.scratch.db,
        listen_dsn=world.scratch.app_dsn,
        sender=world.sender,
        box=world.box,
        outbox=PostgresOutbox(world.scratch.db),
        schedule=RetrySchedule(),
        settings=DispatcherSettings(
            concurrency=CONCURRENCY,
            per_endpoint=PER_ENDPOINT,
            lease_seconds=TOTAL_TIMEOUT + LEASE_MARGIN,
        ),
        clock=_clock,
    )


async def _tenant(world: World, tag: str, paths: Iterable[str]) -> Tenant:
    tenant = Tenant(uuid4())
    await world.scratch.db.pool.execute(
        """INSERT INTO tenant_projection (tenant_id, name, slug, status, plan, home_region,
               version)
           VALUES ($1, $2, $3, 'active', 'free', 'local', 1)""",
        tenant.tenant_id,
        f"bench {tag}",
        f"bench-{tag}-{tenant.tenant_id.hex[:8]}",
    )
    async with world.scratch.db.transaction(tenant_id=tenant.tenant_id) as tx:
        for path in paths:
            endpoint_id = f"ep_{uuid4().hex}"
            secret = new_secret()
            url = f"{world.receiver.url}{path}"
            fields = EndpointFields(
                url=url,
                description="benchmark",
                event_types=["*"],
                channels=[],
                headers={},
                enabled=True,
                rate_limit_per_second=None,
                fifo=False,
            )
            sealed = world.box.encrypt(secret.encode(), f"{SECRET_CONTEXT}:{endpoint_id}")
            await store.insert_endpoint(tx, endpoint_id, tenant.tenant_id, fields, sealed)
            tenant.endpoints.append(Endpoint(endpoint_id, url, path, secret))
    return tenant


def _event(tenant: Tenant) -> Envelope[EmailVerified]:
    account_id = uuid4()
    return new_event(
        EmailVerified(account_id=account_id, email=f"{account_id.hex[:8]}@example.com"),
        tenant_id=tenant.tenant_id,
        subject=str(account_id),
        aggregate_version=2,
        source="/tenantry/identity",
        region="local",
    )


async def _backlog(world: World, tenant: Tenant, messages: int) -> list[Envelope[Any]]:
    """`messages` fanned out (untimed), 50 per transaction."""
    events = [_event(tenant) for _ in range(messages)]
    for at in range(0, messages, 50):
        async with world.scratch.db.transaction(tenant_id=tenant.tenant_id) as tx:
            for event in events[at : at + 50]:
                await fan_out(tx, event)
    return events


@contextlib.asynccontextmanager
async def _world(ctx: Context) -> AsyncIterator[World]:
    scratch = await create_scratch_database(
        ctx.stack, package_migrations("tenantry_webhooks"), prefix="bench"
    )
    policy = OutboundPolicy(
        allow_networks=["127.0.0.0/8"],
        allow_http=True,
        connect_timeout=TOTAL_TIMEOUT,
        total_timeout=TOTAL_TIMEOUT,
        max_response_bytes=20_000,  # webhook_max_response_bytes's default
        user_agent=USER_AGENT,
    )
    try:
        async with running_remote_receiver() as receiver, OutboundClient(policy) as client:
            yield World(
                scratch, receiver, OutboundSender(client), SecretBox(secrets.token_bytes(32))
            )
    finally:
        await drop_scratch_database(ctx.stack, scratch)


# --------------------------------------------------------------------------- drain


@dataclass(frozen=True)
class Job:
    url: str
    secret: str
    message_id: str
    body: bytes


def _jobs(tenants: Sequence[Tenant], events: Sequence[Envelope[Any]]) -> list[Job]:
    by_id = {t.tenant_id: t for t in tenants}
    return [
        Job(e.url, e.secret, message_id_of(event), body_of(event))
        for event in events
        for e in by_id[event.tenant_id].endpoints
    ]


async def _straight(world: World, jobs: Sequence[Job]) -> tuple[list[float], float, Counter[str]]:
    """The baseline: the same signed POSTs, CONCURRENCY at once, no database."""
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    queue = iter(jobs)

    async def worker() -> None:
        for job in queue:
            t0 = now()
            timestamp = int(_clock())
            headers = {
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": job.message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature_header(
                    [job.secret], job.message_id, timestamp, job.body
                ),
            }
            response = await world.sender.send(job.url, headers, job.body)
            latencies.append(now() - t0)
            outcomes[str(response.status or response.error)] += 1

    t0 = now()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies, now() - t0, outcomes


async def _drained(world: World, message_ids: Sequence[str]) -> tuple[list[float], Counter[str]]:
    """Send latency the dispatcher recorded (attempts.latency_ms) and the deliveries'
    statuses, for these messages."""
    async with world.scratch.db.transaction(platform=True) as tx:
        latencies = await tx.fetch(
            "SELECT latency_ms FROM attempts WHERE message_id = ANY($1)", list(message_ids)
        )
        statuses = await tx.fetch(
            """SELECT status, count(*) AS n FROM deliveries WHERE message_id = ANY($1)
               GROUP BY status""",
            list(message_ids),
        )
    return [r["latency_ms"] / 1000 for r in latencies], Counter(
        {r["status"]: r["n"] for r in statuses}
    )


async def _drain_figures(world: World, result: BenchResult) -> None:
    tenants = [
        await _tenant(world, f"drain{t}", [f"/ok/drain{t}/{e}" for e in range(DRAIN_ENDPOINTS)])
        for t in range(DRAIN_TENANTS)
    ]
    straight = Row(
        f"baseline: signed POSTs, OutboundClient, {CONCURRENCY} at once, no DB",
        "POST -> response",
        baseline=True,
    )
    drained = Row(
        f"Dispatcher.drain(), {DRAIN_DELIVERIES} due deliveries",
        "POST (attempt latency)",
    )
    per_tenant = DRAIN_DELIVERIES // (DRAIN_TENANTS * DRAIN_ENDPOINTS)
    for _ in range(ROUNDS):
        events = [e for t in tenants for e in await _backlog(world, t, per_tenant)]
        jobs = _jobs(tenants, events)

        latencies, wall, outcomes = await _straight(world, jobs)
        straight.add(latencies, len(jobs), wall)
        straight.extra.setdefault("outcomes", Counter()).update(outcomes)

        dispatcher = _dispatcher(world)
        t0 = now()
        await dispatcher.drain()
        wall = now() - t0
        latencies, statuses = await _drained(world, [message_id_of(e) for e in events])
        drained.add(latencies, statuses.get("succeeded", 0), wall)
        drained.extra.setdefault("claims", []).extend(dispatcher.claims)
        drained.extra.setdefault("delivery_statuses", Counter()).update(statuses)
        if statuses.get("succeeded", 0) != len(jobs):
            result.notes.append(
                f"ANOMALY (drain): {len(jobs)} deliveries, statuses {dict(statuses)}"
            )
    claims = drained.extra.pop("claims")
    drained.extra.update(_claim_stats(claims, drained.wall))
    for row in (straight, drained):
        for key in ("outcomes", "delivery_statuses"):
            if key in row.extra:
                row.extra[key] = dict(row.extra[key])
    result.rows += [straight, drained]
    result.ratios["drain: dispatcher deliveries/s"] = drained.rate
    result.ratios["drain: baseline signed POSTs/s (no DB)"] = straight.rate
    result.ratios["drain: dispatcher / baseline rate"] = ratio(drained.rate, straight.rate)
    if drained.rate and straight.rate:
        result.ratios["drain: dispatcher overhead per delivery, ms (1/rate difference)"] = (
            1 / drained.rate - 1 / straight.rate
        ) * 1000


# --------------------------------------------------------------------------- steady rate


@dataclass
class Steady:
    label: str
    latencies: list[float]
    per_tenant: dict[str, list[float]]
    per_second: list[list[float]]
    expected: int
    delivered: int
    window: float
    lags: list[float]
    fan_outs: list[float]
    bad_slots: list[int]
    all_slots: list[int]
    bad_attempts: Counter[str]
    bad_breakers: Counter[str]
    claims: list[float]
    postponed: int


async def _steady(world: World, label: str, good: Sequence[Tenant], bad: Tenant | None) -> Steady:
    db = world.scratch.db
    if bad is not None:
        await _backlog(world, bad, BAD_BACKLOG)
    dispatcher = _dispatcher(world)
    bad_ids = {e.endpoint_id for e in bad.endpoints} if bad else set()
    first_request = len(await world.receiver.arrivals())
    stop = asyncio.Event()
    runner = asyncio.create_task(dispatcher.run(stop))
    bad_slots: list[int] = []
    all_slots: list[int] = []

    async def sample() -> None:
        while not stop.is_set():
            # Read-only looks at the dispatcher's bookkeeping: sends in flight, and how
            # many of them are to the bad tenant's endpoints.
            all_slots.append(len(dispatcher._tasks))
            bad_slots.append(sum(n for e, n in dispatcher._in_flight.items() if e in bad_ids))
            await asyncio.sleep(SAMPLE_EVERY)

    sampler = asyncio.create_task(sample())
    commits: dict[str, tuple[float, str]] = {}  # message id -> (committed at, tenant tag)
    tags = {t.tenant_id: f"good{i}" for i, t in enumerate(good)}
    lags: list[float] = []
    fan_outs: list[float] = []
    total = int(STEADY_RATE * STEADY_SECONDS)
    try:
        await asyncio.sleep(0.5)  # LISTEN up; a bad backlog is claimed and hanging by now
        t0, started = now(), time.monotonic()
        for i in range(total):
            due = t0 + i / STEADY_RATE
            if (delay := due - now()) > 0:
                await asyncio.sleep(delay)
            lags.append(max(0.0, now() - due))
            tenant = good[i % len(good)]
            event = _event(tenant)
            began = time.monotonic()
            async with db.transaction(tenant_id=tenant.tenant_id) as tx:
                await fan_out(tx, event)
            committed = time.monotonic()
            fan_outs.append(committed - began)
            commits[message_id_of(event)] = (committed, tags[tenant.tenant_id])
        window = now() - t0
        expected = total * GOOD_ENDPOINTS

        async def first_attempts() -> dict[tuple[str, str], float]:
            seen: dict[tuple[str, str], float] = {}
            for webhook_id, path, at in (await world.receiver.arrivals())[first_request:]:
                if webhook_id in commits and (webhook_id, path) not in seen:
                    seen[webhook_id, path] = at
            return seen

        deadline = now() + SETTLE
        while True:  # polled: the receiver has no hook to wait on
            arrivals = await first_attempts()
            if len(arrivals) >= expected or now() >= deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(runner, timeout=TOTAL_TIMEOUT + LEASE_MARGIN + 5)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler

    latencies: list[float] = []
    per_tenant: dict[str, list[float]] = {tag: [] for tag in tags.values()}
    per_second: list[list[float]] = [[] for _ in range(int(STEADY_SECONDS) + 1)]
    for (message_id, _), at in arrivals.items():
        committed, tag = commits[message_id]
        latencies.append(at - committed)
        per_tenant[tag].append(at - committed)
        per_second[min(int(committed - started), len(per_second) - 1)].append(at - committed)
    bad_attempts: Counter[str] = Counter()
    bad_breakers: Counter[str] = Counter()
    if bad is not None:
        async with db.transaction(platform=True) as tx:
            for r in await tx.fetch(
                """SELECT coalesce(error, status_code::text) AS outcome, count(*) AS n
                   FROM attempts WHERE tenant_id = $1 GROUP BY 1""",
                bad.tenant_id,
            ):
                bad_attempts[r["outcome"]] = r["n"]
        assert dispatcher.breakers is not None
        for e in bad.endpoints:
            bad_breakers[str(dispatcher.breakers.get(e.endpoint_id).state)] += 1
    return Steady(
        label, latencies, per_tenant, per_second, expected, len(arrivals), window, lags, fan_outs,
        bad_slots, all_slots, bad_attempts, bad_breakers, dispatcher.claims,
        dispatcher.postponed,
    )  # fmt: skip


def _report_steady(result: BenchResult, run: Steady, baseline: bool) -> Row:
    row = Row(run.label, "commit -> first attempt arrives", baseline=baseline)
    row.latencies = run.latencies
    row.count, row.wall = run.delivered, run.window
    row.extra.update(
        {
            "expected_deliveries": run.expected,
            "per_tenant_p50_ms": {t: _ms(median(v)) for t, v in run.per_tenant.items()},
            "per_tenant_p99_ms": {t: _ms(p99(v)) for t, v in run.per_tenant.items()},
            "by_second_of_commit_p50_p99_ms": [
                [_ms(median(v)), _ms(p99(v))] for v in run.per_second
            ],
            **_claim_stats(run.claims, run.window),
            "postponed_by_breaker_or_rate": run.postponed,
            "insert_lag_p99_ms": _ms(p99(run.lags)),
            "fan_out_tx_p50_ms": _ms(median(run.fan_outs)),
            "fan_out_tx_p99_ms": _ms(p99(run.fan_outs)),
            "sends_in_flight_max": max(run.all_slots, default=0),
            "sends_in_flight_mean": sum(run.all_slots) / len(run.all_slots)
            if run.all_slots
            else None,
        }
    )
    if run.bad_attempts or run.bad_breakers:
        row.extra["bad_tenant"] = {
            "slots_held_max": max(run.bad_slots, default=0),
            "slots_held_mean": sum(run.bad_slots) / len(run.bad_slots) if run.bad_slots else None,
            "attempts_by_outcome": dict(run.bad_attempts),
            "breakers_at_end": dict(run.bad_breakers),
        }
    result.rows.append(row)
    if run.delivered < run.expected:
        result.notes.append(
            f"ANOMALY ({run.label}): {run.expected - run.delivered} of {run.expected} good "
            f"deliveries had no attempt within {SETTLE:g} s of the last fan-out"
        )
    lag = p99(run.lags)
    if lag is not None and lag > 0.02:
        result.notes.append(
            f"ANOMALY ({run.label}): fan-outs ran up to {lag * 1000:.0f} ms late (p99): "
            "the inserting task shares the event loop with the dispatcher"
        )
    return row


# --------------------------------------------------------------------------- run


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        "webhooks",
        "dispatcher deliveries/s vs straight POSTs; first-attempt latency; fairness",
        "deliveries",
        params={
            "rounds": ROUNDS,
            "drain_deliveries": DRAIN_DELIVERIES,
            "drain_tenants_x_endpoints": [DRAIN_TENANTS, DRAIN_ENDPOINTS],
            "concurrency": CONCURRENCY,
            "per_endpoint": PER_ENDPOINT,
            "steady_rate_messages_per_s": STEADY_RATE,
            "steady_seconds": STEADY_SECONDS,
            "good_tenants_x_endpoints": [GOOD_TENANTS, GOOD_ENDPOINTS],
            "bad_endpoints": BAD_ENDPOINTS,
            "bad_backlog_messages": BAD_BACKLOG,
            "bad_hang_s": BAD_HANG,
            "total_timeout_s": TOTAL_TIMEOUT,
            "clock_lead_s": CLOCK_LEAD,
            "receiver": "tenantry_testkit Receiver (uvicorn, 127.0.0.1) in a child process",
        },
    )
    async with _world(ctx) as world:
        await _drain_figures(world, result)

        good = [
            await _tenant(world, f"good{t}", [f"/ok/good{t}/{e}" for e in range(GOOD_ENDPOINTS)])
            for t in range(GOOD_TENANTS)
        ]
        quiet = await _steady(world, f"steady {STEADY_RATE:g} msg/s, good tenants only", good, None)
        alone = _report_steady(result, quiet, baseline=True)
        noisy: dict[int, Steady] = {}
        for count in BAD_ENDPOINTS:
            # A tenant of its own per run; the previous one is suspended (not claimed),
            # or a new dispatcher's fresh breakers would send its retries again.
            paths = [f"/slow/{BAD_HANG:g}/bad{count}/{e}" for e in range(count)]
            bad = await _tenant(world, f"bad{count}", paths)
            label = f"steady {STEADY_RATE:g} msg/s + bad tenant, {count} endpoints"
            noisy[count] = await _steady(world, label, good, bad)
            _report_steady(result, noisy[count], baseline=False)
            await world.scratch.db.pool.execute(
                "UPDATE tenant_projection SET status = 'suspended' WHERE tenant_id = $1",
                bad.tenant_id,
            )

    ratios = result.ratios
    ratios["steady: first attempt p50 ms"] = _ms(median(alone.latencies))
    ratios["steady: first attempt p99 ms"] = _ms(p99(alone.latencies))
    ratios["steady: claim query p50 ms"] = _ms(median(quiet.claims))
    for count, run_ in noisy.items():
        at = f"with bad tenant ({count} endpoints)"
        ratios[f"{at}: good tenants' p50 ms"] = _ms(median(run_.latencies))
        ratios[f"{at}: good tenants' p99 ms"] = _ms(p99(run_.latencies))
        ratios[f"{at} / without, p99"] = ratio(p99(run_.latencies), p99(alone.latencies))
        ratios[f"{at}: claim query p50 ms"] = _ms(median(run_.claims))
        ratios[f"{at}: bad tenant's sends in flight, max"] = max(run_.bad_slots, default=0)
    result.notes.append(
        "baselines (*): drain vs the same signed POSTs sent straight through the same "
        f"OutboundClient by {CONCURRENCY} workers (no database: what the dispatcher's claim, "
        "row fetch, secret decryption and attempt record cost); the bad-tenant run vs the "
        "same steady load without it (good tenants only)"
    )
    result.notes.append(
        "latency of a steady run: receiver arrival of a delivery's first attempt - the time "
        "its fan_out transaction returned (after COMMIT), both CLOCK_MONOTONIC; the receiver "
        "is a child process (uvicorn), the dispatcher and the inserting task share this "
        "event loop, and Postgres and the rest of the stack share the cores"
    )
    result.notes.append(
        f"bad tenant: {' or '.join(map(str, BAD_ENDPOINTS))} endpoints that answer after "
        f"{BAD_HANG:g} s, total "
        f"timeout {TOTAL_TIMEOUT:g} s (production: 15 s), {BAD_BACKLOG} messages to each "
        "due at the start; breaker: opens after >= 50 % of 5+ calls fail, 60 s wait"
    )
    return result
