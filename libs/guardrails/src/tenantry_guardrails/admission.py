"""Per-instance admission control: a concurrency limit, a bounded fair queue in front of it,
and priority classes that decide who waits and who is shed first under overload.

Anchors: Netflix concurrency-limits (Gradient2 and AIMD limits), Stripe's fleet load
shedder (capacity reserved for critical traffic), Google SRE "Handling overload"
(criticality classes, drop work that has outlived its deadline before doing any).

The pieces, from the inside out:

- `ConcurrencyLimit`: how many requests may run at once (`FixedLimit`, or adaptive
  `Gradient2Limit` / `AimdLimit` fed one aggregate per `WindowedLimit` window). Pure.
- `AdmissionController`: the slots and the queue. A class may start work only while the
  in-flight count is under its share of the limit (sheddable 50 %, default 85 %, critical
  100 % by default), so the top of the limit is always free for critical work. Waiters are
  served highest class first, round-robin across fairness keys (tenants) within a class,
  FIFO within a key. Every waiter has a deadline and is dropped, never run, once past it.
- `AdmissionMiddleware`: the Litestar middleware that classifies a request, waits for a
  slot, answers a fast 503 problem+json with Retry-After when refused, and feeds the
  handler's latency back into the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import re
import secrets
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, Protocol, cast
from urllib.parse import parse_qsl

import msgspec
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from tenantry_http.problems import PROBLEM_JSON, Problem

Clock = Callable[[], float]
"""Seconds on a monotonic scale; `time.monotonic` in production, a fake in tests."""


class Priority(StrEnum):
    """Criticality of a request (Google SRE): who keeps running when capacity runs out."""

    CRITICAL = "critical"  # token issuing, SSO callbacks, suspension, SCIM
    DEFAULT = "default"
    SHEDDABLE = "sheddable"  # exports, large lists, test traffic

    @property
    def rank(self) -> int:
        """0 for the most important class; higher ranks are shed first."""
        return PRIORITIES.index(self)

    @classmethod
    def parse(cls, value: object) -> Priority | None:
        """The class named by `value` (case-insensitive), or None for anything else."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                return None
        return None


PRIORITIES: tuple[Priority, ...] = (Priority.CRITICAL, Priority.DEFAULT, Priority.SHEDDABLE)
"""Most important first: the order waiters are served in."""


class RejectReason(StrEnum):
    QUEUE_FULL = "queue-full"  # arrived to a full queue with nothing less important to evict
    SHED = "shed"  # pushed out for more important or fairer work, or its class may not queue
    DEADLINE_EXCEEDED = "deadline-exceeded"  # waited past its deadline; never started
    OVERLOADED = "overloaded"  # the process's event loop lags: its CPU is spent


class Rejected(Exception):
    """`acquire` refused the request; nothing ran and no slot is held."""

    def __init__(self, reason: RejectReason, retry_after: int, priority: Priority) -> None:
        super().__init__(f"{priority} request rejected: {reason} (retry after {retry_after}s)")
        self.reason = reason
        self.retry_after = retry_after
        self.priority = priority


# --------------------------------------------------------------------------- settings

LimitMode = Literal["adaptive", "aimd", "fixed"]


class AdmissionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Every admission knob, with defaults fit for one small service instance.

    Shares are fractions: `*_capacity_share` of the concurrency limit a class may fill
    (critical always 1.0), `*_queue_share` of `max_queue` a class may occupy.
    """

    enabled: bool = True
    mode: LimitMode = "adaptive"  # adaptive = Gradient2; aimd; fixed = fixed_limit
    fixed_limit: int = 64
    initial_limit: int = 20
    min_limit: int = 4
    max_limit: int = 256
    sample_window: int = 10  # adaptive limits move once per this many completed requests
    gradient_tolerance: float = 1.5  # short-term RTT may reach 1.5x the long-term one
    gradient_smoothing: float = 0.2
    gradient_long_window: int = 600  # samples in the long-term RTT average
    aimd_backoff_ratio: float = 0.9
    aimd_timeout_seconds: float = 5.0  # an AIMD sample slower than this counts as a drop
    max_queue: int = 128
    default_capacity_share: float = 0.85
    sheddable_capacity_share: float = 0.5
    critical_queue_share: float = 1.0
    default_queue_share: float = 0.75
    sheddable_queue_share: float = 0.25
    critical_max_wait_seconds: float = 5.0
    default_max_wait_seconds: float = 1.0
    sheddable_max_wait_seconds: float = 0.25
    large_list_threshold: int = 200  # a GET asking for more items than this is sheddable
    max_retry_after_seconds: int = 30
    # The utilization shedder (Stripe's "worker utilization" limiter, for an event loop):
    # when the loop runs this many ms late, requests of the class are refused at once,
    # before queueing, so the CPU left goes to critical work and to refusing fast. The
    # concurrency limit only sees time spent inside the app; requests piling up unread in
    # the kernel while the loop is saturated show only as loop lag. 0 disables a class's.
    sheddable_loop_lag_ms: float = 25.0
    default_loop_lag_ms: float = 100.0
    loop_lag_sample_ms: float = 10.0

    def __post_init__(self) -> None:
        # msgspec turns a ValueError here into a ValidationError naming the struct, so a bad
        # TENANTRY_ADMISSION_* variable stops the process at start-up.
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("admission limits need 1 <= min_limit <= initial_limit <= max_limit")
        if self.fixed_limit < 1 or self.sample_window < 1 or self.gradient_long_window < 1:
            raise ValueError("fixed_limit, sample_window and gradient_long_window must be >= 1")
        if not 0 < self.sheddable_capacity_share <= self.default_capacity_share <= 1:
            raise ValueError(
                "admission capacity shares need 0 < sheddable <= default <= 1 (critical is 1)"
            )
        shares = (self.critical_queue_share, self.default_queue_share, self.sheddable_queue_share)
        if not all(0 <= share <= 1 for share in shares):
            raise ValueError("admission queue shares must lie in [0, 1]")
        waits = (
            self.critical_max_wait_seconds,
            self.default_max_wait_seconds,
            self.sheddable_max_wait_seconds,
        )
        if self.max_queue < 0 or any(wait < 0 for wait in waits):
            raise ValueError("max_queue and the max waits must not be negative")
        if self.gradient_tolerance < 1 or not 0 < self.gradient_smoothing <= 1:
            raise ValueError("gradient_tolerance must be >= 1 and gradient_smoothing in (0, 1]")
        if not 0 < self.aimd_backoff_ratio < 1 or self.aimd_timeout_seconds <= 0:
            raise ValueError("aimd_backoff_ratio must lie in (0, 1), aimd_timeout_seconds > 0")
        if self.large_list_threshold < 1 or self.max_retry_after_seconds < 1:
            raise ValueError("large_list_threshold and max_retry_after_seconds must be >= 1")
        if min(self.sheddable_loop_lag_ms, self.default_loop_lag_ms) < 0:
            raise ValueError("loop lag thresholds must not be negative (0 disables)")
        if self.loop_lag_sample_ms <= 0:
            raise ValueError("loop_lag_sample_ms must be > 0")

    def loop_lag_limit(self, priority: Priority) -> float | None:
        """Seconds of loop lag past which `priority` requests are refused (None: never)."""
        ms = {
            Priority.CRITICAL: 0.0,
            Priority.DEFAULT: self.default_loop_lag_ms,
            Priority.SHEDDABLE: self.sheddable_loop_lag_ms,
        }[priority]
        return ms / 1000 if ms > 0 else None

    def capacity_share(self, priority: Priority) -> float:
        """Fraction of the concurrency limit that requests of `priority` may fill."""
        if priority is Priority.CRITICAL:
            return 1.0
        if priority is Priority.DEFAULT:
            return self.default_capacity_share
        return self.sheddable_capacity_share

    def queue_share(self, priority: Priority) -> float:
        """Fraction of `max_queue` that waiters of `priority` may occupy."""
        return {
            Priority.CRITICAL: self.critical_queue_share,
            Priority.DEFAULT: self.default_queue_share,
            Priority.SHEDDABLE: self.sheddable_queue_share,
        }[priority]

    def max_wait(self, priority: Priority) -> float:
        """Longest a request of `priority` may wait for a slot, in seconds."""
        return {
            Priority.CRITICAL: self.critical_max_wait_seconds,
            Priority.DEFAULT: self.default_max_wait_seconds,
            Priority.SHEDDABLE: self.sheddable_max_wait_seconds,
        }[priority]

    @classmethod
    def from_prefixed(cls, source: object, prefix: str = "admission_") -> AdmissionSettings:
        """Build from flat attributes such as `ServiceSettings.admission_max_queue`; fields
        the source lacks keep their defaults. Lets env-loaded settings stay flat."""
        values = {
            name: getattr(source, prefix + name)
            for name in cls.__struct_fields__
            if hasattr(source, prefix + name)
        }
        return msgspec.convert(values, type=cls, strict=False)


# --------------------------------------------------------------------------- limits


class ConcurrencyLimit(Protocol):
    """How many requests may run at once, steered by samples of finished requests."""

    @property
    def limit(self) -> int: ...

    def on_sample(self, rtt_seconds: float, inflight: int, dropped: bool) -> None:
        """One finished request: its latency, the in-flight count when it started, and
        whether it failed (a 5xx) rather than completed."""
        ...


class FixedLimit:
    """A limit that never moves."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a concurrency limit must be at least 1")
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, rtt_seconds: float, inflight: int, dropped: bool) -> None:
        return None


class _ExponentialAverage:
    """A plain mean over the first samples (so the start is not skewed by the initial
    value), then an exponential moving average over roughly `window` samples."""

    def __init__(self, window: int, warmup: int = 10) -> None:
        self._factor = 2.0 / (window + 1)
        self._warmup = min(warmup, window)
        self._count = 0
        self.value = 0.0

    def add(self, sample: float) -> float:
        if self._count < self._warmup:
            self._count += 1
            self.value += (sample - self.value) / self._count
        else:
            self.value += (sample - self.value) * self._factor
        return self.value

    def scale(self, factor: float) -> None:
        self.value *= factor


