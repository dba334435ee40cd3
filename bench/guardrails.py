"""Rate limits and admission control (issue 8): what a decision costs, what the two pipeline
steps add to a request, and what admission does for one instance at three times its
capacity.

`ratelimit`: rate-limit decisions in this process against the stack's Redis, one client
built as the services build theirs (`Redis.from_url`, 0.25 s socket timeouts). Baselines
in the same run, same client, same concurrency: plain `INCR` (one round trip, the floor of
any Redis decision) and `EVALSHA` of a script that returns 1 (the floor of a Lua call).
Measured: `RedisDecider.decide` with one policy, and with three policies plus an in-flight
slot (lua/decide.lua: GET and SET per policy, ZREMRANGEBYSCORE/ZCARD/ZADD/PEXPIRE);
giving the slot back (`release`, one ZREM); the full `RateLimiter.decide` (breaker,
refusal cache, metric) on the Redis path; a refusal served by its local cache (no Redis);
and `LocalLimiter.decide` (the in-process fallback). Sequentially (latency; the variants
interleaved call by call) and from CONCURRENCY tasks at once (throughput, latency under
load, this process's CPU and the Redis server's time per call from INFO commandstats).
Every policy is generous, so every decision but the cached refusal is an allow.

`pipeline`: five extra identity api processes (stack.extra_api, ports 8190-8194) that
differ only in TENANTRY_RATELIMIT_ENABLED / TENANTRY_ADMISSION_ENABLED: (a) both off, (a')
the same again (a control: the noise between two identical processes), (b) admission only,
(c) rate limits only, (d) both. The same authenticated request (GET /v1/whoami with a
tenant API key; the tenant's policies overridden far above what the run sends, so nothing
is refused) and GET /healthz (no pipeline, no admission: the floor) go to every instance,
sequentially over one keep-alive connection each, one request of every variant per round
in a new random order each round (a fixed order would favour the request that follows
another to the same, just-woken process).

`overload`: one extra identity api process (port 8195; admission adaptive, the default),
then another (8196; a fixed limit of 8). On the first, capacity is measured (closed loop,
GET /v1/tenants/{id}/accounts as the operator, CAPACITY_LEVELS clients), and what a
refusal costs (closed loop of requests refused at once: X-Request-Timeout-Ms: 0) against
GET /healthz. Each instance then gets open-loop Poisson streams at 1.5x and 3x that rate
(OVERLOAD_RUNS): ~10 % critical (POST /v1/sessions/refresh, declared critical), ~60 %
default (the accounts list), ~30 % sheddable (the same list with ?limit= above the
instance's large-list threshold). The unloaded latency of each class is measured on the
same instance first. The server's CPU, its wait for a CPU and the host's busy share come
from /proc.

The load generator is a minimal HTTP/1.1 keep-alive client (`RawHttp`, below), not httpx:
it shares the 2 cores with the server, and httpx costs several times more CPU per request,
which would throttle the offered load and sit in every latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from redis.asyncio import Redis
from uuid_utils.compat import uuid4

from bench.auth import HTTP_TIMEOUT, _expect, _new_tenant, bearer
from bench.common import BenchResult, Context, Row, median, now, p99
from tenantry_events.payloads.ratelimit import RatePolicy
from tenantry_guardrails.rate_limits import (
    REDIS_BREAKER,
    AppliedPolicy,
    Decision,
    LocalLimiter,
    RateLimiter,
    RedisDecider,
    Slot,
    tenant_tag,
)
from tenantry_resilience import CircuitBreaker
from tenantry_testkit.fixtures import operator_token
from tenantry_testkit.stack import Stack

SETUP_DEADLINE = 60.0  # s: a new tenant usable on identity / ratelimit

# ratelimit
SEQUENTIAL = 3000  # timed sequential calls per variant (interleaved call by call)
CONCURRENT = 24000  # operations per concurrent variant (over ROUNDS rounds)
CONCURRENCY = 32
ROUNDS = 3
LOCAL_OPS = 20000  # LocalLimiter is in-process: more samples for the same time
REDIS_TIMEOUT = 0.25  # the services' TENANTRY_REDIS_TIMEOUT_SECONDS default

# pipeline
PIPELINE_SERVICE = "identity"
PIPELINE_WARMUP = 100  # untimed rounds
PIPELINE_REQUESTS = 1500  # timed requests per variant
PIPELINE_VARIANTS: dict[str, tuple[int, dict[str, str]]] = {
    # label: (port, settings overrides)
    "(a) rate limit off, admission off": (
        8190,
        {"TENANTRY_RATELIMIT_ENABLED": "false", "TENANTRY_ADMISSION_ENABLED": "false"},
    ),
    "(a') = (a), a second process (control)": (
        8194,
        {"TENANTRY_RATELIMIT_ENABLED": "false", "TENANTRY_ADMISSION_ENABLED": "false"},
    ),
    "(b) admission only": (
        8191,
        {"TENANTRY_RATELIMIT_ENABLED": "false", "TENANTRY_ADMISSION_ENABLED": "true"},
    ),
    "(c) rate limit only": (
        8192,
        {"TENANTRY_RATELIMIT_ENABLED": "true", "TENANTRY_ADMISSION_ENABLED": "false"},
    ),
    "(d) rate limit and admission": (
        8193,
        {"TENANTRY_RATELIMIT_ENABLED": "true", "TENANTRY_ADMISSION_ENABLED": "true"},
    ),
}
GENEROUS = {
    # Replace the team plan's two policies (its rate and its hourly budget, burst 10000):
    # still two policies per decision, but far above what a run sends.
    "policies": [
        {"name": "requests", "limit": 100_000, "period_seconds": 1, "burst": 100_000},
        {"name": "hourly", "limit": 100_000_000, "period_seconds": 3600, "burst": 1_000_000},
    ]
}

# overload
OVERLOAD_SERVICE = "identity"
LARGE_LIST_THRESHOLD = 50
SHEDDABLE_LIMIT = 100  # ?limit= of a sheddable list: above the threshold
OVERLOAD_MODES: dict[str, tuple[int, dict[str, str]]] = {
    "adaptive": (8195, {"TENANTRY_ADMISSION_MODE": "adaptive"}),
    "fixed 8": (
        8196,
        {"TENANTRY_ADMISSION_MODE": "fixed", "TENANTRY_ADMISSION_FIXED_LIMIT": "8"},
    ),
}
OVERLOAD_COMMON = {"TENANTRY_ADMISSION_LARGE_LIST_THRESHOLD": str(LARGE_LIST_THRESHOLD)}
CAPACITY_LEVELS = (1, 4, 16, 32)  # closed-loop clients
CAPACITY_SECONDS = 2.0  # per level, after CAPACITY_WARMUP
CAPACITY_WARMUP = 0.3
SANE_P99 = 0.25  # s: a level whose p99 is above this does not count as capacity
OVERLOAD_RUNS = {1.5: 10.0, 3.0: 15.0}  # times capacity: seconds of open-loop sending
OVERLOAD_MAX_REQUESTS = 30_000  # the count bound of one overload run
MIX = {"critical": 0.10, "default": 0.60, "sheddable": 0.30}
UNLOADED_ROUNDS = 100  # sequential rounds of one request per class
REFRESH_TOKENS = 16  # operator sessions (argon2 sign-ins) whose refresh tokens rotate
REFUSAL_CLIENTS = 16  # closed-loop clients of the refusal-cost probe
ACCOUNTS = 5  # rows in the listed tenant
PRECONNECT = 256
MAX_CONNECTIONS = 1024
SEED = 8


# --------------------------------------------------------------------------- helpers


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _added_ms(
    stat: Callable[[Sequence[float]], float | None], row: Sequence[float], base: Sequence[float]
) -> float | None:
    value, reference = stat(row), stat(base)
    return None if value is None or reference is None else (value - reference) * 1000


class ConnectionCap(Exception):
    """RawHttp would need more than its max_connections: the request was not sent."""


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0


# uvicorn closes a kept-alive connection after 5 s idle; like httpx (keepalive_expiry), the
# client retires idle connections before that, or it would write to ones the server has
# already closed and count the EOF as the server's failure.
IDLE_EXPIRY = 4.0


class RawHttp:
    """A minimal HTTP/1.1 client for one host: keep-alive connections from an idle pool
    (a new one when none is idle), requests as prepared bytes, responses read by
    Content-Length. Enough for the JSON answers of our services; much cheaper per request
    than httpx, which matters when the load generator shares the cores with the server."""

    def __init__(self, base_url: str, *, max_connections: int = MAX_CONNECTIONS) -> None:
        host_port = base_url.removeprefix("http://").rstrip("/")
        host, _, port = host_port.partition(":")
        self.host, self.port, self.authority = host, int(port), host_port
        self.max_connections = max_connections
        self.opened = 0
        self._idle: list[_Conn] = []
        self._live = 0

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> bytes:
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.authority}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def post_json(
        self, path: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> bytes:
        content = json.dumps(body).encode()
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {self.authority}",
            "Content-Type: application/json",
            f"Content-Length: {len(content)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + content

    async def _connect(self) -> _Conn:
        if self._live >= self.max_connections:
            raise ConnectionCap(f"more than {self.max_connections} connections needed")
        self._live += 1
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except BaseException:
            self._live -= 1
            raise
        self.opened += 1
        return _Conn(reader, writer)

    async def preconnect(self, n: int) -> None:
        conns = await asyncio.gather(*(self._connect() for _ in range(n)))
        for conn in conns:
            conn.idle_since = now()
        self._idle.extend(conns)

    def _drop(self, conn: _Conn) -> None:
        self._live -= 1
        conn.writer.close()

    async def request(self, payload: bytes, timeout: float = HTTP_TIMEOUT) -> tuple[int, bytes]:
        """(status, body) of one request; raises on transport errors and timeouts."""
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(timeout):
                conn = self._take_idle() or await self._connect()
                conn.writer.write(payload)
                head = await conn.reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                lower = head.lower()
                at = lower.find(b"\r\ncontent-length:")
                if at < 0:
                    raise RuntimeError(f"response without Content-Length: {head[:200]!r}")
                end = lower.index(b"\r\n", at + 2)
                length = int(lower[at + 17 : end])
                body = await conn.reader.readexactly(length) if length else b""
        except BaseException:
            if conn is not None:
                self._drop(conn)
            raise
        if b"\r\nconnection: close" in lower:
            self._drop(conn)
        else:
            conn.idle_since = now()
            self._idle.append(conn)
        return status, body

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if now() - conn.idle_since < IDLE_EXPIRY:
                return conn
            self._drop(conn)
        return None

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()


@contextlib.asynccontextmanager
async def extra_apis(
    stack: Stack, service: str, instances: Mapping[int, Mapping[str, str]]
) -> AsyncIterator[dict[int, str]]:
    """Extra api processes of `service` (port -> settings overrides), started in parallel;
    yields port -> base URL once all answer /readyz, kills them all on exit."""
    with contextlib.ExitStack() as exits:
        started = await asyncio.gather(
            *(
                asyncio.to_thread(exits.enter_context, stack.extra_api(service, port, dict(env)))
                for port, env in instances.items()
            ),
            return_exceptions=True,
        )
        failed = [s for s in started if isinstance(s, BaseException)]
        if failed:
            raise failed[0]
        yield {port: str(url) for port, url in zip(instances, started, strict=True)}


# --------------------------------------------------------------------------- ratelimit


def _huge(name: str, route_class: str = "*") -> RatePolicy:
    return RatePolicy(
        name=name,
        limit=1_000_000_000,
        period_seconds=1,
        burst=1_000_000_000,
        route_class=route_class,
    )


async def _concurrent(
    op: Callable[[], Awaitable[Any]], n: int, tasks: int
) -> tuple[list[float], float]:
    """`n` calls of `op` from `tasks` tasks at once: (latency of each call, wall time)."""
    latencies: list[float] = []
    per_task = n // tasks

    async def worker() -> None:
        for _ in range(per_task):
            t0 = now()
            await op()
            latencies.append(now() - t0)

    t_start = now()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return latencies, now() - t_start


async def run_ratelimit(ctx: Context) -> BenchResult:
    stack = ctx.stack
    result = BenchResult(
        "ratelimit",
        "rate-limit decisions against the stack's Redis, vs plain INCR; and the local path",
        "decisions",
        params={
            "redis": stack.redis_url,
            "client": f"redis.asyncio.Redis.from_url, socket timeouts {REDIS_TIMEOUT}s",
            "sequential_ops_per_variant": SEQUENTIAL,
            "sequential_order": "one call of each variant per round, start rotated each round",
            "concurrent_ops_per_variant": CONCURRENT,
            "concurrency": CONCURRENCY,
            "concurrent_rounds": ROUNDS,
            "local_ops": LOCAL_OPS,
        },
    )
    redis = Redis.from_url(
        stack.redis_url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
    )
    tenant = uuid4()
    tag = tenant_tag(tenant)
    incr_key = f"{tag}:bench:incr"
    one = [AppliedPolicy(_huge("requests"), f"{tag}:t:requests")]
    three = [
        AppliedPolicy(_huge("requests"), f"{tag}:t:requests"),
        AppliedPolicy(_huge("hourly"), f"{tag}:t:hourly"),
        AppliedPolicy(_huge("script"), f"{tag}:k:key_bench:script"),
    ]
    in_flight_key = f"{tag}:inflight"
    tight = RatePolicy(name="tight", limit=1, period_seconds=3600, burst=1)
    refused_policy = [AppliedPolicy(tight, f"{tag}:t:tight")]
    decider = RedisDecider(redis)
    limiter = RateLimiter(
        decider, LocalLimiter(), breaker=CircuitBreaker("bench-redis-ratelimit", REDIS_BREAKER)
    )
    noop = redis.register_script("return 1")
    paths: Counter[str] = Counter()
    refused_allowed = 0
    slots: list[Slot] = []  # taken by the sequential 3-policy decisions, for `release`

    async def incr() -> None:
        await redis.incr(incr_key)

    async def lua_noop() -> None:
        await noop(keys=[incr_key], args=[])

    async def decide_one() -> None:
        await decider.decide(one)

    async def decide_three() -> None:
        decision = await decider.decide(three, tenant_id=tenant, max_in_flight=10_000_000)
        if decision.slot is None:
            raise RuntimeError(f"no in-flight slot taken: {decision}")
        slots.append(decision.slot)

    async def release() -> None:
        await decider.release(slots.pop())

    async def limiter_decide() -> None:
        decision = await limiter.decide(one, tenant_id=tenant)
        paths[decision.path] += 1

    async def cached_refusal() -> None:
        nonlocal refused_allowed
        decision: Decision = await limiter.decide(refused_policy, tenant_id=tenant)
        paths[decision.path] += 1
        refused_allowed += decision.allowed

    # (label, op, baseline, also run concurrently)
    variants: list[tuple[str, Callable[[], Awaitable[None]], bool, bool]] = [
        ("plain INCR", incr, True, True),
        ("EVALSHA 'return 1' (Lua floor)", lua_noop, True, True),
        ("RedisDecider.decide, 1 policy", decide_one, False, True),
        ("RedisDecider.decide, 3 policies + in-flight slot", decide_three, False, True),
        ("RedisDecider.release (ZREM of the slot)", release, False, False),
        ("RateLimiter.decide, Redis path, 1 policy", limiter_decide, False, True),
        ("RateLimiter.decide, cached refusal (no Redis)", cached_refusal, False, False),
    ]
    seq_rows = [
        Row(f"{label}, sequential", "call -> result", baseline=b) for label, _, b, _ in variants
    ]
    conc = [(label, op, b) for label, op, b, c in variants if c]
    conc_rows = [
        Row(f"{label}, x{CONCURRENCY} concurrent", "call -> result", baseline=b)
        for label, _, b in conc
    ]
    local_one = Row("LocalLimiter.decide, 1 policy", "call -> result")
    local_three = Row("LocalLimiter.decide, 3 policies + in-flight slot", "call -> result")
    try:
        # Warm up: connections, the script cache (EVALSHA), the refusal cache.
        for _, op, _ in conc:
            await _concurrent(op, CONCURRENCY * 10, CONCURRENCY)
        await redis.delete(in_flight_key)
        slots.clear()
        first = await limiter.decide(refused_policy, tenant_id=tenant)
        second = await limiter.decide(refused_policy, tenant_id=tenant)
        if not first.allowed or second.allowed or second.path != "redis":
            raise RuntimeError(f"a 1-per-hour key: expected allowed then refused: {first} {second}")
        paths.clear()
        await decide_three()  # one slot in hand, whatever the order of a round

        # Sequential: one call of each variant per round, the first variant rotated.
        for i in range(SEQUENTIAL):
            for j in range(len(variants)):
                k = (i + j) % len(variants)
                op = variants[k][1]
                t0 = now()
                await op()
                seq_rows[k].latencies.append(now() - t0)
        for row in seq_rows:
            row.count, row.wall = len(row.latencies), sum(row.latencies)

        # Concurrent: rounds of each variant in turn (the order reversed every round).
        for r in range(ROUNDS):
            order = list(range(len(conc)))
            order = order[::-1] if r % 2 else order
            for k in order:
                command = "incrby" if conc[k][1] is incr else "evalsha"  # redis-py INCR = INCRBY
                before, cpu_before = await _redis_commandstats(redis), time.process_time()
                latencies, wall = await _concurrent(conc[k][1], CONCURRENT // ROUNDS, CONCURRENCY)
                cpu, after = time.process_time() - cpu_before, await _redis_commandstats(redis)
                conc_rows[k].add(latencies, len(latencies), wall)
                extra = conc_rows[k].extra
                extra["client_cpu_s"] = extra.get("client_cpu_s", 0.0) + cpu
                calls = after.get(command, (0, 0))[0] - before.get(command, (0, 0))[0]
                usec = after.get(command, (0, 0))[1] - before.get(command, (0, 0))[1]
                extra["redis_calls"] = extra.get("redis_calls", 0) + calls
                extra["redis_usec"] = extra.get("redis_usec", 0) + usec
                # The 3-policy variant keeps its slots (cap far above them): drop the set,
                # so every round starts from an empty one.
                await redis.delete(in_flight_key)
                slots.clear()

        local = LocalLimiter()
        for _ in range(LOCAL_OPS):
            t0 = now()
            local.decide(one)
            t1 = now()
            d = local.decide(three, tenant_id=tenant, max_in_flight=10_000_000)
            t2 = now()
            if d.slot is not None:
                local.release(tenant)
            local_one.latencies.append(t1 - t0)
            local_three.latencies.append(t2 - t1)
        for row in (local_one, local_three):
            row.count, row.wall = len(row.latencies), sum(row.latencies)
    finally:
        with contextlib.suppress(Exception):
            await redis.delete(incr_key, in_flight_key, *(p.key for p in three + refused_policy))
        await redis.aclose()

    result.rows += [*seq_rows, local_one, local_three, *conc_rows]
    incr_seq, incr_conc = seq_rows[0], conc_rows[0]
    for row in seq_rows[1:]:
        name = row.label.removesuffix(", sequential")
        result.ratios[f"{name}: p50 added over INCR, sequential (ms)"] = _added_ms(
            median, row.latencies, incr_seq.latencies
        )
    for row in conc_rows[1:]:
        name = row.label.removesuffix(f", x{CONCURRENCY} concurrent")
        result.ratios[f"{name}: rate / INCR rate, x{CONCURRENCY}"] = _ratio(row, incr_conc)
    for row in conc_rows:
        name = row.label.removesuffix(f", x{CONCURRENCY} concurrent")
        row.extra["client_cpu_us_per_call"] = row.extra["client_cpu_s"] * 1e6 / row.count
        row.extra["redis_server_us_per_call"] = (
            row.extra["redis_usec"] / row.extra["redis_calls"] if row.extra["redis_calls"] else None
        )
        result.ratios[f"{name}: client CPU us per call, x{CONCURRENCY}"] = row.extra[
            "client_cpu_us_per_call"
        ]
        result.ratios[f"{name}: Redis server us per call, x{CONCURRENCY}"] = row.extra[
            "redis_server_us_per_call"
        ]
    result.params["decision_paths"] = dict(paths)
    if paths.get("local"):
        result.notes.append(
            f"ANOMALY: {paths['local']} RateLimiter decisions fell back to the local path "
            "(the breaker opened: Redis calls slower than 50 ms or failing)"
        )
    if refused_allowed:
        result.notes.append(f"ANOMALY: {refused_allowed} cached refusals were allowed")
    result.notes.append(
        "baselines (*): plain INCR (redis-py sends INCRBY key 1) and EVALSHA of 'return 1' "
        "on the same client and Redis; "
        "sequential rows are interleaved call by call and their rate is 1 / mean latency; "
        f"concurrent rows: {CONCURRENCY} tasks share the client's pool, rate = calls / wall"
    )
    result.notes.append(
        "the cached refusal and LocalLimiter never leave the process (LocalLimiter timed "
        "as the synchronous call alone, so its rate is a CPU ceiling); every other decision "
        "is an allow (generous policies), the common case"
    )
    return result


async def _redis_commandstats(redis: Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, microseconds) the Redis server has counted (INFO commandstats);
    a script's inner commands are counted under their own names too."""
    stats: dict[str, Any] = await redis.info("commandstats")
    return {
        k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
        for k, v in stats.items()
        if k.startswith("cmdstat_")
    }


