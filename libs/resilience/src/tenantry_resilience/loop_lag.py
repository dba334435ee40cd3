"""How late the event loop runs ready callbacks, and how much of a call's wall time was
spent queued on the loop rather than waiting on the dependency.

Why a breaker needs it: an awaited call's wall time is the dependency's answer time plus
the time the answer then waited for the loop (the reply sits in the socket until the loop
gets round to reading it, and the task waits again to be resumed). On a saturated loop
the second part dominates, so a breaker fed wall times opens on a healthy dependency.

How it measures: a probe callback asks to run `interval` from now and records how late it
ran. A late run means the loop was busy, so while it is late the probe re-queues itself
with `call_soon` and so samples every loop iteration back to back: the busy time is then
covered without gaps (and the probe costs one tiny callback per busy iteration, which is
long by definition). Contiguous late samples are merged into busy stretches.

What a caller subtracts: from the moment a reply arrives until the awaiting task resumes,
the loop never idles (the socket is readable, then the task's wake-up is ready), so that
wait lies inside the busy stretch that reaches the end of the call. The call's time net
of queueing is therefore the time from its start to the start of that trailing stretch:
a lower bound of the dependency's time, exact to within `interval` (a stretch is seen
from the first probe run it delays). Earlier busy stretches inside the call are not
subtracted: the loop went idle after them, so the reply had not arrived yet.

Consequences: on an idle loop, a slow dependency counts in full; a fast dependency behind
a busy loop nets out to about nothing; a slow dependency behind a loop that is busy for
the whole call cannot be told apart from a fast one, and counts as fast (its errors and
timeouts still count as failures).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections import deque
from collections.abc import Callable

from opentelemetry import metrics
from opentelemetry.metrics import Histogram, Meter

__all__ = ["LoopLagProbe"]

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Seconds: the default buckets are made for milliseconds and would put every lag in one."""


class _Histograms:
    """One `tenantry.event_loop.lag` histogram per meter: an instrument is registered once
    per name, so every probe of a meter shares it."""

    def __init__(self) -> None:
        self._by_meter: dict[int, tuple[Meter, Histogram]] = {}
        self._default: Meter | None = None

    def get(self, meter: Meter | None) -> Histogram:
        if meter is None:
            # One default meter for every probe (see breaker.py: before an SDK provider is
            # set, each get_meter call returns a new proxy).
            if self._default is None:
                self._default = metrics.get_meter("tenantry.resilience")
            meter = self._default
        entry = self._by_meter.get(id(meter))
        if entry is None:
            histogram = meter.create_histogram(
                "tenantry.event_loop.lag",
                unit="s",
                description="How late the event loop ran a callback that was ready "
                "(one sample per probe run: every 10 ms when idle, every iteration when busy)",
                explicit_bucket_boundaries_advisory=list(LAG_BUCKETS),
            )
            # The meter is kept with its histogram, so its id stays unique in the cache.
            entry = self._by_meter[id(meter)] = (meter, histogram)
        return entry[1]


_histograms = _Histograms()


def _tick(ref: weakref.ref[LoopLagProbe]) -> None:
    # The loop holds only a weak reference: a probe nobody uses any more stops by itself.
    probe = ref()
    if probe is not None:
        probe._tick()