class Gradient2Limit:
    """Adaptive limit after Netflix's Gradient2: compares the short-term RTT with a
    long-term average of it. While the short-term RTT stays within `tolerance` of the
    baseline the target grows by about sqrt(limit) (the queue it tolerates); when requests
    slow down (queueing) the target shrinks in proportion, at most to half. `smoothing`
    moves the limit only part of the way to the target per update.

    It only moves while the limit is actually in use (in-flight >= half the limit): an
    idle service learns nothing about its capacity from its latency.
    """

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 4,
        max_limit: int = 256,
        tolerance: float = 1.5,
        smoothing: float = 0.2,
        long_window: int = 600,
    ) -> None:
        if not 1 <= min_limit <= initial_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= initial_limit <= max_limit")
        self._estimate = float(initial_limit)
        self._min = min_limit
        self._max = max_limit
        self._tolerance = tolerance
        self._smoothing = smoothing
        self._long_rtt = _ExponentialAverage(long_window)

    @property
    def limit(self) -> int:
        return int(self._estimate)

    @property
    def long_rtt(self) -> float:
        """The long-term RTT baseline, in seconds (for diagnostics and tests)."""
        return self._long_rtt.value

    def on_sample(self, rtt_seconds: float, inflight: int, dropped: bool) -> None:
        if rtt_seconds <= 0:
            return
        short_rtt = rtt_seconds
        # A failed request's latency says little about healthy service time (fast errors
        # would pull the baseline down), so only successes feed the baseline.
        if not dropped:
            self._long_rtt.add(short_rtt)
            # After an overload passes, the baseline sits far above current latency; pull
            # it down faster than the average would so the limit can recover.
            if self._long_rtt.value / short_rtt > 2:
                self._long_rtt.scale(0.95)
        long_rtt = self._long_rtt.value
        if long_rtt <= 0:
            return
        if inflight < self._estimate / 2:
            return
        gradient = max(0.5, min(1.0, self._tolerance * long_rtt / short_rtt))
        queue_allowance = math.sqrt(self._estimate)
        target = self._estimate * gradient + queue_allowance
        if dropped:
            target = min(target, self._estimate)  # errors may shrink the limit, never grow it
        smoothed = self._estimate * (1 - self._smoothing) + target * self._smoothing
        self._estimate = max(float(self._min), min(float(self._max), smoothed))


class AimdLimit:
    """Additive increase, multiplicative decrease: +1 per sample while the limit is in use,
    times `backoff_ratio` on a failure or a sample slower than `timeout_seconds`."""

    def __init__(
        self,
        *,
        initial_limit: int = 20,
        min_limit: int = 4,
        max_limit: int = 256,
        backoff_ratio: float = 0.9,
        timeout_seconds: float = 5.0,
    ) -> None:
        if not 1 <= min_limit <= initial_limit <= max_limit:
            raise ValueError("need 1 <= min_limit <= initial_limit <= max_limit")
        self._limit = initial_limit
        self._min = min_limit
        self._max = max_limit
        self._backoff_ratio = backoff_ratio
        self._timeout = timeout_seconds

    @property
    def limit(self) -> int:
        return self._limit

    def on_sample(self, rtt_seconds: float, inflight: int, dropped: bool) -> None:
        if dropped or rtt_seconds > self._timeout:
            self._limit = max(self._min, math.floor(self._limit * self._backoff_ratio))
        elif inflight * 2 >= self._limit:
            self._limit = min(self._max, self._limit + 1)


class WindowedLimit:
    """Feeds `delegate` one aggregate per `window_size` samples (mean RTT, peak in-flight,
    any failure): single requests are too noisy to steer a limit by."""

    def __init__(self, delegate: ConcurrencyLimit, window_size: int) -> None:
        if window_size < 1:
            raise ValueError("window_size must be at least 1")
        self.delegate = delegate
        self._window_size = window_size
        self._count = 0
        self._rtt_total = 0.0
        self._peak_inflight = 0
        self._dropped = False

    @property
    def limit(self) -> int:
        return self.delegate.limit

    def on_sample(self, rtt_seconds: float, inflight: int, dropped: bool) -> None:
        self._count += 1
        self._rtt_total += rtt_seconds
        self._peak_inflight = max(self._peak_inflight, inflight)
        self._dropped = self._dropped or dropped
        if self._count < self._window_size:
            return
        mean_rtt = self._rtt_total / self._count
        peak, dropped_any = self._peak_inflight, self._dropped
        self._count, self._rtt_total, self._peak_inflight, self._dropped = 0, 0.0, 0, False
        self.delegate.on_sample(mean_rtt, peak, dropped_any)


