"""What the peer benchmarks share (`make bench-peers`): the peers' binaries, cached under
.local/peers/, their processes on loopback, wrk as the load generator, and the host's load.

A peer is another product doing the same job, built here from a registry (the Go module
proxy) and run beside Tenantry against the same Redis and Postgres, so a ratio compares
the two on one machine in one run. Rounds alternate between the two systems, so a load
that comes and goes (another process, the CPU's clock) falls on both alike.

wrk (Debian's package) is the client for HTTP peers: a C event loop that costs a fraction
of a core at these rates, where a Python client would measure itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tenantry_testkit.stack import wait_ready

REPO = Path(__file__).resolve().parent.parent
PEERS_DIR = REPO / ".local" / "peers"
LOG_DIR = REPO / ".local" / "log"


# --------------------------------------------------------------------------- binaries


def go_binary(module: str, version: str, name: str) -> Path:
    """`go install module@version`, once: the binary is kept as .local/peers/<name>-<version>
    (the Go module proxy is a registry this project installs from)."""
    target = PEERS_DIR / f"{name}-{version}"
    if target.exists():
        return target
    go = shutil.which("go") or "/usr/local/go/bin/go"
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=PEERS_DIR) as gobin:
        env = {
            **os.environ,
            "GOBIN": gobin,
            "GOPATH": str(REPO / ".local" / "go"),
            "GOFLAGS": "-modcacherw",
        }
        print(f"   building {module}@{version} with go install (once) ...", flush=True)
        subprocess.run([go, "install", f"{module}@{version}"], env=env, check=True)
        built = Path(gobin) / Path(module).name
        built.rename(target)
    return target


# --------------------------------------------------------------------------- processes


@contextlib.contextmanager
def peer_process(
    name: str, argv: list[str], env: Mapping[str, str], ready_url: str, timeout: float = 60
) -> Iterator[subprocess.Popen[bytes]]:
    """A peer's process (its output in .local/log/peer-<name>.log), once `ready_url`
    answers 200; killed on exit."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / f"peer-{name}.log").open("ab") as log:
        process = subprocess.Popen(argv, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(process, ready_url, f"{name} (log: {log.name})", timeout)
            yield process
        finally:
            process.kill()
            process.wait(timeout=30)


# --------------------------------------------------------------------------- wrk

# wrk calls done() once at the end; percentiles come from its full latency histogram.
_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format("TENANTRY requests=%d duration_us=%d p50_us=%d p99_us=%d "
    .. "max_us=%d mean_us=%f errors=%d non2xx=%d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, latency.mean,
    errors.connect + errors.read + errors.write + errors.timeout, errors.status))
end
"""


@dataclass(frozen=True)
class WrkRound:
    requests: int
    seconds: float
    p50: float  # seconds
    p99: float
    max: float
    errors: int  # socket errors and timeouts
    non_2xx: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _lua_string(value: str) -> str:
    return "[==[" + value + "]==]"


def wrk_post(
    url: str,
    body: str,
    *,
    headers: Mapping[str, str],
    connections: int,
    seconds: float,
) -> WrkRound:
    """A closed loop of `connections` keep-alive connections (one request in flight on
    each) POSTing `body` for `seconds`, on one wrk thread."""
    header_lines = "\n".join(
        f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in headers.items()
    )
    script = _WRK_SCRIPT.format(body=_lua_string(body), headers=header_lines)
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as file:
        file.write(script)
        file.flush()
        completed = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds:g}s",
                "--timeout",
                "10s",
                "-s",
                file.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    out = completed.stdout
    match = re.search(
        r"TENANTRY requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+) max_us=(\d+) "
        r"mean_us=[\d.]+ errors=(\d+) non2xx=(\d+)",
        out,
    )
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}\n{completed.stderr}")
    requests, duration, p50, p99, top, errors, non_2xx = (int(g) for g in match.groups())
    return WrkRound(requests, duration / 1e6, p50 / 1e6, p99 / 1e6, top / 1e6, errors, non_2xx)


def need_wrk() -> None:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: `make bench-peers` installs it (apt-get)")


# --------------------------------------------------------------------------- host load


class CpuMeter:
    """The host's CPU use between two readings of /proc/stat: busy cores out of all."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    def busy_cores(self) -> float:
        """Cores busy on average since the last call."""
        total, idle = self._read()
        last_total, last_idle = self._last
        self._last = (total, idle)
        spent = total - last_total
        return (os.cpu_count() or 1) * (1 - (idle - last_idle) / spent) if spent else 0.0


def load_average() -> float:
    return os.getloadavg()[0]
