"""Concurrency limits: how many requests may run at once, fixed or adaptive (Netflix's
Gradient2 and AIMD), fed one aggregate per window of finished requests. Pure."""

from __future__ import annotations

import math
from typing import Protocol

from tenantry_guardrails.admission.settings import AdmissionSettings


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
