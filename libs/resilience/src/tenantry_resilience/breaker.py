"""A circuit breaker on the resilience4j model.

The breaker watches the outcomes of calls to one dependency (a broker, identity's JWKS) in a
sliding window and stops calling it while it is failing, so callers fail fast instead of
queueing behind timeouts, and the dependency gets room to recover.

- CLOSED: calls pass; each outcome goes into the sliding window (the last N calls, or the
  calls of the last N seconds in buckets of one second). Once the window holds
  `minimum_number_of_calls`, a failure rate or slow-call rate at or above its threshold
  opens the breaker.
- OPEN: calls are refused with `CallNotPermitted`, which says how long is left
  (Retry-After). After `wait_duration_in_open_state` the next call moves it to HALF_OPEN.
- HALF_OPEN: at most `permitted_calls_in_half_open_state` trial calls are let through; once
  all have finished, rates at or above a threshold open it again, anything else closes it
  with a fresh window. If `max_wait_in_half_open` passes first, it opens again.
- FORCED_OPEN and DISABLED are manual: refuse everything, or let everything through
  without recording.

All time comes from the injected `clock` and nothing sleeps: timed transitions happen on
the next call (a read of `state` or `snapshot()` already reports them). The breaker is
meant for one event loop: its bookkeeping never awaits, so it needs no lock there.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

__all__ = [
    "BreakerConfig",
    "BreakerGuard",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BreakerState",
    "CallNotPermitted",
    "CallOutcome",
    "CircuitBreaker",
    "CountWindow",
    "SlidingWindowType",
    "StateListener",
    "TimeWindow",
]

log = logging.getLogger("tenantry.breaker")

P = ParamSpec("P")
T = TypeVar("T")


class SlidingWindowType(StrEnum):
    COUNT_BASED = "count_based"
    """The window holds the outcomes of the last `sliding_window_size` calls."""
    TIME_BASED = "time_based"
    """The window holds the calls of the last `sliding_window_size` seconds."""


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"
    FORCED_OPEN = "forced_open"


class CallOutcome(StrEnum):
    """How a call counted; the `outcome` attribute of the calls metric."""

    SUCCESS = "success"
    FAILURE = "failure"
    SLOW_SUCCESS = "slow_success"
    SLOW_FAILURE = "slow_failure"
    NOT_PERMITTED = "not_permitted"
    IGNORED = "ignored"


def _record_every_exception(exc: BaseException) -> bool:
    return True


def _ignore_no_exception(exc: BaseException) -> bool:
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """How a breaker judges its dependency. Defaults are resilience4j's.

    Exceptions: an exception for which `ignore` is true counts neither way (and gives back
    a half-open trial slot); else one for which `record` is true is a failure; any other is
    a success (the dependency answered, the answer was just unwelcome: a 404, a validation
    error). Cancellation and other non-`Exception` exceptions are always ignored: they say
    nothing about the dependency.
    """

    sliding_window_type: SlidingWindowType = SlidingWindowType.COUNT_BASED
    sliding_window_size: int = 100
    """Calls (COUNT_BASED) or seconds (TIME_BASED)."""
    minimum_number_of_calls: int = 100
    """No rate is judged before the window holds this many calls."""
    failure_rate_threshold: float = 50.0
    """Percent, in (0, 100]: at or above it the breaker opens."""
    slow_call_rate_threshold: float = 100.0
    """Percent, in (0, 100]: at or above it the breaker opens."""
    slow_call_duration_threshold: float = 60.0
    """Seconds: a call that takes longer than this is slow."""
    wait_duration_in_open_state: float = 60.0
    """Seconds the breaker stays open before it lets trial calls through."""
    permitted_calls_in_half_open_state: int = 10
    max_wait_in_half_open: float = 0.0
    """Seconds the breaker may stay half-open before it opens again; 0 waits forever."""
    automatic_transition_from_open_to_half_open: bool = False
    """Report HALF_OPEN (state, snapshot, gauge) as soon as the wait is over, without
    waiting for a call to make the move."""
    record: Callable[[BaseException], bool] = _record_every_exception
    ignore: Callable[[BaseException], bool] = _ignore_no_exception

    def __post_init__(self) -> None:
        if self.sliding_window_size < 1:
            raise ValueError("sliding_window_size must be at least 1")
        if self.minimum_number_of_calls < 1:
            raise ValueError("minimum_number_of_calls must be at least 1")
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if not 0 < getattr(self, name) <= 100:
                raise ValueError(f"{name} must be in (0, 100]")
        if self.slow_call_duration_threshold <= 0:
            raise ValueError("slow_call_duration_threshold must be positive")
        for name in ("wait_duration_in_open_state", "max_wait_in_half_open"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.permitted_calls_in_half_open_state < 1:
            raise ValueError("permitted_calls_in_half_open_state must be at least 1")

    @property
    def effective_minimum_calls(self) -> int:
        """A count window can never hold more than its size, so that caps the minimum."""
        if self.sliding_window_type is SlidingWindowType.COUNT_BASED:
            return min(self.minimum_number_of_calls, self.sliding_window_size)
        return self.minimum_number_of_calls


class CallNotPermitted(Exception):
    """The breaker refused the call without making it.

    `retry_after` is the number of seconds until the breaker lets a trial call through,
    when that is known (OPEN); None when it is not (HALF_OPEN with every trial slot taken,
    FORCED_OPEN).
    """

    def __init__(self, name: str, state: BreakerState, retry_after: float | None) -> None:
        self.name = name
        self.state = state
        self.retry_after = retry_after
        wait = f"; retry in {retry_after:.1f}s" if retry_after is not None else ""
        super().__init__(f"circuit breaker {name!r} is {state.value}{wait}")


# An outcome in the window is two bits, so a count window's ring is a list of small ints.
_FAILED = 1
_SLOW = 2


class CountWindow:
    """The outcomes of the last `size` calls: a ring buffer with running totals, so a
    record and a read are O(1) whatever the size (an evicted outcome is subtracted)."""

    __slots__ = ("_next", "_ring", "calls", "failures", "slow_calls")

    def __init__(self, size: int) -> None:
        self._ring: list[int | None] = [None] * size
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow_calls = 0

    def record(self, failed: bool, slow: bool, now: float = 0.0) -> None:
        evicted = self._ring[self._next]
        if evicted is not None:
            self._add(evicted, -1)
        outcome = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self._ring[self._next] = outcome
        self._add(outcome, 1)
        self._next = (self._next + 1) % len(self._ring)

    def expire(self, now: float) -> None:
        """Nothing in a count window expires; here for symmetry with TimeWindow."""

    def _add(self, outcome: int, sign: int) -> None:
        self.calls += sign
        self.failures += sign * (outcome & _FAILED)
        self.slow_calls += sign * ((outcome & _SLOW) >> 1)


class TimeWindow:
    """The calls of the last `seconds` seconds, aggregated in one bucket per second.

    Running totals plus subtract-on-evict keep reads O(1); a record after a quiet spell
    clears the buckets it skipped, at most `seconds` of them.
    """

    __slots__ = (
        "_bucket_calls",
        "_bucket_failures",
        "_bucket_slow",
        "_head",
        "calls",
        "failures",
        "slow_calls",
    )

    def __init__(self, seconds: int) -> None:
        self._bucket_calls = [0] * seconds
        self._bucket_failures = [0] * seconds
        self._bucket_slow = [0] * seconds
        self._head: int | None = None  # the second the newest bucket belongs to
        self.calls = 0
        self.failures = 0
        self.slow_calls = 0

    def record(self, failed: bool, slow: bool, now: float) -> None:
        self.expire(now)
        assert self._head is not None
        i = self._head % len(self._bucket_calls)
        self._bucket_calls[i] += 1
        self.calls += 1
        if failed:
            self._bucket_failures[i] += 1
            self.failures += 1
        if slow:
            self._bucket_slow[i] += 1
            self.slow_calls += 1

    def expire(self, now: float) -> None:
        """Drop the buckets that are older than the window at `now`."""
        second = math.floor(now)
        if self._head is None:
            self._head = second
            return
        # A clock that steps back records into the newest bucket rather than the past.
        if second <= self._head:
            return
        size = len(self._bucket_calls)
        for step in range(1, min(second - self._head, size) + 1):
            i = (self._head + step) % size
            self.calls -= self._bucket_calls[i]
            self.failures -= self._bucket_failures[i]
            self.slow_calls -= self._bucket_slow[i]
            self._bucket_calls[i] = self._bucket_failures[i] = self._bucket_slow[i] = 0
        self._head = second


def _new_window(config: BreakerConfig) -> CountWindow | TimeWindow:
    if config.sliding_window_type is SlidingWindowType.TIME_BASED:
        return TimeWindow(config.sliding_window_size)
    return CountWindow(config.sliding_window_size)


def _rate(part: int, calls: int) -> float:
    return part * 100.0 / calls


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker at one moment, for health and metrics endpoints.

    Rates are percentages, None until the window holds the minimum number of calls (in
    HALF_OPEN: all trial calls). Counts are those of the window in force: the closed
    window (kept while open, to show why it opened) or the half-open trials.
    `not_permitted_calls` counts refusals since the breaker entered its current state.
    """

    name: str
    state: BreakerState
    failure_rate: float | None
    slow_call_rate: float | None
    buffered_calls: int
    failed_calls: int
    slow_calls: int
    not_permitted_calls: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "failure_rate": self.failure_rate,
            "slow_call_rate": self.slow_call_rate,
            "buffered_calls": self.buffered_calls,
            "failed_calls": self.failed_calls,
            "slow_calls": self.slow_calls,
            "not_permitted_calls": self.not_permitted_calls,
        }


