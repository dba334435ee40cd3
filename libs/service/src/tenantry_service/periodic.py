"""A worker task that makes one pass over what is due, then waits, until the worker stops.

The passes keep nothing in memory between them (what is due is read from the database
each time), so a failed pass is logged and simply retried by the next, and a restarted
worker picks up where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol


class PassResult(Protocol):
    def __bool__(self) -> bool:
        """Whether the pass did anything (worth a log line)."""
        ...


async def run_periodically(
    run_once: Callable[[], Awaitable[PassResult]],
    stop: asyncio.Event,
    every: float,
    *,
    log: logging.Logger,
    what: str,
) -> None:
    while not stop.is_set():
        try:
            done = await run_once()
            if done:
                log.info("%s: %s", what, done)
        except Exception:  # the next pass retries
            log.exception("%s failed", what)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


class Counted:
    """A pass's result that is a count of things done ("3 tenant(s) pushed")."""

    def __init__(self, count: int, what: str) -> None:
        self.count = count
        self.what = what

    def __bool__(self) -> bool:
        return self.count > 0

    def __str__(self) -> str:
        return f"{self.count} {self.what}"
