"""`peer_ratelimit`: Tenantry's rate-limit decision API against envoyproxy/ratelimit, the
rate-limit service Envoy and most gateways call, side by side (`make bench-peers`).

Both run on loopback against the stack's Redis (envoy with its own key prefix), both decide
one tenant's two policies, as every plan has (a rate of 100,000 requests a second and an
hourly budget, both far above what a run sends, so every decision is a real Redis decision
and every answer says allowed; a refusal would be answered from a local cache), both answer
JSON over HTTP/1.1:
- Tenantry: `POST /v1/decisions` (an operator token), on as many extra ratelimit api
  processes as the host has cores, sharing one port (SO_REUSEPORT), as a Kubernetes
  Service spreads over pods; and the same with the decision fast path off (every request
  through the general pipeline), the "before" of issue 20;
- envoy ratelimit: `POST /json` (its HTTP JSON front end, no authentication), one Go
  process using every core (GOMAXPROCS defaults to the core count).

The same wrk client drives both, closed loop, at 1 and at 32 requests in flight; rounds
alternate between the two systems. Redis's own time per decision comes from INFO
commandstats over each round: EVALSHA (decide.lua, its inner commands included) for
Tenantry, INCRBY and EXPIRE (envoy's fixed window) for envoy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
from redis.asyncio import Redis

from bench.auth import HTTP_TIMEOUT, _new_tenant, bearer
from bench.common import BenchResult, Context, Row, median, ratio
from bench.guardrails import _override_policies, _redis_commandstats
from bench.peers import CpuMeter, WrkRound, go_binary, load_average, need_wrk, peer_process
from bench.peers import wrk_post as wrk
from tenantry_testkit.fixtures import operator_token

ENVOY_MODULE = "github.com/envoyproxy/ratelimit/src/service_cmd"
# The newest on the Go module proxy on 2026-12-08 (the project tags no releases since 1.4).
ENVOY_VERSION = "v1.4.1-0.20260122083618-3fb702589d36"
ENVOY_PORT, ENVOY_GRPC_PORT, ENVOY_DEBUG_PORT = 8290, 8291, 8292
TENANTRY_PORT = 8295  # the extra ratelimit api processes, all on this one port
FULL_PIPELINE_PORT = 8297  # the same with the decision fast path off: the "before"
RATE = 100_000  # per second, both systems
IN_FLIGHT = (1, 32)
ROUNDS = 3
SECONDS = 8.0
WARMUP_SECONDS = 2.0
TENANTRY_REDIS = ("evalsha", "eval", "evalsha_ro")
ENVOY_REDIS = ("incrby", "incr", "expire", "pexpire", "multi", "exec")

HOURLY = 1_000_000_000  # per hour: every plan has an hourly budget beside its rate
POLICIES = {
    "policies": [
        {"name": "requests", "limit": RATE, "period_seconds": 1, "burst": RATE},
        {"name": "hourly", "limit": HOURLY, "period_seconds": 3600, "burst": HOURLY // 10},
    ]
}
ENVOY_CONFIG = """\
domain: tenantry-bench
descriptors:
  - key: tenant
    rate_limit:
      unit: second
      requests_per_unit: {rate}
  - key: tenant_hourly
    rate_limit:
      unit: hour
      requests_per_unit: {hourly}
