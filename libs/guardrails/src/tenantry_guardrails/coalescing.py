"""Coalescing of concurrent calls into batches, per group: the first call of a group runs
at once and alone (no added latency when calls are few); calls that arrive while one of
their group is in flight queue, and the next batch takes them all (up to `max_batch`)
in one call. Under load the batches grow by themselves, as Nagle's algorithm does for
packets, with no timer.

The rate limiter uses it to send a tenant's concurrent decisions to Redis in one script
call (the group is the tenant's hash tag, so a batch stays on one Redis Cluster slot):
one round trip and one script invocation for many decisions, where each used to cost a
round trip of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class _Group(Generic[Item, Result]):
    waiting: list[tuple[Item, asyncio.Future[Result]]] = field(default_factory=list)


class Coalescer(Generic[Item, Result]):
    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[list[Result]]],
        *,
        max_batch: int = 64,
        abandoned: Callable[[Result], None] = lambda _result: None,
    ) -> None:
        """`run(items)` answers a batch, one result per item, in order (an exception
        fails every item of the batch). `abandoned(result)` is told of a result whose
        caller was cancelled while it waited (to give back what it took)."""
        self._run = run
        self._max_batch = max(1, max_batch)
        self._abandoned = abandoned
        self._busy: dict[Hashable, _Group[Item, Result]] = {}
        self._drains: set[asyncio.Task[None]] = set()
        self.batches = 0  # calls of `run`, for tests and benchmarks
        self.items = 0

    async def submit(self, group: Hashable, item: Item) -> Result:
        busy = self._busy.get(group)
        if busy is not None:
            future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
            busy.waiting.append((item, future))
            return await future
        self._busy[group] = _Group()
        try:
            return (await self._call([item]))[0]
        finally:
            self._hand_on(group)

    async def _call(self, items: list[Item]) -> list[Result]:
        self.batches += 1
        self.items += len(items)
        results = await self._run(items)
        if len(results) != len(items):
            raise RuntimeError(f"a batch of {len(items)} got {len(results)} results")
        return results

    def _hand_on(self, group: Hashable) -> None:
        """After a call: the calls that queued meanwhile go next, in a task of their own
        (the caller that led returns now); none queued, the group is free."""
        if self._busy[group].waiting:
            task = asyncio.get_running_loop().create_task(self._drain(group))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        else:
            del self._busy[group]

    async def _drain(self, group: Hashable) -> None:
        waiting = self._busy[group].waiting
        try:
            while waiting:
                batch = waiting[: self._max_batch]
                del waiting[: self._max_batch]
                try:
                    results = await self._call([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller was cancelled while it waited
                        self._abandoned(result)
                    else:
                        future.set_result(result)
        finally:
            for _, future in waiting:
                future.cancel()
            del self._busy[group]

    async def aclose(self) -> None:
        """Cancel the batches still queued (at shutdown)."""
        for task in list(self._drains):
            task.cancel()
        for task in list(self._drains):
            with contextlib.suppress(asyncio.CancelledError):
                await task
