"""Coalescing concurrent calls into batches per group (tenantry_guardrails.coalescing)."""

from __future__ import annotations

import asyncio

import pytest

from tenantry_guardrails.coalescing import Coalescer


class Echo:
    """A batch function that answers each item with (item, batch number) after a yield to
    the loop, as a network call would, and records every batch it saw."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.fail_on = fail_on

    async def __call__(self, items: list[tuple[str, int]]) -> list[tuple[int, int]]:
        self.batches.append(items)
        number = len(self.batches)
        await asyncio.sleep(0.001)
        if number == self.fail_on:
            raise ConnectionError("the batch failed")
        return [(n, number) for _, n in items]


async def test_a_lone_call_runs_at_once_and_alone() -> None:
    echo = Echo()
    coalescer: Coalescer[tuple[str, int], tuple[int, int]] = Coalescer(echo)
    assert await coalescer.submit("t1", ("t1", 7)) == (7, 1)
    assert await coalescer.submit("t1", ("t1", 8)) == (8, 2)
    assert echo.batches == [[("t1", 7)], [("t1", 8)]]


async def test_concurrent_calls_of_one_group_share_batches_and_each_gets_its_answer() -> None:
    echo = Echo()
    coalescer: Coalescer[tuple[str, int], tuple[int, int]] = Coalescer(echo, max_batch=64)
    answers = await asyncio.gather(*(coalescer.submit("t1", ("t1", n)) for n in range(50)))
    assert [n for n, _ in answers] == list(range(50))
    # The first goes alone; the 49 that arrived meanwhile go together.
    assert [len(b) for b in echo.batches] == [1, 49]
    assert sorted(n for batch in echo.batches for _, n in batch) == list(range(50))


async def test_batches_never_mix_groups_and_respect_the_size_cap() -> None:
    echo = Echo()
    coalescer: Coalescer[tuple[str, int], tuple[int, int]] = Coalescer(echo, max_batch=8)
    calls = [coalescer.submit(f"t{n % 3}", (f"t{n % 3}", n)) for n in range(60)]
    answers = await asyncio.gather(*calls)
    assert [n for n, _ in answers] == list(range(60))
    for batch in echo.batches:
        assert len({group for group, _ in batch}) == 1, batch
        assert len(batch) <= 8


async def test_a_failed_batch_fails_its_callers_only() -> None:
    echo = Echo(fail_on=2)
    coalescer: Coalescer[tuple[str, int], tuple[int, int]] = Coalescer(echo, max_batch=5)
    results = await asyncio.gather(
        *(coalescer.submit("t1", ("t1", n)) for n in range(11)), return_exceptions=True
    )
    assert results[0] == (0, 1)
    assert all(isinstance(r, ConnectionError) for r in results[1:6]), "batch 2 failed"
    assert [r for r in results[6:]] == [(n, 3) for n in range(6, 11)]
    assert await coalescer.submit("t1", ("t1", 99)) == (99, 4), "the group is free again"


async def test_an_answer_whose_caller_left_is_handed_to_abandoned() -> None:
    echo = Echo()
    left: list[tuple[int, int]] = []
    coalescer: Coalescer[tuple[str, int], tuple[int, int]] = Coalescer(echo, abandoned=left.append)
    first = asyncio.create_task(coalescer.submit("t1", ("t1", 1)))
    await asyncio.sleep(0)  # the first is at the "network"
    waiting = asyncio.create_task(coalescer.submit("t1", ("t1", 2)))
    await asyncio.sleep(0)
    waiting.cancel()
    assert await first == (1, 1)
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.01)  # the second batch runs anyway (it may be at Redis already)
    assert left == [(2, 2)]


async def test_a_leader_that_fails_still_hands_the_queue_on() -> None:
    echo = Echo(fail_on=1)
    coalescer: Coalescer[tuple[str, int], tuple[int, int]] = Coalescer(echo)
    results = await asyncio.gather(
        *(coalescer.submit("t1", ("t1", n)) for n in range(4)), return_exceptions=True
    )
    assert isinstance(results[0], ConnectionError)
    assert results[1:] == [(1, 2), (2, 2), (3, 2)]
