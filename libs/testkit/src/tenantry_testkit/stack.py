"""Where the real servers of the local stack are (deploy/local/stack.env + environment)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx


def find_repo() -> Path:
    """The checkout whose stack the tests drive: TENANTRY_REPO if set, else the nearest
    directory above the working directory (or this file) that holds deploy/local/stack.env."""
    if configured := os.environ.get("TENANTRY_REPO"):
        return Path(configured).resolve()
    for start in (Path.cwd().resolve(), Path(__file__).resolve()):
        for candidate in (start, *start.parents):
            if (candidate / "deploy" / "local" / "stack.env").is_file():
                return candidate
    raise RuntimeError("no Tenantry checkout found: run from inside one or set TENANTRY_REPO")


REPO = find_repo()
STACK_ENV = REPO / "deploy" / "local" / "stack.env"


def read_stack_env(path: Path = STACK_ENV) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = os.environ.get(key.strip(), value.strip())
    return values


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]

    def _get(self, key: str) -> str:
        return self.env[f"TENANTRY_{key}"]

    @property
    def pg_port(self) -> int:
        return int(self._get("PG_PORT"))

    def owner_dsn(self, database: str) -> str:
        return (
            f"postgresql://{self._get('PG_OWNER')}:{self._get('PG_OWNER_PASSWORD')}"
            f"@127.0.0.1:{self.pg_port}/{database}"
        )

    def app_dsn(self, database: str) -> str:
        return (
            f"postgresql://{self._get('PG_APP')}:{self._get('PG_APP_PASSWORD')}"
            f"@127.0.0.1:{self.pg_port}/{database}"
        )

    def super_dsn(self, database: str = "postgres") -> str:
        return (
            f"postgresql://{self._get('PG_SUPERUSER')}:{self._get('PG_SUPERPASSWORD')}"
            f"@127.0.0.1:{self.pg_port}/{database}"
        )

    @property
    def app_role(self) -> str:
        return self._get("PG_APP")

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self._get('KAFKA_PORT')}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self._get('REDIS_PORT')}/0"

    def service_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self._get(service.upper() + '_PORT')}"

    def service_database(self, service: str) -> str:
        return f"tenantry_{service}"

    @property
    def stack_script(self) -> Path:
        return REPO / "deploy" / "local" / "stack.sh"

    async def control(self, component: str, action: str) -> None:
        """`stack.sh COMPONENT ACTION` (kafka stop, redis start, ...), for chaos tests."""
        proc = await asyncio.create_subprocess_exec(
            "bash",
            str(self.stack_script),
            component,
            action,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=150)
        assert proc.returncode == 0, f"stack.sh {component} {action}:\n{out.decode()[-2000:]}"

    def service_env(self, service: str) -> dict[str, str]:
        """The environment `make up` gives a service (deploy/local/services.sh env)."""
        out = subprocess.run(
            ["bash", str(REPO / "deploy" / "local" / "services.sh"), "env", service],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    @contextlib.contextmanager
    def extra_api(
        self, service: str, port: int, overrides: Mapping[str, str] | None = None
    ) -> Iterator[str]:
        """One more api process of `service` on `port` with some settings changed (a
        second instance, or one sized small to overload); yields its base URL once
        /readyz answers, and kills it on exit."""
        env = {**os.environ, **self.service_env(service), "TENANTRY_HTTP_PORT": str(port)}
        env.update(overrides or {})
        log = (REPO / ".local" / "log" / f"{service}-extra-{port}.log").open("ab")
        process = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / f"tenantry-{service}"), "api"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(process, f"{url}/readyz", f"{service} api on {port}")
            yield url
        finally:
            process.kill()
            process.wait(timeout=30)
            log.close()


def wait_ready(process: subprocess.Popen[bytes], url: str, what: str, timeout: float = 60) -> None:
    """Until `url` answers 200; raises if `process` exits first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited ({process.returncode})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} never answered {url}")
        time.sleep(0.2)


def load_stack() -> Stack:
    return Stack(read_stack_env())
