"""Looking for strings everywhere a region keeps data: every table of every database of its
PostgreSQL, every record of every Kafka topic, every Redis key and value, its log files and
its mail sink (tests/test_residency_leaks.py: nothing personal crosses regions).

    needles = [Needle.text("mrk-eu-1a2b"), Needle.uuid(tenant_id)]
    found = await scan_region(us, needles)        # [Found(source, where, needle), ...]

Each store is read the way its own tooling would show it, with no knowledge of our schemas:
a row as PostgreSQL's text form of the whole row (every column: text, JSON, arrays, and
bytea as hex), a Kafka record's key, value and headers as bytes, a Redis value by its type.
Matching ignores case. A sealed or encrypted value cannot be recognised by content: that is
what the id needles are for (a tenant's id names its rows, records and keys in clear).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from tenantry_testkit.regions import Region

# Kafka: a partition counts as read once its position reaches the end offset taken at the
# start; control records (transaction markers) can keep it one short, so polling also ends
# after this many empty polls in a row.
_EMPTY_POLLS_TO_STOP = 3
_KAFKA_DEADLINE_SECONDS = 60.0


@dataclass(frozen=True)
class Needle:
    """What to look for, named by `label`, in each of the byte forms it may take."""

    label: str
    forms: tuple[bytes, ...]

    @classmethod
    def text(cls, value: str) -> Needle:
        return cls(value, (value.lower().encode(),))

    @classmethod
    def uuid(cls, value: UUID) -> Needle:
        # Text (rows, headers, JSON), hex without dashes, and the 16 raw bytes (binary keys).
        return cls(str(value), (str(value).encode(), value.hex.encode(), value.bytes))


@dataclass(frozen=True)
class Found:
    source: str  # postgres | kafka | redis | log | mail
    where: str  # database.schema.table, topic[partition], Redis key, file
    needle: str  # the needle's label

    def __str__(self) -> str:
        return f"{self.source} {self.where}: {self.needle}"


def _matches(data: bytes, needles: Sequence[Needle]) -> list[str]:
    data = data.lower()
    return [n.label for n in needles if any(form.lower() in data for form in n.forms)]


# ---------------------------------------------------------------------------- PostgreSQL


def _pg_patterns(needles: Sequence[Needle]) -> tuple[list[str], list[str]]:
    """The patterns to look for in a row's text form, and the label of each: every textual
    form as it is, and every form as the hex PostgreSQL prints for bytea."""
    patterns: list[str] = []
    labels: list[str] = []
    for needle in needles:
        for form in needle.forms:
            variants = [form.hex()]
            if all(32 <= byte < 127 for byte in form):  # printable: can be in text as is
                variants.append(form.decode().lower())
            for variant in variants:
                patterns.append(variant)
                labels.append(needle.label)
    return patterns, labels


async def scan_postgres(region: Region, needles: Sequence[Needle]) -> tuple[list[Found], int]:
    """Every ordinary and materialized table of every schema of every database (as the
    superuser, past row-level security): a row matches when its whole-row text contains a
    needle. Also returns how many rows it read."""
    patterns, labels = _pg_patterns(needles)
    admin = await asyncpg.connect(region.super_dsn("postgres"))
    try:
        databases = [
            r["datname"]
            for r in await admin.fetch(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
            )
        ]
    finally:
        await admin.close()
    found: list[Found] = []
    rows = 0
    for database in sorted(databases):
        conn = await asyncpg.connect(region.super_dsn(database))
        try:
            tables = await conn.fetch(
                """SELECT n.nspname, c.relname FROM pg_class c
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE c.relkind IN ('r', 'm')
                     AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                     AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
                   ORDER BY 1, 2"""
            )
            for table in tables:
                schema, name = table["nspname"], table["relname"]
                rows += await conn.fetchval(f'SELECT count(*) FROM "{schema}"."{name}"')
                hits = await conn.fetch(
                    f"""SELECT DISTINCT p.i FROM "{schema}"."{name}" AS t,
                            generate_subscripts($1::text[], 1) AS p(i)
                        WHERE strpos(lower(t::text), ($1::text[])[p.i]) > 0""",
                    patterns,
                )
                for label in sorted({labels[hit["i"] - 1] for hit in hits}):
                    found.append(Found("postgres", f"{database}.{schema}.{name}", label))
        finally:
            await conn.close()
    return found, rows


# ---------------------------------------------------------------------------- Kafka


async def scan_kafka(region: Region, needles: Sequence[Needle]) -> tuple[list[Found], int]:
    """Every record (key, value, header names and values) of every topic, internal ones
    too, from the beginning to the end offsets taken when the scan starts; and how many
    records it read."""
    admin = AIOKafkaAdminClient(bootstrap_servers=region.kafka_bootstrap)
    await admin.start()
    try:
        topics = await admin.describe_topics(sorted(await admin.list_topics()))
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in topics
        for partition in topic["partitions"]
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=region.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    found: set[Found] = set()
    records_read = 0
    try:
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        pending = {tp for tp in partitions if ends[tp] > 0}
        empty_polls, deadline = 0, time.monotonic() + _KAFKA_DEADLINE_SECONDS

        def read(tp: TopicPartition, records: Sequence[Any]) -> int:
            count = 0
            for record in records:
                if record.offset >= ends[tp]:
                    continue
                count += 1
                parts = [record.key or b"", record.value or b""]
                for header, value in record.headers:
                    parts += [header.encode(), value or b""]
                for label in _matches(b"\x00".join(parts), needles):
                    found.add(Found("kafka", f"{tp.topic}[{tp.partition}]", label))
            return count

        async def gap(tp: TopicPartition) -> int:
            return int(ends[tp] - await consumer.position(tp))

        while pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"Kafka scan of {region.id} unfinished: {sorted(pending)}")
            batch = await consumer.getmany(*pending, timeout_ms=1000, max_records=5000)
            empty_polls = 0 if batch else empty_polls + 1
            for tp, records in batch.items():
                records_read += read(tp, records)
            for tp in list(pending):
                if await gap(tp) <= 0:
                    pending.discard(tp)
            # Stop early only when what is left could be transaction markers alone (one
            # offset per partition, which a fetch never returns); a record that is merely
            # slow to come (a new topic's leader, a loaded broker) keeps the scan going.
            if empty_polls >= _EMPTY_POLLS_TO_STOP and all([await gap(tp) <= 1 for tp in pending]):
                break
        # Each last offset left: fetched once more on its own, so a real record there is
        # read, never taken for a marker.
        for tp in sorted(pending):
            for _ in range(_EMPTY_POLLS_TO_STOP):
                consumer.seek(tp, ends[tp] - 1)
                batch = await consumer.getmany(tp, timeout_ms=2000, max_records=10)
                if batch.get(tp):
                    records_read += read(tp, batch[tp])
                    break
    finally:
        await consumer.stop()
    return sorted(found, key=str), records_read


# ---------------------------------------------------------------------------- Redis


def _flat(value: object) -> bytes:
    """A Redis reply (bytes, numbers, and lists, sets, tuples and dicts of them) as bytes."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, dict):
        return b"\x00".join(_flat(k) + b"\x00" + _flat(v) for k, v in value.items())
    if isinstance(value, list | tuple | set):
        return b"\x00".join(_flat(item) for item in value)
    return b"" if value is None else str(value).encode()


