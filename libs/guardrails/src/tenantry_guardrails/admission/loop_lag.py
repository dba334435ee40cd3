"""How late the event loop runs: the reading behind the utilization shedder."""

from __future__ import annotations

import asyncio
import contextlib
import time

from tenantry_guardrails.admission.priorities import Clock


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
