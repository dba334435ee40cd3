"""A retry budget (Google SRE, Finagle's RetryBudget): retries may add at most `ratio` of
the requests made over a sliding window, plus a small floor per second.

Why: retrying at every layer multiplies load exactly when a dependency is struggling (three
attempts at each of three layers is 27 calls per request). A per-attempt limit such as "3
tries" does not stop that; a budget does: while most requests succeed, the few that fail
are retried; when most fail, the budget runs out and the extra load stays under `ratio`
(10 %), so retries cannot turn a partial outage into a full one. The floor keeps a client
that makes few requests able to retry at all.

Count each original request with `record_request()` (not its retries) and ask
`try_spend_retry()` before each retry. With tenacity::

    budget = RetryBudget()
    async for attempt in AsyncRetrying(
        before=record_first_attempt(budget),
        stop=stop_when_budget_exhausted(budget, stop_after_attempt(4)),
        wait=wait_exponential_jitter(initial=0.1, max=2),
        reraise=True,
    ):
        with attempt:
            await call()
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tenacity import RetryCallState

__all__ = [
    "RetryBudget",
    "record_first_attempt",
    "retry_if_budget",
    "stop_when_budget_exhausted",
]

# Float slack when comparing a whole number of retries with ratio * requests (0.1 * 30 is
# 3.0000000000000004, 0.1 * 3 is 0.30000000000000004).
_EPSILON = 1e-9


class RetryBudget:
    """Allows a retry while retries <= ratio * requests + min_retries_per_second * window,
    counted over the last `window_seconds` seconds in one bucket per second.

    Meant for one event loop (no awaits inside, so no lock needed there).
    """

    def __init__(
        self,
        *,
        ratio: float = 0.1,
        min_retries_per_second: float = 1.0,
        window_seconds: int = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0:
            raise ValueError("ratio must not be negative")
        if min_retries_per_second < 0:
            raise ValueError("min_retries_per_second must not be negative")
        if window_seconds < 1:
            raise ValueError("window_seconds must be at least 1")
        self.ratio = ratio
        self.min_retries_per_second = min_retries_per_second
        self.window_seconds = window_seconds
        self._clock = clock
        self._bucket_requests = [0] * window_seconds
        self._bucket_retries = [0] * window_seconds
        self._head: int | None = None  # the second the newest bucket belongs to
        self._requests = 0
        self._retries = 0

    def record_request(self) -> None:
        """Count one original request (not a retry): it earns `ratio` of a retry."""
        i = self._advance()
        self._bucket_requests[i] += 1
        self._requests += 1

    def try_spend_retry(self) -> bool:
        """Spend one retry if the budget has one; False means do not retry."""
        i = self._advance()
        if self._retries + 1 > self._allowance() + _EPSILON:
            return False
        self._bucket_retries[i] += 1
        self._retries += 1
        return True

    @property
    def requests(self) -> int:
        """Requests counted in the window now."""
        self._advance()
        return self._requests

    @property
    def retries(self) -> int:
        """Retries spent in the window now."""
        self._advance()
        return self._retries

    @property
    def available(self) -> int:
        """How many retries could be spent now."""
        self._advance()
        return max(0, math.floor(self._allowance() + _EPSILON) - self._retries)

    def _allowance(self) -> float:
        return self.ratio * self._requests + self.min_retries_per_second * self.window_seconds

    def _advance(self) -> int:
        """Expire the buckets older than the window; return the index of the current one."""
        second = math.floor(self._clock())
        size = self.window_seconds
        if self._head is None:
            self._head = second
        elif second > self._head:
            for step in range(1, min(second - self._head, size) + 1):
                i = (self._head + step) % size
                self._requests -= self._bucket_requests[i]
                self._retries -= self._bucket_retries[i]
                self._bucket_requests[i] = self._bucket_retries[i] = 0
            self._head = second
        # A clock that steps back counts into the newest bucket rather than the past.
        return self._head % size


def _attempt_raised(retry_state: RetryCallState) -> bool:
    outcome = retry_state.outcome
    return outcome is not None and outcome.failed and isinstance(outcome.exception(), Exception)


def stop_when_budget_exhausted(
    budget: RetryBudget, *others: Callable[[RetryCallState], bool]
) -> Callable[[RetryCallState], bool]:
    """A tenacity stop condition: stop when any of `others` (e.g. `stop_after_attempt(4)`)
    says stop, or else when the budget has no retry left.

    Tenacity asks `stop` only when it is about to retry, so each retry this lets through
    is spent from the budget; `others` are asked first so a stop they make spends nothing
    (that is why they are arguments here rather than combined with `stop_any`). Pass
    `reraise=True` to get the last error rather than a `RetryError`.
    """

    def stop(retry_state: RetryCallState) -> bool:
        if any(other(retry_state) for other in others):
            return True
        return not budget.try_spend_retry()

    return stop


def retry_if_budget(
    budget: RetryBudget, inner: Callable[[RetryCallState], bool] | None = None
) -> Callable[[RetryCallState], bool]:
    """A tenacity retry predicate: retry when `inner` says so (default: the attempt raised
    an `Exception`) and the budget has a retry left, which it spends.

    When the budget is empty the attempt's own outcome stands: its exception is raised as
    is, no `RetryError`. Tenacity asks `stop` after `retry`, so a retry this spends and a
    stop condition then refuses is wasted; prefer `stop_when_budget_exhausted` when you
    also stop by attempts or time.
    """
    should_retry = inner or _attempt_raised

    def retry(retry_state: RetryCallState) -> bool:
        return should_retry(retry_state) and budget.try_spend_retry()

    return retry


def record_first_attempt(budget: RetryBudget) -> Callable[[RetryCallState], None]:
    """A tenacity `before` hook that counts the request once, on its first attempt."""

    def before(retry_state: RetryCallState) -> None:
        if retry_state.attempt_number == 1:
            budget.record_request()

    return before