"""


async def run(ctx: Context) -> BenchResult:
    need_wrk()
    stack = ctx.stack
    cores = os.cpu_count() or 1
    binary = await asyncio.to_thread(go_binary, ENVOY_MODULE, ENVOY_VERSION, "envoy-ratelimit")
    result = BenchResult(
        "peer_ratelimit",
        "rate-limit decisions over HTTP: Tenantry POST /v1/decisions vs envoyproxy/ratelimit",
        "decisions",
        params={
            "envoy_ratelimit": f"{ENVOY_MODULE}@{ENVOY_VERSION}",
            "tenantry_api_processes": cores,
            "host_cores": cores,
            "policies": f"one tenant's two, as every plan has: {RATE} requests/s and {HOURLY} an "
            "hour (GCRA in Tenantry, fixed windows in envoy: two descriptors a request)",
            "client": "wrk, 1 thread, closed loop, keep-alive",
            "rounds": ROUNDS,
            "seconds_per_round": SECONDS,
            "order": "alternating systems, each round after a warm-up of its own",
            "p50_p99": "the median over rounds of each round's p50 and p99 (wrk's histogram)",
        },
    )
    operator = await operator_token(stack)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as setup:
        tenant_id = await _new_tenant(setup, stack.service_url("tenancy"), operator, "peer-rl")
        await _override_policies(setup, stack, operator, tenant_id, POLICIES)
    redis = Redis.from_url(stack.redis_url)
    targets = {
        "Tenantry": (
            f"http://127.0.0.1:{TENANTRY_PORT}/v1/decisions",
            json.dumps({"tenant_id": str(tenant_id), "route_class": "*"}),
            {"Content-Type": "application/json", **bearer(operator)},
            TENANTRY_REDIS,
        ),
        "Tenantry, fast path off": (
            f"http://127.0.0.1:{FULL_PIPELINE_PORT}/v1/decisions",
            json.dumps({"tenant_id": str(tenant_id), "route_class": "*"}),
            {"Content-Type": "application/json", **bearer(operator)},
            TENANTRY_REDIS,
        ),
        "envoy ratelimit": (
            f"http://127.0.0.1:{ENVOY_PORT}/json",
            json.dumps(
                {
                    "domain": "tenantry-bench",
                    "descriptors": [
                        {"entries": [{"key": "tenant", "value": str(tenant_id)}]},
                        {"entries": [{"key": "tenant_hourly", "value": str(tenant_id)}]},
                    ],
                }
            ),
            {"Content-Type": "application/json"},
            ENVOY_REDIS,
        ),
    }
    rows = {
        (system, c): Row(
            f"{system}, {c} in flight", "request -> answer", baseline=system != "Tenantry"
        )
        for c in IN_FLIGHT
        for system in targets
    }
    redis_us: dict[tuple[str, int], list[float]] = {key: [] for key in rows}
    try:
        with contextlib.ExitStack() as running:
            running.enter_context(_envoy(binary, stack.redis_url, ctx.run_id))
            for port, fast in ((TENANTRY_PORT, "true"), (FULL_PIPELINE_PORT, "false")):
                for _ in range(cores):
                    running.enter_context(
                        stack.extra_api(
                            "ratelimit",
                            port,
                            {
                                "TENANTRY_HTTP_REUSE_PORT": "true",
                                "TENANTRY_RATELIMIT_DECISIONS_FAST_PATH": fast,
                            },
                        )
                    )
            for system in ("Tenantry", "Tenantry, fast path off"):
                await _until_allowed(targets[system][0], targets[system][1], operator)
            cpu = CpuMeter()
            for round_no in range(ROUNDS):
                order = list(targets)[round_no % 3 :] + list(targets)[: round_no % 3]
                for c in IN_FLIGHT:
                    for system in order:
                        url, body, headers, commands = targets[system]
                        await asyncio.to_thread(
                            wrk, url, body, headers=headers, connections=c, seconds=WARMUP_SECONDS
                        )
                        before = await _redis_commandstats(redis)
                        load = load_average()
                        cpu.busy_cores()
                        measured = await asyncio.to_thread(
                            wrk, url, body, headers=headers, connections=c, seconds=SECONDS
                        )
                        busy = cpu.busy_cores()
                        after = await _redis_commandstats(redis)
                        row = rows[(system, c)]
                        _fold(row, measured, load, busy)
                        used = sum(
                            after.get(k, (0, 0))[1] - before.get(k, (0, 0))[1] for k in commands
                        )
                        redis_us[(system, c)].append(used / max(1, measured.requests))
                        calls = sum(
                            after.get(k, (0, 0))[0] - before.get(k, (0, 0))[0] for k in commands
                        )
                        row.extra.setdefault("round_redis_calls_per_decision", []).append(
                            round(calls / max(1, measured.requests), 3)
                        )
                        gets = after.get("get", (0, 0))[0] - before.get("get", (0, 0))[0]
                        row.extra.setdefault("round_policy_reads_per_decision", []).append(
                            round(gets / max(1, measured.requests), 3)
                        )
                        row.extra.setdefault("redis_commands", _top(before, after))
    finally:
        await redis.aclose()

    result.rows += list(rows.values())
    for (system, c), row in rows.items():
        row.extra["redis_us_per_decision"] = median(redis_us[(system, c)])
        row.quantiles = _quantiles(row)
    for c in IN_FLIGHT:
        ours, theirs = rows[("Tenantry", c)], rows[("envoy ratelimit", c)]
        pipeline = rows[("Tenantry, fast path off", c)]
        result.ratios[f"decisions/s at {c} in flight, fast path on / off"] = ratio(
            ours.rate, pipeline.rate
        )
        result.ratios[f"decisions/s at {c} in flight, Tenantry / envoy"] = ratio(
            ours.rate, theirs.rate
        )
        result.ratios[f"p99 at {c} in flight, Tenantry / envoy"] = ratio(
            ours.quantiles[1] if ours.quantiles else None,
            theirs.quantiles[1] if theirs.quantiles else None,
        )
        result.ratios[f"Redis us per decision at {c} in flight, Tenantry / envoy"] = ratio(
            ours.extra["redis_us_per_decision"], theirs.extra["redis_us_per_decision"]
        )
    for row in result.rows:
        # Every Tenantry decision must reach Redis and read both policies' TATs there (a
        # refusal would not: the check that the run measured decisions, not a local cache
        # of refusals; batches make fewer script calls than decisions).
        if (
            row.label.startswith("Tenantry")
            and min(row.extra["round_policy_reads_per_decision"]) < 1.98
        ):
            result.notes.append(f"ANOMALY: {row.label}: decisions answered without Redis")
        if row.extra.get("errors") or row.extra.get("non_2xx"):
            result.notes.append(
                f"ANOMALY: {row.label}: {row.extra.get('errors')} socket errors, "
                f"{row.extra.get('non_2xx')} non-2xx answers"
            )
    result.notes.append(
        "Redis us per decision: the server's own time (INFO commandstats usec) over a round, "
        "divided by the decisions wrk counted; the stack's other Redis traffic is included"
    )
    result.notes.append(
        f"creates one tenant (slug bench-peer-rl-*); envoy's keys carry the prefix "
        f"envoyrl-{ctx.run_id}: and expire within a second"
    )
    return result


def _fold(row: Row, measured: WrkRound, load: float, busy: float) -> None:
    row.add([], measured.requests, measured.seconds)
    row.extra.setdefault("round_p50_ms", []).append(measured.p50 * 1000)
    row.extra.setdefault("round_p99_ms", []).append(measured.p99 * 1000)
    row.extra.setdefault("round_max_ms", []).append(measured.max * 1000)
    row.extra.setdefault("round_load_average", []).append(round(load, 2))
    row.extra.setdefault("round_busy_cores", []).append(round(busy, 2))
    row.extra["errors"] = row.extra.get("errors", 0) + measured.errors
    row.extra["non_2xx"] = row.extra.get("non_2xx", 0) + measured.non_2xx


def _quantiles(row: Row) -> tuple[float, float] | None:
    p50s, p99s = row.extra.get("round_p50_ms", []), row.extra.get("round_p99_ms", [])
    mid50, mid99 = median(p50s), median(p99s)
    if mid50 is None or mid99 is None:
        return None
    return mid50 / 1000, mid99 / 1000


def _top(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, int]:
    """The five commands Redis spent most time on over a round (microseconds)."""
    spent = {k: v[1] - before.get(k, (0, 0))[1] for k, v in after.items()}
    return dict(sorted(spent.items(), key=lambda kv: -kv[1])[:5])


@contextlib.contextmanager
def _envoy(binary: Path, redis_url: str, run_id: str) -> Iterator[None]:
    """envoy ratelimit on loopback with the one-descriptor config, statsd off."""
    with tempfile.TemporaryDirectory(prefix="envoy-ratelimit-") as root:
        config = Path(root) / "ratelimit" / "config"
        config.mkdir(parents=True)
        (config / "bench.yaml").write_text(ENVOY_CONFIG.format(rate=RATE, hourly=HOURLY))
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "GRPC_HOST": "127.0.0.1",
            "DEBUG_HOST": "127.0.0.1",
            "PORT": str(ENVOY_PORT),
            "GRPC_PORT": str(ENVOY_GRPC_PORT),
            "DEBUG_PORT": str(ENVOY_DEBUG_PORT),
            "USE_STATSD": "false",
            "BACKEND_TYPE": "redis",
            "REDIS_SOCKET_TYPE": "tcp",
            "REDIS_URL": redis_url.removeprefix("redis://").split("/")[0],
            "CACHE_KEY_PREFIX": f"envoyrl-{run_id}:",
            "RUNTIME_ROOT": root,
            "RUNTIME_SUBDIRECTORY": "ratelimit",
            "RUNTIME_WATCH_ROOT": "false",
            "LOG_LEVEL": "warn",
        }
        with peer_process(
            "envoy-ratelimit",
            [str(binary)],
            env,
            f"http://127.0.0.1:{ENVOY_PORT}/healthcheck",
        ):
            yield


async def _until_allowed(url: str, body: str, operator: str) -> None:
    """Every api process has the override in force: 20 answers in a row say allowed with
    the override's burst (a process still on the default policy would show q=20)."""
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        deadline = asyncio.get_running_loop().time() + 60
        good = 0
        while good < 20:
            response = await client.post(
                url,
                content=body,
                # A new connection each time: the kernel picks a process per connection.
                headers={
                    "Content-Type": "application/json",
                    "Connection": "close",
                    **bearer(operator),
                },
            )
            ok = response.status_code == 200 and f"q={RATE};" in response.headers.get(
                "RateLimit-Policy", ""
            )
            good = good + 1 if ok else 0
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{url}: the override never came into force: {response.text}")
            if not ok:
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a process still starting up binds the port last
