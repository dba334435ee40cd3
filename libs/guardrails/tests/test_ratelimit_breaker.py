"""The rate limiter's Redis breaker judges Redis, not this process's event loop (issue 20),
on the real Redis of the local stack: a saturated loop leaves it closed, a slow Redis
(behind a delaying proxy on loopback) still opens it, and the fallback gauge tells."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import pytest_asyncio
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from redis.asyncio import Redis

from tenantry_events.payloads.ratelimit import RatePolicy
from tenantry_guardrails.rate_limits import (
    REDIS_BREAKER,
    AppliedPolicy,
    Decision,
    LocalLimiter,
    RateLimiter,
    RedisDecider,
    TenantRatePolicies,
    applicable,
)
from tenantry_resilience import BreakerState, CircuitBreaker
from tenantry_resilience.testing import ManualClock
from tenantry_testkit.stack import Stack

GENEROUS = RatePolicy(name="requests", limit=10_000, period_seconds=1.0, burst=10_000)


@pytest_asyncio.fixture
async def redis(stack: Stack) -> AsyncIterator[Redis]:
    client = Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()


class Metrics:
    """A meter of its own, read in memory."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meter: Meter = MeterProvider(metric_readers=[self.reader]).get_meter("test")

    def points(self, name: str) -> Iterator[tuple[dict[str, Any], float]]:
        data = self.reader.get_metrics_data()
        if data is None:
            return
        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            assert isinstance(point, NumberDataPoint)
                            yield dict(point.attributes or {}), point.value

    def fallback(self) -> dict[str, float]:
        return {
            str(attrs["breaker"]): value
            for attrs, value in self.points("tenantry.ratelimit.fallback_active")
        }

    def decisions(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for attrs, value in self.points("tenantry.ratelimit.decisions"):
            totals[str(attrs["path"])] = totals.get(str(attrs["path"]), 0) + value
        return totals


def generous() -> list[AppliedPolicy]:
    """A fresh tenant's policy that never refuses: every decision goes to Redis."""
    return applicable(TenantRatePolicies(policies=(GENEROUS,)), uuid4(), "read", None)


@contextlib.asynccontextmanager
async def saturated_loop(hogs: int, slice_seconds: float) -> AsyncIterator[None]:
    """Keep this event loop busy: `hogs` callbacks that each block it for `slice_seconds`
    (as CPU-bound request handling does) and queue themselves again, so every loop
    iteration takes about hogs * slice_seconds."""
    loop = asyncio.get_running_loop()
    running = True

    def hog() -> None:
        time.sleep(slice_seconds)
        if running:
            loop.call_soon(hog)

    for _ in range(hogs):
        loop.call_soon(hog)
    await asyncio.sleep(0.2)  # saturated before the first decision
    try:
        yield
    finally:
        running = False
        await asyncio.sleep(2 * hogs * slice_seconds)  # let the last slices drain


async def timed_decision(
    limiter: RateLimiter, chosen: list[AppliedPolicy], walls: list[float]
) -> Decision:
    """A decision, its wall time appended to `walls`."""
    started = time.monotonic()
    decision = await limiter.decide(chosen)
    walls.append(time.monotonic() - started)
    return decision


class DelayingProxy:
    """A TCP proxy on loopback in front of Redis that holds every reply for `delay`
    seconds: a slow Redis, without slowing the shared one down for anybody else."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.upstream = (host, port)
        self.delay = delay
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._connections: list[asyncio.Task[Any]] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        # The pumps see their sockets close and end: wait, so nothing outlives the test.
        await asyncio.wait_for(asyncio.gather(*self._connections, return_exceptions=True), 5)
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.append(task)
        self._writers.append(client_w)
        redis_r, redis_w = await asyncio.open_connection(*self.upstream)
        self._writers.append(redis_w)
        await asyncio.gather(
            self._pump(client_r, redis_w, delayed=False),
            self._pump(redis_r, client_w, delayed=True),
            return_exceptions=True,
        )

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, delayed: bool
    ) -> None:
        try:
            while data := await source.read(65536):
                if delayed and self.delay:
                    await asyncio.sleep(self.delay)  # the loop idles: Redis is the slow one
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()


async def test_a_saturated_event_loop_does_not_open_the_redis_breaker(redis: Redis) -> None:
    """Issue 20: decisions queued behind a busy loop for 100+ ms are not slow Redis calls.
    Fed wall time (the old code), the breaker opens after ten of them and decisions fall
    back to local limits."""
    observed = Metrics()
    breaker = CircuitBreaker("redis-ratelimit", REDIS_BREAKER, meter=observed.meter)
    limiter = RateLimiter(
        RedisDecider(redis), LocalLimiter(), breaker=breaker, meter=observed.meter
    )
    chosen = generous()
    assert (await limiter.decide(chosen)).path == "redis"  # connection and script warm

    walls: list[float] = []
    decisions: list[Decision] = []

    async def timed() -> Decision:
        return await timed_decision(limiter, chosen, walls)

    async with saturated_loop(hogs=3, slice_seconds=0.02):
        for _ in range(15):
            decisions.append(await timed())
        for _ in range(2):  # concurrent ones too, on connections opened under load
            decisions += await asyncio.gather(*(timed() for _ in range(5)))

    assert [d.path for d in decisions] == ["redis"] * 25
    # The scenario is the issue's: by wall time, nearly every call was "slow".
    assert statistics.median(walls) > 2 * REDIS_BREAKER.slow_call_duration_threshold
    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.slow_calls == 0
    assert observed.fallback() == {"redis-ratelimit": 0}
    assert observed.decisions() == {"redis": 26}


async def test_a_slow_redis_still_opens_the_breaker_and_the_fallback_gauge_says_so(
    stack: Stack,
) -> None:
    target = urlsplit(stack.redis_url)
    assert target.hostname is not None
    assert target.port is not None
    proxy = DelayingProxy(target.hostname, target.port, delay=0.15)
    await proxy.start()
    client = Redis(host="127.0.0.1", port=proxy.port)
    observed = Metrics()
    clock = ManualClock()  # the breaker's open wait, without waiting
    breaker = CircuitBreaker("redis-ratelimit", REDIS_BREAKER, clock=clock, meter=observed.meter)
    limiter = RateLimiter(
        RedisDecider(client), LocalLimiter(), breaker=breaker, meter=observed.meter
    )
    chosen = generous()
    try:
        assert observed.fallback() == {"redis-ratelimit": 0}
        slow = [await limiter.decide(chosen) for _ in range(REDIS_BREAKER.minimum_number_of_calls)]
        assert [d.path for d in slow] == ["redis"] * len(slow)
        assert breaker.snapshot().state is BreakerState.OPEN  # 10 of 10 calls slower than 50 ms
        assert (await limiter.decide(chosen)).path == "local"
        assert observed.fallback() == {"redis-ratelimit": 1}

        proxy.delay = 0.0  # Redis recovers
        clock.advance(REDIS_BREAKER.wait_duration_in_open_state)
        trials = [
            await limiter.decide(chosen)
            for _ in range(REDIS_BREAKER.permitted_calls_in_half_open_state)
        ]
        assert [d.path for d in trials] == ["redis"] * len(trials)
        assert breaker.snapshot().state is BreakerState.CLOSED
        assert observed.fallback() == {"redis-ratelimit": 0}
        assert (await limiter.decide(chosen)).path == "redis"
    finally:
        await client.aclose()
        await proxy.close()


async def test_the_fallback_gauge_reads_one_in_every_state_that_diverts_decisions() -> None:
    observed = Metrics()
    clock = ManualClock()
    breaker = CircuitBreaker("redis-ratelimit", REDIS_BREAKER, clock=clock, meter=observed.meter)
    unguarded = Redis.from_url("redis://127.0.0.1:9/0")  # never called
    RateLimiter(RedisDecider(unguarded), LocalLimiter(), breaker=breaker, meter=observed.meter)
    seen = {}
    for state in BreakerState:
        breaker.transition_to(state)
        seen[state] = observed.fallback()["redis-ratelimit"]
    assert seen == {
        BreakerState.CLOSED: 0,
        BreakerState.OPEN: 1,
        BreakerState.HALF_OPEN: 1,
        BreakerState.DISABLED: 0,  # everything goes to Redis, unjudged
        BreakerState.FORCED_OPEN: 1,
    }
    await unguarded.aclose()


async def test_waiting_behind_the_batch_before_is_not_a_slow_redis_call(stack: Stack) -> None:
    """A tenant's concurrent decisions ride in batches (coalescing.py): the first goes
    alone, the rest wait for it and go together. Redis answers each batch in 30 ms (under
    the 50 ms threshold), so every follower waits about 60 ms: by wall time they would all
    be slow calls and open the breaker; timed from when their own batch left, none is."""
    target = urlsplit(stack.redis_url)
    assert target.hostname is not None
    assert target.port is not None
    proxy = DelayingProxy(target.hostname, target.port, delay=0.03)
    await proxy.start()
    client = Redis(host="127.0.0.1", port=proxy.port)
    breaker = CircuitBreaker("redis-ratelimit", REDIS_BREAKER)
    decider = RedisDecider(client)
    limiter = RateLimiter(decider, LocalLimiter(), breaker=breaker)
    chosen = generous()
    walls: list[float] = []

    async def timed() -> Decision:
        return await timed_decision(limiter, chosen, walls)

    try:
        await limiter.decide(chosen)  # the connection and the script, warm
        for _ in range(2):
            decisions = await asyncio.gather(*(timed() for _ in range(30)))
            assert [d.path for d in decisions] == ["redis"] * 30
        assert decider.batches.batches <= 1 + 2 * 2, "a lone first call and one batch, twice"
        assert statistics.median(walls) > REDIS_BREAKER.slow_call_duration_threshold
        snapshot = breaker.snapshot()
        assert snapshot.state is BreakerState.CLOSED
        assert snapshot.slow_calls == 0
    finally:
        await client.aclose()
        await proxy.close()
