"""Per-tenant and per-key rate limits and the per-tenant in-flight cap, decided in Redis.

One decision is one round trip: a Lua script (lua/decide.lua) checks every GCRA policy
that applies to the request and takes an in-flight slot, atomically. Keys carry the
tenant's hash tag, so they are valid on Redis Cluster, and the script reads the Redis
server's clock, so every instance of every service agrees on time.

Two things keep Redis off the path when it can be:
- a local cache of keys already over their limit: a refused request leaves its policy's
  TAT unchanged, so the key stays refused until exactly `retry_after`, and requests until
  then are refused here without asking Redis;
- a circuit breaker: when Redis fails or is slow, decisions fall back to a per-instance
  limiter with the same policies (divided by `local_divisor`, the number of instances
  expected to share the fleet's limit), and the metrics say so: the
  `tenantry.ratelimit.decisions` counter (path="local") and the
  `tenantry.ratelimit.fallback_active` gauge (1 while the breaker is not closed). Failing
  open is deliberate: an unreachable Redis must not take the product down (Stripe's
  limiters do the same).

The breaker judges Redis on Redis's time, not the event loop's: a decision's duration is
handed to it net of the time its reply waited for a busy loop (`LoopLagProbe`), so a
saturated process does not mistake its own queueing for a slow Redis and silently turn
fleet-wide limits into per-instance ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec
from litestar import Request
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from redis.asyncio import Redis
from redis.exceptions import RedisError
from uuid_utils.compat import uuid7

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.ratelimit import RatePoliciesChanged, RatePolicy
from tenantry_events.payloads.tenancy import Limits
from tenantry_events.pg import Database
from tenantry_guardrails.coalescing import Coalescer
from tenantry_http.auth import STATE_KEY, Principal
from tenantry_http.pipeline import add_response_headers, after_response, route_class_of
from tenantry_http.problems import Problem
from tenantry_platform.telemetry import Tally
from tenantry_resilience import BreakerConfig, BreakerState, CircuitBreaker, LoopLagProbe

log = logging.getLogger("tenantry.ratelimit")
_meter = metrics.get_meter("tenantry.ratelimit")
DECIDE_SCRIPT = resources.files("tenantry_guardrails").joinpath("lua/decide.lua").read_text()
US = 1_000_000
Path = Literal["redis", "cached", "local"]


# ---------------------------------------------------------------- policies and keys


class TenantRatePolicies(msgspec.Struct, frozen=True, kw_only=True):
    """What applies to one tenant's requests. `source` says where it came from: the
    ratelimit service's published set, the plan's rate alone (ratelimit has not spoken
    yet), or the service default (nothing known about the tenant yet)."""

    policies: tuple[RatePolicy, ...]
    key_policies: dict[str, tuple[RatePolicy, ...]] = msgspec.field(default_factory=dict)
    max_in_flight: int | None = None
    source: Literal["ratelimit", "plan", "default"] = "ratelimit"


def requests_policy(per_second: float, burst: int) -> RatePolicy:
    """The "requests" policy: a rate per second (fractions allowed) and a burst."""
    per_second = max(per_second, 0.001)
    whole = max(1, math.ceil(per_second))
    return RatePolicy(
        name="requests", limit=whole, period_seconds=whole / per_second, burst=max(1, burst)
    )


def plan_rate(limits: Limits) -> RatePolicy:
    """The plan's request rate, as tenancy resolves it (tenant.limits_changed)."""
    return requests_policy(limits.requests_per_second, limits.burst)


@dataclass(frozen=True)
class AppliedPolicy:
    """A policy bound to the Redis key that holds its state for one tenant or key."""

    policy: RatePolicy
    key: str

    @property
    def interval_us(self) -> int:
        """T: the time one request "costs" against the rate."""
        return max(1, round(self.policy.period_seconds * US / self.policy.limit))

    @property
    def tolerance_us(self) -> int:
        """tau: how far ahead of now the TAT may run, i.e. `burst` requests at once."""
        return self.interval_us * self.policy.burst

    @property
    def window_seconds(self) -> int:
        """The time an empty bucket takes to refill: the `w` of RateLimit-Policy."""
        return max(1, math.ceil(self.tolerance_us / US))


def tenant_tag(tenant_id: UUID) -> str:
    return f"rl:{{{tenant_id}}}"


THROTTLE_SUFFIX = ":throttled"