def build_limit(settings: AdmissionSettings) -> ConcurrencyLimit:
    """The limit algorithm `settings.mode` names, configured from `settings`."""
    if settings.mode == "fixed":
        return FixedLimit(settings.fixed_limit)
    bounds = {
        "initial_limit": settings.initial_limit,
        "min_limit": settings.min_limit,
        "max_limit": settings.max_limit,
    }
    adaptive: ConcurrencyLimit
    if settings.mode == "aimd":
        adaptive = AimdLimit(
            **bounds,
            backoff_ratio=settings.aimd_backoff_ratio,
            timeout_seconds=settings.aimd_timeout_seconds,
        )
    else:
        adaptive = Gradient2Limit(
            **bounds,
            tolerance=settings.gradient_tolerance,
            smoothing=settings.gradient_smoothing,
            long_window=settings.gradient_long_window,
        )
    return WindowedLimit(adaptive, settings.sample_window)


# --------------------------------------------------------------------------- controller


class Ticket:
    """A granted slot. Give it back exactly once with `release` (or `abandon`); later
    calls do nothing, so an error path and a finally-block cannot free it twice."""

    __slots__ = ("_controller", "_released", "admitted_at", "inflight_at_admission", "priority")

    def __init__(
        self,
        controller: AdmissionController,
        priority: Priority,
        admitted_at: float,
        inflight_at_admission: int,
    ) -> None:
        self._controller = controller
        self._released = False
        self.priority = priority
        self.admitted_at = admitted_at
        self.inflight_at_admission = inflight_at_admission

    @property
    def released(self) -> bool:
        return self._released

    def release(self, rtt_seconds: float, ok: bool) -> None:
        """The request finished: free the slot and feed its latency to the limit."""
        if not self._released:
            self._released = True
            self._controller._finish(self, rtt_seconds, ok)

    def abandon(self) -> None:
        """The request was cancelled (client gone): free the slot, but teach the limit
        nothing, since a cut-short request's latency measures nothing."""
        if not self._released:
            self._released = True
            self._controller._finish(self, None, True)


class _Waiter:
    __slots__ = ("deadline", "future", "key", "priority", "queued", "timer")

    def __init__(
        self, priority: Priority, key: str, deadline: float, future: asyncio.Future[Ticket]
    ) -> None:
        self.priority = priority
        self.key = key
        self.deadline = deadline
        self.future = future
        self.queued = True
        self.timer: asyncio.TimerHandle | None = None


class _ClassQueue:
    """One class's waiters: FIFO per fairness key, round-robin across keys, so one
    tenant's backlog delays another tenant by at most one request per turn."""

    def __init__(self) -> None:
        self.by_key: dict[str, deque[_Waiter]] = {}
        self.turns: deque[str] = deque()  # keys with waiters, in round-robin order
        self.size = 0

    def push(self, waiter: _Waiter) -> None:
        line = self.by_key.get(waiter.key)
        if line is None:
            line = self.by_key[waiter.key] = deque()
            self.turns.append(waiter.key)
        line.append(waiter)
        self.size += 1

    def pop_next(self) -> _Waiter | None:
        if not self.turns:
            return None
        key = self.turns.popleft()
        line = self.by_key[key]
        waiter = line.popleft()
        if line:
            self.turns.append(key)  # back of the round
        else:
            del self.by_key[key]
        self.size -= 1
        waiter.queued = False
        return waiter

    def pop_newest_of_longest(self) -> _Waiter | None:
        """The newest waiter of the key with the longest line: evicting it costs the
        heaviest tenant, never a tenant with a single request waiting."""
        if not self.by_key:
            return None
        key = max(self.by_key, key=lambda k: len(self.by_key[k]))
        waiter = self.by_key[key][-1]
        self.remove(waiter)
        return waiter

    def longest_line(self) -> int:
        return max((len(line) for line in self.by_key.values()), default=0)

    def line_length(self, key: str) -> int:
        line = self.by_key.get(key)
        return len(line) if line else 0

    def remove(self, waiter: _Waiter) -> None:
        if not waiter.queued:
            return
        line = self.by_key[waiter.key]
        line.remove(waiter)
        if not line:
            del self.by_key[waiter.key]
            self.turns.remove(waiter.key)
        self.size -= 1
        waiter.queued = False


@dataclass(frozen=True)
class AdmissionSnapshot:
    """Counters and gauges of one controller at one moment."""

    limit: int
    inflight: int
    queued: Mapping[Priority, int]
    admitted: Mapping[Priority, int]
    rejected: Mapping[tuple[Priority, RejectReason], int]
    cancelled: Mapping[Priority, int]  # gave up (client gone) while waiting

    @property
    def queued_total(self) -> int:
        return sum(self.queued.values())


_FALLBACK_RTT = 0.1  # seconds assumed per request before any has finished


