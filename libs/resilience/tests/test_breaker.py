"""The circuit breaker's state machine under injected failures and slow calls, with a fake
clock: nothing here sleeps."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from tenantry_resilience.breaker import (
    BreakerConfig,
    BreakerRegistry,
    BreakerState,
    CallNotPermitted,
    CircuitBreaker,
    CountWindow,
    SlidingWindowType,
    TimeWindow,
)
from tenantry_resilience.testing import ManualClock


class Boom(Exception):
    pass


class Fixture:
    """A breaker with its clock and an in-memory metrics reader."""

    def __init__(self, config: BreakerConfig, name: str = "dep") -> None:
        self.clock = ManualClock()
        self.reader = InMemoryMetricReader()
        self.meter = MeterProvider(metric_readers=[self.reader]).get_meter("test")
        self.breaker = CircuitBreaker(name, config, clock=self.clock, meter=self.meter)

    async def succeed(self, duration: float = 0.0) -> str:
        async def work() -> str:
            self.clock.advance(duration)
            return "ok"

        return await self.breaker.call(work)

    async def fail(self, duration: float = 0.0, exc: BaseException | None = None) -> None:
        async def work() -> None:
            self.clock.advance(duration)
            raise exc or Boom()

        with pytest.raises(type(exc) if exc else Boom):
            await self.breaker.call(work)

    def state(self) -> BreakerState:
        # A call, not the property: mypy would narrow the property across transitions.
        return self.breaker.state

    def points(self, metric: str) -> list[tuple[dict[str, Any], float]]:
        return list(_points(self.reader, metric))


def _points(reader: InMemoryMetricReader, metric: str) -> Iterator[tuple[dict[str, Any], float]]:
    data = reader.get_metrics_data()
    if data is None:
        return
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for m in scope_metrics.metrics:
                if m.name == metric:
                    for point in m.data.data_points:
                        assert isinstance(point, NumberDataPoint)
                        yield dict(point.attributes or {}), point.value


def config(**overrides: Any) -> BreakerConfig:
    base: dict[str, Any] = {
        "sliding_window_size": 10,
        "minimum_number_of_calls": 5,
        "failure_rate_threshold": 50.0,
        "slow_call_rate_threshold": 50.0,
        "slow_call_duration_threshold": 1.0,
        "wait_duration_in_open_state": 30.0,
        "permitted_calls_in_half_open_state": 3,
    }
    return BreakerConfig(**{**base, **overrides})


async def open_it(f: Fixture) -> None:
    for _ in range(f.breaker.config.effective_minimum_calls):
        await f.fail()
    assert f.state() is BreakerState.OPEN


# -- closed ---------------------------------------------------------------------------------


async def test_closed_opens_when_the_failure_rate_reaches_the_threshold() -> None:
    f = Fixture(config())
    await f.succeed()
    await f.succeed()
    await f.fail()
    await f.fail()
    assert f.state() is BreakerState.CLOSED  # 4 calls: below the minimum of 5
    await f.fail()  # 3 of 5 = 60 %
    assert f.state() is BreakerState.OPEN
    snap = f.breaker.snapshot()
    assert snap.failure_rate == 60.0
    assert snap.buffered_calls == 5


async def test_a_failure_rate_equal_to_the_threshold_opens() -> None:
    f = Fixture(config(sliding_window_size=4, minimum_number_of_calls=4))
    for _ in range(2):
        await f.succeed()
        await f.fail()
    assert f.state() is BreakerState.OPEN


async def test_closed_opens_when_the_slow_call_rate_reaches_the_threshold() -> None:
    f = Fixture(config(minimum_number_of_calls=4))
    await f.succeed(0.1)
    await f.succeed(1.0)  # exactly the threshold is not slow
    await f.succeed(1.5)
    assert f.state() is BreakerState.CLOSED
    await f.succeed(3.0)  # 2 slow of 4 = 50 %
    assert f.state() is BreakerState.OPEN
    snap = f.breaker.snapshot()
    assert (snap.slow_call_rate, snap.failure_rate) == (50.0, 0.0)


async def test_below_the_minimum_number_of_calls_nothing_opens() -> None:
    f = Fixture(config(minimum_number_of_calls=5))
    for _ in range(4):
        await f.fail(duration=5.0)
    assert f.state() is BreakerState.CLOSED
    snap = f.breaker.snapshot()
    assert (snap.failure_rate, snap.slow_call_rate, snap.buffered_calls) == (None, None, 4)


async def test_a_count_window_forgets_calls_older_than_its_size() -> None:
    f = Fixture(config(sliding_window_size=4, minimum_number_of_calls=4))
    await f.fail()
    for _ in range(3):
        await f.succeed()
    await f.succeed()  # pushes the failure out
    snap = f.breaker.snapshot()
    assert (snap.failure_rate, snap.buffered_calls) == (0.0, 4)


async def test_a_count_window_caps_the_minimum_at_its_size() -> None:
    f = Fixture(config(sliding_window_size=3, minimum_number_of_calls=100))
    for _ in range(3):
        await f.fail()
    assert f.state() is BreakerState.OPEN


async def test_a_time_window_drops_buckets_older_than_the_window() -> None:
    f = Fixture(
        config(
            sliding_window_type=SlidingWindowType.TIME_BASED,
            sliding_window_size=10,
            minimum_number_of_calls=5,
        )
    )
    for _ in range(3):
        await f.fail()  # at second 1000
    f.clock.advance(5)
    await f.succeed()  # at second 1005
    assert f.state() is BreakerState.CLOSED  # 4 calls: below the minimum
    assert f.breaker.snapshot().buffered_calls == 4
    f.clock.advance(4.99)  # 1009.99: second 1000 is still inside the last 10 seconds
    assert f.breaker.snapshot().buffered_calls == 4
    f.clock.advance(0.01)  # 1010.0: second 1000 has left the window
    snap = f.breaker.snapshot()
    assert (snap.buffered_calls, snap.failed_calls) == (1, 0)
    for _ in range(3):
        await f.succeed()
    await f.fail()  # 1 of 5 in the window: had the old failures stayed, 4 of 8 would open it
    assert f.state() is BreakerState.CLOSED


async def test_a_time_window_opens_on_failures_within_the_window() -> None:
    f = Fixture(
        config(
            sliding_window_type=SlidingWindowType.TIME_BASED,
            sliding_window_size=10,
            minimum_number_of_calls=4,
        )
    )
    for _ in range(4):
        await f.fail()
        f.clock.advance(2.0)
    assert f.state() is BreakerState.OPEN


async def test_a_time_window_after_a_long_quiet_spell_starts_empty() -> None:
    window = TimeWindow(5)
    for t in (0.0, 1.0, 2.5):
        window.record(failed=True, slow=False, now=t)
    window.expire(1_000_000.0)
    assert (window.calls, window.failures, window.slow_calls) == (0, 0, 0)


# -- open ----------------------------------------------------------------------------------


async def test_open_refuses_calls_and_says_how_long_is_left() -> None:
    f = Fixture(config())
    await open_it(f)
    f.clock.advance(10)
    called = False

    async def work() -> None:
        nonlocal called
        called = True

    with pytest.raises(CallNotPermitted) as refused:
        await f.breaker.call(work)
    assert not called
    assert refused.value.retry_after == pytest.approx(20.0)
    assert refused.value.state is BreakerState.OPEN
    assert "dep" in str(refused.value)
    with pytest.raises(CallNotPermitted):
        f.breaker.try_acquire()
    assert f.breaker.acquire_permission() is False
    assert f.breaker.snapshot().not_permitted_calls == 3


async def test_open_moves_to_half_open_on_the_first_call_after_the_wait() -> None:
    f = Fixture(config())
    await open_it(f)
    f.clock.advance(29.9)
    assert not f.breaker.acquire_permission()
    f.clock.advance(0.1)
    assert f.state() is BreakerState.OPEN  # no automatic transition: a call moves it
    await f.succeed()
    assert f.state() is BreakerState.HALF_OPEN


async def test_automatic_transition_reports_half_open_without_a_call() -> None:
    f = Fixture(config(automatic_transition_from_open_to_half_open=True))
    await open_it(f)
    f.clock.advance(30)
    assert f.state() is BreakerState.HALF_OPEN
    assert f.breaker.snapshot().state is BreakerState.HALF_OPEN
    gauge = {a["state"]: v for a, v in f.points("tenantry.breaker.state")}
    assert gauge["half_open"] == 1
    assert gauge["open"] == 0


# -- half-open -----------------------------------------------------------------------------


async def _half_open(f: Fixture) -> None:
    await open_it(f)
    f.clock.advance(f.breaker.config.wait_duration_in_open_state)


async def test_half_open_lets_exactly_n_trials_through_at_once() -> None:
    f = Fixture(config(permitted_calls_in_half_open_state=3))
    await _half_open(f)
    release = asyncio.Event()
    entered = 0

    async def trial() -> None:
        nonlocal entered
        async with f.breaker.guard():
            entered += 1
            await release.wait()

    trials = [asyncio.create_task(trial()) for _ in range(3)]
    await asyncio.sleep(0)  # let all three enter
    assert entered == 3
    assert f.state() is BreakerState.HALF_OPEN
    with pytest.raises(CallNotPermitted) as refused:
        await f.succeed()
    assert refused.value.retry_after is None
    assert refused.value.state is BreakerState.HALF_OPEN
    release.set()
    await asyncio.gather(*trials)
    assert f.state() is BreakerState.CLOSED


async def test_half_open_closes_with_a_fresh_window_when_trials_succeed() -> None:
    f = Fixture(config(permitted_calls_in_half_open_state=3))
    await _half_open(f)
    await f.succeed()
    await f.fail()  # 1 of 3 = 33 %: below 50
    assert f.state() is BreakerState.HALF_OPEN
    await f.succeed()
    assert f.state() is BreakerState.CLOSED
    snap = f.breaker.snapshot()
    assert (snap.buffered_calls, snap.failure_rate, snap.not_permitted_calls) == (0, None, 0)
    for _ in range(4):  # the old failures are gone: four new ones do not reach the minimum
        await f.fail()
    assert f.state() is BreakerState.CLOSED


async def test_half_open_opens_again_when_trials_fail() -> None:
    f = Fixture(config(permitted_calls_in_half_open_state=3))
    await _half_open(f)
    await f.fail()
    await f.succeed()
    await f.fail()  # 2 of 3
    assert f.state() is BreakerState.OPEN
    with pytest.raises(CallNotPermitted) as refused:
        f.breaker.try_acquire()
    assert refused.value.retry_after == pytest.approx(30.0)


async def test_half_open_opens_again_when_trials_are_slow() -> None:
    f = Fixture(config(permitted_calls_in_half_open_state=2))
    await _half_open(f)
    await f.succeed(0.1)
    await f.succeed(2.0)  # 1 of 2 slow = 50 %
    assert f.state() is BreakerState.OPEN


async def test_half_open_opens_again_after_max_wait() -> None:
    f = Fixture(config(permitted_calls_in_half_open_state=2, max_wait_in_half_open=10))
    await _half_open(f)
    assert f.breaker.acquire_permission()  # a trial that never reports back
    assert f.state() is BreakerState.HALF_OPEN
    f.clock.advance(10)
    assert f.state() is BreakerState.OPEN  # reported at once
    with pytest.raises(CallNotPermitted) as refused:
        f.breaker.try_acquire()  # and made by the next call
    assert refused.value.retry_after == pytest.approx(30.0)


async def test_an_outcome_from_before_a_transition_does_not_count_in_the_new_state() -> None:
    f = Fixture(config(permitted_calls_in_half_open_state=1))
    straggler_done, trial_done = asyncio.Event(), asyncio.Event()

    async def slow_call(done: asyncio.Event, outcome: BaseException | None) -> None:
        async with f.breaker.guard():
            await done.wait()
            if outcome is not None:
                raise outcome

    straggler = asyncio.create_task(slow_call(straggler_done, None))  # admitted while CLOSED
    await asyncio.sleep(0)
    await _half_open(f)
    trial = asyncio.create_task(slow_call(trial_done, Boom()))  # the one half-open trial
    await asyncio.sleep(0)
    assert f.state() is BreakerState.HALF_OPEN
    straggler_done.set()
    await straggler  # a success, but from the closed state: not a trial
    assert f.state() is BreakerState.HALF_OPEN
    trial_done.set()
    with pytest.raises(Boom):
        await trial  # the real trial decides
    assert f.state() is BreakerState.OPEN


# -- exceptions ------------------------------------------------------------------------------


async def test_ignored_exceptions_count_neither_way() -> None:
    f = Fixture(config(ignore=lambda exc: isinstance(exc, KeyError)))
    for _ in range(10):
        await f.fail(exc=KeyError("no such thing"))
    snap = f.breaker.snapshot()
    assert (f.state(), snap.buffered_calls) == (BreakerState.CLOSED, 0)
    assert {a["outcome"]: v for a, v in f.points("tenantry.breaker.calls")} == {"ignored": 10}


async def test_exceptions_not_recorded_count_as_successes() -> None:
    f = Fixture(config(record=lambda exc: isinstance(exc, ConnectionError)))
    for _ in range(5):
        await f.fail(exc=ValueError("the dependency answered: no"))
    snap = f.breaker.snapshot()
    assert (f.state(), snap.buffered_calls, snap.failed_calls) == (
        BreakerState.CLOSED,
        5,
        0,
    )
    for _ in range(5):
        await f.fail(exc=ConnectionError())
    assert f.state() is BreakerState.OPEN


async def test_cancellation_is_ignored_and_gives_back_a_trial_slot() -> None:
    f = Fixture(config(permitted_calls_in_half_open_state=1))
    await _half_open(f)
    started = asyncio.Event()

    async def hangs() -> None:
        async with f.breaker.guard():
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hangs())
    await started.wait()
    assert not f.breaker.acquire_permission()  # the one slot is taken
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await f.succeed()  # the slot came back; this trial closes it
    assert f.state() is BreakerState.CLOSED


async def test_release_permission_gives_back_a_trial_slot() -> None:
    f = Fixture(config(permitted_calls_in_half_open_state=1))
    await _half_open(f)
    assert f.breaker.acquire_permission()
    assert not f.breaker.acquire_permission()
    f.breaker.release_permission()
    f.breaker.try_acquire()
    f.breaker.on_error(0.1, Boom())
    assert f.state() is BreakerState.OPEN


# -- manual states ----------------------------------------------------------------------------


async def test_forced_open_refuses_everything_until_reset() -> None:
    f = Fixture(config())
    f.breaker.force_open()
    f.clock.advance(3600)
    with pytest.raises(CallNotPermitted) as refused:
        await f.succeed()
    assert refused.value.state is BreakerState.FORCED_OPEN
    assert refused.value.retry_after is None
    assert f.state() is BreakerState.FORCED_OPEN
    f.breaker.reset()
    assert await f.succeed() == "ok"
    assert f.state() is BreakerState.CLOSED


async def test_disabled_lets_everything_through_and_records_nothing() -> None:
    f = Fixture(config())
    f.breaker.disable()
    for _ in range(20):
        await f.fail()
    assert f.state() is BreakerState.DISABLED
    assert f.breaker.snapshot().buffered_calls == 0
    f.breaker.transition_to(BreakerState.CLOSED)
    await f.fail()
    assert f.breaker.snapshot().buffered_calls == 1


# -- listeners, metrics, logs ---------------------------------------------------------------


async def test_listeners_hear_every_transition_and_a_broken_one_does_no_harm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    f = Fixture(config(permitted_calls_in_half_open_state=1))
    heard: list[tuple[str, BreakerState, BreakerState]] = []

    def broken(name: str, before: BreakerState, after: BreakerState) -> None:
        raise RuntimeError("listener bug")

    f.breaker.on_state_change(broken)
    remove = f.breaker.on_state_change(lambda *change: heard.append(change))
    with caplog.at_level(logging.INFO, logger="tenantry.breaker"):
        await open_it(f)
        f.clock.advance(30)
        await f.succeed()
    assert heard == [
        ("dep", BreakerState.CLOSED, BreakerState.OPEN),
        ("dep", BreakerState.OPEN, BreakerState.HALF_OPEN),
        ("dep", BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    messages = [r.getMessage() for r in caplog.records if r.name == "tenantry.breaker"]
    assert "circuit breaker dep: closed -> open (failure rate 100.0%" in messages[0]
    assert any("state listener failed" in m for m in messages)
    remove()
    f.breaker.force_open()
    assert len(heard) == 3


async def test_metrics_count_calls_by_outcome_transitions_and_state() -> None:
    f = Fixture(config(permitted_calls_in_half_open_state=1))
    await f.succeed()
    await f.succeed(5.0)
    await f.fail(5.0)
    await f.fail(exc=asyncio.CancelledError())
    await f.fail()
    await f.fail()  # 3 of 5 fail: opens
    for _ in range(2):
        with pytest.raises(CallNotPermitted):
            await f.succeed()
    calls = {a["outcome"]: v for a, v in f.points("tenantry.breaker.calls")}
    assert calls == {
        "success": 1,
        "slow_success": 1,
        "slow_failure": 1,
        "failure": 2,
        "not_permitted": 2,
        "ignored": 1,
    }
    assert all(a["breaker"] == "dep" for a, _ in f.points("tenantry.breaker.calls"))
    transitions = f.points("tenantry.breaker.transitions")
    assert transitions == [({"breaker": "dep", "from_state": "closed", "to_state": "open"}, 1)]
    gauge = {(a["breaker"], a["state"]): v for a, v in f.points("tenantry.breaker.state")}
    assert gauge[("dep", "open")] == 1
    assert sum(gauge.values()) == 1
    assert len(gauge) == len(BreakerState)


async def test_breakers_sharing_a_meter_each_report_their_state() -> None:
    f = Fixture(config())
    other = CircuitBreaker("other", config(), clock=f.clock, meter=f.meter)
    other.force_open()
    gauge = {(a["breaker"], a["state"]): v for a, v in f.points("tenantry.breaker.state")}
    assert gauge[("dep", "closed")] == 1
    assert gauge[("other", "forced_open")] == 1


# -- registry and config ----------------------------------------------------------------------


async def test_the_registry_makes_each_breaker_once_and_lists_them() -> None:
    clock = ManualClock()
    reader = InMemoryMetricReader()
    registry = BreakerRegistry(
        config(), clock=clock, meter=MeterProvider(metric_readers=[reader]).get_meter("t")
    )
    heard: list[str] = []
    registry.on_state_change(lambda name, before, after: heard.append(f"{name}:{after}"))
    kafka = registry.get("kafka", config(wait_duration_in_open_state=5))
    assert registry.get("kafka") is kafka
    assert kafka.config.wait_duration_in_open_state == 5
    jwks = registry.get("jwks")
    assert jwks.config == registry.default_config
    assert [b.name for b in registry] == ["kafka", "jwks"]
    assert "jwks" in registry
    assert len(registry) == 2
    jwks.force_open()
    assert heard == ["jwks:forced_open"]
    assert registry.snapshots()["jwks"].as_dict()["state"] == "forced_open"


@pytest.mark.parametrize(
    "bad",
    [
        {"sliding_window_size": 0},
        {"minimum_number_of_calls": 0},
        {"failure_rate_threshold": 0},
        {"slow_call_rate_threshold": 101},
        {"slow_call_duration_threshold": 0},
        {"wait_duration_in_open_state": -1},
        {"permitted_calls_in_half_open_state": 0},
        {"max_wait_in_half_open": -1},
    ],
)
def test_config_refuses_nonsense(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        config(**bad)


async def test_a_guard_guards_one_call() -> None:
    f = Fixture(config())
    guard = f.breaker.guard()
    async with guard:
        pass
    with pytest.raises(RuntimeError, match="one call"):
        async with guard:
            pass


# -- properties ----------------------------------------------------------------------------


_PROPERTY_METER = MeterProvider().get_meter("property")


def _reference_rate(outcomes: list[bool]) -> float:
    return sum(outcomes) * 100.0 / len(outcomes)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 30), outcomes=st.lists(st.booleans(), max_size=200))
def test_count_window_matches_the_last_n_outcomes(size: int, outcomes: list[bool]) -> None:
    window = CountWindow(size)
    for i, failed in enumerate(outcomes):
        window.record(failed=failed, slow=not failed)
        last = outcomes[max(0, i + 1 - size) : i + 1]
        assert window.calls == len(last)
        assert window.failures == sum(last)
        assert window.slow_calls == len(last) - sum(last)


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.integers(1, 10),
    calls=st.lists(
        st.tuples(st.floats(0, 4, allow_nan=False), st.booleans(), st.booleans()), max_size=100
    ),
)
def test_time_window_matches_the_calls_of_the_last_n_seconds(
    seconds: int, calls: list[tuple[float, bool, bool]]
) -> None:
    window = TimeWindow(seconds)
    now, history = 50.0, []
    for gap, failed, slow in calls:
        now += gap
        window.record(failed=failed, slow=slow, now=now)
        history.append((int(now // 1), failed, slow))
        inside = [(f, s) for second, f, s in history if second > int(now // 1) - seconds]
        assert window.calls == len(inside)
        assert window.failures == sum(f for f, _ in inside)
        assert window.slow_calls == sum(s for _, s in inside)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 20),
    minimum=st.integers(1, 25),
    threshold=st.floats(1, 100),
    outcomes=st.lists(st.booleans(), max_size=120),
)
def test_breaker_failure_rate_matches_a_reference_and_opens_exactly_at_the_threshold(
    size: int, minimum: int, threshold: float, outcomes: list[bool]
) -> None:
    breaker = CircuitBreaker(
        "prop",
        BreakerConfig(
            sliding_window_size=size,
            minimum_number_of_calls=minimum,
            failure_rate_threshold=threshold,
        ),
        clock=ManualClock(),
        meter=_PROPERTY_METER,
    )
    for i, failed in enumerate(outcomes):
        breaker.try_acquire()
        if failed:
            breaker.on_error(0.0, Boom())
        else:
            breaker.on_success(0.0)
        last = outcomes[max(0, i + 1 - size) : i + 1]
        judged = len(last) >= min(minimum, size)
        expected = _reference_rate(last) if judged else None
        opens = expected is not None and expected >= threshold
        assert breaker.state is (BreakerState.OPEN if opens else BreakerState.CLOSED)
        assert breaker.snapshot().failure_rate == expected
        if opens:
            break
