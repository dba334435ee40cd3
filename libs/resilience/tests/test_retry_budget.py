"""The retry budget, alone and driving tenacity, with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_none,
)

from tenantry_resilience.retry_budget import (
    RetryBudget,
    record_first_attempt,
    retry_if_budget,
    stop_when_budget_exhausted,
)
from tenantry_resilience.testing import ManualClock


class Unavailable(Exception):
    pass


def test_retries_stay_within_the_ratio_of_requests() -> None:
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0, clock=ManualClock())
    assert not budget.try_spend_retry()  # no requests, no floor: nothing to spend
    for _ in range(30):
        budget.record_request()
    spent = sum(budget.try_spend_retry() for _ in range(10))
    assert spent == 3  # 10 % of 30: the float 0.1 * 30 must not lose the third
    assert (budget.requests, budget.retries, budget.available) == (30, 3, 0)
    for _ in range(10):
        budget.record_request()
    assert budget.available == 1
    assert budget.try_spend_retry()
    assert not budget.try_spend_retry()


def test_the_floor_allows_a_few_retries_without_requests() -> None:
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0.5, window_seconds=10)
    assert budget.available == 5
    assert sum(budget.try_spend_retry() for _ in range(10)) == 5


def test_requests_and_retries_leave_the_window() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0, window_seconds=10, clock=clock)
    for _ in range(4):
        budget.record_request()
    assert budget.try_spend_retry()
    assert budget.try_spend_retry()
    assert not budget.try_spend_retry()
    clock.advance(9.99)  # still inside the 10 seconds
    assert not budget.try_spend_retry()
    clock.advance(0.01)
    assert (budget.requests, budget.retries) == (0, 0)
    assert not budget.try_spend_retry()  # the requests that paid for retries are gone too
    budget.record_request()
    budget.record_request()
    assert budget.try_spend_retry()


def test_a_long_quiet_spell_empties_the_window() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0, clock=clock)
    for _ in range(100):
        budget.record_request()
    clock.advance(1_000_000)
    assert (budget.requests, budget.available) == (0, 0)


@pytest.mark.parametrize(
    "bad", [{"ratio": -0.1}, {"min_retries_per_second": -1}, {"window_seconds": 0}]
)
def test_budget_refuses_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        RetryBudget(**bad)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(
    ratio=st.sampled_from([0.05, 0.1, 0.2, 0.5]),
    steps=st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.booleans()), max_size=300),
)
def test_a_retry_is_granted_exactly_while_it_keeps_retries_within_the_ratio(
    ratio: float, steps: list[tuple[float, bool]]
) -> None:
    """Checked when a retry is asked for: requests that later leave the window do not
    take back retries already made."""
    clock = ManualClock()
    budget = RetryBudget(ratio=ratio, min_retries_per_second=0, window_seconds=5, clock=clock)
    history: list[tuple[int, str]] = []
    for gap, is_retry in steps:
        clock.advance(gap)
        second = int(clock.now // 1)
        inside = [kind for s, kind in history if s > second - 5]
        if is_retry:
            within = inside.count("retry") + 1 <= ratio * inside.count("request") + 1e-9
            assert budget.try_spend_retry() is within
            if within:
                history.append((second, "retry"))
        else:
            budget.record_request()
            history.append((second, "request"))


async def _always_fails(calls: list[int]) -> None:
    calls.append(1)
    raise Unavailable


async def test_tenacity_stops_retrying_when_the_budget_is_spent() -> None:
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0, clock=ManualClock())
    for _ in range(20):
        budget.record_request()  # the other traffic of this client: 2 retries' worth
    calls: list[int] = []
    with pytest.raises(Unavailable):
        async for attempt in AsyncRetrying(
            stop=stop_when_budget_exhausted(budget),
            wait=wait_none(),
            reraise=True,
        ):
            with attempt:
                await _always_fails(calls)
    assert len(calls) == 3  # the attempt and the 2 retries the budget had
    assert budget.available == 0


async def test_tenacity_other_stops_are_asked_first_and_spend_nothing() -> None:
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0, clock=ManualClock())
    for _ in range(10):
        budget.record_request()
    calls: list[int] = []
    with pytest.raises(RetryError):
        async for attempt in AsyncRetrying(
            stop=stop_when_budget_exhausted(budget, stop_after_attempt(3)), wait=wait_none()
        ):
            with attempt:
                await _always_fails(calls)
    assert len(calls) == 3
    assert budget.retries == 2  # the stop after the third attempt spent nothing


async def test_tenacity_counts_each_request_once_and_retries_within_budget() -> None:
    budget = RetryBudget(ratio=0.5, min_retries_per_second=0, clock=ManualClock())
    calls: list[int] = []
    for _ in range(4):  # four requests to a dependency that is down
        with pytest.raises(Unavailable):
            async for attempt in AsyncRetrying(
                before=record_first_attempt(budget),
                retry=retry_if_budget(budget),
                wait=wait_none(),
            ):
                with attempt:
                    await _always_fails(calls)
    # Without the budget every request would retry forever; with it: 4 requests, 2 retries.
    assert (budget.requests, budget.retries, len(calls)) == (4, 2, 6)


async def test_retry_if_budget_asks_the_inner_predicate_first() -> None:
    budget = RetryBudget(ratio=1.0, min_retries_per_second=1, clock=ManualClock())
    calls: list[int] = []
    with pytest.raises(Unavailable):
        async for attempt in AsyncRetrying(
            retry=retry_if_budget(budget, retry_if_exception_type(KeyError)), wait=wait_none()
        ):
            with attempt:
                await _always_fails(calls)
    assert len(calls) == 1
    assert budget.retries == 0
