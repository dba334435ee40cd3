"""pytest fixtures against the real local stack: Postgres, Kafka, Redis, the services."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import asyncpg
import pytest
import pytest_asyncio
from uuid_utils.compat import uuid4

from tenantry_events.pg import Database, Migration, backbone_migrations, migrate
from tenantry_projections import projection_migrations
from tenantry_testkit.stack import Stack, load_stack

T = TypeVar("T")


@pytest.fixture(scope="session")
def stack() -> Stack:
    return load_stack()


@asynccontextmanager
async def running_service_db(stack: Stack, service: str) -> AsyncIterator[Database]:
    """The running service's own database, as its app role (what the service itself sees:
    a test reads its rows, and locks them briefly)."""
    db = Database(stack.service_env(service)["TENANTRY_DATABASE_URL"], max_size=2)
    await db.connect()
    try:
        yield db
    finally:
        await db.close()


@dataclass(frozen=True)
class ScratchDatabase:
    """A throwaway database with the backbone (and any extra) migrations applied."""

    name: str
    owner_dsn: str
    app_dsn: str
    db: Database


async def create_scratch_database(
    stack: Stack, migrations: list[Migration] | None = None, prefix: str = "t"
) -> ScratchDatabase:
    name = f"{prefix}_{uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack.owner_dsn("postgres"))
    try:
        for attempt in range(20):
            try:
                await admin.execute(f'CREATE DATABASE "{name}"')
                break
            except asyncpg.ObjectInUseError:
                # "template1 is being accessed by other users": a short-lived connection
                # elsewhere; wait for it (bounded).
                if attempt == 19:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await admin.close()
    owner_dsn, app_dsn = stack.owner_dsn(name), stack.app_dsn(name)
    all_migrations = [
        *backbone_migrations(),
        *projection_migrations(),
        *(migrations or []),
    ]
    await migrate(owner_dsn, all_migrations, app_role=stack.app_role)
    db = Database(app_dsn, max_size=20)
    await db.connect()
    return ScratchDatabase(name, owner_dsn, app_dsn, db)


async def drop_scratch_database(stack: Stack, scratch: ScratchDatabase) -> None:
    await scratch.db.close()
    admin = await asyncpg.connect(stack.owner_dsn("postgres"))
    try:
        try:
            # A plain DROP waits (up to 5 s) for the app role's closing connections;
            # FORCE as the owner can fail on them ("must be a member of the role...").
            await admin.execute(f'DROP DATABASE IF EXISTS "{scratch.name}"')
        except asyncpg.ObjectInUseError:
            await admin.execute(f'DROP DATABASE IF EXISTS "{scratch.name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest_asyncio.fixture
async def scratch_db(stack: Stack) -> AsyncIterator[ScratchDatabase]:
    scratch = await create_scratch_database(stack)
    try:
        yield scratch
    finally:
        await drop_scratch_database(stack, scratch)


async def operator_token(stack: Stack) -> str:
    """An access token of the local stack's operator (bootstrapped on first use)."""
    import httpx

    identity = stack.service_url("identity")
    email, password = stack.env["TENANTRY_OPERATOR_EMAIL"], stack.env["TENANTRY_OPERATOR_PASSWORD"]
    async with httpx.AsyncClient(base_url=identity, timeout=10) as client:
        await client.post(
            "/v1/operators/bootstrap",
            json={"email": email, "password": password},
            headers={"X-Bootstrap-Secret": stack.env["TENANTRY_BOOTSTRAP_SECRET"]},
        )  # 201 the first time, 409 after: either way the operator exists
        response = await client.post("/v1/sessions", json={"email": email, "password": password})
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token


@pytest_asyncio.fixture(scope="session")
async def operator_headers(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {await operator_token(stack)}"}


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = 20.0,
    interval: float = 0.02,
    max_interval: float = 0.2,
    message: str = "condition",
) -> T:
    """Poll until `probe` returns something truthy; fail with `message` after `timeout`.
    Tests wait on conditions with deadlines, never on fixed sleeps. The interval grows to
    `max_interval`, so a long wait does not spend the tenant's rate limit."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)
        interval = min(max_interval, interval * 1.5)
