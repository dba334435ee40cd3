"""Postgres access shared by every service: a pool with msgspec JSON codecs, transactions
scoped to a tenant (for row-level security), and a forward-only SQL migrator."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from asyncpg.transaction import Transaction

from tenantry_events.faults import DatabaseUnavailable, is_broken_connection

log = logging.getLogger("tenantry.db")

Connection = asyncpg.Connection  # the transaction handle every Postgres store takes


async def init_connection(conn: asyncpg.Connection) -> None:
    """The codecs every connection gets (msgspec for json and jsonb)."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            encoder=lambda v: msgspec.json.encode(v).decode(),
            decoder=msgspec.json.decode,
            schema="pg_catalog",
        )


class Database:
    """One service's database. `transaction()` is the unit of work; every Postgres store
    takes the connection it yields, so effects, events, outbox and inbox commit together."""

    def __init__(self, dsn: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None

    async def connect(self) -> None:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                init=init_connection,
                command_timeout=30,
            )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("Database.connect() was not awaited")
        return self._pool

    @asynccontextmanager
    async def transaction(
        self, *, tenant_id: UUID | None = None, platform: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """A transaction; `tenant_id` scopes row-level security to one tenant, `platform`
        opens cross-tenant rows to operator and system work (relay, projections).

        A database restart leaves broken connections in the pool. One that fails before
        the caller's work begins is dropped and another tried (`_begin`); if none works
        (the server is down), that is raised as `DatabaseUnavailable`. A connection that
        raised a connection-level error during the work, or whose rollback failed, is
        terminated rather than returned to the pool."""
        proxy, conn, tx = await self._begin(tenant_id=tenant_id, platform=platform)
        try:
            try:
                yield conn
            except BaseException as exc:
                if is_broken_connection(exc):
                    _terminate(conn)
                elif _open(conn):
                    try:
                        await tx.rollback()
                    except Exception:  # the work's error is the one to report
                        _terminate(conn)
                raise
            try:
                await tx.commit()
            except BaseException as exc:
                if is_broken_connection(exc) or isinstance(exc, asyncio.CancelledError):
                    _terminate(conn)
                raise
        finally:
            await _release(self.pool, proxy)

    async def _begin(
        self, *, tenant_id: UUID | None, platform: bool
    ) -> tuple[object, asyncpg.Connection, Transaction]:
        """A pooled connection with its transaction begun and scoped. After a database
        restart the pool still holds connections the restart broke; idle ones are found
        only when used, so one that fails at BEGIN is dropped and the next one tried (the
        work has not started: nothing to undo), up to one more than the pool holds."""
        pool = self.pool
        for attempt in range(self._max_size + 1):
            try:
                proxy = await pool.acquire()
            except Exception as exc:
                raise DatabaseUnavailable(f"no database connection: {exc!r}") from exc
            # Stores are typed against Connection; the pool's proxy forwards every call.
            conn: asyncpg.Connection = proxy  # type: ignore[assignment]
            tx = conn.transaction()
            try:
                await tx.start()
                if tenant_id is not None:
                    await conn.execute(
                        "SELECT set_config('app.tenant_id', $1, true)", str(tenant_id)
                    )
                if platform:
                    await conn.execute("SELECT set_config('app.platform', 'on', true)")
            except Exception as exc:
                _terminate(conn)
                await _release(pool, proxy)
                if is_broken_connection(exc) and attempt < self._max_size:
                    continue  # a connection the restart left broken: try the next one
                raise DatabaseUnavailable(f"database connection failed: {exc!r}") from exc
            return proxy, conn, tx
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def ping(self) -> bool:
        try:
            async with self.transaction() as conn:
                await conn.fetchval("SELECT 1")
        except Exception:  # any failure: not ready (and a broken connection is dropped)
            return False
        return True


def _open(conn: asyncpg.Connection) -> bool:
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # closed, so asyncpg already gave it back to the pool
        return False


def _terminate(conn: asyncpg.Connection) -> None:
    if _open(conn):
        conn.terminate()  # a pooled connection's holder reconnects on the next acquire


async def _release(pool: asyncpg.Pool, proxy: object) -> None:
    """Return the connection; a failed reset has asyncpg terminate it, which must not turn
    a committed unit of work into an error (nor hide the work's own error)."""
    try:
        await pool.release(proxy)  # type: ignore[arg-type]
    except Exception as exc:
        log.warning("dropped a database connection that failed its reset: %r", exc)


@dataclass(frozen=True, slots=True)
class Migration:
    source: str  # which package's migrations: "tenantry_events", "tenantry_tenancy", ...
    name: str  # file name, e.g. "0001_backbone.sql"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def package_migrations(package: str, *, source: str | None = None) -> list[Migration]:
    """The `migrations/*.sql` files shipped inside a package, in name order. `source` is
    what schema_migrations records them under (the package's name unless given): a package
    that moves keeps its old source, so databases it already migrated stay migrated."""
    folder = resources.files(package) / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(source or package, f.name, f.read_text()) for f in files]


class MigrationChanged(RuntimeError):
    """An applied migration's file was edited; write a new migration instead."""


async def migrate(
    dsn: str, migrations: Iterable[Migration], *, app_role: str | None = None
) -> list[str]:
    """Apply what is not applied yet, each file in its own transaction, under an advisory
    lock so two starting processes cannot race. Runs as the owner role; `app_role` is
    substituted for the `{app_role}` placeholder in GRANT statements."""
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext('tenantry.migrate'))")
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   source text NOT NULL, name text NOT NULL, checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (source, name))"""
        )
        done = {
            (r["source"], r["name"]): r["checksum"]
            for r in await conn.fetch("SELECT source, name, checksum FROM schema_migrations")
        }
        for m in migrations:
            key = (m.source, m.name)
            if key in done:
                if done[key] != m.checksum:
                    raise MigrationChanged(f"{m.source}/{m.name} changed after it was applied")
                continue
            sql = m.sql.replace("{app_role}", app_role or "CURRENT_USER")
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (source, name, checksum) VALUES ($1,$2,$3)",
                    m.source,
                    m.name,
                    m.checksum,
                )
            applied_now.append(f"{m.source}/{m.name}")
    finally:
        await conn.close()
    return applied_now


def backbone_migrations() -> list[Migration]:
    return package_migrations("tenantry_events")


Json = dict[str, Any]
