"""What every benchmark shares: statistics, the result model, the table printer, a private
event type and topic per run, and the stack probe.

Benchmarks measure; they never assert timings. Each one measures its baseline in the same
run, so a ratio compares two numbers taken on the same machine under the same load.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from uuid_utils.compat import uuid4

from tenantry_events.catalog import CATALOG, EventType
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.topics import ensure_topics
from tenantry_testkit.stack import Stack

now = time.perf_counter


# --------------------------------------------------------------------------- statistics


def median(samples: Sequence[float]) -> float | None:
    return statistics.median(samples) if samples else None


def p99(samples: Sequence[float]) -> float | None:
    """The nearest-rank 99th percentile: the smallest sample with >= 99% at or below it."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One measured variant. `latencies` are seconds per operation (what `op` says an
    operation is); `count` units (events, tenants...) over `wall` seconds give the rate."""

    label: str
    op: str
    latencies: list[float] = field(default_factory=list)
    count: int = 0
    wall: float | None = None
    baseline: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # (median, p99) in seconds, for a load generator that reports percentiles rather than
    # samples (wrk); used where `latencies` is empty.
    quantiles: tuple[float, float] | None = None

    def summary(self) -> tuple[float | None, float | None]:
        """(median, p99) in seconds: of the samples, else the load generator's own."""
        if self.latencies or self.quantiles is None:
            return median(self.latencies), p99(self.latencies)
        return self.quantiles

    def add(self, latencies: Sequence[float], count: int, wall: float) -> None:
        """Fold one more round of the same variant into this row."""
        self.latencies.extend(latencies)
        self.count += count
        self.wall = (self.wall or 0.0) + wall
        self.extra.setdefault("round_rates_per_s", []).append(count / wall if wall else None)

    @property
    def rate(self) -> float | None:
        return self.count / self.wall if self.wall and self.count else None

    def to_json(self) -> dict[str, Any]:
        med, top = self.summary()
        return {
            "label": self.label,
            "baseline": self.baseline,
            "op": self.op,
            "count": self.count,
            "wall_s": self.wall,
            "rate_per_s": self.rate,
            "samples": len(self.latencies),
            "median_ms": med * 1000 if med is not None else None,
            "p99_ms": top * 1000 if top is not None else None,
            "mean_ms": statistics.fmean(self.latencies) * 1000 if self.latencies else None,
            "max_ms": max(self.latencies) * 1000 if self.latencies else None,
            **self.extra,
        }


