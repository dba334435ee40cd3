"""python -m tests.chaos [--only NAME,...] [--commands N] [--fault-at K] [--list]

The long form of the chaos suite (`make chaos`): a baseline round, then one round per fault
of the catalog, against the running stack (`make up`); prints each round's verdict and
writes the report to .local/chaos/chaos-<time>.{json,md}. Exits 1 if any round failed.
The stack's Postgres and Kafka are really stopped: do not run it beside other tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

from tenantry_testkit.stack import load_stack

from .faults import Fault, by_name, catalog
from .report import REPORTS, round_markdown, write_report
from .rounds import RoundResult, RoundSize, chaos_run, run_round


async def run(faults: list[Fault | None], size: RoundSize) -> int:
    started = datetime.now(UTC)
    results: list[RoundResult] = []
    async with chaos_run(load_stack(), REPORTS) as chaos:
        for fault in faults:
            name = fault.name if fault else "none"
            print(f"== round {len(results) + 1}/{len(faults)}: {name}", flush=True)
            result = await run_round(chaos, fault, size)
            results.append(result)
            print(round_markdown(result), flush=True)
            write_report(results, size, started)  # a partial report survives an interrupt
    json_path, md_path = write_report(results, size, started)
    failed = [r.fault for r in results if not r.passed]
    print(f"report: {md_path} and {json_path}")
    print(
        f"{len(results) - len(failed)} of {len(results)} rounds passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--only", help="comma-separated fault names (none = the baseline)")
    parser.add_argument("--commands", type=int, default=RoundSize.commands)
    parser.add_argument("--in-flight", type=int, default=RoundSize.in_flight)
    parser.add_argument(
        "--fault-at", type=int, help="the create the fault comes at (default: a quarter in)"
    )
    parser.add_argument("--kafka-down", type=float, default=42.0, help="seconds")
    parser.add_argument("--postgres-down", type=float, default=5.0, help="seconds")
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    args = parser.parse_args()
    faults = catalog(kafka_down=args.kafka_down, postgres_down=args.postgres_down)
    if args.list:
        for fault in faults:
            print(f"{fault.name:28} {fault.what}")
        return
    chosen: list[Fault | None] = [None, *faults]
    if args.only:
        names = args.only.split(",")
        chosen = [None if n == "none" else by_name([n], faults)[0] for n in names]
    fault_at = args.commands // 4 if args.fault_at is None else args.fault_at
    size = RoundSize(commands=args.commands, in_flight=args.in_flight, fault_at=fault_at)
    sys.exit(asyncio.run(run(chosen, size)))


if __name__ == "__main__":
    main()
