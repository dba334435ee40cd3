"""Two complete regions side by side on this machine (deploy/local/regions.sh), for the
residency tests: each a `Stack` of its own (PostgreSQL, Redis, Kafka, SMTP sink and the five
services on ports of its own), beside the default stack, which they leave alone.

    def test_something(two_regions: dict[str, Region]) -> None:
        us, eu = two_regions["us"], two_regions["eu"]
        us.service_url("tenancy"), eu.app_dsn("tenantry_identity"), eu.mail_dir, ...

The fixture starts the regions unless they already answer, and stops them at the end of the
session only if it started them (a developer's `make up REGIONS="us eu"` stays up). A cold
start takes minutes on a loaded machine, and pytest-timeout counts it in the first test
that asks for the fixture: give such a module `pytestmark = pytest.mark.timeout(600)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenantry_testkit.stack import REPO, Stack

SCRIPT = REPO / "deploy" / "local" / "regions.sh"
SERVICES = ("tenancy", "identity", "provisioning", "webhooks", "ratelimit")
# The first region listed hosts the global directory.
TWO_REGIONS = ("us", "eu")
# A cold start (initdb, Kafka storage, every migration) took 98 s on two idle cores, 230 s
# and 297 s on the same two cores under load averages of 11 and 23.
START_TIMEOUT_SECONDS = 540


def _script(
    deployment: tuple[str, ...], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """regions.sh ARGS for `deployment`, outside any region's environment (a region's
    settings in ours would shift every port again)."""
    env = {k: v for k, v in os.environ.items() if k != "TENANTRY_LOCAL_DIR"}
    env["REGIONS"] = " ".join(deployment)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _settings(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def _checked(result: subprocess.CompletedProcess[str], what: str) -> str:
    if result.returncode != 0:
        raise RuntimeError(
            f"regions.sh {what} failed ({result.returncode}):\n{result.stderr[-3000:]}"
        )
    return result.stdout


@dataclass(frozen=True)
class Region(Stack):
    """One region of the deployment: its stack settings (`env`, as `regions.sh vars` prints
    them), so every `Stack` accessor (DSNs per database, Kafka, Redis, service URLs) names
    this region's servers."""

    id: str
    deployment: tuple[str, ...]

    @property
    def hosts_directory(self) -> bool:
        return self.env["TENANTRY_DIRECTORY_REGION"] == self.id

    @property
    def databases(self) -> tuple[str, ...]:
        """Its PostgreSQL's databases: one per service, and the directory's where it lives."""
        services = tuple(self.service_database(s) for s in SERVICES)
        return (*services, "tenantry_directory") if self.hosts_directory else services

    @property
    def service_urls(self) -> dict[str, str]:
        return {s: self.service_url(s) for s in SERVICES}

    @property
    def regions(self) -> list[dict[str, Any]]:
        """TENANTRY_REGIONS as the services get it: every region with its public URLs."""
        listed: list[dict[str, Any]] = json.loads(self.env["TENANTRY_REGIONS"])
        return listed

    @property
    def local_dir(self) -> Path:
        """Its state: pg/, redis/, kafka/, run/ (pid files), objects/ (as .local/ is)."""
        return Path(self.env["TENANTRY_LOCAL_DIR"])

    @property
    def mail_dir(self) -> Path:
        """Where its SMTP sink delivers (a `Mailbox` reads it)."""
        return self.local_dir / "mail"

    @property
    def log_dir(self) -> Path:
        """Its services' logs, <service>-{api,worker}.log."""
        return self.local_dir / "log"

    # The secrets every region of a deployment shares (deploy/local/stack.env).
    @property
    def bootstrap_secret(self) -> str:
        return self.env["TENANTRY_BOOTSTRAP_SECRET"]

    @property
    def internal_api_secret(self) -> str:
        return self.env["TENANTRY_INTERNAL_API_SECRET"]

    @property
    def directory_secret(self) -> str:
        return self.env["TENANTRY_DIRECTORY_SECRET"]

    @property
    def operator_email(self) -> str:
        return self.env["TENANTRY_OPERATOR_EMAIL"]

    @property
    def operator_password(self) -> str:
        return self.env["TENANTRY_OPERATOR_PASSWORD"]

    def worker_health_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.service_env(service)['TENANTRY_WORKER_HEALTH_PORT']}"

    def service_env(self, service: str) -> dict[str, str]:
        """The environment this region gives a service (`regions.sh env REGION SERVICE`)."""
        out = _checked(_script(self.deployment, "env", self.id, service), f"env {self.id}")
        return _settings(out)

    async def run_script(self, script: str, *args: str, timeout: float = 150) -> None:
        """deploy/local/SCRIPT ARGS in this region's environment (`regions.sh exec`), off the
        event loop; AssertionError with its messages when it fails."""
        command = ("exec", self.id, "bash", str(REPO / "deploy" / "local" / script), *args)
        result = await asyncio.to_thread(_script, self.deployment, *command, timeout=timeout)
        assert result.returncode == 0, (
            f"{script} {' '.join(args)} in {self.id}:\n{result.stderr[-2000:]}"
        )

    async def control(self, component: str, action: str) -> None:
        """`stack.sh COMPONENT ACTION` in this region (kafka stop, redis start, ...)."""
        await self.run_script("stack.sh", component, action)

    async def services(self, action: str, *services: str) -> None:
        """`services.sh ACTION SERVICE...` in this region: start one the test killed,
        restart another (all five when none is named)."""
        await self.run_script("services.sh", action, *services)


