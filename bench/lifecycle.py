"""A big tenant's export and purge on the running services (issue 17).

One tenant is seeded straight into the databases (generate_series, as tests/test_purge.py
does): SCIM users in provisioning, and one endpoint with messages, deliveries and attempts
in webhooks (4 attempts per delivery, one delivery per message). Then, in one run:

1. export: POST /v1/tenants/{id}/exports as the operator, polled until `completed`: time,
   records/s and MB/s (the parts' NDJSON bytes). Baseline: a plain `COPY (query) TO
   STDOUT` through asyncpg of the very queries the services export (their ExportSources),
   into a sink that counts bytes, before and after the export. Meanwhile VmRSS of the
   provisioning, webhooks and tenancy worker processes is sampled every 50 ms: their
   baseline, peak and growth (the export claims bounded memory whatever the size).
2. purge: offboarding, then an early purge; time from the purge request to
   GET /v1/tenants/{id}/purge showing completed_at, and each service's share from its
   report's completed_at (in the deletion certificate) relative to the request.

The purge is also the clean-up: it removes every row seeded here. Field-encryption
overhead is bench/sealing.py's.

Sizes: BENCH_LIFECYCLE_USERS and BENCH_LIFECYCLE_ATTEMPTS (the issue's figures are 100k
users and 1M attempts; the defaults are smaller so that `make bench` stays short).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import httpx

from bench.auth import _new_tenant
from bench.common import BenchResult, Context, Row, median, now, ratio
from tenantry_provisioning.export import PROVISIONING_EXPORTS
from tenantry_service.export import ExportSource
from tenantry_testkit.fixtures import operator_token
from tenantry_webhooks.export import WEBHOOKS_EXPORTS

USERS = int(os.environ.get("BENCH_LIFECYCLE_USERS", "20000"))
ATTEMPTS = int(os.environ.get("BENCH_LIFECYCLE_ATTEMPTS", "100000"))
ATTEMPTS_PER_DELIVERY = 4
SAMPLE_EVERY = 0.05  # seconds between two VmRSS reads
POLL_EVERY = 0.1  # seconds between two GETs of the export / purge
RESTART_GRACE = 120.0  # seconds a service restarted by someone else may take to answer
TIMEOUT = 1800.0  # seconds an export or a purge may take before the run gives up
WORKERS = ("provisioning", "webhooks", "tenancy")
RUN_DIR = Path(__file__).resolve().parent.parent / ".local" / "run"
MB = 1024 * 1024
T = TypeVar("T")


# --------------------------------------------------------------------------- memory


def _status_kb(pid: int, field_name: str) -> int | None:
    """A field of /proc/<pid>/status in kB (None when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


@dataclass
class RssSampler:
    """VmRSS of a few processes every SAMPLE_EVERY seconds, while `running` is set; also
    their VmHWM (the kernel's own high-water mark) before and after, which catches a peak
    shorter than the sampling period when it is the process's highest ever."""

    pids: dict[str, int]
    samples: dict[str, list[int]] = field(default_factory=dict)
    hwm_before: dict[str, int | None] = field(default_factory=dict)
    hwm_after: dict[str, int | None] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)  # restarted meanwhile: its figures are partial

    async def sample(self, stop: asyncio.Event) -> None:
        self.hwm_before = {s: _status_kb(p, "VmHWM") for s, p in self.pids.items()}
        while True:
            for service, pid in self.pids.items():
                kb = _status_kb(pid, "VmRSS")
                if kb is None:
                    self.gone.add(service)
                else:
                    self.samples.setdefault(service, []).append(kb)
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
        self.hwm_after = {s: _status_kb(p, "VmHWM") for s, p in self.pids.items()}


async def worker_pids() -> dict[str, int]:
    """The workers' pids; a pid file is briefly missing while someone restarts its service
    on the shared stack."""
    for _ in range(60):
        with contextlib.suppress(OSError, ValueError):
            return {s: int((RUN_DIR / f"{s}-worker.pid").read_text().strip()) for s in WORKERS}
        await asyncio.sleep(1.0)
    raise RuntimeError(f"no worker pid files in {RUN_DIR}: is the stack up?")


# --------------------------------------------------------------------------- seeding


@dataclass(frozen=True)
class Seeded:
    users: int
    messages: int
    deliveries: int
    attempts: int


