"""Tenant suspension on the running services: from the suspend call returning to refusal
(403 tenant-suspended on GET /v1/whoami with the tenant's API key) by all five services,
quiet and with background traffic. Our goal: p99 under 250 ms on one machine.

The path measured: tenancy's transaction (tenant.suspended event + outbox, NOTIFY) ->
tenancy worker's relay -> Kafka -> each service's worker (inbox + tenant_projection upsert)
-> the next request's TenantGuard read. Each round then reactivates the tenant and waits
until all five accept the key again (timed too, as "reactivated -> accepted").
"""

from __future__ import annotations

import asyncio

import httpx

from bench.auth import (
    BACKGROUND_WORKERS,
    HTTP_TIMEOUT,
    SERVICES,
    _background,
    _expect,
    _new_key,
    _new_tenant,
    _slowest,
    bearer,
    propagation,
)
from bench.common import BenchResult, Context, Row, median, now, p99
from tenantry_testkit.fixtures import operator_token

ROUNDS = 30


async def _rounds(
    client: httpx.AsyncClient,
    stack_urls: dict[str, str],
    tenancy: str,
    operator: str,
    tenant_id: object,
    key: str,
    prefix: str,
) -> list[Row]:
    call = Row(f"{prefix}POST suspend (the call)", "request -> response", baseline=True)
    suspended = Row(f"{prefix}suspended -> refused by all five", "call returned -> last 403")
    restored = Row(f"{prefix}reactivated -> accepted by all five", "call returned -> last 200")
    for _ in range(ROUNDS):
        t0 = now()
        r = await client.post(
            f"{tenancy}/v1/tenants/{tenant_id}/suspend",
            json={"reason": "bench"},
            headers=bearer(operator),
        )
        returned = now()
        _expect(r, 200, "POST /v1/tenants/{id}/suspend")
        call.latencies.append(returned - t0)
        refused = await propagation(client, stack_urls, bearer(key), lambda s: s == 403, returned)
        if (everywhere := _slowest(refused)) is not None:
            suspended.latencies.append(everywhere)
        r = await client.post(
            f"{tenancy}/v1/tenants/{tenant_id}/reactivate",
            json={"reason": "bench"},
            headers=bearer(operator),
        )
        back = now()
        _expect(r, 200, "POST /v1/tenants/{id}/reactivate")
        accepted = await propagation(client, stack_urls, bearer(key), lambda s: s == 200, back)
        if (everywhere := _slowest(accepted)) is not None:
            restored.latencies.append(everywhere)
    rows = [call, suspended, restored]
    for row in rows:
        row.count = len(row.latencies)
    return rows


async def run(ctx: Context) -> BenchResult:
    stack = ctx.stack
    tenancy, identity = stack.service_url("tenancy"), stack.service_url("identity")
    urls = {s: f"{stack.service_url(s)}/v1/whoami" for s in SERVICES}
    result = BenchResult(
        "suspend",
        "tenant suspend call -> refused (403) by all five services (running services)",
        "rounds",
        params={"rounds_per_phase": ROUNDS},
    )
    operator = await operator_token(stack)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
        tenant_id = await _new_tenant(client, tenancy, operator, "suspend")
        key, _ = await _new_key(client, identity, operator, tenant_id)
        start = now()
        accepted = await propagation(client, urls, bearer(key), lambda s: s == 200, start)
        if _slowest(accepted) is None:
            raise RuntimeError("the benchmark's API key was not accepted by all five services")
        result.rows += await _rounds(client, urls, tenancy, operator, tenant_id, key, "quiet: ")
        stop = asyncio.Event()
        posted: list[float] = []
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as bg_client:
            posters = [
                asyncio.create_task(_background(bg_client, tenancy, operator, stop, posted))
                for _ in range(BACKGROUND_WORKERS)
            ]
            try:
                result.rows += await _rounds(
                    client, urls, tenancy, operator, tenant_id, key, "busy: "
                )
            finally:
                stop.set()
                await asyncio.gather(*posters, return_exceptions=True)
        result.rows.append(
            Row(
                f"busy: background POST /v1/tenants x{BACKGROUND_WORKERS}",
                "request -> response",
                posted,
                count=len(posted),
            )
        )
    for phase in ("quiet", "busy"):
        times = result.row(f"{phase}: suspended -> refused by all five").latencies
        for name, stat in (("p50", median), ("p99", p99)):
            value = stat(times)
            result.ratios[f"{phase}: refused by all five, {name} ms"] = (
                None if value is None else value * 1000
            )
    result.notes.append("goal: p99 under 250 ms; p99 is nearest-rank (30 rounds: the slowest)")
    return result
