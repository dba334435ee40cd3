"""GCRA in Redis (lua/decide.lua) and in process (LocalLimiter) against the reference
semantics, on the real Redis of the local stack.

The reference is the *continuous-state leaky bucket* of ITU-T I.371, the other of the
two equivalent definitions of GCRA (the implementations use the virtual-scheduling form):
a bucket of level X drains one unit per time unit; a request of cost c conforms when the
drained level X' = max(0, X - (t - LCT)) satisfies X' + c*T - T <= tau... written here
with the burst convention of this code base: at most `burst` requests at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from uuid import UUID, uuid4

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from tenantry_events.payloads.ratelimit import RatePolicy
from tenantry_guardrails.rate_limits import (
    US,
    AppliedPolicy,
    Decision,
    LocalLimiter,
    RateLimiter,
    RedisDecider,
    TenantRatePolicies,
    applicable,
    requests_policy,
    throttle_key,
)
from tenantry_testkit.stack import Stack


class LeakyBucket:
    """Continuous-state leaky bucket: level X in microseconds of "work", drained in real
    time; capacity tau; each request adds c*T. Conforming iff X' + c*T <= tau."""

    def __init__(self, interval_us: int, burst: int) -> None:
        self.interval = interval_us
        self.capacity = interval_us * burst
        self.level = 0
        self.last = 0

    def offer(self, now: int, cost: int) -> bool:
        drained = max(0, self.level - (now - self.last))
        if drained + cost * self.interval > self.capacity:
            return False  # nonconforming: the state does not change
        self.level = drained + cost * self.interval
        self.last = now
        return True


class StepClock:
    """Time in whole microseconds, so long runs do not drift by float rounding."""

    def __init__(self, start_us: int = 1_800_000_000 * US) -> None:
        self.now_us = start_us

    def advance(self, seconds: float) -> None:
        self.now_us += round(seconds * US)

    def __call__(self) -> float:
        return self.now_us / US


@pytest_asyncio.fixture
async def redis(stack: Stack) -> AsyncIterator[Redis]:
    client = Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()


def policy(limit: int, period: float, burst: int, name: str = "p") -> RatePolicy:
    return RatePolicy(name=name, limit=limit, period_seconds=period, burst=burst)


def applied(p: RatePolicy, tenant: UUID | None = None) -> list[AppliedPolicy]:
    book = TenantRatePolicies(policies=(p,))
    return applicable(book, tenant or uuid4(), "read", None)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    limit=st.integers(1, 50),
    period=st.sampled_from([0.5, 1.0, 2.0, 60.0]),
    burst=st.integers(1, 20),
    steps=st.lists(st.tuples(st.integers(0, 300_000), st.integers(1, 3)), max_size=60),
)
async def test_redis_and_local_gcra_agree_with_the_leaky_bucket(
    redis: Redis,
    limit: int,
    period: float,
    burst: int,
    steps: list[tuple[int, int]],
) -> None:
    clock = StepClock()
    chosen = applied(policy(limit, period, burst))
    reference = LeakyBucket(chosen[0].interval_us, burst)
    remote = RedisDecider(redis, clock=clock)
    local = LocalLimiter(clock=clock)
    for delay_us, cost in steps:
        clock.now_us += delay_us
        expected = reference.offer(clock.now_us, cost)
        from_redis = await remote.decide(chosen, cost=cost)
        from_local = local.decide(chosen, cost=cost)
        assert from_redis.allowed == expected
        assert from_local.allowed == expected
        assert from_redis.outcomes[0].remaining == from_local.outcomes[0].remaining
        assert from_redis.retry_after_seconds == pytest.approx(from_local.retry_after_seconds)