async def seed(dbs: dict[str, asyncpg.Pool], tenant_id: UUID, marker: str) -> Seeded:
    """The tenant's rows, inserted as the superuser (past RLS), as a set each. Deliveries
    are `succeeded` and the endpoint disabled: the dispatcher has nothing to send."""
    messages = max(1, ATTEMPTS // ATTEMPTS_PER_DELIVERY)
    await dbs["provisioning"].execute(
        """INSERT INTO scim_users (id, tenant_id, user_name, display_name, emails)
           SELECT gen_random_uuid(), $1, $2 || '-' || n || '@example.com', $2 || ' ' || n,
                  jsonb_build_array(jsonb_build_object('value', $2 || n || '@example.com'))
           FROM generate_series(1, $3) AS n""",
        tenant_id,
        marker,
        USERS,
    )
    endpoint = f"ep_{marker}"
    async with dbs["webhooks"].acquire() as conn, conn.transaction():
        await conn.execute(
            """INSERT INTO endpoints (endpoint_id, tenant_id, url, event_types, secret, enabled,
                                      disabled_reason)
               VALUES ($1, $2, 'http://127.0.0.1:9/hook', '{tenant.updated}', '\\x00', false,
                       'benchmark')""",
            endpoint,
            tenant_id,
        )
        await conn.execute(
            """INSERT INTO messages (message_id, tenant_id, event_id, event_type, body)
               SELECT 'msg_' || $2 || '_' || n, $1::uuid, gen_random_uuid(), 'tenant.updated',
                      convert_to(jsonb_build_object(
                          'type', 'tenant.updated', 'timestamp', now(),
                          'data', jsonb_build_object('n', n, 'tenant_id', $1::uuid::text,
                                                     'note', repeat('x', 120)))::text, 'UTF8')
               FROM generate_series(1, $3) AS n""",
            tenant_id,
            marker,
            messages,
        )
        await conn.execute(
            """INSERT INTO deliveries (message_id, endpoint_id, tenant_id, status, attempts,
                                       last_status)
               SELECT message_id, $2, tenant_id, 'succeeded', $3, 200
               FROM messages WHERE tenant_id = $1""",
            tenant_id,
            endpoint,
            ATTEMPTS_PER_DELIVERY,
        )
        await conn.execute(
            """INSERT INTO attempts (delivery_id, tenant_id, message_id, endpoint_id, attempt,
                                     started_at, latency_ms, status_code, error, response_body)
               SELECT d.delivery_id, d.tenant_id, d.message_id, d.endpoint_id, a,
                      now() - make_interval(mins => $2 - a), 20 + random() * 200,
                      CASE WHEN a = $2 THEN 200 ELSE 503 END,
                      CASE WHEN a = $2 THEN NULL ELSE 'HTTP 503' END,
                      CASE WHEN a = $2 THEN '{"ok":true}' ELSE 'upstream unavailable' END
               FROM deliveries d CROSS JOIN generate_series(1, $2) AS a
               WHERE d.tenant_id = $1""",
            tenant_id,
            ATTEMPTS_PER_DELIVERY,
        )
    for service in ("provisioning", "webhooks"):
        await dbs[service].execute("ANALYZE")
    return Seeded(USERS, messages, messages, messages * ATTEMPTS_PER_DELIVERY)


# --------------------------------------------------------------------------- baseline


SOURCES: dict[str, Sequence[ExportSource]] = {
    "provisioning": PROVISIONING_EXPORTS,
    "webhooks": WEBHOOKS_EXPORTS,
}


async def copy_baseline(dbs: dict[str, asyncpg.Pool], tenant_id: UUID) -> tuple[int, int, float]:
    """(rows, bytes, seconds): the services' export queries, COPY ... TO STDOUT (text),
    each service's in one REPEATABLE READ read-only transaction, as the exporters read."""
    rows = size = 0

    async def sink(chunk: bytes) -> None:
        nonlocal rows, size
        size += len(chunk)
        rows += chunk.count(b"\n")  # text format escapes newlines inside values

    t0 = now()
    for service, sources in SOURCES.items():
        async with (
            dbs[service].acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            for source in sources:
                args: tuple[Any, ...] = (tenant_id, None) if source.per_person else (tenant_id,)
                await conn.copy_from_query(source.query, *args, output=sink)  # COPY (q) TO STDOUT
    return rows, size, now() - t0


# --------------------------------------------------------------------------- the API


async def _call(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    restarts: list[float],
    body: dict[str, Any] | None = None,
    ok: tuple[int, ...] = (200,),
) -> dict[str, Any]:
    """One API call of the sagas. The stack is shared: a service restarted by someone else
    refuses connections for a few seconds (or, identity's, makes tenancy answer 401 until
    its signing keys load again). That is waited out, for RESTART_GRACE seconds at most,
    and noted, as the sagas themselves wait it out through Kafka."""
    since: float | None = None
    while True:
        try:
            response = await client.request(method, url, json=body)
            if response.status_code in ok:
                answer: dict[str, Any] = response.json()
                return answer
            failure = f"HTTP {response.status_code}: {response.text[:300]}"
            if response.status_code not in (401, 502, 503, 504):
                raise RuntimeError(f"{method} {url}: {failure}")
        except httpx.TransportError as exc:
            failure = repr(exc)
        since = since or now()
        restarts.append(now())
        if now() - since > RESTART_GRACE:
            raise RuntimeError(f"{method} {url}: failing for {RESTART_GRACE:.0f}s: {failure}")
        await asyncio.sleep(1.0)


async def export(
    client: httpx.AsyncClient, tenant_id: UUID, restarts: list[float]
) -> tuple[dict[str, Any], float, dict[str, float]]:
    """(the completed job, seconds from POST to completed, seconds to each part's arrival)."""
    base = f"/v1/tenants/{tenant_id}/exports"
    t0 = now()
    job = await _call(client, "POST", base, restarts, {}, ok=(202,))
    url = f"{base}/{job['export_id']}"
    parts_in: dict[str, float] = {}
    while now() - t0 < TIMEOUT:
        job = await _call(client, "GET", url, restarts)
        for service in job["parts"]:
            parts_in.setdefault(service, now() - t0)
        if job["status"] == "completed":
            return job, now() - t0, parts_in
        if job["status"] == "failed":
            raise RuntimeError(f"the export failed: {job['failure']}")
        await asyncio.sleep(POLL_EVERY)
    raise RuntimeError(f"the export did not complete in {TIMEOUT:.0f}s: {job}")


async def purge(
    client: httpx.AsyncClient, tenant_id: UUID, restarts: list[float]
) -> tuple[dict[str, Any], float, dict[str, Any]]:
    """(the completed purge, seconds from the purge request to completed_at seen, the
    deletion certificate's claims). Also the clean-up after a failed run."""
    url = f"/v1/tenants/{tenant_id}"
    # 409: a step a failed run had already taken (offboarding started, purge requested).
    reason = {"reason": "benchmark"}
    await _call(client, "POST", f"{url}/offboarding", restarts, reason, ok=(200, 409))
    t0 = now()
    await _call(client, "POST", f"{url}/purge", restarts, reason, ok=(202, 409))
    while now() - t0 < TIMEOUT:
        progress = await _call(client, "GET", f"{url}/purge", restarts)
        if progress["completed_at"]:
            took = now() - t0
            certificate_url = f"/v1/deletion-certificates/{progress['certificate_id']}"
            issued = await _call(client, "GET", certificate_url, restarts)
            certificate: dict[str, Any] = issued["certificate"]
            return progress, took, certificate
        await asyncio.sleep(POLL_EVERY)
    raise RuntimeError(f"the purge did not complete in {TIMEOUT:.0f}s")


# --------------------------------------------------------------------------- the run


def _memory(result: BenchResult, phase: str, sampler: RssSampler) -> None:
    for service in sorted(sampler.gone):
        result.notes.append(f"ANOMALY {phase}: the {service} worker exited during it (restart)")
    for service, kb in sampler.samples.items():
        before, peak = kb[0] / 1024, max(kb) / 1024
        hwm_before, hwm_after = sampler.hwm_before.get(service), sampler.hwm_after.get(service)
        result.ratios[f"{phase}: {service} worker RSS before MB"] = before
        result.ratios[f"{phase}: {service} worker RSS peak MB"] = peak
        result.ratios[f"{phase}: {service} worker RSS growth MB"] = peak - before
        if hwm_before is not None and hwm_after is not None and hwm_after - hwm_before >= 1024:
            result.notes.append(
                f"{phase}: {service} worker's VmHWM rose {hwm_before / 1024:.0f} -> "
                f"{hwm_after / 1024:.0f} MB (an exact peak, between samples or not)"
            )


async def _sampled(pids: dict[str, int], work: Awaitable[T]) -> tuple[T, RssSampler]:
    sampler, stop = RssSampler(pids), asyncio.Event()
    task = asyncio.create_task(sampler.sample(stop))
    await asyncio.sleep(0.5)  # the baseline RSS, before the work starts
    try:
        done = await work
    finally:
        stop.set()
        await task
    return done, sampler


async def run(ctx: Context) -> BenchResult:
    stack = ctx.stack
    result = BenchResult(
        "lifecycle",
        "a big tenant's export (vs COPY of the same queries) and purge (running services)",
        "records",
        params={
            "scim_users": USERS,
            "webhook_attempts": ATTEMPTS,
            "attempts_per_delivery": ATTEMPTS_PER_DELIVERY,
            "rss_sample_every_s": SAMPLE_EVERY,
            "poll_every_s": POLL_EVERY,
        },
    )
    operator = await operator_token(stack)
    dbs = {
        s: await asyncpg.create_pool(
            stack.super_dsn(stack.service_database(s)), min_size=1, max_size=2
        )
        for s in SOURCES
    }
    marker = f"bench-life-{ctx.run_id}"
    async with httpx.AsyncClient(
        base_url=stack.service_url("tenancy"),
        timeout=60,
        headers={"Authorization": f"Bearer {operator}"},
    ) as client:
        tenant_id = await _new_tenant(
            client, stack.service_url("tenancy"), operator, "life", plan="enterprise"
        )
        purged = False
        restarts: list[float] = []
        try:
            t0 = now()
            seeded = await seed(dbs, tenant_id, marker)
            result.params["seeded"] = vars(seeded)
            result.params["seed_s"] = now() - t0

            copies = [await copy_baseline(dbs, tenant_id)]
            pids = await worker_pids()
            (job, took, parts_in), export_mem = await _sampled(
                pids, export(client, tenant_id, restarts)
            )
            copies.append(await copy_baseline(dbs, tenant_id))

            part_bytes = sum(p["bytes"] for p in job["parts"].values())
            exported = Row(
                "export: POST -> completed",
                "whole export",
                [took],
                count=job["records"],
                wall=took,
                extra={"parts_bytes": part_bytes, "archive_bytes": job["bytes"]},
            )
            copy_rows = Row("COPY of the same queries", "all sources", baseline=True)
            for rows, size, seconds in copies:
                copy_rows.add([seconds], rows, seconds)
                copy_rows.extra.setdefault("bytes", []).append(size)
            result.rows += [copy_rows, exported]
            for service, at in sorted(parts_in.items(), key=lambda item: item[1]):
                part = job["parts"][service]
                result.rows.append(
                    Row(f"export: {service} part in", "POST -> part reported", [at],
                        count=part["records"], wall=at, extra={"bytes": part["bytes"]})
                )  # fmt: skip
            copy_s = median([s for _, _, s in copies])
            copy_mb = median([b for _, b, _ in copies])
            result.ratios["export: parts MB"] = part_bytes / MB
            result.ratios["export: archive MB (zip)"] = job["bytes"] / MB
            result.ratios["export: MB/s (parts' NDJSON)"] = part_bytes / MB / took
            result.ratios["baseline: COPY MB/s (median)"] = (copy_mb or 0) / MB / (copy_s or 1)
            result.ratios["export time / COPY time (median)"] = ratio(took, copy_s)
            result.ratios["export: assembly s (last part -> completed)"] = took - max(
                parts_in.values()
            )
            _memory(result, "export", export_mem)

            pids = await worker_pids()  # again: a worker may have been restarted meanwhile
            purged_run = await _sampled(pids, purge(client, tenant_id, restarts))
            (progress, purge_s, certificate), purge_mem = purged_run
            purged = True
            requested = datetime.fromisoformat(progress["requested_at"])
            result.rows.append(
                Row("purge: POST /purge -> completed_at", "whole purge", [purge_s],
                    count=certificate["rows_deleted"], wall=purge_s)
            )  # fmt: skip
            for service, share in sorted(certificate["services"].items()):
                at = (datetime.fromisoformat(share["completed_at"]) - requested).total_seconds()
                result.rows.append(
                    Row(f"purge: {service} share", "request -> report's completed_at", [at],
                        count=share["rows"], wall=at)
                )  # fmt: skip
            _memory(result, "purge", purge_mem)
        finally:
            if not purged:  # the clean-up: a failed run leaves no seeded tenant behind
                with contextlib.suppress(Exception):
                    await purge(client, tenant_id, restarts)
            for pool in dbs.values():
                await pool.close()
    if restarts:
        result.notes.append(
            f"ANOMALY tenancy refused connections {len(restarts)} times during the run "
            "(a restart on the shared stack): the figures include that wait"
        )
    result.notes.append(
        "counts in purge rows are rows deleted (the certificate's); the export's records "
        "include every service's share; one export and one purge per run (no p99)"
    )
    return result