def load_regions(deployment: tuple[str, ...] = TWO_REGIONS) -> dict[str, Region]:
    """Each region's settings (no server needs to run), in the deployment's order."""
    return {
        region: Region(
            _settings(_checked(_script(deployment, "vars", region), f"vars {region}")),
            region,
            deployment,
        )
        for region in deployment
    }


def _answers(url: str) -> bool:
    try:
        # Generous: on a loaded machine a ready service can take seconds to answer, and
        # "not answering" costs a start (minutes).
        return httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def answering(regions: Mapping[str, Region]) -> list[bool]:
    """For each api and worker of every region: does its /readyz answer 200?"""
    return [
        _answers(url)
        for region in regions.values()
        for service in SERVICES
        for url in (region.service_url(service), region.worker_health_url(service))
    ]


def _alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().split()[0])
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return False
    return state != "Z"  # a zombie has exited (deploy/local/common.sh, pid_alive)


def running_anything(region: Region) -> bool:
    """Does any process of the region run (its pid files, its postmaster's)? Whether its
    services answer is another question: a loaded machine can be slow to."""
    pid_files = [
        *(region.local_dir / "run").glob("*.pid"),
        region.local_dir / "pg/data/postmaster.pid",
    ]
    return any(_alive(pid_file) for pid_file in pid_files)


@contextlib.contextmanager
def running_regions(deployment: tuple[str, ...] = TWO_REGIONS) -> Iterator[dict[str, Region]]:
    """The regions, up and answering: used as they are when every api and worker answers;
    else started (regions.sh start: what is missing, after any start already under way).
    Stopped on exit only when no process of theirs ran before: then this started them; any
    other time someone else runs them."""
    regions = load_regions(deployment)
    ours = not any(running_anything(region) for region in regions.values())
    if ours or not all(answering(regions)):
        _checked(_script(deployment, "start", timeout=START_TIMEOUT_SECONDS), "start")
    try:
        yield regions
    finally:
        if ours:
            # A stop waits for any start under way (another session's) to finish first.
            _checked(_script(deployment, "stop", timeout=START_TIMEOUT_SECONDS), "stop")


@pytest.fixture(scope="session")
def two_regions() -> Iterator[dict[str, Region]]:
    """Regions "us" (hosting the directory) and "eu", for the whole session."""
    with running_regions(TWO_REGIONS) as regions:
        yield regions