async def test_a_fresh_key_allows_exactly_the_burst_then_tells_when_to_retry(
    redis: Redis,
) -> None:
    clock = StepClock()
    decider = RedisDecider(redis, clock=clock)
    chosen = applied(policy(10, 1.0, 5))  # 10/s, 5 at once
    results = [await decider.decide(chosen) for _ in range(6)]
    assert [r.allowed for r in results] == [True] * 5 + [False]
    assert [r.outcomes[0].remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    refused = results[5]
    assert refused.retry_after_seconds == pytest.approx(0.1)  # one emission interval
    headers = refused.headers()
    assert headers["Retry-After"] == "1"
    assert headers["RateLimit-Policy"] == '"p";q=5;w=1'
    assert headers["RateLimit"] == '"p";r=0;t=1'
    clock.advance(0.1)
    assert (await decider.decide(chosen)).allowed


async def test_a_steady_rate_at_the_limit_is_never_refused(redis: Redis) -> None:
    clock = StepClock()
    decider = RedisDecider(redis, clock=clock)
    chosen = applied(policy(20, 1.0, 1))  # no burst at all: one every 50 ms
    for _ in range(100):
        assert (await decider.decide(chosen)).allowed
        clock.advance(0.05)
    assert (await decider.decide(chosen)).allowed  # the next one is exactly due
    assert not (await decider.decide(chosen)).allowed  # but two at once are too many


async def test_one_refusing_policy_consumes_nothing_from_the_others(redis: Redis) -> None:
    clock = StepClock()
    decider = RedisDecider(redis, clock=clock)
    tenant = uuid4()
    book = TenantRatePolicies(
        policies=(policy(100, 1.0, 100, "wide"), policy(1, 60.0, 2, "narrow"))
    )
    chosen = applicable(book, tenant, "read", None)
    allowed = [(await decider.decide(chosen)).allowed for _ in range(5)]
    assert allowed == [True, True, False, False, False]
    wide_only = [p for p in chosen if p.policy.name == "wide"]
    first = await decider.decide(wide_only)
    assert first.outcomes[0].remaining == 100 - 3, "only the two allowed requests counted"


async def test_route_class_and_key_policies_select_what_applies() -> None:
    tenant = uuid4()
    book = TenantRatePolicies(
        policies=(
            policy(10, 1, 10, "all"),
            RatePolicy(name="writes", limit=1, period_seconds=1, burst=1, route_class="write"),
        ),
        key_policies={"k1": (policy(5, 1, 5, "key"),)},
    )
    read = {p.policy.name for p in applicable(book, tenant, "read", None)}
    write_by_key = {p.key for p in applicable(book, tenant, "write", "k1")}
    assert read == {"all"}
    assert write_by_key == {
        f"rl:{{{tenant}}}:t:all",
        f"rl:{{{tenant}}}:t:writes",
        f"rl:{{{tenant}}}:k:k1:key",
    }


async def test_two_instances_sharing_redis_share_one_limit(stack: Stack) -> None:
    """Two limiters with their own connections and no clock of their own: the script
    reads the Redis server's clock, so they agree on time and on the count."""
    first, second = Redis.from_url(stack.redis_url), Redis.from_url(stack.redis_url)
    try:
        chosen = applied(policy(1, 60.0, 10))
        a, b = RedisDecider(first), RedisDecider(second)
        results = await asyncio.gather(*(d.decide(chosen) for _ in range(10) for d in (a, b)))
        assert sum(r.allowed for r in results) == 10
    finally:
        await first.aclose()
        await second.aclose()


async def test_in_flight_cap_holds_releases_and_expires_dead_slots(redis: Redis) -> None:
    clock = StepClock()
    decider = RedisDecider(redis, clock=clock)
    tenant = uuid4()
    chosen = applicable(TenantRatePolicies(policies=(policy(1000, 1, 1000),)), tenant, "r", None)

    async def take() -> Decision:
        return await decider.decide(chosen, tenant_id=tenant, max_in_flight=2, slot_ttl_seconds=30)

    first, second, third = await take(), await take(), await take()
    assert (first.allowed, second.allowed, third.allowed) == (True, True, False)
    assert third.in_flight_refused
    assert third.headers()["Retry-After"] == "1"
    assert first.slot is not None
    await decider.release(first.slot)
    assert (await take()).allowed
    clock.advance(31)  # the holders died without releasing: their slots expire
    assert (await take()).allowed


async def test_requests_policy_turns_a_fractional_rate_into_whole_requests() -> None:
    half = requests_policy(0.5, 3)
    assert (half.limit, half.period_seconds, half.burst) == (1, 2.0, 3)
    plain = requests_policy(20, 40)
    assert (plain.limit, plain.period_seconds, plain.burst) == (20, 1.0, 40)


class CountingDecider(RedisDecider):
    calls = 0

    async def decide(
        self,
        policies: Sequence[AppliedPolicy],
        *,
        cost: int = 1,
        tenant_id: UUID | None = None,
        max_in_flight: int | None = None,
        slot_ttl_seconds: float = 60.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> Decision:
        CountingDecider.calls += 1
        return await super().decide(
            policies,
            cost=cost,
            tenant_id=tenant_id,
            max_in_flight=max_in_flight,
            slot_ttl_seconds=slot_ttl_seconds,
            timer=timer,
        )


async def test_a_key_known_to_be_over_its_limit_is_refused_without_asking_redis(
    redis: Redis,
) -> None:
    clock = StepClock()
    decider = CountingDecider(redis)
    limiter = RateLimiter(decider, LocalLimiter(), clock=clock)
    chosen = applied(policy(1, 60.0, 1))
    assert (await limiter.decide(chosen)).allowed
    refused = await limiter.decide(chosen)
    assert (refused.allowed, refused.path) == (False, "redis")
    calls = CountingDecider.calls
    cached = await limiter.decide(chosen)
    assert (cached.allowed, cached.path, CountingDecider.calls) == (False, "cached", calls)
    assert 58 < cached.retry_after_seconds <= 60
    clock.advance(61)
    assert (await limiter.decide(chosen)).path == "redis"


async def test_an_unreachable_redis_falls_back_to_local_limits() -> None:
    dead = Redis.from_url("redis://127.0.0.1:9/0", socket_connect_timeout=0.2)
    try:
        limiter = RateLimiter(RedisDecider(dead), LocalLimiter(divisor=2))
        chosen = applied(policy(1, 60.0, 4))
        results = [await limiter.decide(chosen) for _ in range(3)]
        assert [r.path for r in results] == ["local"] * 3
        # divisor 2: this instance takes half the fleet's share, 2 of the burst of 4
        assert [r.allowed for r in results] == [True, True, False]
    finally:
        await dead.aclose()


async def test_refusals_are_counted_per_tenant_and_policy_inside_the_decision(
    redis: Redis,
) -> None:
    """What ratelimit.throttled is made of: each refusal adds one to the refusing policy's
    field (or "in-flight") of the tenant's counters; allowed requests add nothing."""
    clock = StepClock()
    tenant = uuid4()
    decider = RedisDecider(redis, clock=clock, throttle_ttl_seconds=60)
    burst, hourly = policy(10, 1.0, 2, "burst"), policy(100, 3600.0, 50, "hourly")
    book = TenantRatePolicies(policies=(burst, hourly))
    chosen = applicable(book, tenant, "read", None)
    results = [await decider.decide(chosen, tenant_id=tenant) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, False, False, False]
    counts = await redis.hgetall(throttle_key(tenant))
    assert counts == {b"burst": b"3"}
    assert 0 < await redis.pttl(throttle_key(tenant)) <= 60_000

    clock.advance(10)
    slotted = await decider.decide(chosen, tenant_id=tenant, max_in_flight=1)
    assert slotted.allowed
    over = await decider.decide(chosen, tenant_id=tenant, max_in_flight=1)
    assert over.in_flight_refused
    assert (await redis.hgetall(throttle_key(tenant)))[b"in-flight"] == b"1"

    quiet = RedisDecider(redis, clock=clock, throttle_ttl_seconds=0)
    other = uuid4()
    for _ in range(4):
        await quiet.decide(applicable(book, other, "read", None), tenant_id=other)
    assert await redis.exists(throttle_key(other)) == 0


async def test_concurrent_decisions_batch_and_decide_as_one_at_a_time_would(redis: Redis) -> None:
    """40 decisions of one tenant at once, burst 25, the clock frozen: exactly the first 25
    by arrival are allowed, as sequential calls would allow them, in far fewer script
    calls than decisions; another tenant's decisions never join the batch."""
    clock = StepClock()
    decider = RedisDecider(redis, clock=clock)
    tenant, other = uuid4(), uuid4()
    chosen = applied(policy(10, 1.0, 25), tenant)
    elsewhere = applied(policy(10, 1.0, 25), other)
    results = await asyncio.gather(
        *(decider.decide(chosen if n % 4 else elsewhere) for n in range(40))
    )
    mine = [r for n, r in enumerate(results) if n % 4]
    theirs = [r for n, r in enumerate(results) if not n % 4]
    assert [r.allowed for r in mine] == [True] * 25 + [False] * 5
    assert [r.outcomes[0].remaining for r in mine[:25]] == list(range(24, -1, -1))
    assert all(r.allowed for r in theirs)
    assert decider.batches.batches <= 6, "two tenants: a lone first call and a batch each"
    assert decider.batches.items == 40
