"""The audit log (issue 19 §3) on the running services.

Write lag: an operator's action (POST limit-overrides) -> its entry queryable by request id
in GET /v1/tenants/{id}/audit-events. The path: tenancy's transaction (event + outbox) ->
relay -> Kafka -> tenancy's worker (the entry, chained) -> the query. Baseline: the action's
own call.

Query latency at scale: one tenant's log seeded with ENTRIES entries (1M by default,
TENANTRY_BENCH_AUDIT_ENTRIES), copies of real entries of several kinds with their chain
recomputed, then the API's reads: the newest page, a page deep in the log (by cursor),
filters by action, actor, target and request id, a one-hour window, and an NDJSON export
of 10,000 entries. Baseline: GET /v1/tenants/{id} on the same service (its floor).
The seeded copies carry no sealed field (a sealed value opens only in its own event):
opening a sealed IP adds an AES-GCM decryption per entry, not measured here.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import msgspec
from uuid_utils.compat import uuid7

from bench.auth import HTTP_TIMEOUT, _expect, _new_tenant, bearer
from bench.common import BenchResult, Context, Row, now
from tenantry_testkit.fixtures import operator_token

ROUNDS = 40
QUERY_ROUNDS = 30
ENTRIES = int(os.environ.get("TENANTRY_BENCH_AUDIT_ENTRIES", "1000000"))
EXPORTED = 10_000
_BATCH = 20_000


async def _write_lag(
    client: httpx.AsyncClient, tenancy: str, operator: str, tenant_id: UUID
) -> list[Row]:
    call = Row("action: POST limit-overrides (the call)", "request -> response", baseline=True)
    lag = Row("action -> entry queryable", "call returned -> entry found by request id")
    audit = f"{tenancy}/v1/tenants/{tenant_id}/audit-events"
    for n in range(ROUNDS):
        request_id = f"bench-audit-{uuid7()}"
        t0 = now()
        r = await client.post(
            f"{tenancy}/v1/tenants/{tenant_id}/limit-overrides",
            json={"seats": 100 + n},
            headers={**bearer(operator), "X-Request-Id": request_id},
        )
        returned = now()
        _expect(r, 200, "POST limit-overrides")
        call.latencies.append(returned - t0)
        while now() - returned < 30:
            found = await client.get(
                audit, params={"request_id": request_id}, headers=bearer(operator)
            )
            if _expect(found, 200, "GET audit-events")["data"]:
                lag.latencies.append(now() - returned)
                break
        else:
            raise RuntimeError(f"no audit entry for {request_id} after 30 s")
    for row in (call, lag):
        row.count = len(row.latencies)
    return [call, lag]


async def _seed(conn: asyncpg.Connection, tenant_id: UUID, count: int) -> dict[str, str]:
    """`count` entries after the tenant's real ones: copies of them (sealed fields left
    out), one hour apart in `occurred_at` per 1,000, chained. What the filters look for:
    one actor, one target and one action that are rare."""
    real = await conn.fetch(
        "SELECT record FROM audit_entries WHERE tenant_id = $1 ORDER BY seq", tenant_id
    )
    templates = [msgspec.json.decode(r["record"]) for r in real]
    for record in templates:
        record["actor"].pop("ip", None)
        record["actor"].pop("user_agent", None)
    head = await conn.fetchrow(
        "SELECT head_seq, head_hash FROM audit_chains WHERE tenant_id = $1", tenant_id
    )
    if head is None:
        raise RuntimeError("the bench tenant has no audit log yet")
    seq, prev = int(head["head_seq"]), bytes(head["head_hash"])
    start = datetime.now(UTC) - timedelta(hours=count // 1000 + 1)
    rare = {"actor_id": f"bench-actor-{uuid7()}", "target_id": f"bench-target-{uuid7()}"}
    rows: list[tuple[Any, ...]] = []
    for i in range(count):
        seq += 1
        record = dict(templates[i % len(templates)])
        occurred = start + timedelta(seconds=i * 3.6)
        actor = dict(record["actor"])
        target = dict(record["target"])
        if i % 1000 == 0:  # 0.1 %: the rare actor and target
            actor["id"], target["id"] = rare["actor_id"], rare["target_id"]
        request_id = f"bench-{i}"
        actor["request_id"] = request_id
        record.update(
            seq=seq,
            event_id=str(uuid7()),
            occurred_at=occurred.isoformat(timespec="microseconds"),
            actor=actor,
            target=target,
        )
        text = msgspec.json.encode(record, order="sorted")
        digest = hashlib.sha256(prev + text).digest()
        rows.append(
            (
                tenant_id,
                seq,
                UUID(record["event_id"]),
                occurred,
                occurred,
                record["action"],
                record["outcome"],
                actor["kind"],
                actor.get("id"),
                target["type"],
                target["id"],
                request_id,
                text.decode(),
                prev,
                digest,
            )
        )
        prev = digest
        if len(rows) == _BATCH or i == count - 1:
            await conn.copy_records_to_table(
                "audit_entries",
                records=rows,
                columns=[
                    "tenant_id",
                    "seq",
                    "event_id",
                    "occurred_at",
                    "recorded_at",
                    "action",
                    "outcome",
                    "actor_kind",
                    "actor_id",
                    "target_type",
                    "target_id",
                    "request_id",
                    "record",
                    "prev_hash",
                    "hash",
                ],
            )
            rows = []
    await conn.execute(
        "UPDATE audit_chains SET head_seq = $2, head_hash = $3 WHERE tenant_id = $1",
        tenant_id,
        seq,
        prev,
    )
    await conn.execute("ANALYZE audit_entries")
    rare["action"] = str(templates[0]["action"])
    rare["request_id"] = f"bench-{count // 2}"
    rare["since"] = (start + timedelta(hours=count // 2000)).isoformat()
    rare["until"] = (start + timedelta(hours=count // 2000 + 1)).isoformat()
    return rare


async def _timed(
    client: httpx.AsyncClient, row: Row, url: str, params: dict[str, str], headers: dict[str, str]
) -> None:
    for _ in range(QUERY_ROUNDS):
        t0 = now()
        r = await client.get(url, params=params, headers=headers)
        row.latencies.append(now() - t0)
        _expect(r, 200, f"GET {row.label}")
    row.count = len(row.latencies)


async def run(ctx: Context) -> BenchResult:
    stack = ctx.stack
    tenancy = stack.service_url("tenancy")
    result = BenchResult(
        "audit",
        "audit log: action -> queryable, and reads at scale (running services)",
        "operations",
        params={"rounds": ROUNDS, "entries": ENTRIES, "query_rounds": QUERY_ROUNDS},
    )
    operator = await operator_token(stack)
    headers = bearer(operator)
    async with httpx.AsyncClient(timeout=max(HTTP_TIMEOUT, 120)) as client:
        tenant_id = await _new_tenant(client, tenancy, operator, "audit", plan="enterprise")
        result.rows += await _write_lag(client, tenancy, operator, tenant_id)
        conn = await asyncpg.connect(stack.super_dsn(stack.service_database("tenancy")))
        try:
            t0 = now()
            rare = await _seed(conn, tenant_id, ENTRIES)
            result.notes.append(f"seeded {ENTRIES:,} entries in {now() - t0:.1f} s")
            audit = f"{tenancy}/v1/tenants/{tenant_id}/audit-events"
            floor = Row("GET /v1/tenants/{id} (floor)", "request -> response", baseline=True)
            await _timed(client, floor, f"{tenancy}/v1/tenants/{tenant_id}", {}, headers)
            result.rows.append(floor)
            deep = _expect(
                await client.get(audit, params={"order": "asc", "limit": "50"}, headers=headers),
                200,
                "first ascending page",
            )["next_cursor"]
            for label, params in (
                ("newest page (50)", {}),
                ("page by cursor", {"cursor": deep, "order": "asc"}),
                ("filter: rare actor", {"actor_id": rare["actor_id"]}),
                ("filter: rare target", {"target_id": rare["target_id"]}),
                ("filter: action", {"action": rare["action"]}),
                ("filter: action prefix", {"action": rare["action"].split(".")[0] + ".*"}),
                ("filter: request id", {"request_id": rare["request_id"]}),
                ("filter: one hour", {"since": rare["since"], "until": rare["until"]}),
            ):
                row = Row(f"{label}, {ENTRIES:,} entries", "request -> page")
                await _timed(client, row, audit, params, headers)
                result.rows.append(row)
            export = Row(f"NDJSON export of {EXPORTED:,} entries", "request -> last byte")
            since = rare["since"]
            until = (datetime.fromisoformat(since) + timedelta(hours=EXPORTED // 1000)).isoformat()
            for _ in range(3):
                t0 = now()
                r = await client.get(
                    audit,
                    params={"format": "ndjson", "order": "asc", "since": since, "until": until},
                    headers=headers,
                )
                elapsed = now() - t0
                lines = r.text.count("\n")
                if r.status_code != 200 or lines < EXPORTED * 0.9:
                    raise RuntimeError(f"export: HTTP {r.status_code}, {lines} lines")
                export.add([elapsed], lines, elapsed)
            result.rows.append(export)
        finally:
            await conn.execute("DELETE FROM audit_entries WHERE tenant_id = $1", tenant_id)
            await conn.close()
    return result