async def _redis_value(redis: Redis, key: bytes) -> bytes:
    kind = _flat(await redis.type(key)).decode()
    value: object
    if kind == "string":
        value = await redis.get(key)
    elif kind == "hash":
        value = await redis.hgetall(key)
    elif kind == "list":
        value = await redis.lrange(key, 0, -1)
    elif kind == "set":
        value = await redis.smembers(key)
    elif kind == "zset":
        value = await redis.zrange(key, 0, -1, withscores=True)
    elif kind == "stream":
        value = await redis.xrange(key)
    elif kind == "none":  # expired between SCAN and TYPE
        value = None
    else:  # a module type: its serialized form
        value = await redis.dump(key)
    return _flat(value)


async def scan_redis(region: Region, needles: Sequence[Needle]) -> tuple[list[Found], int]:
    """Every key of every database that holds any, with its value read by type; and how
    many keys it read."""
    found: set[Found] = set()
    keys = 0
    async with Redis.from_url(region.redis_url) as first:
        keyspace = await first.info("keyspace")
    for db in sorted(int(name.removeprefix("db")) for name in keyspace):
        async with Redis.from_url(region.redis_url, db=db) as redis:
            async for key in redis.scan_iter(count=1000):
                keys += 1
                for label in _matches(key, needles):
                    found.add(Found("redis", f"db{db} key {key!r}", label))
                for label in _matches(await _redis_value(redis, key), needles):
                    found.add(Found("redis", f"db{db} value of {key!r}", label))
    return sorted(found, key=str), keys


# ---------------------------------------------------------------------------- files


def _mail_text(data: bytes) -> bytes:
    """A message as stored, and each part's decoded body (base64, quoted-printable) and
    decoded headers, so an encoding does not hide a needle."""
    message: Message = BytesParser(policy=compat32).parsebytes(data)
    parts = [data]
    for part in message.walk():
        parts += [str(value).encode() for value in part.values()]
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            parts.append(payload)
    return b"\x00".join(parts)


def scan_files(
    source: str, root: Path, pattern: str, needles: Sequence[Needle]
) -> tuple[list[Found], int]:
    """Every file under `root` matching `pattern` (mail is decoded too); and how many."""
    paths = sorted(p for p in root.glob(pattern) if p.is_file())
    found: list[Found] = []
    for path in paths:
        data = path.read_bytes()
        if source == "mail":
            data = _mail_text(data)
        for label in _matches(data, needles):
            found.append(Found(source, str(path.relative_to(root)), label))
    return found, len(paths)


@dataclass(frozen=True)
class RegionScan:
    """What a scan of a region found, and how much of each store it read (rows, records,
    keys, files): a store read empty would find nothing and prove nothing."""

    found: list[Found]
    read: dict[str, int]

    def of(self, needle: str) -> list[Found]:
        return [f for f in self.found if f.needle == needle]


async def scan_region(region: Region, needles: Sequence[Needle]) -> RegionScan:
    """Every store of `region`, for every needle."""
    postgres, kafka, redis = await asyncio.gather(
        scan_postgres(region, needles), scan_kafka(region, needles), scan_redis(region, needles)
    )
    logs = await asyncio.to_thread(scan_files, "log", region.log_dir, "*.log", needles)
    mail = await asyncio.to_thread(scan_files, "mail", region.mail_dir, "**/*", needles)
    scans = {"postgres": postgres, "kafka": kafka, "redis": redis, "log": logs, "mail": mail}
    return RegionScan(
        [found for hits, _ in scans.values() for found in hits],
        {source: read for source, (_, read) in scans.items()},
    )
