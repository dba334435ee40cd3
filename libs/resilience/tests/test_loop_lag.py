"""The event-loop lag probe: exact bookkeeping with a hand-moved clock, then the real thing
on a loop blocked by callbacks."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from tenantry_resilience import LoopLagProbe
from tenantry_resilience.testing import ManualClock


async def test_an_idle_loop_leaves_nothing_to_subtract() -> None:
    clock = ManualClock()
    probe = LoopLagProbe(0.01, clock=clock)
    started = probe.now()  # starts the probe in the running loop
    await asyncio.sleep(0.03)  # real ticks; the manual clock says each ran on time
    clock.advance(0.005)
    assert probe.queued(started) == 0.0
    assert probe.net(started) == pytest.approx(0.005)
    assert probe.lag() == 0.0
    probe.close()


async def test_a_stall_is_a_busy_stretch_and_only_the_trailing_one_is_subtracted() -> None:
    clock = ManualClock(1000.0)
    reader = InMemoryMetricReader()
    probe = LoopLagProbe(
        0.01, clock=clock, meter=MeterProvider(metric_readers=[reader]).get_meter("t")
    )
    probe.start()  # the first run is due at 1000.01
    clock.advance(0.5)  # the loop "stalls" until 1000.5
    await asyncio.sleep(0.03)  # the run is late by 0.49, then chains and settles down
    assert probe.lag() == 0.0  # the loop runs on time again (by the manual clock)

    # A call from 1000.2 that ended at 1000.5, at the end of the stall: all its time from
    # the stall's start (1000.01, when the probe became due) was queueing.
    assert probe.queued(1000.2, 1000.5) == pytest.approx(0.3)
    assert probe.net(1000.2, 1000.5) == pytest.approx(0.0)
    # A call from 1000.0: its first 10 ms are not known to be queueing.
    assert probe.net(1000.0, 1000.5) == pytest.approx(0.01)
    # A call that ended before the stall saw none of it.
    assert probe.queued(999.0, 1000.005) == 0.0
    # One that ended well after the stall ended: the loop was free when it finished, so the
    # stall happened while the dependency had not answered yet, and it all counts.
    assert probe.net(1000.2, 1000.52) == pytest.approx(0.32)

    # A second stall that is still going on (the pending run, due at 1000.51, is overdue):
    # it alone is subtracted from a call that spans both.
    clock.advance(0.1)  # now 1000.6
    assert probe.lag() == pytest.approx(0.09)
    assert probe.queued(1000.55) == pytest.approx(0.05)
    assert probe.queued(1000.0) == pytest.approx(0.09)
    assert probe.net(1000.0) == pytest.approx(0.51)

    data = reader.get_metrics_data()
    assert data is not None
    [metric] = [
        m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "tenantry.event_loop.lag"
    ]
    [point] = metric.data.data_points
    assert isinstance(point, HistogramDataPoint)
    assert point.count >= 2
    assert point.max == pytest.approx(0.49)
    assert 0.25 in point.explicit_bounds  # seconds, not the SDK's millisecond buckets
    probe.close()


async def test_a_saturated_loop_is_covered_without_gaps() -> None:
    """Hogs that keep the loop busy for 20 ms each: a quick reply queued behind them nets
    out to (almost) nothing, though it took several iterations of wall time."""
    loop = asyncio.get_running_loop()
    probe = LoopLagProbe(0.005)
    probe.now()
    await asyncio.sleep(0.01)
    running = True

    def hog() -> None:
        time.sleep(0.02)  # a CPU-bound slice: blocks the loop like one
        if running:
            loop.call_soon(hog)

    for _ in range(3):
        loop.call_soon(hog)
    try:
        await asyncio.sleep(0.1)  # the probe sees the loop busy, and chains
        for _ in range(5):
            started = probe.now()
            reply = loop.create_future()
            loop.call_later(0.001, reply.set_result, None)  # "Redis" answers in 1 ms
            await reply
            wall = probe.now() - started
            assert wall >= 0.04  # queued behind the hogs
            assert probe.net(started) < 0.01
    finally:
        running = False
        await asyncio.sleep(0.1)
    probe.close()


async def test_a_slow_answer_on_an_idle_loop_counts_in_full() -> None:
    probe = LoopLagProbe(0.005)
    probe.now()
    await asyncio.sleep(0.01)
    started = probe.now()
    await asyncio.sleep(0.1)  # a slow dependency: the loop idles meanwhile
    assert probe.net(started) >= 0.09


async def test_a_blocking_callback_during_a_call_is_subtracted() -> None:
    loop = asyncio.get_running_loop()
    probe = LoopLagProbe(0.002)
    probe.now()
    await asyncio.sleep(0.01)
    started = probe.now()
    reply = loop.create_future()
    loop.call_soon(time.sleep, 0.2)  # blocks the loop for 200 ms
    loop.call_later(0.001, reply.set_result, None)
    await reply
    assert probe.now() - started >= 0.2
    assert probe.net(started) < 0.02


async def test_the_loop_does_not_keep_a_probe_alive_and_close_stops_it() -> None:
    probe = LoopLagProbe(0.001)
    probe.now()
    await asyncio.sleep(0.005)
    probe.close()
    assert probe.lag() == 0.0
    probe.now()  # sampling again
    gone = weakref.ref(probe)
    del probe
    gc.collect()
    assert gone() is None  # its pending run holds it weakly: it stops by itself
    await asyncio.sleep(0.005)  # and that run, finding it gone, does nothing


def test_outside_a_loop_it_is_only_a_clock() -> None:
    clock = ManualClock()
    probe = LoopLagProbe(clock=clock)
    assert probe.now() == clock.now
    assert probe.queued(clock.now - 1) == 0.0
    with pytest.raises(ValueError, match="interval"):
        LoopLagProbe(0)
