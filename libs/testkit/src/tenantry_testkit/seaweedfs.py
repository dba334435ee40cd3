"""A fresh SeaweedFS S3 server for a test run (deploy/local/seaweedfs.sh start/stop).

Each run gets a temporary data directory, its own pid files (TENANTRY_SEAWEEDFS_RUN_DIR)
and a free range of ten ports on 127.0.0.1, so it meets neither a developer's server nor
another run's; a run killed before it could stop its server has it stopped by the next
run. The binary is built by deploy/local/install.sh; when it is missing the
tests fail saying so (never a skip: the S3 path would go untested unnoticed).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tenantry_testkit.stack import REPO

SCRIPT = REPO / "deploy" / "local" / "seaweedfs.sh"
PORTS = 10  # S3, master, volume, filer, admin: each with its gRPC port
# Below Linux's ephemeral range (32768+), above the stack's fixed ports (2525..9093).
_PORT_BASES = range(20000, 32000, PORTS)
_ATTEMPTS = 5
_WORKDIR_PREFIX = "tenantry-seaweedfs-"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    region: str
    access_key: str
    secret_key: str = field(repr=False)
    data_dir: Path


def _ports_free(base: int) -> bool:
    for port in range(base, base + PORTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _script(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_orphans() -> None:
    """Stop the servers of runs that died without stopping theirs (a SIGKILLed pytest):
    each workdir names the process that owns it."""
    for workdir in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*"):
        try:
            owner = int((workdir / "owner").read_text())
        except (OSError, ValueError):
            continue  # being set up, or not ours
        if not _alive(owner):
            _script("stop", env={**os.environ, "TENANTRY_SEAWEEDFS_RUN_DIR": str(workdir / "run")})
            shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def seaweedfs_server() -> Iterator[S3Server]:
    """Start a server, yield where it is, stop it and remove its data."""
    _sweep_orphans()
    workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
    (workdir / "owner").write_text(str(os.getpid()))
    env = {**os.environ, "TENANTRY_SEAWEEDFS_RUN_DIR": str(workdir / "run")}
    failures: list[str] = []
    try:
        started = False
        for base in random.sample(_PORT_BASES, _ATTEMPTS * 4):
            if not _ports_free(base):
                continue
            attempt = _script("start", str(workdir / "data"), str(base), env=env)
            if attempt.returncode == 0:
                started = True
                break
            # A port taken between the probe and the start: try another range.
            failures.append(attempt.stderr.strip())
            if "is not built" in attempt.stderr or len(failures) == _ATTEMPTS:
                break
        if not started:
            pytest.fail(
                "could not start SeaweedFS (the tests' S3 server); if it is not built, run "
                "deploy/local/install.sh.\n" + "\n---\n".join(failures or ["no free ports"]),
                pytrace=False,
            )
        values = dict(
            line.split("=", 1) for line in _script("env", env=env).stdout.splitlines() if line
        )
        yield S3Server(
            endpoint=values["TENANTRY_S3_ENDPOINT"],
            region=values["TENANTRY_S3_REGION"],
            access_key=values["TENANTRY_S3_ACCESS_KEY"],
            secret_key=values["TENANTRY_S3_SECRET_KEY"],
            data_dir=workdir / "data",
        )
    finally:
        _script("stop", env=env)
        shutil.rmtree(workdir, ignore_errors=True)
