"""python -m bench [--only NAME[,NAME...]] [--list]

Runs the benchmarks against the local stack (`make up`), prints one table per benchmark and
writes every figure to bench/results/<timestamp>.json. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from uuid_utils.compat import uuid4

from bench import (
    audit,
    auth,
    consume,
    guardrails,
    input_guard,
    lifecycle,
    peer_ratelimit,
    peer_webhooks,
    projection,
    region_move,
    relay,
    residency,
    scim,
    sealing,
    sso,
    store,
    suspend,
    webhooks,
)
from bench.common import BenchResult, Context, now, probe_stack, render
from tenantry_testkit.stack import load_stack

Benchmark = Callable[[Context], Awaitable[BenchResult]]

BENCHMARKS: dict[str, tuple[Benchmark, bool, str]] = {
    # name: (run, needs the five services, one line of what it measures)
    "store": (store.run, False, "event store appends/s, single and batched, vs plain INSERT"),
    "audit": (
        audit.run,
        True,
        "audit log: action -> entry queryable, and reads of a 1M-entry log vs a plain GET",
    ),
    "relay": (relay.run, False, "outbox relay publish rate vs raw aiokafka producer"),
    "projection": (
        projection.run,
        True,
        "POST /v1/tenants -> identity tenant_projection latency vs POST, raw Kafka round trip",
    ),
    "consume": (
        consume.run,
        False,
        "EventConsumer (FastStream) records/s vs raw aiokafka consumer, with/without commits",
    ),
    "auth": (
        auth.run_auth,
        True,
        "GET /v1/whoami with token / API key vs /healthz: latency added by authentication",
    ),
    "revoke": (
        auth.run_revoke,
        True,
        "API key revoke call -> 401 from all five services, quiet and with background POSTs",
    ),
    "suspend": (
        suspend.run,
        True,
        "tenant suspend call -> 403 from all five services, quiet and with background POSTs",
    ),
    "ratelimit": (
        guardrails.run_ratelimit,
        False,
        "rate-limit decisions/s and p99: Redis path vs plain INCR, cached refusal, local path",
    ),
    "pipeline": (
        guardrails.run_pipeline,
        True,
        "latency the rate-limit and admission steps add to GET /v1/whoami (extra instances)",
    ),
    "overload": (
        guardrails.run_overload,
        True,
        "one instance at 1.5x/3x capacity: critical success, served p99, time to refuse",
    ),
    "sso": (
        sso.run,
        True,
        "SAML ACS (signed, encrypted) and OIDC callback latency vs library / IdP floors",
    ),
    "input_guard": (
        input_guard.run,
        False,
        "the shared input guard's cost per JSON body vs msgspec decoding it alone",
    ),
    "sealing": (
        sealing.run,
        False,
        "personal-field sealing: event append and consume (decode + unseal), with vs without",
    ),
    "lifecycle": (
        lifecycle.run,
        True,
        "a big tenant's export (records/s, MB/s, worker RSS) vs COPY, and its purge",
    ),
    "residency": (
        residency.run,
        False,
        "two regions: home-region check on vs off, created -> routable elsewhere, claims",
    ),
    "region_move": (
        region_move.run,
        False,
        "two regions: a tenant moved (to active there, old copy purged) vs its export alone",
    ),
    "scim": (
        scim.run,
        True,
        "SCIM userName/externalId/email/displayName lookups and list pages at 100k users",
    ),
    "webhooks": (
        webhooks.run,
        False,
        "dispatcher deliveries/s vs straight POSTs, first-attempt p50/p99, tenant fairness",
    ),
    "peer_ratelimit": (
        peer_ratelimit.run,
        True,
        "peer: decisions/s and p99 at 1 and 32 in flight, Tenantry vs envoyproxy/ratelimit",
    ),
    "peer_webhooks": (
        peer_webhooks.run,
        False,
        "peer: backlog drain and first-attempt latency, Tenantry's dispatcher vs Svix",
    ),
}

# Peers built here and run beside Tenantry (`make bench-peers`, bench/peers.py): never in a
# plain `make bench`, which stays within what `make up` installs.
PEERS = {"peer_ratelimit", "peer_webhooks"}

# Benchmarks that bring their own stack instead of the default one (`make up`): residency
# runs on the two-region stack (tenantry_testkit.regions), started when it does not answer.
OWN_STACK = {"residency", "region_move"}

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only these (repeatable or comma-separated): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--peers", action="store_true", help="run the peer benchmarks only")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--no-json", action="store_true", help="do not write bench/results/")
    return parser.parse_args(argv)


async def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (_, _, what) in BENCHMARKS.items():
            print(f"{name:12} {what}")
        return 0
    everyday = [n for n in BENCHMARKS if n not in PEERS]
    chosen = [n.strip() for item in args.only for n in item.split(",") if n.strip()]
    names = chosen or (sorted(PEERS) if args.peers else everyday)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; know {', '.join(BENCHMARKS)}")
        return 2

    stack = load_stack()
    on_default = [n for n in names if n not in OWN_STACK]
    need_services = any(BENCHMARKS[n][1] for n in on_default)
    problems = await probe_stack(stack, need_services) if on_default else []
    if problems:
        print("the local stack is not reachable (run `make up`):")
        for problem in problems:
            print(f"  {problem}")
        return 1

    started_at = datetime.now(UTC)
    ctx = Context(stack, run_id=uuid4().hex[:8])
    print(
        f"Tenantry benchmarks, run {ctx.run_id}, {started_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    report: dict[str, Any] = {
        "run_id": ctx.run_id,
        "started_at": started_at.isoformat(),
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "node": platform.node(),
        },
        "benchmarks": {},
        "errors": {},
    }
    failed = False
    try:
        for name in names:
            run = BENCHMARKS[name][0]
            print(f"\n-- running {name} ...", flush=True)
            t0 = now()
            try:
                result = await run(ctx)
            except Exception as exc:
                failed = True
                traceback.print_exc()
                report["errors"][name] = repr(exc)
                continue
            result.seconds = now() - t0
            report["benchmarks"][name] = result.to_json()
            print(render(result), flush=True)
    finally:
        await ctx.delete_topics()
    report["seconds"] = (datetime.now(UTC) - started_at).total_seconds()
    if not args.no_json:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{started_at:%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        print(f"\nresults: {shown}")
    print(f"total {report['seconds']:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
