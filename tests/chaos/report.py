"""The chaos report: per round, the commands, what each effect along the chain came to, and
the time to converge; as JSON (every figure) and markdown (for people), under
.local/chaos/."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tenantry_testkit.stack import REPO

from .rounds import RoundResult, RoundSize

REPORTS = REPO / ".local" / "chaos"


def round_json(result: RoundResult) -> dict[str, Any]:
    return asdict(result) | {"passed": result.passed}


def round_markdown(result: RoundResult) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    lines = [
        f"### {result.fault}: {verdict}",
        "",
        f"{result.what}. Tenant `{result.tenant_id}`: {result.accepted} of {result.commands}"
        f" creates accepted in {result.burst_seconds:.1f} s ({result.retried} retried;"
        f" answers {dict(sorted(result.answers.items()))}); converged: "
        + (
            f"{result.converge_seconds:.1f} s after the last accepted create or the heal"
            if result.converged
            else f"**no** (gave up after {result.converge_seconds:.1f} s)"
        )
        + ".",
        "",
    ]
    if result.fault_notes:
        lines += [f"Fault: {'; '.join(result.fault_notes)}.", ""]
    lines += [
        "| effect | expected | found | lost | duplicated | strangers | pending | copies "
        "| settled after s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in result.findings:
        settled = "no" if f.settled_after is None else f"{f.settled_after:.1f}"
        lines.append(
            f"| {f.effect} | {f.expected} | {f.found} | {f.lost} | {f.duplicated} "
            f"| {f.strangers} | {f.pending} | {f.copies} | {settled} |"
        )
    if result.failures:
        lines += ["", "Failures:", "", *(f"- {failure}" for failure in result.failures)]
    return "\n".join(lines) + "\n"


def summary_markdown(results: list[RoundResult], size: RoundSize, started: datetime) -> str:
    passed = sum(1 for r in results if r.passed)
    lines = [
        f"# Chaos run {started:%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"{passed} of {len(results)} rounds passed. Each round: {size.commands} SCIM user"
        f" creates ({size.in_flight} in flight) into a fresh enterprise tenant with a webhook"
        f" endpoint on a loopback receiver, the fault when create {size.fault_at} starts."
        " `copies` are tolerated extra copies: a Kafka record published twice (the inboxes"
        " drop it) or a webhook sent twice under one webhook-id (at-least-once).",
        "",
        "| round | verdict | accepted | burst s | converged after s | lost | duplicated |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lost = sum(f.lost for f in r.findings)
        duplicated = sum(f.duplicated for f in r.findings)
        converge = f"{r.converge_seconds:.1f}" if r.converged else "no"
        lines.append(
            f"| {r.fault} | {'PASS' if r.passed else 'FAIL'} | {r.accepted}/{r.commands} "
            f"| {r.burst_seconds:.1f} | {converge} | {lost} | {duplicated} |"
        )
    lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(round_markdown(r) for r in results)


def write_report(
    results: list[RoundResult],
    size: RoundSize,
    started: datetime,
    directory: Path = REPORTS,
    label: str = "chaos",
) -> tuple[Path, Path]:
    """Write <label>-<time>.json and .md; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{label}-{started:%Y%m%dT%H%M%SZ}"
    document = {
        "started": started.isoformat(),
        "finished": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "size": asdict(size),
        "rounds": [round_json(r) for r in results],
    }
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    md_path.write_text(summary_markdown(results, size, started))
    return json_path, md_path