class AdmissionController:
    """Concurrency slots, priority reservations and a bounded fair queue, for one process.

    Pure asyncio and single-threaded: every state change happens on the event loop, so
    no locks. Time comes from `clock`; waiters also get a loop timer so they leave the
    queue at their deadline even when no slot frees up.
    """

    def __init__(
        self,
        settings: AdmissionSettings | None = None,
        *,
        limit: ConcurrencyLimit | None = None,
        clock: Clock = time.monotonic,
        name: str = "http",
        loop_lag: Callable[[], float] | None = None,
    ) -> None:
        """`loop_lag` (seconds the event loop currently runs late; a `LoopLagMonitor`)
        turns on the utilization shedder; None leaves it off."""
        self.settings = settings or AdmissionSettings()
        self.clock = clock
        self._loop_lag = loop_lag
        self.name = name  # the `pool` attribute of the gauges
        self._limit = limit if limit is not None else build_limit(self.settings)
        self._inflight = 0
        self._queues = {priority: _ClassQueue() for priority in PRIORITIES}
        self._rtt_average: float | None = None
        self._admitted = dict.fromkeys(PRIORITIES, 0)
        self._rejected = {(p, r): 0 for p in PRIORITIES for r in RejectReason}
        self._cancelled = dict.fromkeys(PRIORITIES, 0)
        self._metrics = _instruments()
        _live_controllers.add(self)

    # ---- read side

    @property
    def limit(self) -> int:
        return max(1, self._limit.limit)

    @property
    def inflight(self) -> int:
        return self._inflight

    def queued(self, priority: Priority | None = None) -> int:
        """Waiters of one class, or of all classes."""
        if priority is not None:
            return self._queues[priority].size
        return sum(queue.size for queue in self._queues.values())

    def capacity(self, priority: Priority) -> int:
        """How many requests may be in flight before a `priority` request has to wait."""
        return max(1, math.floor(self.limit * self.settings.capacity_share(priority)))

    def queue_capacity(self, priority: Priority) -> int:
        """How many `priority` waiters the queue holds at most."""
        return math.floor(self.settings.max_queue * self.settings.queue_share(priority))

    def snapshot(self) -> AdmissionSnapshot:
        return AdmissionSnapshot(
            limit=self.limit,
            inflight=self._inflight,
            queued={p: q.size for p, q in self._queues.items()},
            admitted=dict(self._admitted),
            rejected=dict(self._rejected),
            cancelled=dict(self._cancelled),
        )

    # ---- acquire

    async def acquire(
        self, priority: Priority, fairness_key: str, deadline: float | None = None
    ) -> Ticket:
        """Wait for a slot. `deadline` (on the controller's clock) is the caller's own; the
        class's max wait applies too, whichever is earlier.

        Raises `Rejected` (queue-full, shed, deadline-exceeded) without holding anything.
        Cancelling the caller while it waits removes it from the queue; cancelling it
        just after a grant gives the slot back.
        """
        now = self.clock()
        class_deadline = now + self.settings.max_wait(priority)
        effective = class_deadline if deadline is None else min(deadline, class_deadline)
        if deadline is not None and deadline <= now:
            raise self._reject(priority, RejectReason.DEADLINE_EXCEEDED)
        lag_limit = self.settings.loop_lag_limit(priority)
        if self._loop_lag is not None and lag_limit is not None and self._loop_lag() > lag_limit:
            raise self._reject(priority, RejectReason.OVERLOADED)
        if self._may_start(priority):
            return self._grant(priority, now)
        if effective <= now or self.queue_capacity(priority) == 0:
            raise self._reject(priority, RejectReason.SHED)  # this class does not queue
        self._make_room(priority, fairness_key)

        future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(priority, fairness_key, effective, future)
        self._queues[priority].push(waiter)
        waiter.timer = asyncio.get_running_loop().call_later(
            max(0.0, effective - now), self._expire, waiter
        )
        try:
            return await future
        except asyncio.CancelledError:
            self._on_waiter_cancelled(waiter)
            raise

    def _may_start(self, priority: Priority) -> bool:
        # Nothing of the same or a higher class may be waiting: arrivals never overtake.
        # (Dispatch never leaves a waiter whose class could start: a cheap guard.)
        if any(self._queues[p].size for p in PRIORITIES[: priority.rank + 1]):
            return False
        return self._inflight < self.capacity(priority)

    def _grant(self, priority: Priority, now: float) -> Ticket:
        self._inflight += 1
        ticket = Ticket(self, priority, now, self._inflight)  # in flight counting itself
        self._admitted[priority] += 1
        self._metrics.admitted.add(1, _attributes(priority))
        return ticket

    def _make_room(self, priority: Priority, key: str) -> None:
        """Make space for one more `priority` waiter, or raise queue-full."""
        own = self._queues[priority]
        class_full = own.size >= self.queue_capacity(priority)
        total_full = self.queued() >= self.settings.max_queue
        if not class_full and not total_full:
            return
        if not class_full:
            # Total is full: the newest waiter of the least important class below pays.
            for lower in reversed(PRIORITIES[priority.rank + 1 :]):
                victim = self._queues[lower].pop_newest_of_longest()
                if victim is not None:
                    self._reject_waiter(victim, RejectReason.SHED)
                    return
        # Same class: a tenant with a shorter line may push out the newest request of the
        # longest one, so a flood from one tenant cannot lock others out of the queue.
        if own.longest_line() > own.line_length(key) + 1:
            victim = own.pop_newest_of_longest()
            if victim is not None:
                self._reject_waiter(victim, RejectReason.SHED)
                return
        raise self._reject(priority, RejectReason.QUEUE_FULL)

    # ---- waiters leaving

    def _dispatch(self) -> None:
        """Hand free slots to waiters: highest class first, round-robin within it."""
        while True:
            priority = next((p for p in PRIORITIES if self._queues[p].size), None)
            if priority is None or self._inflight >= self.capacity(priority):
                # Capacity shares rise with importance, so if the most important waiter
                # cannot start, nobody less important can either.
                return
            waiter = self._queues[priority].pop_next()
            if waiter is None:  # pragma: no cover - size said otherwise
                return
            if waiter.timer is not None:
                waiter.timer.cancel()
            if waiter.future.done():
                continue  # cancelled a moment ago; its task cleans up
            now = self.clock()
            if waiter.deadline <= now:
                self._settle_rejected(waiter, RejectReason.DEADLINE_EXCEEDED)
                continue
            waiter.future.set_result(self._grant(priority, now))

    def _expire(self, waiter: _Waiter) -> None:
        if waiter.queued and not waiter.future.done():
            self._reject_waiter(waiter, RejectReason.DEADLINE_EXCEEDED)
            self._dispatch()

    def _reject_waiter(self, waiter: _Waiter, reason: RejectReason) -> None:
        self._queues[waiter.priority].remove(waiter)
        if waiter.timer is not None:
            waiter.timer.cancel()
        if not waiter.future.done():
            self._settle_rejected(waiter, reason)

    def _settle_rejected(self, waiter: _Waiter, reason: RejectReason) -> None:
        waiter.future.set_exception(self._reject(waiter.priority, reason))

    def _on_waiter_cancelled(self, waiter: _Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        future = waiter.future
        if future.done() and not future.cancelled():
            if future.exception() is None:
                future.result().abandon()  # granted, but the caller left before running
            return  # already counted as admitted or rejected
        future.cancel()
        self._queues[waiter.priority].remove(waiter)
        self._cancelled[waiter.priority] += 1
        # Cheap, and keeps "nobody waits while a slot is free" true whatever order the
        # loop ran the cancellation and other events in.
        self._dispatch()

    def _reject(self, priority: Priority, reason: RejectReason) -> Rejected:
        self._rejected[(priority, reason)] += 1
        self._metrics.rejected.add(1, _attributes(priority, reason))
        return Rejected(reason, self._retry_after(priority), priority)

    def _retry_after(self, priority: Priority) -> int:
        """Seconds until the work ahead of a `priority` request should have drained: the
        waiters of its class and above, served `limit` at a time at the observed RTT."""
        ahead = sum(self._queues[p].size for p in PRIORITIES[: priority.rank + 1])
        rtt = self._rtt_average if self._rtt_average is not None else _FALLBACK_RTT
        seconds = (ahead + 1) * rtt / self.limit
        return min(self.settings.max_retry_after_seconds, max(1, math.ceil(seconds)))

    # ---- tickets coming back

    def _finish(self, ticket: Ticket, rtt_seconds: float | None, ok: bool) -> None:
        self._inflight -= 1
        if rtt_seconds is not None:
            self._limit.on_sample(rtt_seconds, ticket.inflight_at_admission, not ok)
            previous = self._rtt_average
            self._rtt_average = (
                rtt_seconds if previous is None else previous + 0.1 * (rtt_seconds - previous)
            )
        self._dispatch()


# --------------------------------------------------------------------------- loop lag


class LoopLagMonitor:
    """How late this process's event loop runs: a task asks to wake every `interval` and
    measures how much later it woke. The reading is an exponential average of those
    samples (`alpha` per sample), so sustained lag (a saturated CPU) shows within a few
    samples while one slow callback moves it only by `alpha` of its length. Started
    lazily on first use, in the running loop."""

    def __init__(
        self, interval: float = 0.01, *, alpha: float = 0.25, clock: Clock = time.monotonic
    ) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must lie in (0, 1]")
        self.interval = interval
        self.alpha = alpha
        self.clock = clock
        self._lag = 0.0
        self._task: asyncio.Task[None] | None = None

    def __call__(self) -> float:
        """The current reading, in seconds (0 until the sampler has run)."""
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to sample
                self._task = asyncio.get_running_loop().create_task(self._sample())
        return self._lag

    def observe(self, late_by: float) -> None:
        self._lag += self.alpha * (late_by - self._lag)

    async def _sample(self) -> None:
        while True:
            expected = self.clock() + self.interval
            await asyncio.sleep(self.interval)
            self.observe(max(0.0, self.clock() - expected))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# --------------------------------------------------------------------------- metrics


class _Instruments:
    def __init__(self) -> None:
        meter = metrics.get_meter("tenantry.admission")
        self.admitted = meter.create_counter(
            "tenantry.admission.admitted",
            unit="{request}",
            description="Requests given a concurrency slot",
        )
        self.rejected = meter.create_counter(
            "tenantry.admission.rejected",
            unit="{request}",
            description="Requests refused by admission control, by reason",
        )
        meter.create_observable_gauge(
            "tenantry.admission.limit",
            callbacks=[_observe_limit],
            unit="{request}",
            description="Current concurrency limit",
        )
        meter.create_observable_gauge(
            "tenantry.admission.inflight",
            callbacks=[_observe_inflight],
            unit="{request}",
            description="Requests holding a slot",
        )
        meter.create_observable_gauge(
            "tenantry.admission.queued",
            callbacks=[_observe_queued],
            unit="{request}",
            description="Requests waiting for a slot, by priority",
        )


# Instruments are created once per process (a second registration under the same name
# would be ignored by the SDK); the gauges read every live controller.
_live_controllers: weakref.WeakSet[AdmissionController] = weakref.WeakSet()


@functools.cache
def _instruments() -> _Instruments:
    return _Instruments()


@functools.cache
def _attributes(priority: Priority, reason: RejectReason | None = None) -> Mapping[str, str]:
    if reason is None:
        return {"priority": priority.value}
    return {"priority": priority.value, "reason": reason.value}


def _observe_limit(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(c.limit, {"pool": c.name}) for c in list(_live_controllers)]


def _observe_inflight(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(c.inflight, {"pool": c.name}) for c in list(_live_controllers)]


def _observe_queued(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(c.queued(p), {"pool": c.name, "priority": p.value})
        for c in list(_live_controllers)
        for p in PRIORITIES
    ]


# --------------------------------------------------------------------------- HTTP

PRIORITY_HEADER = b"x-tenantry-priority"
TIMEOUT_HEADER = b"x-request-timeout-ms"
# Per-process key: fairness keys derived from credentials are not reversible or
# comparable across processes, and the credential itself is never kept.
_FAIRNESS_HASH_KEY = secrets.token_bytes(32)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def request_priority(
    scope: Scope, large_list_threshold: int, *, declared: Priority | None = None
) -> Priority:
    """The class of a request: what its route declares (`opt["priority"]`, from the routed
    handler or given as `declared`; default DEFAULT), demoted to sheddable for a large GET
    list (`?limit=` above the threshold), and demoted further if the client asks with
    X-Tenantry-Priority. Never promoted."""
    if declared is None:
        handler = scope.get("route_handler")
        opt: Mapping[str, Any] = getattr(handler, "opt", None) or {}
        declared = None if opt.get("priority") is None else Priority(opt["priority"])
    priority = Priority.DEFAULT if declared is None else declared
    if scope.get("method") == "GET":
        query = scope.get("query_string", b"").decode("latin-1")
        for name, value in parse_qsl(query):
            if name == "limit" and value.isdigit() and int(value) > large_list_threshold:
                priority = Priority.SHEDDABLE
    asked = Priority.parse(_header(scope, PRIORITY_HEADER))
    if asked is not None and asked.rank > priority.rank:
        priority = asked
    return priority


def fairness_key(scope: Scope) -> str:
    """Whose turn a request takes in the queue: the tenant in the path, else the caller's
    credential (hashed), else the client address."""
    path_params = scope.get("path_params") or {}
    tenant_id = path_params.get("tenant_id")
    if tenant_id is not None:
        return f"tenant:{tenant_id}"
    authorization = _header(scope, b"authorization")
    if authorization:
        digest = hashlib.blake2b(
            authorization.encode("latin-1"), key=_FAIRNESS_HASH_KEY, digest_size=16
        )
        return f"credential:{digest.hexdigest()}"
    client = scope.get("client")
    return f"client:{client[0]}" if client else "client:unknown"


def client_deadline(scope: Scope, now: float) -> float | None:
    """`now` plus the client's X-Request-Timeout-Ms, or None when absent or malformed."""
    raw = _header(scope, TIMEOUT_HEADER)
    if raw is None:
        return None
    try:
        millis = float(raw)
    except ValueError:
        return None
    if not math.isfinite(millis) or millis < 0:
        return None
    return now + millis / 1000.0


def rejection_problem(rejected: Rejected) -> Problem:
    """The 503 problem for a refused request, with its Retry-After header."""
    headers = {"retry-after": str(rejected.retry_after)}
    if rejected.reason is RejectReason.DEADLINE_EXCEEDED:
        return Problem(
            503,
            "deadline-exceeded",
            "Deadline exceeded",
            "The request waited past its deadline for capacity and was dropped unprocessed.",
            headers=headers,
            reason=rejected.reason.value,
        )
    return Problem(
        503,
        "overloaded",
        "Service overloaded",
        "The service is at capacity and did not process the request; retry later.",
        headers=headers,
        reason=rejected.reason.value,
    )


def _is_schema_path(scope: Scope) -> bool:
    path = scope.get("path", "")
    return path == "/schema" or path.startswith("/schema/")


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, Problem):
        return exc.status
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 500