def _ratio(row: Row, base: Row) -> float | None:
    return row.rate / base.rate if row.rate and base.rate else None


# --------------------------------------------------------------------------- HTTP helpers


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus series over the lines whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _metrics(client: httpx.AsyncClient, base: str) -> str:
    response = await client.get(f"{base}/metrics")
    response.raise_for_status()
    return response.text


async def _override_policies(
    client: httpx.AsyncClient, stack: Stack, operator: str, tenant_id: UUID, body: dict[str, Any]
) -> int:
    """PUT the tenant's rate policies on ratelimit (retried while ratelimit does not know
    the tenant's limits yet: 404); the new policy version."""
    url = f"{stack.service_url('ratelimit')}/v1/tenants/{tenant_id}/rate-policies"
    deadline = now() + SETUP_DEADLINE
    while True:
        response = await client.put(url, json=body, headers=bearer(operator))
        if response.status_code != 404 or now() > deadline:
            break
        await asyncio.sleep(0.05)
    version: int = _expect(response, 200, "PUT /v1/tenants/{tid}/rate-policies")["version"]
    return version


async def _post_patiently(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], operator: str
) -> dict[str, Any]:
    """POST as the operator, retried while the service answers 503 (a new tenant's plan
    limits not projected there yet; on a busy shared stack that can take longer than
    bench.auth waits); the 201 body."""
    deadline = now() + SETUP_DEADLINE
    while True:
        response = await client.post(url, json=body, headers=bearer(operator))
        if response.status_code != 503 or now() > deadline:
            return _expect(response, 201, f"POST {url}")
        await asyncio.sleep(0.1)


