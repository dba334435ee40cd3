"""A worker task that fails is restarted with backoff; a database outage is logged as one
warning line, anything else as a crash with its traceback."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import pytest

from tenantry_service.runtime import Runtime
from tenantry_service.worker import _supervised


@pytest.mark.parametrize(
    ("failure", "level", "traceback"),
    [
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), logging.WARNING, False),
        (ConnectionRefusedError(111, "refused"), logging.WARNING, False),
        (KeyError("a bug"), logging.ERROR, True),
    ],
)
async def test_a_failed_task_is_restarted_and_logged_by_kind(
    caplog: pytest.LogCaptureFixture, failure: Exception, level: int, traceback: bool
) -> None:
    stop = asyncio.Event()
    runs = 0

    async def flaky(runtime: Runtime, stop_: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise failure
        stop_.set()  # the second run ends the worker

    with caplog.at_level(logging.WARNING, logger="tenantry.worker"):
        await asyncio.wait_for(_supervised(flaky, None, stop), timeout=5)  # type: ignore[arg-type]
    assert runs == 2
    (record,) = [r for r in caplog.records if "flaky" in r.getMessage()]
    assert record.levelno == level
    assert (record.exc_info is not None) == traceback