StateListener = Callable[[str, BreakerState, BreakerState], None]
"""Called with (breaker name, from state, to state) after each transition."""


class _Instruments:
    """The breaker metrics of one meter, shared by every breaker that uses the meter.

    Shared because an instrument is registered once per name: a second observable gauge
    of the same name would not be observed.
    """

    def __init__(self, meter: Meter) -> None:
        self.meter = meter  # keeps the meter alive, so its id stays unique in the cache
        self.calls = meter.create_counter(
            "tenantry.breaker.calls",
            unit="{call}",
            description="Calls through a circuit breaker, by breaker and outcome",
        )
        self.transitions = meter.create_counter(
            "tenantry.breaker.transitions",
            unit="{transition}",
            description="Circuit breaker state transitions",
        )
        self.breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
        meter.create_observable_gauge(
            "tenantry.breaker.state",
            callbacks=[self._observe_states],
            unit="1",
            description="1 for the state each circuit breaker is in, 0 for the others",
        )

    def _observe_states(self, options: CallbackOptions) -> Iterable[Observation]:
        for breaker in list(self.breakers):
            current = breaker.state
            for state in BreakerState:
                yield Observation(
                    1 if state is current else 0, {"breaker": breaker.name, "state": state.value}
                )


_instruments_by_meter: dict[int, _Instruments] = {}
_default_meter: Meter | None = None


