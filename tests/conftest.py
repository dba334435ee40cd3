"""Cross-service tests against the running suite (`make up`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest_asyncio

from tenantry_testkit.receiver import Receiver, running_receiver
from tenantry_testkit.stack import Stack

SERVICES = ("tenancy", "identity", "provisioning", "webhooks", "ratelimit")
PROJECTING = ("identity", "provisioning", "webhooks", "ratelimit")


@pytest_asyncio.fixture
async def tenancy(
    stack: Stack, operator_headers: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """tenancy, called as the platform operator."""
    async with httpx.AsyncClient(
        base_url=stack.service_url("tenancy"), timeout=10, headers=operator_headers
    ) as client:
        yield client


@pytest_asyncio.fixture
async def service_dbs(stack: Stack) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    """Read-only peeks into each service's database, as its owner (tests only)."""
    pools = {
        s: await asyncpg.create_pool(
            stack.owner_dsn(stack.service_database(s)), min_size=1, max_size=2
        )
        for s in SERVICES
    }
    try:
        yield pools
    finally:
        for pool in pools.values():
            await pool.close()


@pytest_asyncio.fixture
async def superuser_dbs(stack: Stack) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    """Every service's database as the superuser: past row-level security, and rows no
    route makes (an SSO connection, thousands of SCIM users)."""
    pools = {
        s: await asyncpg.create_pool(
            stack.super_dsn(stack.service_database(s)), min_size=1, max_size=3
        )
        for s in SERVICES
    }
    try:
        yield pools
    finally:
        for pool in pools.values():
            await pool.close()


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on loopback, for the test's endpoints."""
    async with running_receiver() as running:
        yield running
