"""What the shared input guard costs per request body, against the route's own decode.

Every JSON body is read twice now: once by the guard (json.loads with a duplicate-key hook,
then a walk of the tree for depth, NULs, surrogates and number ranges) and once by the
route (msgspec, typed). The baseline is msgspec decoding the same body to Python objects,
the cheapest read a route could make. Bodies: a tenant create (~60 B), an Entra ID SCIM
user (~1 KB) and a SCIM Bulk of 100 users (~100 KB). In process; no services needed.
"""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec

from bench.common import BenchResult, Context, Row
from tenantry_http.input_guard import check_json_body

ROUNDS = 2000
LARGE_ROUNDS = 100


def entra_user(i: int) -> dict[str, Any]:
    name = f"user{i}@contoso.example"
    return {
        "schemas": [
            "urn:ietf:params:scim:schemas:core:2.0:User",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
        ],
        "externalId": f"ext-{i}",
        "userName": name,
        "active": True,
        "displayName": "Test User",
        "emails": [{"primary": True, "type": "work", "value": name}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Given Family", "familyName": "Family", "givenName": "Given"},
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {
            "employeeNumber": str(i),
            "department": "Engineering",
            "manager": {"value": f"mgr-{i}"},
        },
    }


BODIES = {
    "tenant create": json.dumps({"name": "Acme", "slug": "acme", "plan": "team"}).encode(),
    "SCIM user": json.dumps(entra_user(1)).encode(),
    "SCIM Bulk x100": json.dumps(
        {
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
            "Operations": [
                {"method": "POST", "path": "/Users", "bulkId": f"b{i}", "data": entra_user(i)}
                for i in range(100)
            ],
        }
    ).encode(),
}


def timed(call: Any, body: bytes, rounds: int) -> tuple[list[float], float]:
    latencies = []
    start = time.perf_counter()
    for _ in range(rounds):
        t0 = time.perf_counter()
        call(body)
        latencies.append(time.perf_counter() - t0)
    return latencies, time.perf_counter() - start


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        "input_guard",
        "input guard per body vs msgspec decode alone (in process)",
        "bodies",
        params={
            "rounds": ROUNDS,
            "large_rounds": LARGE_ROUNDS,
            "sizes": {k: len(v) for k, v in BODIES.items()},
        },
    )
    decode = msgspec.json.Decoder()
    for label, body in BODIES.items():
        rounds = LARGE_ROUNDS if len(body) > 10_000 else ROUNDS
        for variant, call, baseline in (
            ("msgspec decode", decode.decode, True),
            ("input guard", check_json_body, False),
        ):
            timed(call, body, rounds // 10)  # warm
            latencies, wall = timed(call, body, rounds)
            row = Row(f"{label}: {variant}", f"{len(body)} B", baseline=baseline)
            row.add(latencies, rounds, wall)
            result.rows.append(row)
        base = result.row(f"{label}: msgspec decode").rate
        guard = result.row(f"{label}: input guard").rate
        result.ratios[f"{label}: guard time / decode time"] = (
            base / guard if base and guard else None
        )
    result.notes.append(
        "The guard runs once per body, after authentication; a route decodes the body again."
    )
    return result