def throttle_key(tenant_id: UUID) -> str:
    """The hash of a tenant's refusals by policy since the ratelimit service last drained
    it (same hash tag as the tenant's other keys)."""
    return f"{tenant_tag(tenant_id)}{THROTTLE_SUFFIX}"


def applicable(
    book: TenantRatePolicies,
    tenant_id: UUID,
    route_class: str,
    api_key_id: str | None,
) -> list[AppliedPolicy]:
    tag = tenant_tag(tenant_id)
    chosen = [
        AppliedPolicy(p, f"{tag}:t:{p.name}")
        for p in book.policies
        if p.route_class in ("*", route_class)
    ]
    if api_key_id is not None:
        chosen += [
            AppliedPolicy(p, f"{tag}:k:{api_key_id}:{p.name}")
            for p in book.key_policies.get(api_key_id, ())
            if p.route_class in ("*", route_class)
        ]
    return chosen


# ---------------------------------------------------------------- decisions


@dataclass(frozen=True)
class PolicyOutcome:
    applied: AppliedPolicy
    allowed: bool
    remaining: int
    reset_seconds: float
    retry_after_seconds: float


@dataclass
class Decision:
    allowed: bool
    outcomes: list[PolicyOutcome]
    path: Path
    in_flight_refused: bool = False
    slot: Slot | None = None
    # When the Redis call that made this decision left (by the caller's `timer`): a batch
    # may have waited behind the one before it, which is queueing here, not Redis's time.
    sent_at: float | None = None

    @property
    def retry_after_seconds(self) -> float:
        if self.in_flight_refused:
            return 1.0
        return max((o.retry_after_seconds for o in self.outcomes if not o.allowed), default=0.0)

    def headers(self) -> dict[str, str]:
        """IETF RateLimit-Policy and RateLimit fields (draft-ietf-httpapi-ratelimit-headers
        -10): one list item per policy; Retry-After too when refused."""
        headers: dict[str, str] = {}
        if self.outcomes:
            headers["RateLimit-Policy"] = ", ".join(
                f'"{o.applied.policy.name}";q={o.applied.policy.burst};w={o.applied.window_seconds}'
                for o in self.outcomes
            )
            headers["RateLimit"] = ", ".join(
                f'"{o.applied.policy.name}";r={max(0, o.remaining)};'
                f"t={max(0, math.ceil(o.reset_seconds))}"
                for o in self.outcomes
            )
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_seconds)))
        return headers


@dataclass(frozen=True)
class Slot:
    """A taken in-flight slot; give it back with `RateLimiter.release`."""

    tenant_id: UUID
    slot_id: str
    local: bool


REDIS_BREAKER = BreakerConfig(
    # Decisions are many and small: judge Redis on the last 50, once 10 are in.
    sliding_window_size=50,
    minimum_number_of_calls=10,
    failure_rate_threshold=50.0,
    # A loopback or in-zone Redis answers in well under a millisecond; 50 ms calls mean
    # it (or this process) is in trouble, and local limits are the better answer then.
    slow_call_duration_threshold=0.05,
    slow_call_rate_threshold=80.0,
    wait_duration_in_open_state=2.0,
    permitted_calls_in_half_open_state=5,
)
"""The breaker in front of Redis for rate-limit decisions (named "redis-ratelimit")."""