async def _until(probe: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = now() + timeout
    while not await probe():
        if now() > deadline:
            raise RuntimeError(f"not within {timeout:.0f} s: {what}")
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- pipeline


async def run_pipeline(ctx: Context) -> BenchResult:
    stack = ctx.stack
    result = BenchResult(
        "pipeline",
        f"latency added by the rate-limit and admission steps, sequential GET /v1/whoami "
        f"(API key) on extra {PIPELINE_SERVICE} instances",
        "requests",
        params={
            "service": PIPELINE_SERVICE,
            "instances": {label: port for label, (port, _) in PIPELINE_VARIANTS.items()},
            "overrides": {label: env for label, (_, env) in PIPELINE_VARIANTS.items()},
            "requests_per_variant": PIPELINE_REQUESTS,
            "warmup_rounds": PIPELINE_WARMUP,
            "order": "one request of every variant per round, in a new random order each round",
            "tenant_policies": GENEROUS,
            "client": "RawHttp (bench/guardrails.py), one keep-alive connection per instance",
        },
    )
    operator = await operator_token(stack)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as setup:
        tenant_id = await _new_tenant(setup, stack.service_url("tenancy"), operator, "pipeline")
        key = (
            await _post_patiently(
                setup,
                f"{stack.service_url('identity')}/v1/tenants/{tenant_id}/api-keys",
                {"name": "bench", "scopes": ["tenant:read"]},
                operator,
            )
        )["key"]
        await _override_policies(setup, stack, operator, tenant_id, GENEROUS)
        instances = {port: env for port, env in PIPELINE_VARIANTS.values()}
        async with extra_apis(stack, PIPELINE_SERVICE, instances) as urls:
            await _pipeline_ready(setup, urls, key)
            whoami, health = await _pipeline_rounds(urls, key)
            texts = {port: await _metrics(setup, url) for port, url in urls.items()}
    result.rows += [*whoami, *health]

    base, base_health = whoami[0], health[0]
    for row, floor in zip(whoami, health, strict=True):
        name = row.label.split(":")[0]
        for stat_name, stat in (("p50", median), ("p99", p99)):
            added = _added_ms(stat, row.latencies, base.latencies)
            row.extra[f"added_{stat_name}_ms_over_a"] = added
            # The same, each instance's own /healthz subtracted first: takes out what one
            # process costs more than another whatever the route.
            own = _added_ms(stat, row.latencies, floor.latencies)
            base_own = _added_ms(stat, base.latencies, base_health.latencies)
            net = None if own is None or base_own is None else own - base_own
            row.extra[f"added_{stat_name}_ms_over_a_net_of_healthz"] = net
            row.extra[f"{stat_name}_ms_over_own_healthz"] = own
            if row is not base:
                result.ratios[f"{name} added {stat_name} ms over (a)"] = added
            if row is not base and stat_name == "p50":
                result.ratios[f"{name} added p50 ms over (a), net of /healthz"] = net
    result.ratios["(a) over its /healthz, p50 ms (auth + route)"] = base.extra[
        "p50_ms_over_own_healthz"
    ]
    decisions = {
        label: {
            path: _metric(texts[port], "tenantry_ratelimit_decisions_total", path=path)
            for path in ("redis", "cached", "local")
        }
        for label, (port, _) in PIPELINE_VARIANTS.items()
    }
    result.params["ratelimit_decisions_by_instance"] = decisions
    for label, paths in decisions.items():
        if paths["local"] or paths["cached"]:
            result.notes.append(f"ANOMALY: {label}: decisions off the Redis path: {paths}")
    result.notes.append(
        "added = difference of the variants' medians (p99s), not a percentile of per-request "
        "differences; (a) is the baseline; (a') is configured like (a): its difference is "
        "the noise between two identical processes; 'net of /healthz' subtracts each "
        "instance's own /healthz (no pipeline, no admission) first"
    )
    result.notes.append(
        "the rate-limit step per request: the policy read (cached 1 s per tenant, so about "
        "one Postgres read a second), one decide.lua call (2 policies, both overridden, "
        "plus an in-flight slot) before the route, one ZREM after"
    )
    result.notes.append("creates one tenant (slug bench-pipeline-*) with one API key; they stay")
    return result


async def _pipeline_ready(client: httpx.AsyncClient, urls: dict[int, str], key: str) -> None:
    """The key works on every instance, and the instances with rate limits on enforce the
    generous override (their RateLimit-Policy shows its burst)."""
    for label, (port, env) in PIPELINE_VARIANTS.items():
        limited = env["TENANTRY_RATELIMIT_ENABLED"] == "true"

        async def ready(url: str = urls[port], limited: bool = limited) -> bool:
            r = await client.get(f"{url}/v1/whoami", headers=bearer(key))
            if r.status_code != 200:
                return False
            policy = r.headers.get("RateLimit-Policy", "")
            return '"requests";q=100000;' in policy if limited else not policy

        await _until(ready, f"{label}: key accepted, policies in force", SETUP_DEADLINE)


async def _pipeline_rounds(urls: dict[int, str], key: str) -> tuple[list[Row], list[Row]]:
    """(GET /v1/whoami rows, GET /healthz rows), one of each per instance."""
    clients = {port: RawHttp(url, max_connections=1) for port, url in urls.items()}
    auth = bearer(key)
    # (row, client, payload): whoami on every instance, then /healthz on every instance
    variants: list[tuple[Row, RawHttp, bytes]] = []
    for path, headers, what in (("/v1/whoami", auth, "GET /v1/whoami"), ("/healthz", {}, "")):
        for i, (label, (port, _)) in enumerate(PIPELINE_VARIANTS.items()):
            name = f"{label}: {what}" if what else f"GET /healthz on {label.split(' ')[0]}"
            row = Row(name, "request -> response", baseline=i == 0)
            variants.append((row, clients[port], clients[port].get(path, headers)))
    order = list(range(len(variants)))
    shuffle = random.Random(SEED).shuffle
    try:
        t_start = now()
        for i in range(PIPELINE_WARMUP + PIPELINE_REQUESTS):
            # A new order every round: a variant is not always preceded by the same one
            # (a process that has just answered is faster: warm caches, awake).
            shuffle(order)
            for k in order:
                row, http, payload = variants[k]
                t0 = now()
                status, body = await http.request(payload)
                elapsed = now() - t0
                if status != 200:
                    raise RuntimeError(f"{row.label}: HTTP {status}: {body[:300]!r}")
                if i >= PIPELINE_WARMUP:
                    row.latencies.append(elapsed)
        wall = now() - t_start
    finally:
        for http in clients.values():
            await http.aclose()
    rows = [row for row, _, _ in variants]
    for row in rows:
        row.count, row.wall = len(row.latencies), sum(row.latencies)
        row.extra["all_variants_wall_s"] = wall
    n = len(PIPELINE_VARIANTS)
    return rows[:n], rows[n:]


# --------------------------------------------------------------------------- overload


@dataclass(frozen=True)
class Outcome:
    cls: str
    status: int  # 0: no answer (timeout, connection error); -1: not sent (connection cap)
    latency: float  # request written -> response read
    lag: float  # intended send time -> written (the generator's own delay)
    reason: str | None = None  # of a 503: queue-full, shed, deadline-exceeded
    probe_token: bool = False  # a critical request sent with a never-issued refresh token

    @property
    def served(self) -> bool:
        """Answered by the route: 2xx, or the 401 a never-issued refresh token gets."""
        return 200 <= self.status < 300 or (self.probe_token and self.status == 401)


@dataclass
class Traffic:
    """Prepared requests of each class against one instance. A critical request rotates
    one of the operator's refresh tokens (an admission 503 gives it back: the request never
    ran); when all are out, it presents a never-issued token, which the route looks up and
    answers 401 (the same route and class, a lighter transaction)."""

    http: RawHttp
    tenant_id: UUID
    operator: str
    tokens: list[str]
    lost_tokens: int = 0
    probe_tokens: int = 0
    # Why requests got no answer, by exception (a timeout, or the server closing a kept-
    # alive connection: IncompleteReadError / ConnectionResetError).
    failures: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        accounts = f"/v1/tenants/{self.tenant_id}/accounts"
        auth = bearer(self.operator)
        self.payloads = {
            "default": self.http.get(accounts, auth),
            "sheddable": self.http.get(f"{accounts}?limit={SHEDDABLE_LIMIT}", auth),
            # the client's deadline has passed on arrival: admission refuses it at once
            "refused": self.http.get(accounts, {**auth, "X-Request-Timeout-Ms": "0"}),
            "healthz": self.http.get("/healthz"),
        }

    async def send(self, cls: str, intended: float | None = None) -> Outcome:
        token = None
        if cls == "critical":
            if self.tokens:
                token = self.tokens.pop()
                body = {"refresh_token": token}
            else:
                self.probe_tokens += 1
                body = {"refresh_token": "bench-never-issued-" + uuid4().hex}
            payload = self.http.post_json("/v1/sessions/refresh", body)
        else:
            payload = self.payloads[cls]
        t0 = now()
        try:
            status, answer = await self.http.request(payload)
        except ConnectionCap:
            status, answer = -1, b""
        except (TimeoutError, OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
            status, answer = 0, b""
            self.failures[type(exc).__name__] += 1
        latency = now() - t0
        reason = None
        if status == 503:
            with contextlib.suppress(ValueError, AttributeError):
                reason = json.loads(answer).get("reason")
        if token is not None:
            if status == 201:
                self.tokens.append(json.loads(answer)["refresh_token"])
            elif status in (-1, 503) and (status == -1 or reason is not None):
                self.tokens.append(token)  # never sent, or refused by admission: unused
            else:
                self.lost_tokens += 1
        lag = 0.0 if intended is None else t0 - intended
        return Outcome(cls, status, latency, lag, reason, cls == "critical" and token is None)


def _server_pid(service: str, port: int) -> int | None:
    """The pid of the `tenantry-<service> api` process serving `port` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if f"tenantry-{service}".encode() not in cmdline or b"\0api" not in cmdline:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"TENANTRY_HTTP_PORT={port}".encode() in environ:
            return int(entry.name)
    return None


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (None if unknown)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs of the host so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _run_delay(pid: int | None) -> float | None:
    """Seconds the process's main thread has waited for a CPU while runnable."""
    if pid is None:
        return None
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class CpuMeter:
    """Over a phase: CPU seconds of the server process and of this one, the server's wait
    for a CPU, and how busy the host's CPUs were."""

    pid: int | None
    server: float | None = None
    server_waited: float | None = None
    client: float = 0.0
    host_busy: float | None = None  # share of all the host's CPUs
    wall: float = 0.0
    _start: tuple[float | None, float | None, float, tuple[int, int], float] = (
        None,
        None,
        0.0,
        (0, 0),
        0.0,
    )

    def __enter__(self) -> CpuMeter:
        self._start = (
            _cpu_seconds(self.pid),
            _run_delay(self.pid),
            time.process_time(),
            _host_jiffies(),
            now(),
        )
        return self

    def __exit__(self, *_: object) -> None:
        server, waited = _cpu_seconds(self.pid), _run_delay(self.pid)
        client, host, wall = time.process_time(), _host_jiffies(), now()
        server0, waited0, client0, host0, wall0 = self._start
        if server is not None and server0 is not None:
            self.server = server - server0
        if waited is not None and waited0 is not None:
            self.server_waited = waited - waited0
        self.client = client - client0
        if host[1] > host0[1]:
            self.host_busy = (host[0] - host0[0]) / (host[1] - host0[1])
        self.wall = wall - wall0


async def _login_tokens(client: httpx.AsyncClient, base: str, stack: Stack, n: int) -> list[str]:
    """Refresh tokens of `n` new operator sessions (argon2 each: 4 at a time)."""
    credentials = {
        "email": stack.env["TENANTRY_OPERATOR_EMAIL"],
        "password": stack.env["TENANTRY_OPERATOR_PASSWORD"],
    }
    gate = asyncio.Semaphore(4)

    async def login() -> str:
        async with gate:
            r = await client.post(f"{base}/v1/sessions", json=credentials)
        token: str = _expect(r, 201, "POST /v1/sessions")["refresh_token"]
        return token

    return list(await asyncio.gather(*(login() for _ in range(n))))


async def _unloaded(traffic: Traffic, prefix: str) -> dict[str, Row]:
    """UNLOADED_ROUNDS sequential rounds of one request per class, and one refused at once
    (its deadline already past), in a random order each round."""
    expected = {"critical": 201, "default": 200, "sheddable": 200, "refused": 503}
    rows = {
        cls: Row(
            f"{prefix}unloaded: {cls}, sequential"
            if cls != "refused"
            else f"{prefix}unloaded: refused at once (X-Request-Timeout-Ms: 0)",
            "request -> response" if cls != "refused" else "request -> 503",
            baseline=True,
        )
        for cls in expected
    }
    classes = list(expected)
    shuffle = random.Random(SEED).shuffle
    for i in range(UNLOADED_ROUNDS + 10):
        shuffle(classes)
        for cls in classes:
            outcome = await traffic.send(cls)
            if outcome.status != expected[cls] or outcome.probe_token:
                raise RuntimeError(f"unloaded {cls}: {outcome}")
            if i >= 10:
                rows[cls].latencies.append(outcome.latency)
    for row in rows.values():
        row.count, row.wall = len(row.latencies), sum(row.latencies)
    return rows


async def _closed_loop(
    traffic: Traffic, cls: str, clients: int, window: tuple[float, float], status: int
) -> tuple[list[float], int]:
    """`clients` loops of `cls` requests until the window's end: (latencies of the answers
    with `status` inside the window, count of other answers inside it)."""
    latencies: list[float] = []
    other = 0

    async def client() -> None:
        nonlocal other
        while now() < window[1]:
            outcome = await traffic.send(cls)
            if window[0] <= now() <= window[1]:
                if outcome.status == status:
                    latencies.append(outcome.latency)
                else:
                    other += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, other


async def _probe(
    traffic: Traffic, pid: int | None, cls: str, clients: int, status: int, label: str
) -> Row:
    """One closed-loop level: a row with the answers of `status` over CAPACITY_SECONDS, and
    the server's CPU per answer."""
    t_start = now()
    window = (t_start + CAPACITY_WARMUP, t_start + CAPACITY_WARMUP + CAPACITY_SECONDS)
    task = asyncio.create_task(_closed_loop(traffic, cls, clients, window, status))
    await asyncio.sleep(max(0.0, window[0] - now()))
    with CpuMeter(pid) as cpu:
        await asyncio.sleep(max(0.0, window[1] - now()))
    latencies, other = await task
    row = Row(
        label,
        "request -> response" if status != 503 else "request -> 503",
        latencies,
        count=len(latencies),
        wall=CAPACITY_SECONDS,
        extra={"clients": clients, "other_answers": other},
    )
    if cpu.server is not None and latencies:
        row.extra["server_cpu_ms_per_answer"] = cpu.server * 1000 / (len(latencies) + other)
        row.extra["server_cpu_share"] = cpu.server / cpu.wall
    row.extra["client_cpu_share"] = cpu.client / cpu.wall
    row.extra["host_cpus_busy_share"] = cpu.host_busy
    if cpu.server_waited is not None:
        row.extra["server_waited_for_cpu_share"] = cpu.server_waited / cpu.wall
    return row


async def _open_loop(
    traffic: Traffic, plan: list[tuple[float, str]], metrics_url: str, pid: int | None
) -> tuple[list[Outcome], CpuMeter, list[dict[str, float]]]:
    """Send `plan` ((offset s, class), sorted) open loop: each request at its time, whatever
    is outstanding. (outcomes, CPU over the sending, admission samples)."""
    outcomes: list[Outcome] = []
    tasks: set[asyncio.Task[None]] = set()
    samples: list[dict[str, float]] = []
    done = asyncio.Event()

    async def fire(cls: str, intended: float) -> None:
        outcomes.append(await traffic.send(cls, intended))

    async def sample() -> None:
        # The instance's admission gauges every 0.5 s (/metrics skips admission).
        probe = RawHttp(metrics_url, max_connections=2)
        payload = probe.get("/metrics")
        try:
            while not done.is_set():
                t0 = now()
                with contextlib.suppress(Exception):
                    _, body = await probe.request(payload, timeout=5)
                    text = body.decode()
                    samples.append(
                        {
                            "t": round(t0 - start, 3),
                            "limit": _metric(text, "tenantry_admission_limit"),
                            "inflight": _metric(text, "tenantry_admission_inflight"),
                            "queued": _metric(text, "tenantry_admission_queued"),
                            "answer_ms": round((now() - t0) * 1000, 2),
                        }
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.5)
        finally:
            await probe.aclose()

    start = now() + 0.05
    sampler = asyncio.create_task(sample())
    i = 0
    with CpuMeter(pid) as cpu:
        while i < len(plan):
            t = now()
            while i < len(plan) and start + plan[i][0] <= t:
                task = asyncio.create_task(fire(plan[i][1], start + plan[i][0]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if i < len(plan):
                await asyncio.sleep(max(0.0, start + plan[i][0] - now()))
    if tasks:
        # Every request has its own timeout (connecting included): this only guards.
        await asyncio.wait(set(tasks), timeout=HTTP_TIMEOUT + 5)
        for task in list(tasks):
            task.cancel()
    done.set()
    await sampler
    return outcomes, cpu, samples


def _plan(rate: float, seconds: float, seed: int = SEED) -> list[tuple[float, str]]:
    """Poisson arrivals at `rate`/s for `seconds` (at most OVERLOAD_MAX_REQUESTS),
    each of a class drawn with the MIX weights."""
    rng = random.Random(seed)
    classes, weights = list(MIX), list(MIX.values())
    plan: list[tuple[float, str]] = []
    t = 0.0
    while len(plan) < OVERLOAD_MAX_REQUESTS:
        t += rng.expovariate(rate)
        if t > seconds:
            break
        plan.append((t, rng.choices(classes, weights)[0]))
    return plan


@dataclass
class Capacity:
    serve_rps: float  # best 2xx/s of a sane closed-loop level
    refuse_rps: float  # refusals/s with REFUSAL_CLIENTS closed-loop clients
    rows: list[Row]
    serve_cpu_ms: float | None  # server CPU per served request at the best level
    refuse_cpu_ms: float | None  # server CPU per refusal
    healthz_cpu_ms: float | None  # server CPU per GET /healthz (no pipeline, no admission)


async def _capacity(traffic: Traffic, pid: int | None, prefix: str) -> Capacity:
    """Closed loop: default-class requests with CAPACITY_LEVELS clients in turn (capacity:
    the best 2xx/s of a level whose p99 <= SANE_P99), then requests refused at once."""
    rows: list[Row] = []
    best: Row | None = None
    for clients in CAPACITY_LEVELS:
        label = f"{prefix}capacity probe: {clients} closed-loop clients, default"
        row = await _probe(traffic, pid, "default", clients, 200, label)
        rows.append(row)
        top = p99(row.latencies)
        sane = top is not None and top <= SANE_P99 and not row.extra["other_answers"]
        if sane and row.rate and (best is None or row.rate > (best.rate or 0)):
            best = row
    label = f"{prefix}refusal probe: {REFUSAL_CLIENTS} closed-loop clients, refused at once"
    refusals = await _probe(traffic, pid, "refused", REFUSAL_CLIENTS, 503, label)
    label = f"{prefix}/healthz probe: {REFUSAL_CLIENTS} closed-loop clients"
    health = await _probe(traffic, pid, "healthz", REFUSAL_CLIENTS, 200, label)
    rows += [refusals, health]
    return Capacity(
        best.rate or 0.0 if best else 0.0,
        refusals.rate or 0.0,
        rows,
        best.extra.get("server_cpu_ms_per_answer") if best else None,
        refusals.extra.get("server_cpu_ms_per_answer"),
        health.extra.get("server_cpu_ms_per_answer"),
    )


async def run_overload(ctx: Context) -> BenchResult:
    stack = ctx.stack
    factors = " and ".join(f"{f:g}x" for f in OVERLOAD_RUNS)
    result = BenchResult(
        "overload",
        f"one {OVERLOAD_SERVICE} instance at {factors} its capacity: critical success, "
        "served latency, time to refuse",
        "requests",
        params={
            "service": OVERLOAD_SERVICE,
            "modes": {mode: {"port": port, **env} for mode, (port, env) in OVERLOAD_MODES.items()},
            "common_overrides": OVERLOAD_COMMON,
            "mix": MIX,
            "critical": "POST /v1/sessions/refresh: operator refresh tokens rotated "
            f"({REFRESH_TOKENS} sessions); a never-issued token when all are out (401)",
            "default": "GET /v1/tenants/{id}/accounts as the operator",
            "sheddable": f"the same with ?limit={SHEDDABLE_LIMIT} (> large-list threshold)",
            "capacity_levels": CAPACITY_LEVELS,
            "capacity_seconds_per_level": CAPACITY_SECONDS,
            "sane_p99_s": SANE_P99,
            "runs_factor_to_seconds": OVERLOAD_RUNS,
            "arrivals": "Poisson (open loop), seeded; the same plans for every mode",
            "client": f"RawHttp (bench/guardrails.py): one keep-alive connection per "
            f"outstanding request, at most {MAX_CONNECTIONS}, {HTTP_TIMEOUT:g} s timeout",
        },
    )
    operator = await operator_token(stack)
    capacity: Capacity | None = None
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as setup:
        identity = stack.service_url("identity")
        tenant_id = await _new_tenant(setup, stack.service_url("tenancy"), operator, "overload")
        for _ in range(ACCOUNTS):
            await _post_patiently(
                setup,
                f"{identity}/v1/tenants/{tenant_id}/accounts",
                {"email": f"bench-{uuid4().hex[:10]}@example.com", "role": "member"},
                operator,
            )
        tokens: list[str] = []
        for mode, (port, env) in OVERLOAD_MODES.items():
            overrides = {port: {**OVERLOAD_COMMON, **env}}
            async with extra_apis(stack, OVERLOAD_SERVICE, overrides) as urls:
                base = urls[port]
                pid = _server_pid(OVERLOAD_SERVICE, port)
                if not tokens:
                    tokens = await _login_tokens(setup, base, stack, REFRESH_TOKENS)
                http = RawHttp(base)
                traffic = Traffic(http, tenant_id, operator, tokens)
                try:
                    await http.preconnect(PRECONNECT)
                    unloaded = await _unloaded(traffic, f"{mode}: ")
                    result.rows += unloaded.values()
                    if capacity is None:
                        capacity = await _capacity(traffic, pid, f"{mode}: ")
                        result.rows += capacity.rows
                        if not capacity.serve_rps:
                            raise RuntimeError(f"no capacity level had p99 <= {SANE_P99} s")
                    for factor, seconds in OVERLOAD_RUNS.items():
                        await asyncio.sleep(2.0)  # let the instance settle
                        plan = _plan(capacity.serve_rps * factor, seconds)
                        traffic.probe_tokens = traffic.lost_tokens = 0
                        traffic.failures.clear()
                        outcomes, cpu, samples = await _open_loop(traffic, plan, base, pid)
                        text = await _metrics(setup, base)
                        run = ModeRun(
                            mode, factor, seconds, unloaded, plan, outcomes, cpu, samples,
                            text, traffic,
                        )  # fmt: skip
                        _report_run(result, run, capacity)
                finally:
                    await http.aclose()
                tokens = traffic.tokens
    assert capacity is not None
    result.params["capacity"] = {
        "serve_rps": capacity.serve_rps,
        "refuse_rps": capacity.refuse_rps,
        "server_cpu_ms_per_served": capacity.serve_cpu_ms,
        "server_cpu_ms_per_refusal": capacity.refuse_cpu_ms,
        "server_cpu_ms_per_healthz": capacity.healthz_cpu_ms,
    }
    result.ratios["capacity: served (default) per s, best sane level"] = capacity.serve_rps
    result.ratios["capacity: refusals per s (closed loop)"] = capacity.refuse_rps
    result.ratios["server CPU ms per served request (default)"] = capacity.serve_cpu_ms
    result.ratios["server CPU ms per refusal"] = capacity.refuse_cpu_ms
    result.ratios["server CPU ms per GET /healthz"] = capacity.healthz_cpu_ms
    if capacity.serve_cpu_ms and capacity.refuse_cpu_ms:
        # With a whole core: served S/s and refused (R - S)/s cost S*c_s + (R - S)*c_r <= 1 s.
        for factor in OVERLOAD_RUNS:
            offered = capacity.serve_rps * factor
            best = (1000 - offered * capacity.refuse_cpu_ms) / (
                capacity.serve_cpu_ms - capacity.refuse_cpu_ms
            )
            result.ratios[f"{factor:g}x: model, most servable with a whole core, requests/s"] = max(
                0.0, min(best, capacity.serve_rps)
            )
    result.notes.append(
        "baselines (*): each class unloaded (sequential, on the same instance just before), "
        "and a request refused at once (its X-Request-Timeout-Ms already past); capacity = "
        f"the best 2xx/s of a closed-loop level whose p99 <= {SANE_P99 * 1000:.0f} ms, on "
        "the first mode's instance; every mode gets the same Poisson plans"
    )
    result.notes.append(
        "latency: request written -> response read; served = answered by the route (2xx, "
        "or the 401 of a never-issued refresh token); critical success = served / planned "
        "(a request not sent for want of a connection counts as failed); "
        "time to refuse = latency of a 503; 'model, most servable' = (CPU ms per s - offered "
        "x refusal CPU ms) / (serving CPU ms - refusal CPU ms), costs from the probes"
    )
    result.notes.append(
        f"creates one tenant (slug bench-overload-*) with {ACCOUNTS} accounts and "
        f"{REFRESH_TOKENS} operator sessions; they stay"
    )
    return result


@dataclass
class ModeRun:
    mode: str
    factor: float
    seconds: float
    unloaded: dict[str, Row]
    plan: list[tuple[float, str]]
    outcomes: list[Outcome]
    cpu: CpuMeter
    samples: list[dict[str, float]]
    metrics_text: str
    traffic: Traffic


def _report_run(result: BenchResult, run: ModeRun, capacity: Capacity) -> None:
    mode, outcomes = f"{run.mode} {run.factor:g}x", run.outcomes
    prefix = f"{mode}: "
    sent_s = run.cpu.wall
    served = {cls: Row(f"{prefix}{cls}, served", "request -> response") for cls in MIX}
    shed = {cls: Row(f"{prefix}{cls}, refused (503)", "request -> 503") for cls in MIX}
    all_served = Row(f"{prefix}all classes, served", "request -> response")
    all_shed = Row(f"{prefix}all classes, refused (503)", "request -> 503")
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for o in outcomes:
        status = {0: "no answer", -1: "not sent"}.get(o.status, str(o.status))
        counts[f"{o.cls}{' (never-issued token)' if o.probe_token else ''} {status}"] += 1
        if o.served:
            served[o.cls].latencies.append(o.latency)
            all_served.latencies.append(o.latency)
        elif o.status == 503:
            shed[o.cls].latencies.append(o.latency)
            all_shed.latencies.append(o.latency)
            reasons[f"{o.cls} {o.reason}"] += 1
    unloaded_all = [x for c in MIX for x in run.unloaded[c].latencies]
    measured = [*served.values(), all_served, shed["sheddable"], all_shed]
    for row in measured:
        row.count, row.wall = len(row.latencies), sent_s
    result.rows += measured

    # Every planned critical request counts: one the generator could not send (more than
    # MAX_CONNECTIONS outstanding, all stuck at the server) failed as surely as a 503.
    critical_planned = sum(1 for _, cls in run.plan if cls == "critical")
    critical_ok = sum(1 for o in outcomes if o.cls == "critical" and o.served)
    lags = [o.lag for o in outcomes if o.status != -1]
    top, base_top = p99(all_served.latencies), p99(unloaded_all)
    ratios = result.ratios
    # The plan's own span: shorter than run.seconds when OVERLOAD_MAX_REQUESTS bounded it.
    planned_s = run.plan[-1][0] if run.plan else run.seconds
    ratios[f"{mode}: offered, requests/s"] = len(run.plan) / planned_s
    ratios[f"{mode}: served, requests/s"] = all_served.rate
    ratios[f"{mode}: critical success rate (goal >= 0.999)"] = (
        critical_ok / critical_planned if critical_planned else None
    )
    ratios[f"{mode}: served p99 ms"] = _ms(top)
    ratios[f"{mode}: unloaded p99 ms (the three classes)"] = _ms(base_top)
    ratios[f"{mode}: served p99 / unloaded p99"] = top / base_top if top and base_top else None
    ratios[f"{mode}: time to refuse (503) p50 ms"] = _ms(median(all_shed.latencies))
    ratios[f"{mode}: time to refuse (503) p99 ms"] = _ms(p99(all_shed.latencies))
    ratios[f"{mode}: unloaded time to refuse p50 ms"] = _ms(
        median(run.unloaded["refused"].latencies)
    )
    if run.cpu.server is not None:
        ratios[f"{mode}: server CPU share while sending"] = run.cpu.server / run.cpu.wall
    if run.cpu.server_waited is not None:
        ratios[f"{mode}: server waiting for a CPU, share"] = run.cpu.server_waited / run.cpu.wall
    ratios[f"{mode}: host CPUs busy, share"] = run.cpu.host_busy
    if run.cpu.server is not None and capacity.serve_cpu_ms and capacity.refuse_cpu_ms:
        # What the probes' CPU costs allow with the CPU the server actually got: served S/s
        # and refused (R - S)/s cost S*c_s + (R - S)*c_r <= its CPU seconds per second.
        got_ms = 1000 * run.cpu.server / run.cpu.wall
        offered = len(run.plan) / planned_s
        servable = (got_ms - offered * capacity.refuse_cpu_ms) / (
            capacity.serve_cpu_ms - capacity.refuse_cpu_ms
        )
        ratios[f"{mode}: model, most servable with the CPU it got, requests/s"] = max(
            0.0, min(servable, capacity.serve_rps)
        )
    ratios[f"{mode}: generator CPU share while sending"] = run.cpu.client / run.cpu.wall
    ratios[f"{mode}: generator lag p99 ms"] = _ms(p99(lags))
    limits = [s["limit"] for s in run.samples]
    result.params[mode] = {
        "offered_rps": len(run.plan) / planned_s,
        "planned_seconds": planned_s,
        "target_rps": capacity.serve_rps * run.factor,
        "planned": len(run.plan),
        "planned_by_class": dict(Counter(cls for _, cls in run.plan)),
        "sending_seconds": sent_s,
        "counts": dict(sorted(counts.items())),
        "refusal_reasons": dict(sorted(reasons.items())),
        "critical_planned": critical_planned,
        "critical_served": critical_ok,
        "critical_with_never_issued_token": run.traffic.probe_tokens,
        "refresh_tokens_lost": run.traffic.lost_tokens,
        "no_answer_by_error": dict(run.traffic.failures),
        "connections_opened": run.traffic.http.opened,
        "server_cpu_s": run.cpu.server,
        "server_waited_for_cpu_s": run.cpu.server_waited,
        "client_cpu_s": run.cpu.client,
        "host_cpus_busy_share": run.cpu.host_busy,
        "lag_p50_ms": _ms(median(lags)),
        "lag_p99_ms": _ms(p99(lags)),
        "admission_limit_min_max_last": [min(limits), max(limits), limits[-1]] if limits else None,
        "admission_samples": run.samples,
        "admission_rejected": {
            f"{p} {r}": _metric(
                run.metrics_text, "tenantry_admission_rejected_total", priority=p, reason=r
            )
            for p in MIX
            for r in ("queue-full", "shed", "deadline-exceeded")
        },
        "admission_admitted": {
            p: _metric(run.metrics_text, "tenantry_admission_admitted_total", priority=p)
            for p in MIX
        },
    }
    if critical_planned and critical_ok / critical_planned < 0.999:
        failed = {k: v for k, v in counts.items() if k.startswith("critical")}
        result.notes.append(
            f"ANOMALY ({mode}): critical success {critical_ok}/{critical_planned} "
            f"({critical_ok / critical_planned:.4f}) is under the 0.999 goal: {failed}"
        )
    unanswered = sum(v for k, v in counts.items() if k.endswith(("no answer", "not sent")))
    if unanswered:
        result.notes.append(
            f"ANOMALY ({mode}): {unanswered} requests got no answer within {HTTP_TIMEOUT:g} s "
            f"or were not sent (more than {MAX_CONNECTIONS} outstanding); "
            f"no answer by error: {dict(run.traffic.failures)}"
        )
    if run.cpu.server_waited is not None and run.cpu.server_waited > 0.5 * run.cpu.wall:
        result.notes.append(
            f"ANOMALY ({mode}): the server waited for a CPU "
            f"{run.cpu.server_waited / run.cpu.wall:.0%} of the time (host CPUs "
            f"{run.cpu.host_busy or 0:.0%} busy): other processes held the host; this run "
            "measures the host more than admission control"
        )
    lag99 = p99(lags)
    if lag99 is not None and lag99 > 0.05:
        result.notes.append(
            f"ANOMALY ({mode}): the generator wrote requests up to {lag99 * 1000:.0f} ms late "
            "(p99): it shares the cores with the server, so the load came in bursts"
        )
