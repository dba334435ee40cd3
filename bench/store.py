"""Event store appends per second: PostgresEventStore.append against a plain INSERT of the
same rows into a table of the same shape, in one scratch database, in the same run.

What the store adds over the plain INSERT, per append, all inside one call of the
`append_events` function (one round trip, like the plain INSERT): the optimistic-concurrency
read (`max(version)` of the stream), a subtransaction around the insert (the savepoint that
keeps the caller's transaction usable after a lost race), and the outbox rows (topic, key,
payload; one more INSERT, whose statement trigger sends a NOTIFY at commit). Both variants
run inside a transaction of their own, through the same pool, with the same envelope
encoding.

Single: one event per transaction. Batched: `batch` events per append (one transaction).
`writers` concurrent tasks share the work; each appends to its own stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from uuid_utils.compat import uuid4

from bench.common import BenchResult, BenchTopic, Context, Row, now, ratio
from tenantry_events.envelope import Envelope, encode_envelope
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)

WRITERS = 4
SINGLE_EVENTS = 2000
BATCH = 100
BATCHED_EVENTS = 20_000
ROUNDS = 3  # each variant runs this many times (alternating); the row folds them
WARMUP_APPENDS = 40  # per variant, untimed, then the tables are truncated

# The baseline table: LIKE ... INCLUDING ALL copies the columns, defaults, constraints and
# indexes of `events`, so it stays the same shape if the migration changes.
PLAIN_SQL = """
CREATE TABLE plain_events (LIKE events INCLUDING ALL);
GRANT SELECT, INSERT ON plain_events TO {app_role};
"""

PLAIN_INSERT = """INSERT INTO plain_events (stream_id, version, event_id, event_type, tenant_id,
                                            occurred_at, envelope)
   SELECT $1, v, i, t, tn, o, e::jsonb
   FROM unnest($2::int[], $3::uuid[], $4::text[], $5::uuid[],
               $6::timestamptz[], $7::text[]) AS u(v, i, t, tn, o, e)"""

Append = Callable[[asyncpg.Connection, str, int, Sequence[Envelope[Any]]], Awaitable[int]]


async def plain_append(
    tx: asyncpg.Connection, stream_id: str, expected_version: int, events: Sequence[Envelope[Any]]
) -> int:
    """The same INSERT the store makes into `events`, and nothing else."""
    versions = list(range(expected_version + 1, expected_version + 1 + len(events)))
    await tx.execute(
        PLAIN_INSERT,
        stream_id,
        versions,
        [e.id for e in events],
        [e.type for e in events],
        [e.tenant_id for e in events],
        [e.occurred_at for e in events],
        [encode_envelope(e).decode() for e in events],
    )
    return expected_version + len(events)


async def _writers(
    scratch: ScratchDatabase,
    append: Append,
    batches: list[list[list[Envelope[Any]]]],
    stream_prefix: str,
) -> tuple[list[float], float]:
    """Run one writer task per entry of `batches` (its appends, in order); return every
    append's latency and the wall time of the whole run."""

    async def writer(index: int, appends: list[list[Envelope[Any]]]) -> list[float]:
        stream, version, latencies = f"{stream_prefix}-{index}", 0, []
        for events in appends:
            started = now()
            async with scratch.db.transaction() as tx:
                version = await append(tx, stream, version, events)
            latencies.append(now() - started)
        return latencies

    started = now()
    per_writer = await asyncio.gather(*(writer(i, b) for i, b in enumerate(batches)))
    wall = now() - started
    return [x for xs in per_writer for x in xs], wall


def _batches(topic: BenchTopic, appends: int, size: int) -> list[list[list[Envelope[Any]]]]:
    """For each writer: its appends of `size` events, one tenant per writer's stream, the
    versions in order. Made before the clock starts."""
    out = []
    for _ in range(WRITERS):
        tenant = uuid4()
        out.append(
            [
                [
                    topic.event(i * size + j, tenant_id=tenant, version=i * size + j + 1)
                    for j in range(size)
                ]
                for i in range(appends)
            ]
        )
    return out


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        "store",
        "event store appends vs plain INSERT (scratch database)",
        "events",
        params={
            "writers": WRITERS,
            "single_events": SINGLE_EVENTS,
            "batch": BATCH,
            "batched_events": BATCHED_EVENTS,
            "rounds": ROUNDS,
        },
    )
    topic = await ctx.private_event_type("store", partitions=None)
    scratch = await create_scratch_database(ctx.stack, prefix="bench")
    try:
        owner = await asyncpg.connect(scratch.owner_dsn)
        try:
            await owner.execute(PLAIN_SQL.replace("{app_role}", ctx.stack.app_role))

            async def truncate() -> None:
                await owner.execute("TRUNCATE events, outbox, plain_events")

            store = PostgresEventStore(PostgresOutbox(scratch.db))
            variants: list[tuple[str, Append]] = [
                ("plain INSERT", plain_append),
                ("PostgresEventStore.append", store.append),
            ]
            # Warm the pool's connections and statement caches of both variants.
            for _, append in variants:
                warm = _batches(topic, WARMUP_APPENDS // WRITERS, 1)
                await _writers(scratch, append, warm, "warm")
            await truncate()

            for size, total in ((1, SINGLE_EVENTS), (BATCH, BATCHED_EVENTS)):
                per_writer = total // size // WRITERS
                shape = "single" if size == 1 else f"batched x{size}"
                rows = {
                    label: Row(
                        f"{label}, {shape}",
                        f"1 tx, {size} event{'s' if size > 1 else ''}",
                        baseline=label == "plain INSERT",
                    )
                    for label, _ in variants
                }
                result.rows.extend(rows.values())
                # Rounds alternate the variants, so drift (autovacuum, a busy neighbour)
                # falls on both.
                for round_ in range(ROUNDS):
                    for label, append in variants:
                        batches = _batches(topic, per_writer, size)
                        latencies, wall = await _writers(
                            scratch, append, batches, f"s{size}-r{round_}"
                        )
                        rows[label].add(latencies, per_writer * size * WRITERS, wall)
                        await truncate()
        finally:
            await owner.close()
    finally:
        await drop_scratch_database(ctx.stack, scratch)

    for shape in ("single", f"batched x{BATCH}"):
        plain = result.row(f"plain INSERT, {shape}")
        stored = result.row(f"PostgresEventStore.append, {shape}")
        result.ratios[f"store/plain events/s, {shape}"] = ratio(stored.rate, plain.rate)
    result.notes.append(
        f"{WRITERS} concurrent writers, one stream each; count = {ROUNDS} alternating rounds of "
        f"{SINGLE_EVENTS} (single) / {BATCHED_EVENTS} (batched) events, each on empty tables"
    )
    result.notes.append(
        "round trips per append: plain 3 (BEGIN, INSERT, COMMIT); store 3 (BEGIN, "
        "append_events: version read, events and outbox INSERTs + NOTIFY trigger, COMMIT)"
    )
    result.notes.append(
        "local Postgres runs with fsync=off, synchronous_commit=off: commits cost no disk flush"
    )
    return result