@dataclass
class BenchResult:
    name: str
    title: str
    rate_unit: str
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    ratios: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "rate_unit": self.rate_unit,
            "params": self.params,
            "rows": [r.to_json() for r in self.rows],
            "ratios": self.ratios,
            "notes": self.notes,
            "seconds": self.seconds,
        }


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(result: BenchResult) -> str:
    header = ["variant", "latency of", "n", "median ms", "p99 ms", "count", "wall s",
              f"{result.rate_unit}/s"]  # fmt: skip
    lines = [header]
    for r in result.rows:
        med, top = r.summary()
        lines.append(
            [
                ("* " if r.baseline else "  ") + r.label,
                r.op,
                str(len(r.latencies)) if r.latencies else "-",
                _fmt(med * 1000 if med is not None else None, 2),
                _fmt(top * 1000 if top is not None else None, 2),
                str(r.count) if r.count else "-",
                _fmt(r.wall, 2),
                _fmt(r.rate, 0),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    left = {0, 1}

    def fmt_line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(widths[i]) if i in left else c.rjust(widths[i]) for i, c in enumerate(cells)
        )

    out = [
        f"== {result.name}: {result.title}  ({result.seconds:.1f}s)",
        fmt_line(lines[0]),
        "  ".join("-" * w for w in widths),
        *(fmt_line(line) for line in lines[1:]),
    ]
    for name, value in result.ratios.items():
        out.append(f"   {name}: {'-' if value is None else f'{value:.3g}'}")
    for note in result.notes:
        out.append(f"   note: {note}")
    out.append("   (* = baseline measured in this run)")
    return "\n".join(out)


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    stack: Stack
    run_id: str
    topics: list[str] = field(default_factory=list)

    async def private_event_type(self, tag: str, partitions: int | None = 3) -> BenchTopic:
        """A catalogued event type (and its topic) of this run only, like the backbone
        tests do, so a benchmark never writes to the suite's topics. `partitions=None`:
        no Kafka topic (the event never leaves Postgres)."""
        suffix = f"{self.run_id}.{tag}"
        name = f"bench.{suffix}"
        payload = msgspec.defstruct(
            f"BenchPing_{suffix.replace('.', '_')}",
            [("n", int), ("note", str)],
            frozen=True,
            kw_only=True,
        )
        CATALOG.register(EventType(name, payload, "bench", False, 1, "benchmark event"))
        if partitions is not None:
            await self.private_topic(name, partitions)
        return BenchTopic(name, payload)

    async def private_topic(self, name: str, partitions: int = 3) -> str:
        await ensure_topics(self.stack.kafka_bootstrap, [name], partitions=partitions)
        self.topics.append(name)
        await self._wait_for_leaders(name, partitions)
        return name

    async def _wait_for_leaders(self, topic: str, partitions: int, timeout: float = 15.0) -> None:
        """A new topic's partitions take a moment to get a serving leader; a first produce
        before that is retried (NotLeaderForPartition) and would land in the timings."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka_bootstrap, group_id=None)
        await consumer.start()
        try:
            wanted = [TopicPartition(topic, p) for p in range(partitions)]
            deadline = now() + timeout
            while now() < deadline:
                with contextlib.suppress(Exception):
                    # ListOffsets answers only once every partition's leader serves.
                    if topic in await consumer.topics():
                        await asyncio.wait_for(consumer.end_offsets(wanted), timeout=2)
                        return
                await asyncio.sleep(0.1)
        finally:
            await consumer.stop()

    async def delete_topics(self) -> None:
        if not self.topics:
            return
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.stack.kafka_bootstrap, request_timeout_ms=10_000
        )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.start(), timeout=10)
            await asyncio.wait_for(admin.delete_topics(self.topics), timeout=10)
        with contextlib.suppress(Exception):
            await admin.close()


@dataclass(frozen=True)
class BenchTopic:
    name: str
    payload: type[msgspec.Struct]

    # ~100 bytes of payload text, so an envelope is about the size of a real event's.
    NOTE = "benchmark payload " * 6

    def event(self, n: int, *, tenant_id: UUID | None = None, version: int = 1) -> Envelope[Any]:
        return new_event(
            self.payload(n=n, note=self.NOTE),
            tenant_id=tenant_id or uuid4(),
            subject=f"bench-{n}",
            aggregate_version=version,
            source="/tenantry/bench",
            region="local",
        )


async def probe_stack(stack: Stack, need_services: bool) -> list[str]:
    """What is not reachable (empty when the stack is up)."""
    problems: list[str] = []
    try:
        conn = await asyncpg.connect(stack.owner_dsn("postgres"), timeout=5)
        await conn.close()
    except Exception as exc:
        problems.append(f"postgres on {stack.pg_port}: {exc!r}")
    host, _, port = stack.kafka_bootstrap.partition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
        writer.close()
        await writer.wait_closed()
    except Exception as exc:
        problems.append(f"kafka on {stack.kafka_bootstrap}: {exc!r}")
    if need_services:
        async with httpx.AsyncClient(timeout=5) as client:
            for service in ("tenancy", "identity"):
                url = f"{stack.service_url(service)}/readyz"
                try:
                    response = await client.get(url)
                    if response.status_code != 200:
                        problems.append(f"{url}: HTTP {response.status_code}")
                except httpx.HTTPError as exc:
                    problems.append(f"{url}: {exc!r}")
    return problems
