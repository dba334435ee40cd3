"""The slots and the queue: `AdmissionController` grants concurrency slots by priority
class, queues the rest fairly across tenants, and drops waiters past their deadline."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tenantry_guardrails.admission.instruments import attributes, instruments, live_controllers
from tenantry_guardrails.admission.limits import ConcurrencyLimit, build_limit
from tenantry_guardrails.admission.priorities import (
    PRIORITIES,
    Clock,
    Priority,
    Rejected,
    RejectReason,
)
from tenantry_guardrails.admission.settings import AdmissionSettings


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
        self._metrics = instruments()
        live_controllers.add(self)

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
        self._metrics.admitted.add(1, attributes(priority))
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
        self._metrics.rejected.add(1, attributes(priority, reason))
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
