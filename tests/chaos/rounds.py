"""One chaos round: a fresh tenant with a webhook endpoint on the loopback receiver, a burst
of SCIM creates with a fault injected when command `fault_at` starts, the heal, then a
wait until every effect along the chain has arrived (or the deadline), and the verdict.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx

from tenantry_testkit.fixtures import eventually, operator_token
from tenantry_testkit.receiver import Receiver, running_receiver
from tenantry_testkit.stack import Stack

from ..test_scim import scim_tenant
from ..test_webhooks import create_endpoint, endpoints_url
from .burst import BurstResult, run_burst, scim_client
from .effects import (
    HOOKED,
    SERVICES,
    Counts,
    DatabaseCounters,
    Finding,
    KafkaTap,
    as_json,
    databases_settled,
    judge,
    receiver_hits,
    wait_counted,
)
from .faults import Fault, Faulting


@dataclass(frozen=True)
class RoundSize:
    commands: int = 800
    in_flight: int = 8
    fault_at: int = 200
    command_timeout: float = 180.0  # from a command's start to its acceptance
    converge_timeout: float = 180.0  # from the burst's end (and the heal) to every effect


@dataclass
class Chaos:
    """What a run of rounds shares: the stack, the operator, the receiver, the counters."""

    stack: Stack
    operator_headers: dict[str, str]
    receiver: Receiver
    databases: DatabaseCounters
    faulting: Faulting


@asynccontextmanager
async def chaos_run(stack: Stack, log_dir: Path) -> AsyncIterator[Chaos]:
    await asyncio.to_thread(log_dir.mkdir, parents=True, exist_ok=True)
    await stack_ready(stack)
    headers = {"Authorization": f"Bearer {await operator_token(stack)}"}
    async with running_receiver() as receiver, DatabaseCounters.open(stack) as databases:
        yield Chaos(stack, headers, receiver, databases, Faulting(stack, log_dir))


@dataclass
class RoundResult:
    fault: str
    what: str
    tenant_id: str
    commands: int
    accepted: int
    refused: list[str]
    answers: dict[str, int]
    retried: int
    burst_seconds: float
    fault_notes: list[str]
    fault_error: str | None
    converged: bool
    converge_seconds: float  # from the last accepted command (or the heal, if later)
    findings: list[Finding]
    counts: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


async def stack_ready(stack: Stack, timeout: float = 90.0) -> None:
    """Every api and worker of the five answers /readyz 200 (a round starts on a whole
    stack, whatever the last one, or someone else, did to it)."""
    urls = [stack.service_url(s) for s in SERVICES]
    # A worker's health endpoint is 100 above its api's port (deploy/local/services.sh).
    urls += [f"http://127.0.0.1:{int(u.rsplit(':', 1)[1]) + 100}" for u in urls]

    async def all_ready() -> bool:
        async with httpx.AsyncClient(timeout=5) as client:
            for url in urls:
                try:
                    if (await client.get(f"{url}/readyz")).status_code != 200:
                        return False
                except httpx.HTTPError:
                    return False
        return True

    await eventually(all_ready, timeout=timeout, interval=0.5, message="the whole stack ready")


async def chaos_tenant(chaos: Chaos) -> tuple[str, str, str]:
    """An enterprise tenant (SCIM, no seat limit) with its SCIM key and an endpoint for
    account.created and user.provisioned at the receiver's /ok/<tenant>; its path."""
    stack, headers = chaos.stack, chaos.operator_headers
    await stack_ready(stack)
    tenant_id, key = await scim_tenant(stack, headers, plan="enterprise")

    async def known_to_webhooks() -> bool:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(endpoints_url(stack, tenant_id), headers=headers)
        return r.status_code == 200

    await eventually(known_to_webhooks, timeout=30, message="the tenant known to webhooks")
    path = f"/ok/{tenant_id}"
    await create_endpoint(
        stack,
        headers,
        tenant_id,
        {"url": f"{chaos.receiver.url}{path}", "event_types": list(HOOKED)},
    )
    return tenant_id, key, path