class LocalLimiter:
    """The same GCRA and in-flight cap in process memory: the fallback when Redis is
    unreachable, and the reference the Redis path is tested against. Policies are divided
    by `divisor` (instances expected to share the fleet's limit)."""

    def __init__(
        self,
        *,
        divisor: int = 1,
        clock: Callable[[], float] = time.time,
        max_keys: int = 100_000,
    ) -> None:
        self._divisor = max(1, divisor)
        self._clock = clock
        self._tats: dict[str, int] = {}
        self._in_flight: dict[UUID, int] = {}
        self._max_keys = max_keys

    def decide(
        self,
        policies: Sequence[AppliedPolicy],
        *,
        cost: int = 1,
        tenant_id: UUID | None = None,
        max_in_flight: int | None = None,
    ) -> Decision:
        now = round(self._clock() * US)
        if len(self._tats) > self._max_keys:
            self._tats = {k: v for k, v in self._tats.items() if v > now}
        outcomes: list[PolicyOutcome] = []
        updates: dict[str, int] = {}
        for applied in policies:
            interval = applied.interval_us * self._divisor
            tolerance = interval * max(1, applied.policy.burst // self._divisor)
            outcome, new_tat = gcra_step(
                applied, self._tats.get(applied.key, 0), now, interval, tolerance, cost
            )
            outcomes.append(outcome)
            updates[applied.key] = new_tat
        allowed = all(o.allowed for o in outcomes)
        slot: Slot | None = None
        refused_in_flight = False
        if allowed and max_in_flight and tenant_id is not None:
            cap = max(1, max_in_flight // self._divisor)
            if self._in_flight.get(tenant_id, 0) >= cap:
                allowed, refused_in_flight = False, True
            else:
                self._in_flight[tenant_id] = self._in_flight.get(tenant_id, 0) + 1
                slot = Slot(tenant_id, "", local=True)
        if allowed:
            self._tats.update(updates)
        return Decision(allowed, outcomes, "local", refused_in_flight, slot)

    def release(self, tenant_id: UUID) -> None:
        left = self._in_flight.get(tenant_id, 0) - 1
        if left > 0:
            self._in_flight[tenant_id] = left
        else:
            self._in_flight.pop(tenant_id, None)


def gcra_step(
    applied: AppliedPolicy, tat: int, now: int, interval: int, tolerance: int, cost: int
) -> tuple[PolicyOutcome, int]:
    """One policy's GCRA decision (the same arithmetic as lua/decide.lua); returns the
    outcome and the TAT to store if the whole request is allowed."""
    tat = max(tat, now)
    new_tat = tat + interval * cost
    allow_at = new_tat - tolerance
    if now < allow_at:
        return (
            PolicyOutcome(
                applied,
                False,
                max(0, (now + tolerance - tat) // interval),
                (tat - now) / US,
                (allow_at - now) / US,
            ),
            tat,
        )
    return (
        PolicyOutcome(
            applied, True, (now + tolerance - new_tat) // interval, (new_tat - now) / US, 0
        ),
        new_tat,
    )


@dataclass(frozen=True)
class _Call:
    """One decision's keys and arguments in decide.lua's layout."""

    keys: list[str]
    args: list[int | str]
    tenant_id: UUID | None
    slot_id: str
    timer: Callable[[], float]


@dataclass(frozen=True)
class _Answer:
    call: _Call
    reply: list[int]
    sent_at: float


_background: set[asyncio.Task[None]] = set()


class RedisDecider:
    """Runs lua/decide.lua. A tenant's concurrent decisions go together, one script call
    for a batch (`Coalescer`: the first runs at once; those arriving while it is at Redis
    go in the next call), so under load a decision costs a fraction of a round trip and
    of a script invocation. `clock` is for tests that need exact time; by default the
    script reads the Redis server's clock."""

    def __init__(
        self,
        redis: Redis,
        *,
        clock: Callable[[], float] | None = None,
        throttle_ttl_seconds: float = 3600.0,
        max_batch: int = 64,
    ) -> None:
        """`throttle_ttl_seconds` > 0: refusals are counted per tenant and policy in
        `throttle_key(tenant)` (drained by the ratelimit service into ratelimit.throttled;
        the TTL only bounds what nobody drains). 0 counts nothing."""
        self._redis = redis
        self._script = redis.register_script(DECIDE_SCRIPT)
        self._clock = clock
        self._throttle_ttl_ms = int(throttle_ttl_seconds * 1000)
        self.batches: Coalescer[_Call, _Answer] = Coalescer(
            self._run, max_batch=max_batch, abandoned=self._give_back
        )

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
        """`timer` stamps `Decision.sent_at`: when the script call carrying it left."""
        keys = [p.key for p in policies]
        args: list[int | str] = [round(self._clock() * US) if self._clock else 0, len(policies)]
        for p in policies:
            args += [p.interval_us, p.tolerance_us, cost]
        slot_id = ""
        if max_in_flight and tenant_id is not None:
            slot_id = str(uuid7())
            keys.append(f"{tenant_tag(tenant_id)}:inflight")
            args += [max_in_flight, int(slot_ttl_seconds * US), slot_id]
        else:
            args += [0, 0, ""]
        if self._throttle_ttl_ms > 0 and tenant_id is not None:
            keys.append(throttle_key(tenant_id))
            args += [self._throttle_ttl_ms, *(p.policy.name for p in policies)]
        else:
            args += [0]
        # Every key of a decision carries its tenant's hash tag: one batch, one slot.
        group = keys[0].split("}", 1)[0] if keys else ""
        call = _Call(keys, args, tenant_id, slot_id, timer)
        answer = await self.batches.submit(group, call)
        reply = answer.reply
        allowed, in_flight_ok = bool(reply[0]), bool(reply[1])
        outcomes = [
            PolicyOutcome(
                p,
                bool(reply[3 + 4 * i]),
                int(reply[4 + 4 * i]),
                reply[5 + 4 * i] / US,
                reply[6 + 4 * i] / US,
            )
            for i, p in enumerate(policies)
        ]
        slot = Slot(tenant_id, slot_id, local=False) if slot_id and allowed and tenant_id else None
        return Decision(allowed, outcomes, "redis", not in_flight_ok, slot, answer.sent_at)

    async def _run(self, calls: list[_Call]) -> list[_Answer]:
        keys: list[str] = []
        args: list[int | str] = [len(calls)]
        for call in calls:
            keys += call.keys
            args += [len(call.keys), len(call.args), *call.args]
        sent_at = calls[0].timer()
        replies: list[list[int]] = await self._script(keys=keys, args=args)
        return [_Answer(call, reply, sent_at) for call, reply in zip(calls, replies, strict=True)]

    def _give_back(self, answer: _Answer) -> None:
        """A decision whose caller went away while it waited: free the slot it took."""
        call = answer.call
        if call.slot_id and call.tenant_id is not None and answer.reply[0]:
            slot = Slot(call.tenant_id, call.slot_id, local=False)
            task = asyncio.get_running_loop().create_task(self.release(slot))
            _background.add(task)
            task.add_done_callback(_background.discard)

    async def release(self, slot: Slot) -> None:
        await self._redis.zrem(f"{tenant_tag(slot.tenant_id)}:inflight", slot.slot_id)


FALLBACK_STATES = frozenset({BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.FORCED_OPEN})
"""Breaker states in which decisions go (all, or all but the half-open trials) to the
local limiter."""


class _Instruments:
    """The rate limiter's metrics on one meter, shared by every limiter using it (an
    instrument is registered once per name: a second gauge would not be observed)."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter  # keeps the meter alive, so its id stays unique in the cache
        self.decisions = Tally(  # one per request: plain ints, read when metrics are
            meter,
            "tenantry.ratelimit.decisions",
            description="Rate-limit decisions by path (redis, cached, local) and outcome",
        )
        self.breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
        meter.create_observable_gauge(
            "tenantry.ratelimit.fallback_active",
            callbacks=[self._observe_fallback],
            unit="1",
            description="1 while a rate limiter's Redis breaker is not closed and its "
            "decisions fall back to per-instance local limits, else 0",
        )

    def _observe_fallback(self, options: CallbackOptions) -> Iterable[Observation]:
        for breaker in list(self.breakers):
            active = breaker.state in FALLBACK_STATES
            yield Observation(1 if active else 0, {"breaker": breaker.name})


_instruments_by_meter: dict[int, _Instruments] = {}


def _instruments_for(meter: Meter | None) -> _Instruments:
    meter = meter or _meter
    instruments = _instruments_by_meter.get(id(meter))
    if instruments is None:
        instruments = _instruments_by_meter[id(meter)] = _Instruments(meter)
    return instruments


@dataclass
class RateLimiter:
    """Redis first, the cache of refused keys before it, the local limiter behind it.

    `loop_lag` times the Redis calls for the breaker (see `decide`); `meter` is where the
    metrics go (the "tenantry.ratelimit" meter by default)."""

    redis: RedisDecider
    local: LocalLimiter
    breaker: CircuitBreaker | None = None
    slot_ttl_seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    loop_lag: LoopLagProbe = field(default_factory=LoopLagProbe)
    meter: Meter | None = None
    _refused_until: dict[str, float] = field(default_factory=dict)
    _instruments: _Instruments = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._instruments = _instruments_for(self.meter)
        if self.breaker is not None:
            self._instruments.breakers.add(self.breaker)

    async def decide(
        self,
        policies: Sequence[AppliedPolicy],
        *,
        cost: int = 1,
        tenant_id: UUID | None = None,
        max_in_flight: int | None = None,
    ) -> Decision:
        cached = self._cached_refusal(policies)
        if cached is not None:
            return self._count(cached)
        if self.breaker is None or self.breaker.acquire_permission():
            # The breaker must judge Redis, not this process: under CPU load a reply can
            # wait for the busy loop far longer than Redis took to send it, and wall time
            # would open the breaker on a healthy Redis. The probe's `net` drops the busy
            # stretch the call ended in (the reply's wait); a Redis that is slow while the
            # loop idles still counts in full.
            started = self.loop_lag.now()
            try:
                decision = await self.redis.decide(
                    policies,
                    cost=cost,
                    tenant_id=tenant_id,
                    max_in_flight=max_in_flight,
                    slot_ttl_seconds=self.slot_ttl_seconds,
                    timer=self.loop_lag.now,
                )
            except (TimeoutError, RedisError, OSError) as exc:
                if self.breaker is not None:
                    self.breaker.on_error(self.loop_lag.net(started), exc)
                log.warning("rate limits fall back to local limits: %s", type(exc).__name__)
            except BaseException:
                if self.breaker is not None:
                    self.breaker.release_permission()  # not Redis's fault: no verdict
                raise
            else:
                if self.breaker is not None:
                    # From when its batch left: waiting for the batch before it is
                    # queueing in this process (tenantry_guardrails.coalescing).
                    sent_at = started if decision.sent_at is None else decision.sent_at
                    self.breaker.on_success(self.loop_lag.net(sent_at))
                self._remember_refusals(decision)
                return self._count(decision)
        return self._count(
            self.local.decide(policies, cost=cost, tenant_id=tenant_id, max_in_flight=max_in_flight)
        )

    async def release(self, slot: Slot) -> None:
        if slot.local:
            self.local.release(slot.tenant_id)
            return
        # If Redis is away, the slot expires on its own after slot_ttl_seconds.
        with contextlib.suppress(TimeoutError, RedisError, OSError):
            await self.redis.release(slot)

    def _cached_refusal(self, policies: Sequence[AppliedPolicy]) -> Decision | None:
        now = self.clock()
        refused = [
            (p, until)
            for p in policies
            if (until := self._refused_until.get(p.key)) is not None and until > now
        ]
        if not refused:
            return None
        outcomes = [PolicyOutcome(p, False, 0, until - now, until - now) for p, until in refused]
        return Decision(False, outcomes, "cached")

    def _remember_refusals(self, decision: Decision) -> None:
        now = self.clock()
        if len(self._refused_until) > 10_000:
            self._refused_until = {k: v for k, v in self._refused_until.items() if v > now}
        for outcome in decision.outcomes:
            if not outcome.allowed:
                self._refused_until[outcome.applied.key] = now + outcome.retry_after_seconds

    def _count(self, decision: Decision) -> Decision:
        self._instruments.decisions.add(
            1,
            {
                "path": decision.path,
                "outcome": "allowed" if decision.allowed else "limited",
            },
        )
        return decision


# ---------------------------------------------------------------- the policy projection


async def _on_policies_changed(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    payload: RatePoliciesChanged = event.payload
    await tx.execute(
        """INSERT INTO rate_policies AS r
               (tenant_id, policies, key_policies, max_in_flight, version)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (tenant_id) DO UPDATE
               SET policies = EXCLUDED.policies, key_policies = EXCLUDED.key_policies,
                   max_in_flight = EXCLUDED.max_in_flight, version = EXCLUDED.version,
                   updated_at = now()
               WHERE r.version < EXCLUDED.version""",
        event.tenant_id,
        msgspec.to_builtins(payload.policies),
        msgspec.to_builtins(payload.key_policies),
        payload.max_in_flight,
        payload.version,
    )


def rate_policy_projection_handlers() -> dict[str, Handler[asyncpg.Connection]]:
    return {"ratelimit.policies_changed": _on_policies_changed}


class _KeyPoliciesRow(msgspec.Struct):
    api_key_id: str
    policies: list[RatePolicy]


class PolicyCache:
    """A tenant's policies, read from the local projection at most once per `ttl` per
    tenant (a change reaches every instance within ttl of its event)."""

    def __init__(
        self,
        db: Database,
        *,
        ttl: float = 1.0,
        default: RatePolicy,
        default_max_in_flight: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self._ttl = ttl
        self._default = default
        self._default_in_flight = default_max_in_flight
        self._clock = clock
        self._entries: dict[UUID, tuple[float, TenantRatePolicies]] = {}
        self._loading: dict[UUID, asyncio.Future[TenantRatePolicies]] = {}

    async def get(self, tenant_id: UUID) -> TenantRatePolicies:
        entry = self._entries.get(tenant_id)
        if entry is not None and self._clock() - entry[0] < self._ttl:
            return entry[1]
        pending = self._loading.get(tenant_id)
        if pending is not None:  # one load per tenant at a time, however many requests
            return await asyncio.shield(pending)
        future: asyncio.Future[TenantRatePolicies] = asyncio.get_running_loop().create_future()
        self._loading[tenant_id] = future
        try:
            book = await self._load(tenant_id)
            self._entries[tenant_id] = (self._clock(), book)
            future.set_result(book)
            return book
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it twice
            raise
        finally:
            del self._loading[tenant_id]

    async def _load(self, tenant_id: UUID) -> TenantRatePolicies:
        row = await self._db.pool.fetchrow(
            """SELECT r.policies, r.key_policies, r.max_in_flight, l.limits
               FROM (SELECT $1::uuid AS tenant_id) t
               LEFT JOIN rate_policies r USING (tenant_id)
               LEFT JOIN tenant_limits l USING (tenant_id)""",
            tenant_id,
        )
        assert row is not None
        if row["policies"] is not None:
            keys = msgspec.convert(row["key_policies"], list[_KeyPoliciesRow])
            return TenantRatePolicies(
                policies=tuple(msgspec.convert(row["policies"], list[RatePolicy])),
                key_policies={k.api_key_id: tuple(k.policies) for k in keys},
                max_in_flight=row["max_in_flight"],
                source="ratelimit",
            )
        if row["limits"] is not None:
            limits = msgspec.convert(row["limits"], Limits)
            return TenantRatePolicies(
                policies=(plan_rate(limits),),
                max_in_flight=self._default_in_flight,
                source="plan",
            )
        return TenantRatePolicies(
            policies=(self._default,), max_in_flight=self._default_in_flight, source="default"
        )


# ---------------------------------------------------------------- the pipeline step


class RateLimitStep:
    """The rate-limit step of the pipeline: after authentication and the tenant guard,
    before the route. Tenant principals only: operators and anonymous routes pass."""

    def __init__(self, limiter: RateLimiter, policies: PolicyCache) -> None:
        self.limiter = limiter
        self.policies = policies

    async def __call__(self, request: Request[Any, Any, Any]) -> None:
        principal: Principal | None = request.state.get(STATE_KEY)
        if principal is None or principal.tenant_id is None:
            return
        tenant_id = principal.tenant_id
        book = await self.policies.get(tenant_id)
        key_id = principal.credential_id if principal.kind == "api_key" else None
        decision = await self.limiter.decide(
            applicable(book, tenant_id, route_class_of(request), key_id),
            cost=int(request.route_handler.opt.get("rate_cost", 1)),
            tenant_id=tenant_id,
            max_in_flight=book.max_in_flight,
        )
        headers = decision.headers()
        if not decision.allowed:
            raise rate_limited(decision, book, headers)
        add_response_headers(request.scope, headers)
        if decision.slot is not None:
            slot = decision.slot
            after_response(request.scope, lambda: self.limiter.release(slot))

    async def charge(self, tenant_id: UUID, route_class: str, cost: int = 1) -> None:
        """Charge an anonymous request to the tenant it concerns (the SSO login routes:
        the tenant is known from the connection, not from a credential), without an
        in-flight slot; 429 problem when over."""
        book = await self.policies.get(tenant_id)
        decision = await self.limiter.decide(
            applicable(book, tenant_id, route_class, None), cost=cost, tenant_id=tenant_id
        )
        if not decision.allowed:
            raise rate_limited(decision, book, decision.headers())


def rate_limited(decision: Decision, book: TenantRatePolicies, headers: dict[str, str]) -> Problem:
    retry_after = int(headers["Retry-After"])
    if decision.in_flight_refused:
        return Problem(
            429,
            "rate-limited",
            "Too many requests",
            f"this tenant already has {book.max_in_flight} requests in flight",
            headers=headers,
            policy="in-flight",
            retry_after=retry_after,
        )
    refused = next(o for o in decision.outcomes if not o.allowed)
    policy = refused.applied.policy
    return Problem(
        429,
        "rate-limited",
        "Too many requests",
        f"the {policy.name} policy allows {policy.limit} requests per "
        f"{policy.period_seconds:g} s, {policy.burst} at once",
        headers=headers,
        policy=policy.name,
        retry_after=retry_after,
    )
