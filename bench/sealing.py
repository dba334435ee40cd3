"""What sealing personal fields costs (issue 17 §3): event append and consume, each with and
without sealing, in the same run.

Append: PostgresEventStore.append of one event per transaction (as `store`'s single
variant), its outbox without keys (plaintext) against one with keys (two personal fields
sealed, per person: tenant key and subject key through HKDF, AES-256-GCM each).
Consume: what a consumer does to a record before its handler, decode (`from_record`) then
`unseal`, against decode alone; in process, no Kafka (the broker's cost is the same bytes
either way, a few more of them sealed, and would hide the difference).

The key source is `MemoryDataKeys`: this measures the sealing itself, not a key lookup
(the services' DataKeys cache unwrapped keys in memory; a cache miss costs a database read
or a call to tenancy, once per key and cache lifetime).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from uuid_utils.compat import uuid4

from bench.common import BenchResult, Context, Row, now, ratio
from bench.store import WRITERS, Append, _writers
from tenantry_events.catalog import CATALOG, EventType
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.kafka_codec import KafkaRecord, from_record, to_record
from tenantry_events.memory import MemoryDataKeys
from tenantry_events.sealing import DataKeys, seal, unseal
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_testkit.fixtures import create_scratch_database, drop_scratch_database

APPENDS = 2000  # events per round and variant, one per transaction
RECORDS = 20_000  # records decoded per round and variant
ROUNDS = 3  # alternating the variants
WARMUP = 200


def _event_type(ctx: Context) -> type[msgspec.Struct]:
    """A payload of this run with two personal fields about one person."""
    suffix = f"{ctx.run_id}.sealing"
    payload = msgspec.defstruct(
        f"BenchPerson_{suffix.replace('.', '_')}",
        [("account_id", UUID), ("email", str), ("name", str), ("note", str)],
        frozen=True,
        kw_only=True,
    )
    CATALOG.register(
        EventType(
            f"bench.{suffix}",
            payload,
            "bench",
            False,
            1,
            "sealing benchmark event",
            personal=("email", "name"),
            person="account_id",
        )
    )
    return payload


def _events(
    payload: type[msgspec.Struct], tenant: UUID, people: list[UUID], count: int
) -> list[Envelope[Any]]:
    return [
        new_event(
            payload(
                account_id=people[n % len(people)],
                email=f"person.{n}@customer.example",
                name=f"Ada Lovelace {n}",
                note="benchmark payload " * 4,
            ),
            tenant_id=tenant,
            subject=str(people[n % len(people)]),
            aggregate_version=n + 1,
            source="/tenantry/bench",
            region="local",
        )
        for n in range(count)
    ]


def _writer_batches(
    payload: type[msgspec.Struct], people: list[UUID], per_writer: int
) -> list[list[list[Envelope[Any]]]]:
    """Per writer (one tenant, one stream): its single-event appends, versions in order."""
    return [[[e] for e in _events(payload, uuid4(), people, per_writer)] for _ in range(WRITERS)]


async def _consume(
    records: list[KafkaRecord], keys: DataKeys[Any] | None
) -> tuple[list[float], float]:
    latencies = []
    started = now()
    for record in records:
        t0 = now()
        envelope = from_record(record.headers, record.value)
        if keys is not None:
            await unseal(envelope, keys, None)
        latencies.append(now() - t0)
    return latencies, now() - started


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        "sealing",
        "personal-field sealing: append and consume, with vs without",
        "events",
        params={"writers": WRITERS, "appends": APPENDS, "records": RECORDS, "rounds": ROUNDS},
    )
    payload = _event_type(ctx)
    people = [uuid4() for _ in range(50)]
    keys = MemoryDataKeys()
    scratch = await create_scratch_database(ctx.stack, prefix="bench")
    try:
        plain = PostgresEventStore(PostgresOutbox(scratch.db))
        sealed = PostgresEventStore(PostgresOutbox(scratch.db, keys=keys))
        appends: list[tuple[str, Append, bool]] = [
            ("append, plaintext", plain.append, True),
            ("append, sealed", sealed.append, False),
        ]
        for label, append, _ in appends:
            warm = _writer_batches(payload, people, WARMUP)
            await _writers(scratch, append, warm, f"warm {label}")
        rows = {label: Row(label, "1 tx, 1 event", baseline=base) for label, _, base in appends}
        result.rows.extend(rows.values())
        per_writer = APPENDS // WRITERS
        for round_ in range(ROUNDS):
            for label, append, _ in appends:
                batches = _writer_batches(payload, people, per_writer)
                latencies, wall = await _writers(scratch, append, batches, f"{label} {round_}")
                rows[label].add(latencies, per_writer * WRITERS, wall)
    finally:
        await drop_scratch_database(ctx.stack, scratch)

    tenant = uuid4()
    originals = _events(payload, tenant, people, RECORDS)
    plain_records = [to_record(e) for e in originals]
    sealed_records = [to_record(await seal(e, keys, None)) for e in originals]
    consumes: list[tuple[str, list[KafkaRecord], DataKeys[Any] | None, bool]] = [
        ("consume, plaintext (decode)", plain_records, None, True),
        ("consume, sealed (decode + unseal)", sealed_records, keys, False),
    ]
    for _, records, k, _ in consumes:
        await _consume(records[:WARMUP], k)
    crows = {label: Row(label, "1 record", baseline=base) for label, _, _, base in consumes}
    result.rows.extend(crows.values())
    for _ in range(ROUNDS):
        for label, records, k, _ in consumes:
            latencies, wall = await _consume(records, k)
            crows[label].add(latencies, len(records), wall)

    result.ratios["sealed/plaintext append events/s"] = ratio(
        rows["append, sealed"].rate, rows["append, plaintext"].rate
    )
    result.ratios["sealed/plaintext consume records/s"] = ratio(
        crows["consume, sealed (decode + unseal)"].rate,
        crows["consume, plaintext (decode)"].rate,
    )
    plain_bytes = sum(len(r.value) for r in plain_records) / len(plain_records)
    sealed_bytes = sum(len(r.value) for r in sealed_records) / len(sealed_records)
    result.notes.append(
        f"record value: {plain_bytes:.0f} bytes plaintext, {sealed_bytes:.0f} sealed "
        "(2 personal fields, per-person key)"
    )
    result.notes.append(
        f"append: {WRITERS} concurrent writers, one stream each, {ROUNDS} alternating rounds "
        f"of {APPENDS} events; consume: in process, {ROUNDS} rounds of {RECORDS} records"
    )
    result.notes.append("keys from MemoryDataKeys: sealing's own cost, no key lookup")
    return result