class LoopLagProbe:
    """Samples how late one event loop runs ready callbacks; answers how much of a recent
    interval was loop queueing (`queued`, `net`) and how late the loop runs now (`lag`).

    Starts on first use in a running loop (`now()`), or with `start(loop)`; follows the
    running loop if it changes (tests). All times come from `clock`, which must be the
    loop's clock or tick at the same rate (the default, `time.monotonic`, is asyncio's).
    `slack` is the lateness that counts as "busy": below it, timer and scheduler jitter.
    """

    def __init__(
        self,
        interval: float = 0.01,
        *,
        slack: float = 0.001,
        history: int = 64,
        clock: Callable[[], float] = time.monotonic,
        meter: Meter | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if slack < 0:
            raise ValueError("slack must not be negative")
        self.interval = interval
        self.slack = slack
        self._clock = clock
        self._histogram = _histograms.get(meter)
        # Busy stretches, oldest first, as [start, end]; contiguous samples extend the last.
        self._stretches: deque[list[float]] = deque(maxlen=history)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.Handle | None = None
        self._pending_since = 0.0  # when the pending probe run became due
        self._chained = False  # the pending run was queued with call_soon: the loop is busy
        self._last_lag = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Sample `loop` (the running loop by default); a no-op if already sampling it."""
        loop = loop or asyncio.get_running_loop()
        if loop is self._loop:
            return
        self.close()
        self._loop = loop
        self._schedule(self._clock(), late=False)

    def close(self) -> None:
        """Stop sampling and forget what was seen."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._loop = None
        self._stretches.clear()
        self._chained = False
        self._last_lag = 0.0

    def now(self) -> float:
        """The probe's clock; starts (or moves) the probe to the running loop, if any.
        Take a call's start time with it."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no running loop: nothing to sample
            return self._clock()
        if loop is not self._loop:
            self.start(loop)
        return self._clock()

    # -- readings ----------------------------------------------------------------------------

    def lag(self) -> float:
        """How late the loop runs now, in seconds: how long the pending probe run has been
        overdue if it is, else how late the last one ran."""
        overdue = self._overdue(self._clock())
        return overdue[1] - overdue[0] if overdue is not None else self._last_lag

    def queued(self, started: float, ended: float | None = None) -> float:
        """Seconds at the end of [started, ended] (ended: now) that the loop spent busy
        without a break: what a reply that arrived in that time waited for the loop."""
        now = self._clock()
        end = now if ended is None else ended
        busy_from = self._busy_since(end, now)
        if busy_from is None:
            return 0.0
        return max(0.0, end - max(busy_from, started))

    def net(self, started: float, ended: float | None = None) -> float:
        """The duration of [started, ended] (ended: now) less the loop queueing at its end:
        the time to hand to a circuit breaker as the dependency's answer time."""
        end = self._clock() if ended is None else ended
        return max(0.0, end - started - self.queued(started, end))

    def _overdue(self, now: float) -> tuple[float, float] | None:
        """The busy interval shown by the pending probe run not having run yet, if any."""
        if self._handle is None:
            return None
        if self._chained or now - self._pending_since > self.slack:
            return (self._pending_since, now) if now > self._pending_since else None
        return None

    def _busy_since(self, end: float, now: float) -> float | None:
        """The start of the busy stretch that reaches `end` (within `slack`), if any."""
        overdue = self._overdue(now)
        newest_first = itertools.chain(
            [list(overdue)] if overdue is not None else [], reversed(self._stretches)
        )
        since: float | None = None
        for start, stop in newest_first:
            if since is None:
                if stop < end - self.slack:
                    break  # stretches are in time order: none older reaches `end`
                if start <= end:
                    since = start
            elif stop >= since - self.slack:  # contiguous with the stretch found
                since = min(since, start)
            else:
                break
        return since

    # -- sampling ----------------------------------------------------------------------------

    def _tick(self) -> None:
        ran = self._clock()
        late = max(0.0, ran - self._pending_since)
        self._last_lag = late
        self._histogram.record(late)
        if self._chained or late > self.slack:
            # A chained run follows the previous one without a gap: the loop was busy
            # throughout, even if this last iteration was short.
            self._extend(self._pending_since, ran)
        self._schedule(ran, late=late > self.slack)

    def _extend(self, start: float, end: float) -> None:
        last = self._stretches[-1] if self._stretches else None
        if last is not None and start <= last[1] + self.slack:
            last[1] = max(last[1], end)
        else:
            self._stretches.append([start, end])

    def _schedule(self, now: float, *, late: bool) -> None:
        assert self._loop is not None
        ref = weakref.ref(self)
        self._chained = late
        if late:
            self._pending_since = now
            self._handle = self._loop.call_soon(_tick, ref)
        else:
            self._pending_since = now + self.interval
            self._handle = self._loop.call_later(self.interval, _tick, ref)
