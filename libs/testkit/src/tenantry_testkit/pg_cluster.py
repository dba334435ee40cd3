"""A throwaway PostgreSQL cluster of a test's own, to stop, crash and restart.

The local stack's Postgres is shared by every test (and every developer's running
services), so fault tests must never restart it. `PgCluster` runs `initdb` into a temp
directory, starts a server on a free loopback port with the stack's roles and passwords,
and `stop()`/`start()`/`restart()` it as the fault; `cluster.stack` is the stack seen
through this server, so `create_scratch_database(cluster.stack, ...)` and the DSNs work
unchanged (Kafka and Redis stay the shared ones).

PostgreSQL refuses to run as root: every server command runs as the `postgres` user
(`runuser -u postgres --`, as deploy/local/stack.sh does), and the data directory
belongs to it. Every command is bounded in time; `destroy()` stops the server
(immediately) and removes the directory.

    async with throwaway_cluster(stack) as cluster:
        scratch = await create_scratch_database(cluster.stack)
        await cluster.restart(mode="immediate")
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg
import pytest_asyncio

from tenantry_testkit.stack import Stack

StopMode = Literal["smart", "fast", "immediate"]


def postgres_bin() -> Path:
    """The newest PostgreSQL's binaries (deploy/local/common.sh's PG_BIN)."""
    if explicit := os.environ.get("PG_BIN"):
        return Path(explicit)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql: run deploy/local/install.sh")
    return candidates[-1]


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PgCluster:
    base: Stack
    root: Path  # temp dir: data/, server.log
    port: int
    bin_dir: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def stack(self) -> Stack:
        """The stack with this cluster as its Postgres (same roles and passwords)."""
        return Stack({**self.base.env, "TENANTRY_PG_PORT": str(self.port)})

    async def _as_postgres(self, *args: str, timeout: float = 60.0) -> str:
        cmd = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}):\n{text[-2000:]}")
        return text

    async def init(self) -> None:
        env = self.base.env
        pwfile = self.root / "pwfile"
        pwfile.write_text(env["TENANTRY_PG_SUPERPASSWORD"] + "\n")
        _give_to_postgres(self.root, pwfile)
        await self._as_postgres(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            env["TENANTRY_PG_SUPERUSER"],
            f"--pwfile={pwfile}",
            "--auth-host=scram-sha-256",
            "--auth-local=peer",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        )
        pwfile.unlink()
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# a throwaway test cluster (tenantry_testkit.pg_cluster)\n"
                "listen_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\n"
                "max_connections = 100\n"
                # A crash (stop -m immediate) must not lose acknowledged commits: the
                # WAL reaches the kernel at commit (synchronous_commit), which outlives
                # the server's processes; only an OS crash would need fsync.
                "fsync = off\nsynchronous_commit = on\nfull_page_writes = off\n"
            )

    async def start(self) -> None:
        await self._as_postgres(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-o",
            f"-p {self.port}",
            "-w",
            "-t",
            "60",
            "start",
            timeout=90,
        )

    async def stop(self, mode: StopMode = "fast") -> None:
        """`fast` ends every session with 57P01 (admin shutdown) and checkpoints;
        `immediate` quits without a checkpoint, like a crash (recovery on start)."""
        await self._as_postgres(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-m",
            mode,
            "-w",
            "-t",
            "60",
            "stop",
            timeout=90,
        )

    async def restart(self, mode: StopMode = "fast", down_for: float = 0.0) -> None:
        await self.stop(mode)
        if down_for:
            await asyncio.sleep(down_for)
        await self.start()

    async def running(self) -> bool:
        try:
            await self._as_postgres(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "status"
            )
        except RuntimeError:
            return False
        return True

    async def bootstrap_roles(self) -> None:
        """The owner (runs migrations, creates databases) and app roles of the stack."""
        env = self.base.env
        conn = await asyncpg.connect(self.stack.super_dsn(), timeout=10)
        try:
            for role, password, options in (
                (env["TENANTRY_PG_OWNER"], env["TENANTRY_PG_OWNER_PASSWORD"], "CREATEDB"),
                (env["TENANTRY_PG_APP"], env["TENANTRY_PG_APP_PASSWORD"], "NOBYPASSRLS"),
            ):
                quoted = await conn.fetchval("SELECT quote_ident($1)", role)
                literal = await conn.fetchval("SELECT quote_literal($1)", password)
                await conn.execute(
                    f"CREATE ROLE {quoted} LOGIN NOSUPERUSER {options} PASSWORD {literal}"
                )
        finally:
            await conn.close()

    async def destroy(self) -> None:
        try:
            if await self.running():
                await self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def _give_to_postgres(*paths: Path) -> None:
    if os.geteuid() != 0:
        return
    for path in paths:
        shutil.chown(path, "postgres", "postgres")


@asynccontextmanager
async def throwaway_cluster(base: Stack) -> AsyncIterator[PgCluster]:
    """A started cluster with the stack's roles; stopped and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="tenantry-pg-"))
    _give_to_postgres(root)
    cluster = PgCluster(base, root, free_loopback_port(), postgres_bin())
    try:
        await cluster.init()
        await cluster.start()
        await cluster.bootstrap_roles()
        yield cluster
    finally:
        await cluster.destroy()


@pytest_asyncio.fixture
async def pg_cluster(stack: Stack) -> AsyncIterator[PgCluster]:
    """A throwaway cluster for one test (import this fixture into the test module)."""
    async with throwaway_cluster(stack) as cluster:
        yield cluster
