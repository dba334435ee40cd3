"""The fault catalog, as data: what each fault does to the running stack, how the stack is
healed, and what the fault is allowed to cost (a record published twice by a relay cut
off between Kafka's ack and its DELETE; a webhook sent twice by a dispatcher killed
between the send and its record).

Every fault is real: a SIGKILL of the process in `.local/run/<svc>-<role>.pid` (healed by
`services.sh start <svc>`, which starts only what is not running), the broker or the
database stopped and started by `deploy/local/stack.sh`, a second relay process on a
service's database. Every command is bounded in time.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import REPO, Stack

from .effects import SERVICES

RUN = REPO / ".local" / "run"
SERVICES_SH = REPO / "deploy" / "local" / "services.sh"
ROLES = ("worker", "api")


@dataclass
class Faulting:
    """What the faults act on, and what they leave behind for their heal."""

    stack: Stack
    log_dir: Path
    relays: list[asyncio.subprocess.Process] = field(default_factory=list)
    relay_logs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what happened, for the report

    def note(self, text: str) -> None:
        self.notes.append(text)


Action = Callable[[Faulting], Awaitable[None]]


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    inject: Action
    heal: Action
    hold: float = 0.0  # seconds the fault lasts before the heal
    republishes: bool = False  # may put a record on Kafka twice
    redelivers: bool = False  # may send a webhook twice (allowed to customers)


# --------------------------------------------------------------------------- processes


def pid_of(service: str, role: str) -> int:
    return int((RUN / f"{service}-{role}.pid").read_text().strip())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def kill(service: str, role: str) -> Action:
    async def inject(faulting: Faulting) -> None:
        pid = pid_of(service, role)
        assert alive(pid), f"{service} {role} (pid {pid}) was not running before the fault"
        os.kill(pid, signal.SIGKILL)

        async def gone() -> bool:
            return not alive(pid)

        await eventually(gone, timeout=10, message=f"{service} {role} (pid {pid}) gone")
        faulting.note(f"SIGKILL {service} {role} (pid {pid})")

    return inject


async def run(*args: str, timeout: float) -> str:
    """A command's output; fails (with the output's end) on a non-zero exit or timeout."""
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{' '.join(args[-3:])} took over {timeout}s") from None
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(args[-3:])} failed:\n{text[-2000:]}"
    return text


def start_service(service: str) -> Action:
    async def heal(faulting: Faulting) -> None:
        started = time.monotonic()
        await run("bash", str(SERVICES_SH), "start", service, timeout=150)
        faulting.note(f"services.sh start {service}: {time.monotonic() - started:.1f}s")

    return heal


def stack_control(component: str, action: str) -> Action:
    async def act(faulting: Faulting) -> None:
        started = time.monotonic()
        await faulting.stack.control(component, action)
        faulting.note(f"stack.sh {component} {action}: {time.monotonic() - started:.1f}s")

    return act


# --------------------------------------------------------------------------- a second relay


def second_relays(*services: str) -> Action:
    """One more relay (`python -m tenantry_events.relay`, DEBUG: a line per batch) on each
    service's database, as a second worker would run it: it must wait as a standby."""

    async def inject(faulting: Faulting) -> None:
        for service in services:
            env = await asyncio.to_thread(faulting.stack.service_env, service)
            log = faulting.log_dir / f"relay-{service}-{int(time.time())}.log"
            faulting.relay_logs.append(log)
            out = await asyncio.to_thread(log.open, "ab")
            try:
                faulting.relays.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "tenantry_events.relay",
                        *("--dsn", env["TENANTRY_DATABASE_URL"]),
                        *("--bootstrap", faulting.stack.kafka_bootstrap),
                        *("--log-level", "DEBUG"),
                        stdout=out,
                        stderr=asyncio.subprocess.STDOUT,
                    )
                )
            finally:
                out.close()
        faulting.note(f"second relay on {', '.join(services)}")

    return inject


async def stop_second_relays(faulting: Faulting) -> None:
    """SIGTERM each second relay (SIGKILL after 15 s) and note what it did: a standby
    takes no lease and publishes nothing while the worker's relay holds the lock."""
    for process in faulting.relays:
        exited = process.returncode
        if exited is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await asyncio.wait_for(process.wait(), timeout=10)
        state = "ran until stopped" if exited is None else f"had exited ({exited})"
        faulting.note(f"second relay pid {process.pid} {state}")
    for log in faulting.relay_logs:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        faulting.note(
            f"{log.name}: {text.count('relay holds the lease')} lease(s) taken, "
            f"{text.count('published ')} batch(es) published"
        )
    faulting.relays.clear()
    faulting.relay_logs.clear()


# --------------------------------------------------------------------------- the catalog


def outage(component: str, label: str, down: float, **costs: bool) -> Fault:
    """`stack.sh COMPONENT stop`, `down` seconds, then `start` (which waits until it serves)."""
    return Fault(
        name={"pg": "postgres-restart"}.get(component, f"{component}-stop"),
        what=f"{label} stopped for {down:.0f} s (stack.sh {component} stop, start)",
        inject=stack_control(component, "stop"),
        heal=stack_control(component, "start"),
        hold=down,
        **costs,
    )


def catalog(kafka_down: float = 20.0, postgres_down: float = 5.0) -> list[Fault]:
    """Every fault, in the order `make chaos` runs them."""
    kills = [
        Fault(
            name=f"kill-{service}-{role}",
            what=f"SIGKILL of {service}'s {role}, then services.sh start {service}",
            inject=kill(service, role),
            heal=start_service(service),
            # A worker is the relay (and webhooks' dispatcher): killed between Kafka's ack
            # and its DELETE it publishes that batch again; killed mid-send, a webhook goes
            # again under the same webhook-id once its lease runs out.
            republishes=role == "worker",
            redelivers=role == "worker" and service == "webhooks",
        )
        for service in SERVICES
        for role in ROLES
    ]
    return [
        *kills,
        outage("kafka", "Kafka", kafka_down, republishes=True),  # a batch in flight, again
        # An acked batch whose DELETE died with the session goes again; so does a webhook
        # whose attempt's record did.
        outage("pg", "PostgreSQL", postgres_down, republishes=True, redelivers=True),
        Fault(
            name="second-relay",
            what="a second relay on identity's and provisioning's databases",
            inject=second_relays("identity", "provisioning"),
            heal=stop_second_relays,
            hold=10.0,
        ),
    ]


def by_name(names: list[str], faults: list[Fault]) -> list[Fault]:
    known = {f.name: f for f in faults}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in names]