class AdmissionMiddleware(ASGIMiddleware):
    """Admission control for every routed HTTP request except health probes and the
    OpenAPI document. Install it first in Litestar's middleware list so refused requests
    cost no authentication or database work.

    Routes declare their class with `opt={"priority": "critical"}` (or a `Priority`).
    """

    scopes = (ScopeType.HTTP,)
    exclude_opt_key = "public_probe"  # health probes must answer even when saturated

    def __init__(self, controller: AdmissionController) -> None:
        self.controller = controller
        # The OpenAPI document and its viewers are public and cheap. Matched on the request
        # path: `exclude_path_pattern` matches handler paths in Litestar 3 and warns now.
        self.should_bypass_for_scope = _is_schema_path

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        priority = request_priority(scope, self.controller.settings.large_list_threshold)
        await admit(self.controller, priority, fairness_key(scope), scope, receive, send, next_app)


async def admit(
    controller: AdmissionController,
    priority: Priority,
    key: str,
    scope: Scope,
    receive: Receive,
    send: Send,
    next_app: ASGIApp,
) -> None:
    """Take a slot (or answer 503 at once), run the request, and feed its latency back to
    the limit: the one admission path of the Litestar middleware and the outer gate."""
    clock = controller.clock
    deadline = client_deadline(scope, clock())
    try:
        ticket = await controller.acquire(priority, key, deadline)
    except Rejected as rejected:
        await _send_problem(scope, send, rejection_problem(rejected))
        return

    started = clock()
    response_started: float | None = None
    status = 500

    async def timed_send(message: Message) -> None:
        nonlocal response_started, status
        if message["type"] == "http.response.start":
            response_started = clock()
            status = message["status"]
        await send(message)

    try:
        await next_app(scope, receive, timed_send)
    except asyncio.CancelledError:
        ticket.abandon()
        raise
    except BaseException as exc:
        # Litestar renders the exception after we return; its status decides "ok".
        ticket.release(clock() - started, ok=_status_of(exc) < 500)
        raise
    finished = response_started if response_started is not None else clock()
    ticket.release(finished - started, ok=status < 500)


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?\}")


