"""Fixtures of provisioning's service tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from tenantry_events.pg import Database, package_migrations
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.stack import Stack


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def directory(stack: Stack) -> AsyncIterator[Database]:
    """A scratch database with provisioning's tables (one per test module), connected as
    the app role, so row-level security applies."""
    scratch: ScratchDatabase = await create_scratch_database(
        stack, package_migrations("tenantry_provisioning"), prefix="scim"
    )
    try:
        yield scratch.db
    finally:
        await drop_scratch_database(stack, scratch)