async def run_round(chaos: Chaos, fault: Fault | None, size: RoundSize) -> RoundResult:
    assert 0 <= size.fault_at < size.commands, "the fault must come mid-burst"
    tenant_id, key, path = await chaos_tenant(chaos)
    tap = await KafkaTap.open(chaos.stack)
    chaos.faulting.notes = []
    reached, injected = asyncio.Event(), asyncio.Event()
    fault_error: list[str] = []
    injected_at, healed_at = [time.monotonic()], [time.monotonic()]

    async def on_start(index: int) -> None:
        # From command `fault_at` on, nothing is sent until the fault is in force (stopping
        # a broker takes seconds; a short burst would be over before it), so the rest of
        # the burst meets it.
        if fault is not None and index >= size.fault_at:
            reached.set()
            await asyncio.wait_for(injected.wait(), timeout=180)

    async def inject_and_heal(fault: Fault) -> None:
        await reached.wait()
        try:
            try:
                await fault.inject(chaos.faulting)
            finally:
                injected_at[0] = time.monotonic()
                injected.set()
            await asyncio.sleep(fault.hold)
        except Exception as exc:  # reported with the round; the heal still runs
            fault_error.append(f"inject: {exc!r}")
        finally:
            try:
                await fault.heal(chaos.faulting)
            except Exception as exc:
                fault_error.append(f"heal: {exc!r}")
            healed_at[0] = time.monotonic()

    tag = uuid4().hex[:8]
    names = [f"chaos-{tag}-{i}@example.com" for i in range(size.commands)]
    async with scim_client(chaos.stack.service_url("provisioning"), key) as scim:
        faulting = asyncio.create_task(inject_and_heal(fault)) if fault else None
        burst = await run_burst(
            scim,
            names,
            in_flight=size.in_flight,
            on_start=on_start,
            command_timeout=size.command_timeout,
        )
        if faulting is not None:
            await faulting
    if fault is not None:
        during = sum(1 for c in burst.commands if injected_at[0] <= c.started_at < healed_at[0])
        chaos.faulting.note(
            f"in force for {healed_at[0] - injected_at[0]:.1f} s, while {during} creates started"
        )
    settled_from = max(burst.last_accepted, healed_at[0])
    converged, counts, findings = await converge(
        chaos, tenant_id, path, tap, burst, settled_from, settled_from + size.converge_timeout
    )
    converge_seconds = time.monotonic() - settled_from
    result = RoundResult(
        fault=fault.name if fault else "none",
        what=fault.what if fault else "no fault (the baseline)",
        tenant_id=tenant_id,
        commands=size.commands,
        accepted=len(burst.accepted),
        refused=[f"{c.user_name}: {c.refused}" for c in burst.refused],
        answers=dict(burst.answers),
        retried=burst.retried,
        burst_seconds=round(burst.ended - burst.started, 2),
        fault_notes=list(chaos.faulting.notes),
        fault_error="; ".join(fault_error) or None,
        converged=converged,
        converge_seconds=round(converge_seconds, 2),
        findings=findings,
        counts=as_json(counts),
    )
    result.failures = failures_of(result, fault)
    return result


async def converge(
    chaos: Chaos,
    tenant_id: str,
    path: str,
    tap: KafkaTap,
    burst: BurstResult,
    since: float,
    deadline: float,
) -> tuple[bool, Counts, list[Finding]]:
    """Count until every effect of the accepted commands has arrived, or the deadline;
    each finding notes when it first settled (seconds after `since`), so a slow effect
    shows which one it is. Kafka is read only once the databases show everything (each
    read is a full scan of the burst's records)."""
    accepted = set(burst.accepted)
    settled_at: dict[str, float] = {}

    def note(findings: list[Finding]) -> list[Finding]:
        for f in findings:
            if f.settled:
                settled_at.setdefault(f.effect, round(time.monotonic() - since, 2))
            f.settled_after = settled_at.get(f.effect)
        return findings

    while True:
        counts = Counts()
        await wait_counted(chaos.databases, tenant_id, counts, deadline + 60)
        counts.receiver = receiver_hits(chaos.receiver, path)
        note([f for f in judge(accepted, counts) if not f.via_kafka])
        late = time.monotonic() > deadline
        if databases_settled(accepted, counts) or late:
            await tap.read(tenant_id, counts)
            findings = note(judge(accepted, counts))
            if all(f.settled for f in findings) or late:
                return not late, counts, findings
        await asyncio.sleep(0.5)


def failures_of(result: RoundResult, fault: Fault | None) -> list[str]:
    failures = [f"refused: {r}" for r in result.refused[:10]]
    if result.fault_error:
        failures.append(f"the fault itself failed: {result.fault_error}")
    if not result.converged:
        failures.append(f"did not converge within {result.converge_seconds:.0f}s")
    for f in result.findings:
        problems = [
            f"{n} {what}"
            for n, what in (
                (f.lost, "lost"),
                (f.duplicated, "duplicated"),
                (f.strangers, "strangers"),
                (f.pending, "pending"),
            )
            if n
        ]
        if f.effect.startswith("Kafka") and f.copies and not (fault and fault.republishes):
            problems.append(f"{f.copies} records published twice (no relay was cut off)")
        if problems:
            failures.append(f"{f.effect}: {', '.join(problems)} (of {f.expected})")
    return failures