def _instruments_for(meter: Meter | None) -> _Instruments:
    global _default_meter
    if meter is None:
        # One meter for every breaker: before an SDK provider is set, each get_meter call
        # returns a new proxy, and each proxy would register the state gauge again (the
        # SDK keeps only the first registration's callback).
        if _default_meter is None:
            _default_meter = metrics.get_meter("tenantry.resilience")
        meter = _default_meter
    instruments = _instruments_by_meter.get(id(meter))
    if instruments is None:
        instruments = _instruments_by_meter[id(meter)] = _Instruments(meter)
    return instruments


class CircuitBreaker:
    """One breaker in front of one dependency.

    Wrap a coroutine with `await breaker.call(fn, *args)` or `async with breaker.guard():`.
    Callers that cannot wrap the call use the low-level API: `try_acquire()` (or
    `acquire_permission()`), then exactly one of `on_success(duration)`,
    `on_error(duration, exc)` or `release_permission()`.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        meter: Meter | None = None,
    ) -> None:
        self.name = name
        self.config = config or BreakerConfig()
        self._clock = clock
        self._listeners: list[StateListener] = []
        self._instruments = _instruments_for(meter)
        self._instruments.breakers.add(self)
        self._state = BreakerState.CLOSED
        # Each transition starts a new epoch; an outcome of a call admitted in an earlier
        # epoch says nothing about the current state and is not recorded in its window.
        self._epoch = 0
        self._window = _new_window(self.config)
        self._trials = CountWindow(self.config.permitted_calls_in_half_open_state)
        self._trials_admitted = 0
        self._open_until = 0.0
        self._half_open_since = 0.0
        self._not_permitted = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.value}>"

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state now, counting a timed transition that the next call will make."""
        return self._pending_state(self._clock()) or self._state

    def _pending_state(self, now: float) -> BreakerState | None:
        """The state a timed transition due at `now` would move to, if any; reads only."""
        if self._state is BreakerState.OPEN:
            if self.config.automatic_transition_from_open_to_half_open and (
                now >= self._open_until
            ):
                return BreakerState.HALF_OPEN
        elif self._state is BreakerState.HALF_OPEN and self._half_open_expired(now):
            return BreakerState.OPEN
        return None

    def _half_open_expired(self, now: float) -> bool:
        limit = self.config.max_wait_in_half_open
        return limit > 0 and now - self._half_open_since >= limit

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call `listener(name, from_state, to_state)` after each transition; returns a
        function that removes it. A listener that raises is logged, never propagated."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def transition_to(self, state: BreakerState) -> None:
        """Move to `state` by hand (an operator, a test). CLOSED starts a fresh window."""
        if state is not self._state:
            self._transition(state, self._clock())

    def force_open(self) -> None:
        """Refuse every call until another manual transition."""
        self.transition_to(BreakerState.FORCED_OPEN)

    def disable(self) -> None:
        """Let every call through and record nothing until another manual transition."""
        self.transition_to(BreakerState.DISABLED)

    def reset(self) -> None:
        """Back to CLOSED with a fresh window (also from CLOSED itself)."""
        self._transition(BreakerState.CLOSED, self._clock())

    def snapshot(self) -> BreakerSnapshot:
        now = self._clock()
        state = self._pending_state(now) or self._state
        if self._state is BreakerState.HALF_OPEN:
            window: CountWindow | TimeWindow = self._trials
            minimum = self.config.permitted_calls_in_half_open_state
        else:
            window = self._window
            window.expire(now)
            minimum = self.config.effective_minimum_calls
        judged = window.calls >= minimum
        return BreakerSnapshot(
            name=self.name,
            state=state,
            failure_rate=_rate(window.failures, window.calls) if judged else None,
            slow_call_rate=_rate(window.slow_calls, window.calls) if judged else None,
            buffered_calls=window.calls,
            failed_calls=window.failures,
            slow_calls=window.slow_calls,
            not_permitted_calls=self._not_permitted,
        )

    # -- permission ------------------------------------------------------------------------

    def acquire_permission(self) -> bool:
        """True if a call may go ahead now (then report its outcome); False if refused."""
        return self._admit(self._clock()) is not None

    def try_acquire(self) -> None:
        """Like `acquire_permission`, but raise `CallNotPermitted` when refused."""
        now = self._clock()
        if self._admit(now) is None:
            raise self._refusal(now)

    def release_permission(self) -> None:
        """Give back a permission whose call was never made."""
        self._release(self._epoch)

    def _admit(self, now: float) -> int | None:
        """The epoch the call is admitted in, or None (counted) if it is refused."""
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._transition(BreakerState.HALF_OPEN, now)
        elif self._state is BreakerState.HALF_OPEN and self._half_open_expired(now):
            self._transition(BreakerState.OPEN, now)
        state = self._state
        if state in (BreakerState.CLOSED, BreakerState.DISABLED):
            return self._epoch
        if (
            state is BreakerState.HALF_OPEN
            and self._trials_admitted < self.config.permitted_calls_in_half_open_state
        ):
            self._trials_admitted += 1
            return self._epoch
        self._not_permitted += 1
        self._count(CallOutcome.NOT_PERMITTED)
        return None

    def _refusal(self, now: float) -> CallNotPermitted:
        retry_after = None
        if self._state is BreakerState.OPEN:
            retry_after = max(0.0, self._open_until - now)
        return CallNotPermitted(self.name, self._state, retry_after)

    def _admit_or_raise(self) -> int:
        now = self._clock()
        epoch = self._admit(now)
        if epoch is None:
            raise self._refusal(now)
        return epoch

    def _release(self, epoch: int) -> None:
        # Only a half-open trial holds something to give back: its slot.
        if (
            epoch == self._epoch
            and self._state is BreakerState.HALF_OPEN
            and self._trials_admitted > self._trials.calls
        ):
            self._trials_admitted -= 1

    # -- outcomes --------------------------------------------------------------------------

    def on_success(self, duration: float) -> None:
        """Report that a permitted call succeeded after `duration` seconds."""
        self._complete(self._epoch, duration, None)

    def on_error(self, duration: float, exc: BaseException) -> None:
        """Report that a permitted call raised `exc` after `duration` seconds."""
        self._complete(self._epoch, duration, exc)

    def _classify(self, duration: float, exc: BaseException | None) -> CallOutcome:
        slow = duration > self.config.slow_call_duration_threshold
        if exc is not None:
            if not isinstance(exc, Exception) or self.config.ignore(exc):
                return CallOutcome.IGNORED
            if self.config.record(exc):
                return CallOutcome.SLOW_FAILURE if slow else CallOutcome.FAILURE
        return CallOutcome.SLOW_SUCCESS if slow else CallOutcome.SUCCESS

    def _complete(self, epoch: int, duration: float, exc: BaseException | None) -> None:
        now = self._clock()
        outcome = self._classify(duration, exc)
        self._count(outcome)
        if self._state is BreakerState.HALF_OPEN and self._half_open_expired(now):
            self._transition(BreakerState.OPEN, now)  # the trials took too long
        if outcome is CallOutcome.IGNORED:
            self._release(epoch)
            return
        if epoch != self._epoch:
            return
        failed = outcome in (CallOutcome.FAILURE, CallOutcome.SLOW_FAILURE)
        slow = outcome in (CallOutcome.SLOW_SUCCESS, CallOutcome.SLOW_FAILURE)
        if self._state is BreakerState.CLOSED:
            self._window.record(failed, slow, now)
            if self._window.calls >= self.config.effective_minimum_calls and self._exceeded(
                self._window
            ):
                self._transition(BreakerState.OPEN, now)
        elif self._state is BreakerState.HALF_OPEN:
            if self._trials.calls >= self._trials_admitted:
                return  # more outcomes than trials: a low-level caller admitted earlier
            self._trials.record(failed, slow, now)
            if self._trials.calls >= self.config.permitted_calls_in_half_open_state:
                opened = self._exceeded(self._trials)
                self._transition(BreakerState.OPEN if opened else BreakerState.CLOSED, now)
        # OPEN, FORCED_OPEN, DISABLED: outcomes are counted in metrics only.

    def _exceeded(self, window: CountWindow | TimeWindow) -> bool:
        return (
            _rate(window.failures, window.calls) >= self.config.failure_rate_threshold
            or _rate(window.slow_calls, window.calls) >= self.config.slow_call_rate_threshold
        )

    def _count(self, outcome: CallOutcome) -> None:
        self._instruments.calls.add(1, {"breaker": self.name, "outcome": outcome.value})

    def _transition(self, to: BreakerState, now: float) -> None:
        before = self._state
        rates = self._rates_for_log()
        self._state = to
        self._epoch += 1
        self._not_permitted = 0
        if to is BreakerState.CLOSED:
            self._window = _new_window(self.config)
        elif to is BreakerState.OPEN:
            self._open_until = now + self.config.wait_duration_in_open_state
        elif to is BreakerState.HALF_OPEN:
            self._trials = CountWindow(self.config.permitted_calls_in_half_open_state)
            self._trials_admitted = 0
            self._half_open_since = now
        level = (
            logging.WARNING if to in (BreakerState.OPEN, BreakerState.FORCED_OPEN) else logging.INFO
        )
        log.log(
            level,
            "circuit breaker %s: %s -> %s%s",
            self.name,
            before.value,
            to.value,
            rates,
            extra={"breaker": self.name, "from_state": before.value, "to_state": to.value},
        )
        self._instruments.transitions.add(
            1, {"breaker": self.name, "from_state": before.value, "to_state": to.value}
        )
        for listener in list(self._listeners):
            try:
                listener(self.name, before, to)
            except Exception:
                log.exception("circuit breaker %s: state listener failed", self.name)

    def _rates_for_log(self) -> str:
        window = self._trials if self._state is BreakerState.HALF_OPEN else self._window
        if not window.calls:
            return ""
        return (
            f" (failure rate {_rate(window.failures, window.calls):.1f}%, slow-call rate "
            f"{_rate(window.slow_calls, window.calls):.1f}% of {window.calls} calls)"
        )

    # -- wrapping --------------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await `fn(*args, **kwargs)` through the breaker; raises `CallNotPermitted`
        without calling it when refused, and re-raises whatever it raises."""
        epoch = self._admit_or_raise()
        started = self._clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._complete(epoch, self._clock() - started, exc)
            raise
        self._complete(epoch, self._clock() - started, None)
        return result

    def guard(self) -> BreakerGuard:
        """A one-use async context manager around one call:
        `async with breaker.guard(): await dependency()`."""
        return BreakerGuard(self)


class BreakerGuard:
    """Admits one call on enter (or raises `CallNotPermitted`) and records its outcome and
    duration on exit. Exceptions pass through."""

    __slots__ = ("_breaker", "_epoch", "_started")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker
        self._epoch: int | None = None
        self._started = 0.0

    async def __aenter__(self) -> None:
        if self._epoch is not None:
            raise RuntimeError("a BreakerGuard guards one call; take a new one per call")
        self._epoch = self._breaker._admit_or_raise()
        self._started = self._breaker._clock()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._epoch is not None
        duration = self._breaker._clock() - self._started
        self._breaker._complete(self._epoch, duration, exc)


class BreakerRegistry:
    """The breakers of one process, by name, so health and metrics endpoints can list them."""

    def __init__(
        self,
        default_config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        meter: Meter | None = None,
    ) -> None:
        self.default_config = default_config or BreakerConfig()
        self._clock = clock
        self._meter = meter
        self._breakers: dict[str, CircuitBreaker] = {}
        self._listeners: list[StateListener] = []

    def get(self, name: str, config: BreakerConfig | None = None) -> CircuitBreaker:
        """The breaker called `name`, made with `config` (or the default) if it is new. An
        existing breaker keeps the config it was made with."""
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(
                name, config or self.default_config, clock=self._clock, meter=self._meter
            )
            for listener in self._listeners:
                breaker.on_state_change(listener)
            self._breakers[name] = breaker
        return breaker

    def on_state_change(self, listener: StateListener) -> None:
        """Listen to every breaker of the registry, present and future."""
        self._listeners.append(listener)
        for breaker in self._breakers.values():
            breaker.on_state_change(listener)

    def snapshots(self) -> dict[str, BreakerSnapshot]:
        return {name: breaker.snapshot() for name, breaker in self._breakers.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)
