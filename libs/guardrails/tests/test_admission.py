"""Admission control: slots, the fair priority queue, deadlines, cancellation, the limit
algorithms (deterministic sample sequences) and the outer ASGI gate in-process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar import Litestar, get, post
from litestar.exceptions import InternalServerException
from litestar.params import FromPath
from litestar.testing import AsyncTestClient

from tenantry_guardrails.admission import (
    PRIORITIES,
    AdmissionController,
    AdmissionGate,
    AdmissionSettings,
    AimdLimit,
    FixedLimit,
    Gradient2Limit,
    LoopLagMonitor,
    Priority,
    Rejected,
    RejectReason,
    RouteTable,
    Ticket,
    WindowedLimit,
    build_limit,
    client_deadline,
    fairness_key,
)
from tenantry_http.problems import PROBLEM_BASE, PROBLEM_JSON
from tenantry_platform.clock import FakeClock

CRITICAL, DEFAULT, SHEDDABLE = Priority.CRITICAL, Priority.DEFAULT, Priority.SHEDDABLE
T = TypeVar("T")


def flat_settings(limit: int, **overrides: Any) -> AdmissionSettings:
    """A fixed limit every class may fill, so a test sees plain slots unless it opts in."""
    values: dict[str, Any] = {
        "mode": "fixed",
        "fixed_limit": limit,
        "default_capacity_share": 1.0,
        "sheddable_capacity_share": 1.0,
        "default_queue_share": 1.0,
        "sheddable_queue_share": 1.0,
        "critical_max_wait_seconds": 60.0,
        "default_max_wait_seconds": 60.0,
        "sheddable_max_wait_seconds": 60.0,
    }
    values.update(overrides)
    return AdmissionSettings(**values)


def controller(limit: int, **overrides: Any) -> tuple[AdmissionController, FakeClock]:
    clock = FakeClock()
    return AdmissionController(flat_settings(limit, **overrides), clock=clock.now), clock


async def settle() -> None:
    """Let woken waiters run: a grant resumes its task on a later loop iteration."""
    for _ in range(5):
        await asyncio.sleep(0)


def on_done(sink: list[T], value: T) -> Callable[[asyncio.Task[Ticket]], None]:
    """A done-callback that notes `value` when the task finishes: the order of grants."""
    return lambda _task: sink.append(value)


def waiting(admission: AdmissionController, priority: Priority, key: str) -> asyncio.Task[Ticket]:
    return asyncio.create_task(admission.acquire(priority, key))


# --------------------------------------------------------------------------- slots


async def test_a_fixed_limit_admits_exactly_that_many_at_once() -> None:
    admission, _ = controller(3)
    tickets = [await admission.acquire(DEFAULT, "t") for _ in range(3)]
    fourth = waiting(admission, DEFAULT, "t")
    await settle()
    assert admission.inflight == 3
    assert not fourth.done()
    assert admission.queued() == 1

    tickets[0].release(0.01, ok=True)
    await settle()
    assert fourth.done()
    assert admission.inflight == 3
    for ticket in [*tickets[1:], fourth.result()]:
        ticket.release(0.01, ok=True)
    assert admission.inflight == 0


async def test_releasing_a_ticket_twice_frees_one_slot() -> None:
    admission, _ = controller(2)
    first = await admission.acquire(DEFAULT, "t")
    await admission.acquire(DEFAULT, "t")
    first.release(0.01, ok=True)
    first.release(0.01, ok=True)
    first.abandon()
    assert admission.inflight == 1


async def test_waiters_of_one_key_are_served_in_arrival_order() -> None:
    admission, _ = controller(1)
    held = await admission.acquire(DEFAULT, "t")
    order: list[int] = []
    tasks = [waiting(admission, DEFAULT, "t") for _ in range(5)]
    for index, task in enumerate(tasks):
        task.add_done_callback(on_done(order, index))
    await settle()

    held.release(0.01, ok=True)
    for task in tasks:
        await settle()
        task.result().release(0.01, ok=True)
    assert order == [0, 1, 2, 3, 4]
    assert admission.inflight == 0


async def test_one_tenants_backlog_does_not_starve_another() -> None:
    admission, _ = controller(1, max_queue=200)
    held = await admission.acquire(DEFAULT, "tenant-a")
    served: list[str] = []
    backlog = [waiting(admission, DEFAULT, "tenant-a") for _ in range(100)]
    await settle()
    single = waiting(admission, DEFAULT, "tenant-b")
    await settle()
    for task, key in [*((t, "tenant-a") for t in backlog), (single, "tenant-b")]:
        task.add_done_callback(on_done(served, key))

    held.release(0.01, ok=True)
    for _ in range(3):
        await settle()
        granted = [t for t in [*backlog, single] if t.done() and not t.result().released]
        for task in granted:
            task.result().release(0.01, ok=True)
    assert "tenant-b" in served[:2]
    for task in backlog:
        task.cancel()
    await settle()


async def test_a_flooding_tenant_cannot_lock_others_out_of_a_full_queue() -> None:
    admission, _ = controller(1, max_queue=10)
    await admission.acquire(DEFAULT, "tenant-a")
    flood = [waiting(admission, DEFAULT, "tenant-a") for _ in range(10)]
    await settle()
    assert admission.queued() == 10

    newcomer = waiting(admission, DEFAULT, "tenant-b")
    await settle()
    assert not newcomer.done()  # queued, in place of tenant A's newest request
    with pytest.raises(Rejected) as refused:
        flood[-1].result()
    assert refused.value.reason is RejectReason.SHED
    assert admission.queued() == 10
    for task in [*flood[:-1], newcomer]:
        task.cancel()
    await settle()


async def test_higher_classes_are_served_first() -> None:
    admission, _ = controller(1)
    held = await admission.acquire(CRITICAL, "t")
    order: list[Priority] = []
    tasks = {p: waiting(admission, p, "t") for p in (SHEDDABLE, DEFAULT, CRITICAL)}
    for priority, task in tasks.items():
        task.add_done_callback(on_done(order, priority))
    await settle()

    held.release(0.01, ok=True)
    for _ in range(3):
        await settle()
        next(t for t in tasks.values() if t.done() and not t.result().released).result().release(
            0.01, ok=True
        )
    assert order == [CRITICAL, DEFAULT, SHEDDABLE]


async def test_the_top_of_the_limit_is_reserved_for_more_important_classes() -> None:
    settings = AdmissionSettings(mode="fixed", fixed_limit=10)
    admission = AdmissionController(settings, clock=FakeClock().now)
    assert [admission.capacity(p) for p in PRIORITIES] == [10, 8, 5]

    tickets = [await admission.acquire(SHEDDABLE, "t") for _ in range(5)]
    sheddable = waiting(admission, SHEDDABLE, "t")
    tickets += [await admission.acquire(DEFAULT, "t") for _ in range(3)]
    default = waiting(admission, DEFAULT, "t")
    tickets += [await admission.acquire(CRITICAL, "t") for _ in range(2)]
    await settle()
    assert admission.inflight == 10
    assert not sheddable.done()
    assert not default.done()
    for ticket in tickets:
        ticket.release(0.01, ok=True)
    await settle()
    assert sheddable.done()
    assert default.done()


async def test_a_critical_arrival_evicts_the_newest_sheddable_waiter_when_full() -> None:
    admission, _ = controller(1, max_queue=4, sheddable_queue_share=0.5)
    await admission.acquire(CRITICAL, "t")
    defaults = [waiting(admission, DEFAULT, "t") for _ in range(2)]
    older, newer = waiting(admission, SHEDDABLE, "s"), waiting(admission, SHEDDABLE, "s")
    await settle()
    assert admission.queued() == 4

    critical = waiting(admission, CRITICAL, "c")
    await settle()
    assert not critical.done()
    assert isinstance(newer.exception(), Rejected)
    assert newer.exception().reason is RejectReason.SHED  # type: ignore[union-attr]
    assert not older.done()

    # Nothing lower left to push out, and the arrival's class is not its own victim.
    with pytest.raises(Rejected) as refused:
        await admission.acquire(SHEDDABLE, "s")
    assert refused.value.reason is RejectReason.QUEUE_FULL
    assert refused.value.retry_after >= 1
    for task in [*defaults, older, critical]:
        task.cancel()
    await settle()


async def test_each_class_may_fill_only_its_share_of_the_queue() -> None:
    admission, _ = controller(1, max_queue=8, sheddable_queue_share=0.25)
    await admission.acquire(CRITICAL, "t")
    assert admission.queue_capacity(SHEDDABLE) == 2
    first = [waiting(admission, SHEDDABLE, "a") for _ in range(2)]
    await settle()
    with pytest.raises(Rejected) as refused:
        await admission.acquire(SHEDDABLE, "a")
    assert refused.value.reason is RejectReason.QUEUE_FULL
    assert admission.queued(SHEDDABLE) == 2
    others = [waiting(admission, DEFAULT, "a") for _ in range(6)]
    await settle()
    assert admission.queued() == 8
    for task in [*first, *others]:
        task.cancel()
    await settle()


async def test_a_class_that_may_not_queue_is_shed_at_once() -> None:
    admission, _ = controller(1, sheddable_queue_share=0.0)
    await admission.acquire(CRITICAL, "t")
    with pytest.raises(Rejected) as refused:
        await admission.acquire(SHEDDABLE, "t")
    assert refused.value.reason is RejectReason.SHED


# --------------------------------------------------------------------------- deadlines


async def test_a_waiter_past_its_deadline_is_dropped_when_its_turn_comes() -> None:
    admission, clock = controller(1, default_max_wait_seconds=1.0)
    held = await admission.acquire(DEFAULT, "t")
    late = waiting(admission, DEFAULT, "t")
    await settle()
    clock.advance(2.0)  # the fake clock moves, the loop timer has not fired yet
    held.release(0.01, ok=True)
    await settle()
    with pytest.raises(Rejected) as refused:
        late.result()
    assert refused.value.reason is RejectReason.DEADLINE_EXCEEDED
    assert admission.inflight == 0
    assert admission.snapshot().admitted[DEFAULT] == 1


async def test_a_waiter_leaves_the_queue_at_its_deadline_on_its_own() -> None:
    settings = flat_settings(1, default_max_wait_seconds=0.05)
    admission = AdmissionController(settings, clock=time.monotonic)
    held = await admission.acquire(DEFAULT, "t")
    with pytest.raises(Rejected) as refused:
        await asyncio.wait_for(admission.acquire(DEFAULT, "t"), timeout=5)
    assert refused.value.reason is RejectReason.DEADLINE_EXCEEDED
    assert admission.queued() == 0
    held.release(0.01, ok=True)
    assert admission.inflight == 0


async def test_an_earlier_client_deadline_wins_and_a_passed_one_is_refused_at_once() -> None:
    admission, clock = controller(1)
    with pytest.raises(Rejected) as refused:
        await admission.acquire(DEFAULT, "t", deadline=clock.now())
    assert refused.value.reason is RejectReason.DEADLINE_EXCEEDED
    assert admission.inflight == 0

    held = await admission.acquire(DEFAULT, "t")
    client_bound = asyncio.create_task(admission.acquire(DEFAULT, "t", deadline=clock.now() + 1))
    await settle()
    clock.advance(1.5)  # past the client's deadline, well inside the class's 60 s
    held.release(0.01, ok=True)
    await settle()
    assert isinstance(client_bound.exception(), Rejected)


# --------------------------------------------------------------------------- cancellation


async def test_cancelling_a_waiter_leaks_nothing() -> None:
    admission, _ = controller(1)
    held = await admission.acquire(DEFAULT, "t")
    gone = waiting(admission, DEFAULT, "t")
    await settle()
    gone.cancel()
    await settle()
    assert gone.cancelled()
    assert admission.queued() == 0
    held.release(0.01, ok=True)
    await settle()
    assert admission.inflight == 0
    assert admission.snapshot().cancelled[DEFAULT] == 1


async def test_a_waiter_cancelled_right_after_its_grant_gives_the_slot_back() -> None:
    admission, _ = controller(1)
    held = await admission.acquire(DEFAULT, "t")
    granted_then_gone = waiting(admission, DEFAULT, "t")
    behind = waiting(admission, DEFAULT, "t")
    await settle()
    held.release(0.01, ok=True)  # grants the first waiter, whose task has not run yet
    granted_then_gone.cancel()
    await settle()
    assert granted_then_gone.cancelled()
    assert behind.done()  # the returned slot went to the next in line
    behind.result().release(0.01, ok=True)
    assert admission.inflight == 0


# --------------------------------------------------------------------------- limits


def test_gradient2_grows_under_flat_latency_when_saturated_and_stays_bounded() -> None:
    limit = Gradient2Limit(initial_limit=10, min_limit=2, max_limit=50)
    seen = [limit.limit]
    for _ in range(300):
        limit.on_sample(0.010, inflight=limit.limit, dropped=False)
        seen.append(limit.limit)
    assert seen == sorted(seen)
    assert seen[20] > 10
    assert max(seen) == 50


def test_gradient2_does_not_grow_while_the_limit_is_unused() -> None:
    limit = Gradient2Limit(initial_limit=10, min_limit=2, max_limit=50)
    for _ in range(300):
        limit.on_sample(0.010, inflight=2, dropped=False)
    assert limit.limit == 10


def test_gradient2_shrinks_when_latency_rises_and_stops_at_the_minimum() -> None:
    limit = Gradient2Limit(initial_limit=40, min_limit=5, max_limit=100)
    for _ in range(50):
        limit.on_sample(0.010, inflight=limit.limit, dropped=False)
    before = limit.limit
    seen = []
    for _ in range(60):
        limit.on_sample(0.080, inflight=limit.limit, dropped=False)
        seen.append(limit.limit)
    assert seen[5] < before
    assert min(seen) == 5
    assert all(value >= 5 for value in seen)


def test_gradient2_tolerates_small_latency_increases() -> None:
    limit = Gradient2Limit(initial_limit=20, min_limit=2, max_limit=30, tolerance=1.5)
    for _ in range(100):
        limit.on_sample(0.010, inflight=limit.limit, dropped=False)
    for _ in range(20):
        limit.on_sample(0.013, inflight=limit.limit, dropped=False)
    assert limit.limit == 30


def test_gradient2_never_grows_on_failures() -> None:
    limit = Gradient2Limit(initial_limit=10, min_limit=2, max_limit=50)
    limit.on_sample(0.010, inflight=10, dropped=False)
    start = limit.limit
    for _ in range(50):
        limit.on_sample(0.001, inflight=limit.limit, dropped=True)  # fast errors
    assert limit.limit <= start
    assert limit.long_rtt == pytest.approx(0.010)


def test_aimd_adds_one_when_in_use_and_backs_off_on_failure_or_slowness() -> None:
    limit = AimdLimit(initial_limit=10, min_limit=4, max_limit=12, timeout_seconds=1.0)
    limit.on_sample(0.01, inflight=5, dropped=False)
    assert limit.limit == 11
    limit.on_sample(0.01, inflight=1, dropped=False)
    assert limit.limit == 11
    limit.on_sample(0.01, inflight=11, dropped=False)
    limit.on_sample(0.01, inflight=11, dropped=False)
    assert limit.limit == 12
    limit.on_sample(0.01, inflight=12, dropped=True)
    assert limit.limit == 10
    limit.on_sample(2.0, inflight=12, dropped=False)
    assert limit.limit == 9
    for _ in range(20):
        limit.on_sample(0.01, inflight=12, dropped=True)
    assert limit.limit == 4


@dataclass
class RecordingLimit:
    value: int = 5
    samples: list[tuple[float, int, bool]] = field(default_factory=list)

    @property
    def limit(self) -> int:
        return self.value

    def on_sample(self, rtt_seconds: float, inflight: int, dropped: bool) -> None:
        self.samples.append((rtt_seconds, inflight, dropped))


def test_a_window_feeds_one_aggregate_per_window() -> None:
    inner = RecordingLimit()
    windowed = WindowedLimit(inner, window_size=3)
    for rtt, inflight, dropped in [(0.1, 1, False), (0.2, 4, True), (0.3, 2, False)]:
        windowed.on_sample(rtt, inflight, dropped)
    windowed.on_sample(0.5, 1, False)
    [(mean_rtt, peak_inflight, dropped_any)] = inner.samples
    assert mean_rtt == pytest.approx(0.2)
    assert (peak_inflight, dropped_any) == (4, True)


def test_build_limit_follows_the_mode() -> None:
    assert isinstance(build_limit(AdmissionSettings(mode="fixed", fixed_limit=7)), FixedLimit)
    adaptive = build_limit(AdmissionSettings())
    assert isinstance(adaptive, WindowedLimit)
    assert isinstance(adaptive.delegate, Gradient2Limit)
    aimd = build_limit(AdmissionSettings(mode="aimd"))
    assert isinstance(aimd, WindowedLimit)
    assert isinstance(aimd.delegate, AimdLimit)
    assert adaptive.limit == AdmissionSettings().initial_limit


async def test_released_latency_feeds_the_limit_with_the_admission_in_flight_count() -> None:
    recording = RecordingLimit(value=2)
    admission = AdmissionController(flat_settings(2), limit=recording, clock=FakeClock().now)
    first = await admission.acquire(DEFAULT, "t")
    second = await admission.acquire(DEFAULT, "t")
    second.release(0.25, ok=False)
    first.abandon()
    assert recording.samples == [(0.25, 2, True)]  # in flight at its start, itself included


def test_settings_reject_inconsistent_values() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"sheddable_capacity_share": 0.9}, type=AdmissionSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"min_limit": 50, "initial_limit": 10}, type=AdmissionSettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"mode": "magic"}, type=AdmissionSettings)


def test_settings_come_from_flat_prefixed_fields() -> None:
    @dataclass
    class Flat:
        admission_mode: str = "fixed"
        admission_fixed_limit: str = "12"  # as read from the environment
        unrelated: int = 1

    loaded = AdmissionSettings.from_prefixed(Flat())
    assert loaded.mode == "fixed"
    assert loaded.fixed_limit == 12
    assert loaded.max_queue == AdmissionSettings().max_queue


# --------------------------------------------------------------------------- invariants

Op = tuple[Any, ...]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.sampled_from(PRIORITIES), st.sampled_from("abc")),
        st.tuples(st.just("release"), st.integers(0, 40), st.booleans()),
        st.tuples(st.just("cancel"), st.integers(0, 40)),
        st.tuples(st.just("advance"), st.floats(0, 1.5)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.integers(1, 4))
def test_random_interleavings_keep_the_books_straight(ops: list[Op], limit: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_interleave(ops, limit))
    finally:
        loop.close()


async def _interleave(ops: list[Op], limit: int) -> None:
    clock = FakeClock()
    admission = AdmissionController(
        AdmissionSettings(
            mode="fixed",
            fixed_limit=limit,
            max_queue=6,
            critical_max_wait_seconds=3.0,
            default_max_wait_seconds=2.0,
            sheddable_max_wait_seconds=1.0,
        ),
        clock=clock.now,
    )
    tasks: list[asyncio.Task[Ticket]] = []
    released: set[int] = set()

    def holding() -> list[int]:
        return [
            i
            for i, t in enumerate(tasks)
            if t.done() and not t.cancelled() and t.exception() is None and i not in released
        ]

    def check() -> None:
        assert 0 <= admission.inflight <= admission.limit
        assert admission.inflight == len(holding())
        assert admission.queued() <= 6
        for priority in PRIORITIES:
            assert admission.queued(priority) <= admission.queue_capacity(priority)
        waiting_classes = [p for p in PRIORITIES if admission.queued(p)]
        if waiting_classes:  # work-conserving: nobody waits while their class could run
            assert admission.inflight >= admission.capacity(waiting_classes[0])

    for op in ops:
        if op[0] == "acquire":
            tasks.append(asyncio.create_task(admission.acquire(op[1], op[2])))
        elif op[0] == "release" and holding():
            index = holding()[op[1] % len(holding())]
            released.add(index)
            tasks[index].result().release(0.01, ok=op[2])
        elif op[0] == "cancel" and tasks:
            tasks[op[1] % len(tasks)].cancel()
        elif op[0] == "advance":
            clock.advance(op[1])
        await settle()
        check()

    for task in tasks:
        task.cancel()
    await settle()
    for index in holding():
        released.add(index)
        tasks[index].result().release(0.01, ok=True)
    assert admission.inflight == 0
    assert admission.queued() == 0

    snap = admission.snapshot()
    got_ticket = sum(1 for t in tasks if not t.cancelled() and t.exception() is None)
    refused = sum(1 for t in tasks if not t.cancelled() and isinstance(t.exception(), Rejected))
    cancelled = sum(1 for t in tasks if t.cancelled())
    assert got_ticket + refused + cancelled == len(tasks)
    assert refused == sum(snap.rejected.values())
    # A task cancelled just after its grant counts as admitted (its slot was handed back).
    assert got_ticket + cancelled == sum(snap.admitted.values()) + sum(snap.cancelled.values())
    assert sum(snap.admitted.values()) + sum(snap.rejected.values()) + sum(
        snap.cancelled.values()
    ) == len(tasks)


# --------------------------------------------------------------------------- HTTP

TENANT = UUID(int=7)


@dataclass
class Calls:
    count: int = 0


def routes(calls: Calls) -> Litestar:
    """The Litestar app alone: routes of each priority class, a probe and a failing route."""

    @get("/healthz", opt={"public_probe": True}, sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/v1/tenants/{tenant_id:uuid}/items", sync_to_thread=False)
    def items(tenant_id: FromPath[UUID]) -> dict[str, str]:
        calls.count += 1
        return {"tenant": str(tenant_id)}

    @post("/v1/token", opt={"priority": "critical"}, sync_to_thread=False)
    def token() -> dict[str, str]:
        calls.count += 1
        return {"token": "t"}

    @get("/v1/export", opt={"priority": Priority.SHEDDABLE}, sync_to_thread=False)
    def export() -> dict[str, str]:
        calls.count += 1
        return {"export": "e"}

    @get("/v1/boom", sync_to_thread=False)
    def boom() -> None:
        raise InternalServerException()

    return Litestar(
        route_handlers=[healthz, items, token, export, boom],
        debug=False,
        logging_config=None,
    )


def http_app(admission: AdmissionController, calls: Calls) -> AdmissionGate:
    """Admission wired as tenantry_service.app.asgi_app wires it: the gate outermost, in
    front of the whole app, classifying by the Litestar app's route table. (Tracing and
    request ids, which sit between the two in production, play no part here.)"""
    app = routes(calls)
    return AdmissionGate(app, admission, RouteTable.of(app))


def busy(limit: int = 1, **overrides: Any) -> AdmissionController:
    return AdmissionController(flat_settings(limit, **overrides), clock=time.monotonic)


async def test_a_refused_request_gets_a_fast_503_problem_with_retry_after() -> None:
    admission, calls = busy(sheddable_queue_share=0.0), Calls()
    held = await admission.acquire(CRITICAL, "someone-else")
    async with AsyncTestClient(http_app(admission, calls)) as client:
        response = await client.get("/v1/export", headers={"x-request-id": "req-1"})
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM_JSON
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    assert body["type"] == PROBLEM_BASE + "overloaded"
    assert body["status"] == 503
    assert body["reason"] == "shed"
    assert body["instance"] == "/v1/export"
    assert calls.count == 0
    held.release(0.01, ok=True)
    assert admission.inflight == 0


async def test_a_request_that_outlives_its_deadline_never_reaches_the_handler() -> None:
    admission, calls = busy(), Calls()
    held = await admission.acquire(CRITICAL, "someone-else")
    async with AsyncTestClient(http_app(admission, calls)) as client:
        expired = await client.post("/v1/token", headers={"x-request-timeout-ms": "0"})
        waited = await client.post("/v1/token", headers={"x-request-timeout-ms": "50"})
    for response in (expired, waited):
        assert response.status_code == 503
        assert response.json()["type"] == PROBLEM_BASE + "deadline-exceeded"
        assert response.headers["retry-after"].isdigit()
    assert calls.count == 0
    held.release(0.01, ok=True)
    assert admission.inflight == 0
    assert admission.queued() == 0


async def test_probes_and_the_schema_skip_admission() -> None:
    admission, calls = busy(sheddable_queue_share=0.0, default_queue_share=0.0), Calls()
    held = await admission.acquire(CRITICAL, "someone-else")
    async with AsyncTestClient(http_app(admission, calls)) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/schema/openapi.json")).status_code == 200
        assert (await client.get(f"/v1/tenants/{TENANT}/items")).status_code == 503
    held.release(0.01, ok=True)


class KeyRecordingController(AdmissionController):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keys: list[str] = []

    async def acquire(
        self, priority: Priority, fairness_key: str, deadline: float | None = None
    ) -> Ticket:
        self.keys.append(fairness_key)
        return await super().acquire(priority, fairness_key, deadline)


async def test_an_admitted_request_runs_and_gives_its_slot_back() -> None:
    recording = RecordingLimit(value=4)
    admission = KeyRecordingController(flat_settings(4), limit=recording, clock=time.monotonic)
    calls = Calls()
    async with AsyncTestClient(http_app(admission, calls)) as client:
        assert (await client.get(f"/v1/tenants/{TENANT}/items")).status_code == 200
        assert (await client.get("/v1/boom")).status_code == 500
    assert admission.keys[0] == f"tenant:{TENANT}"
    assert calls.count == 1
    assert admission.inflight == 0
    assert [dropped for _, _, dropped in recording.samples] == [False, True]
    assert all(rtt >= 0 for rtt, _, _ in recording.samples)


@pytest.mark.parametrize(
    ("path", "method", "headers", "expected"),
    [
        ("/v1/token", "post", {}, CRITICAL),
        ("/v1/token", "post", {"x-tenantry-priority": "sheddable"}, SHEDDABLE),
        (f"/v1/tenants/{TENANT}/items", "get", {"x-tenantry-priority": "critical"}, DEFAULT),
        (f"/v1/tenants/{TENANT}/items", "get", {"x-tenantry-priority": "bogus"}, DEFAULT),
        (f"/v1/tenants/{TENANT}/items?limit=500", "get", {}, SHEDDABLE),
        (f"/v1/tenants/{TENANT}/items?limit=50", "get", {}, DEFAULT),
        ("/v1/export", "get", {"x-tenantry-priority": "critical"}, SHEDDABLE),
    ],
)
async def test_priority_comes_from_the_route_and_can_only_be_lowered(
    path: str, method: str, headers: dict[str, str], expected: Priority
) -> None:
    admission = busy(4)
    async with AsyncTestClient(http_app(admission, Calls())) as client:
        response = await client.request(method.upper(), path, headers=headers)
    assert response.status_code < 300
    admitted = admission.snapshot().admitted
    assert {p for p, n in admitted.items() if n} == {expected}


def scope(**values: Any) -> Any:
    base: dict[str, Any] = {"headers": [], "path_params": {}, "client": ("10.0.0.9", 5000)}
    base.update(values)
    return base


def test_the_fairness_key_is_the_tenant_else_a_credential_hash_else_the_client() -> None:
    token = b"Bearer very-secret-token"
    with_tenant = scope(path_params={"tenant_id": TENANT}, headers=[(b"authorization", token)])
    assert fairness_key(with_tenant) == f"tenant:{TENANT}"

    by_credential = fairness_key(scope(headers=[(b"authorization", token)]))
    assert by_credential.startswith("credential:")
    assert "very-secret-token" not in by_credential
    assert by_credential == fairness_key(scope(headers=[(b"authorization", token)]))
    assert by_credential != fairness_key(scope(headers=[(b"authorization", b"Bearer other")]))

    assert fairness_key(scope()) == "client:10.0.0.9"
    assert fairness_key(scope(client=None)) == "client:unknown"


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("250", 100.25), ("0", 100.0), ("-5", None), ("soon", None), ("nan", None)],
)
def test_client_deadline_header(header: str | None, expected: float | None) -> None:
    headers = [] if header is None else [(b"x-request-timeout-ms", header.encode())]
    assert client_deadline(scope(headers=headers), now=100.0) == expected


async def test_retry_after_grows_with_the_queue_and_is_capped() -> None:
    admission, clock = controller(1, max_retry_after_seconds=5)

    async def retry_after() -> int:
        with pytest.raises(Rejected) as refused:
            await admission.acquire(DEFAULT, "probe", deadline=clock.now())
        return refused.value.retry_after

    assert await retry_after() == 1
    (await admission.acquire(DEFAULT, "t")).release(0.5, ok=True)  # requests take 0.5 s
    await admission.acquire(DEFAULT, "t")
    queue = [waiting(admission, DEFAULT, f"k{i}") for i in range(7)]
    await settle()
    assert await retry_after() == 4  # (7 ahead + itself) * 0.5 s / 1 slot
    queue += [waiting(admission, DEFAULT, f"k{i}") for i in range(10)]
    await settle()
    assert await retry_after() == 5
    for task in queue:
        task.cancel()
    await settle()


def test_the_route_table_finds_priorities_and_path_params_without_routing() -> None:
    table = RouteTable.of(routes(Calls()))
    tenant = "0190f1c2-0000-7000-8000-000000000001"
    assert table.match("POST", "/v1/token") == (Priority.CRITICAL, {})
    assert table.match("GET", "/v1/export") == (Priority.SHEDDABLE, {})
    assert table.match("GET", f"/v1/tenants/{tenant}/items") == (None, {"tenant_id": tenant})
    assert table.match("GET", "/v1/nowhere") == (None, {})


async def test_the_outer_gate_sheds_by_declared_priority_before_the_app_runs() -> None:
    """The gate in front of the whole app (tracing, request ids and routing behind it):
    with half the slots taken, a sheddable route (whose share is half) is refused and the
    app never sees it, while a critical one (whose share is all) is served."""
    admission = busy(2, sheddable_capacity_share=0.5, sheddable_queue_share=0.0)
    calls = Calls()
    gate = http_app(admission, calls)
    held = await admission.acquire(CRITICAL, "someone-else")
    async with AsyncTestClient(gate) as client:
        shed = await client.get("/v1/export")
        assert shed.status_code == 503
        assert shed.json()["reason"] == "shed"
        assert calls.count == 0
        served = await client.post("/v1/token")
        assert served.status_code == 201, served.text
        assert calls.count == 1
        assert (await client.get("/healthz")).status_code == 200  # probes bypass the gate
    held.release(0.01, ok=True)
    assert admission.inflight == 0


# --------------------------------------------------------------------------- loop lag


async def test_a_lagging_loop_refuses_sheddable_then_default_at_once_never_critical() -> None:
    """The utilization shedder: while the loop runs 25 ms late, sheddable requests are
    refused before they queue; at 100 ms, default ones too; critical ones always pass."""
    lag = [0.0]
    admission = AdmissionController(
        flat_settings(100), clock=FakeClock().now, loop_lag=lambda: lag[0]
    )
    for priority in PRIORITIES:
        (await admission.acquire(priority, "t")).release(0.01, ok=True)
    lag[0] = 0.05
    with pytest.raises(Rejected) as refused:
        await admission.acquire(SHEDDABLE, "t")
    assert refused.value.reason is RejectReason.OVERLOADED
    (await admission.acquire(DEFAULT, "t")).release(0.01, ok=True)
    lag[0] = 0.2
    with pytest.raises(Rejected) as refused:
        await admission.acquire(DEFAULT, "t")
    assert refused.value.reason is RejectReason.OVERLOADED
    ticket = await admission.acquire(CRITICAL, "t")
    assert admission.inflight == 1
    ticket.release(0.01, ok=True)
    assert admission.snapshot().rejected[(SHEDDABLE, RejectReason.OVERLOADED)] == 1

    # 0 turns a class's threshold off.
    off = AdmissionController(
        flat_settings(10, sheddable_loop_lag_ms=0, default_loop_lag_ms=0),
        clock=FakeClock().now,
        loop_lag=lambda: 10.0,
    )
    (await off.acquire(SHEDDABLE, "t")).release(0.01, ok=True)


async def test_the_loop_lag_monitor_averages_lag_and_the_reading_fades() -> None:
    monitor = LoopLagMonitor(0.005, alpha=0.25)
    assert monitor() == 0.0  # starts its sampler
    await asyncio.sleep(0.03)
    assert monitor() < 0.02
    time.sleep(0.4)  # noqa: ASYNC251  (blocks the loop, as a CPU-bound burst would)
    await settle()
    assert monitor() >= 0.08  # a quarter of one long stall
    for _ in range(20):  # sustained lag: every sample late by ~20 ms
        time.sleep(0.02)  # noqa: ASYNC251
        await asyncio.sleep(0)
    assert monitor() >= 0.01
    for _ in range(60):  # decays once the loop is free again
        await asyncio.sleep(0.005)
    assert monitor() < 0.02
    await monitor.aclose()