class RouteTable:
    """Which priority each route declares, found without Litestar's router: the outer gate
    classifies a request before tracing, request ids and routing cost anything."""

    def __init__(self, routes: Sequence[tuple[str, Mapping[str, Priority | None]]]) -> None:
        self._routes: list[tuple[re.Pattern[str], Mapping[str, Priority | None]]] = []
        for path, by_method in routes:
            pattern = ""
            position = 0
            for match in _PARAM.finditer(path):
                pattern += re.escape(path[position : match.start()])
                kind = match.group(2)
                pattern += f"(?P<{match.group(1)}>" + (".*" if kind == "path" else "[^/]+") + ")"
                position = match.end()
            pattern += re.escape(path[position:])
            self._routes.append((re.compile(pattern + r"/?\Z"), by_method))

    @classmethod
    def of(cls, app: Any) -> RouteTable:
        """From a Litestar app's routes and each handler's `opt["priority"]`."""
        table: list[tuple[str, dict[str, Priority | None]]] = []
        for route in app.routes:
            by_method: dict[str, Priority | None] = {}
            for handler in getattr(route, "route_handlers", ()):
                declared = (getattr(handler, "opt", None) or {}).get("priority")
                for method in getattr(handler, "http_methods", ()):
                    by_method[method] = None if declared is None else Priority(declared)
            table.append((route.path, by_method))
        return cls(table)

    def match(self, method: str, path: str) -> tuple[Priority | None, dict[str, str]]:
        for pattern, by_method in self._routes:
            found = pattern.match(path)
            if found is not None:
                return by_method.get(method), found.groupdict()
        return None, {}


