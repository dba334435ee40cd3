"""Fixtures of tenancy's own tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tenantry_events.pg import package_migrations
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.stack import Stack


@pytest_asyncio.fixture
async def tenancy_db(stack: Stack) -> AsyncIterator[ScratchDatabase]:
    """A throwaway database with tenancy's tables (a scratch copy, not the stack's)."""
    scratch = await create_scratch_database(stack, package_migrations("tenantry_tenancy"), "ten")
    try:
        yield scratch
    finally:
        await drop_scratch_database(stack, scratch)