class AdmissionGate:
    """Admission control as the outermost ASGI layer: a refused request is answered before
    OpenTelemetry, request ids and Litestar's routing spend anything on it (under
    overload, the cost of saying no decides how much capacity is left for saying yes).
    Probes, /metrics and the OpenAPI document pass untouched."""

    BYPASS = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app: ASGIApp, controller: AdmissionController, routes: RouteTable) -> None:
        self.app = app
        self.controller = controller
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != ScopeType.HTTP or path in self.BYPASS or _is_schema_path(scope):
            await self.app(scope, receive, send)
            return
        declared, params = self.routes.match(str(scope.get("method", "GET")), path)
        classified = cast(Scope, {**scope, "path_params": params})
        priority = request_priority(
            classified, self.controller.settings.large_list_threshold, declared=declared
        )
        await admit(
            self.controller, priority, fairness_key(classified), scope, receive, send, self.app
        )


async def _send_problem(scope: Scope, send: Send, problem: Problem) -> None:
    # Rendered here rather than raised: the app's exception handler logs every 5xx as an
    # unhandled error, which is the last thing an overloaded process needs per refusal.
    body = problem.body(instance=scope.get("path"))
    request_id = (scope.get("state") or {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    content = msgspec.json.encode(body)
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(content)).encode()),
        (b"cache-control", b"no-store"),
        *((name.encode(), value.encode()) for name, value in problem.headers.items()),
    ]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})
