"""Every effect of a burst of SCIM creates, counted per tenant along the chain:

    provisioning api ──HTTP──► identity: accounts, account.created (event store + outbox)
          │                        └─► usage.reported (seats) ──► tenancy: tenant_usage
          └─► scim_users, user.provisioned (event store + outbox)
    both outboxes ──relay──► Kafka ──► account_projection in all five services
                                  └──► webhooks: messages ──► deliveries ──► the receiver

Counted through each service's database as its owner (tenant-scoped where row-level
security applies), Kafka with a consumer of our own (from offsets taken before the burst),
and the loopback receiver's own record. `judge` turns the counts into findings: what is
missing (lost), what exists more than once per event id (duplicated), what nobody asked
for (strangers), and what is still on its way (pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from tenantry_testkit.receiver import Receiver
from tenantry_testkit.stack import Stack

SERVICES = ("tenancy", "identity", "provisioning", "webhooks", "ratelimit")
ACCOUNT_CREATED, USER_PROVISIONED, USAGE_REPORTED = (
    "account.created",
    "user.provisioned",
    "usage.reported",
)
TOPICS = (ACCOUNT_CREATED, USER_PROVISIONED, USAGE_REPORTED)
HOOKED = (ACCOUNT_CREATED, USER_PROVISIONED)  # what the round's endpoint subscribes to


@dataclass
class Counts:
    """Raw counts of one tenant's effects (ids as text, so the report is plain JSON)."""

    identity_accounts: dict[str, str] = field(default_factory=dict)  # id -> status
    identity_events: dict[str, list[str]] = field(default_factory=dict)  # account -> event ids
    scim_users: set[str] = field(default_factory=set)
    pending_intents: int = 0
    outbox: dict[str, int] = field(default_factory=dict)  # service -> rows of the tenant
    seats: int | None = None
    projections: dict[str, dict[str, str]] = field(default_factory=dict)  # svc -> id -> status
    messages: dict[str, list[str]] = field(default_factory=dict)  # event id -> message ids
    deliveries: dict[str, list[str]] = field(default_factory=dict)  # message id -> statuses
    successful_attempts: Counter[str] = field(default_factory=Counter)  # message id -> 2xx
    kafka: dict[str, Counter[str]] = field(default_factory=dict)  # topic -> event id -> copies
    kafka_subjects: dict[str, str] = field(default_factory=dict)  # event id -> subject
    receiver: Counter[str] = field(default_factory=Counter)  # webhook-id -> hits


async def _scoped(pool: asyncpg.Pool, tenant_id: str, sql: str) -> list[asyncpg.Record]:
    """Rows of a tenant-scoped query (row-level security binds even the owner)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
        return list(await conn.fetch(sql, tenant_id))


class DatabaseCounters:
    """One owner pool per service database, for a run of rounds."""

    def __init__(self, pools: dict[str, asyncpg.Pool]) -> None:
        self.pools = pools

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, stack: Stack) -> AsyncIterator[DatabaseCounters]:
        pools: dict[str, asyncpg.Pool] = {}
        try:
            for service in SERVICES:
                pools[service] = await asyncpg.create_pool(
                    stack.owner_dsn(stack.service_database(service)),
                    min_size=0,
                    max_size=2,
                    timeout=10,
                    command_timeout=30,
                )
            yield cls(pools)
        finally:
            for pool in pools.values():
                await pool.close()

    async def count(self, tenant_id: str, counts: Counts) -> None:
        """Fill `counts` with the databases' side (raises while a database is away)."""
        identity, provisioning, webhooks = (
            self.pools["identity"],
            self.pools["provisioning"],
            self.pools["webhooks"],
        )
        rows = await _scoped(
            identity, tenant_id, "SELECT account_id, status FROM accounts WHERE tenant_id = $1"
        )
        counts.identity_accounts = {str(r["account_id"]): r["status"] for r in rows}
        counts.identity_events = await _events_by_subject(identity, tenant_id, ACCOUNT_CREATED)
        rows = await _scoped(
            provisioning, tenant_id, "SELECT id FROM scim_users WHERE tenant_id = $1"
        )
        counts.scim_users = {str(r["id"]) for r in rows}
        if await provisioning.fetchval("SELECT to_regclass('scim_user_intents') IS NOT NULL"):
            rows = await _scoped(
                provisioning,
                tenant_id,
                "SELECT count(*) AS n FROM scim_user_intents WHERE tenant_id = $1",
            )
            counts.pending_intents = int(rows[0]["n"])
        for service in ("identity", "provisioning"):
            counts.outbox[service] = int(
                await self.pools[service].fetchval(
                    "SELECT count(*) FROM outbox WHERE key = convert_to($1, 'UTF8')", tenant_id
                )
            )
        counts.seats = await self.pools["tenancy"].fetchval(
            "SELECT seats FROM tenant_usage WHERE tenant_id = $1::uuid", tenant_id
        )
        for service in SERVICES:
            rows = await self.pools[service].fetch(
                "SELECT account_id, status FROM account_projection WHERE tenant_id = $1::uuid",
                tenant_id,
            )
            counts.projections[service] = {str(r["account_id"]): r["status"] for r in rows}
        rows = await _scoped(
            webhooks,
            tenant_id,
            f"""SELECT event_id, message_id FROM messages WHERE tenant_id = $1
                AND event_type IN ({", ".join(f"'{t}'" for t in HOOKED)})""",
        )
        counts.messages = {}
        for r in rows:
            counts.messages.setdefault(str(r["event_id"]), []).append(r["message_id"])
        rows = await _scoped(
            webhooks, tenant_id, "SELECT message_id, status FROM deliveries WHERE tenant_id = $1"
        )
        counts.deliveries = {}
        for r in rows:
            counts.deliveries.setdefault(r["message_id"], []).append(r["status"])
        rows = await _scoped(
            webhooks,
            tenant_id,
            """SELECT message_id, count(*) AS n FROM attempts WHERE tenant_id = $1
               AND status_code BETWEEN 200 AND 299 GROUP BY message_id""",
        )
        counts.successful_attempts = Counter({r["message_id"]: int(r["n"]) for r in rows})


async def _events_by_subject(
    pool: asyncpg.Pool, tenant_id: str, event_type: str
) -> dict[str, list[str]]:
    rows = await pool.fetch(
        """SELECT envelope->>'subject' AS subject, event_id FROM events
           WHERE tenant_id = $1::uuid AND event_type = $2""",
        tenant_id,
        event_type,
    )
    found: dict[str, list[str]] = {}
    for r in rows:
        found.setdefault(r["subject"], []).append(str(r["event_id"]))
    return found


class KafkaTap:
    """A tenant's records on the chain's topics, read by a consumer of our own from the
    offsets the topics had when the tap was opened (before the burst) to their end."""

    def __init__(self, stack: Stack, starts: dict[TopicPartition, int]) -> None:
        self.stack = stack
        self.starts = starts

    @classmethod
    async def open(cls, stack: Stack) -> KafkaTap:
        consumer = _consumer(stack)
        await consumer.start()
        try:
            partitions = _partitions(consumer)
            return cls(stack, dict(await consumer.end_offsets(partitions)))
        finally:
            await consumer.stop()

    async def read(self, tenant_id: str, counts: Counts, timeout: float = 60.0) -> None:
        """Fill `counts.kafka` (topic -> event id -> records of the tenant) and
        `counts.kafka_subjects` (event id -> ce_subject)."""
        found: dict[str, Counter[str]] = {topic: Counter() for topic in TOPICS}
        subjects: dict[str, str] = {}
        consumer = _consumer(self.stack)
        await consumer.start()
        try:
            partitions = list(self.starts)
            consumer.assign(partitions)
            for partition, offset in self.starts.items():
                consumer.seek(partition, offset)
            ends = await consumer.end_offsets(partitions)
            deadline = time.monotonic() + timeout
            while [p for p in partitions if await consumer.position(p) < ends[p]]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading the chain's topics took over {timeout}s")
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                for tp, records in batch.items():
                    for record in records:
                        headers = dict(record.headers)
                        if headers.get("ce_tenantid") == tenant_id.encode():
                            event_id = headers["ce_id"].decode()
                            found[tp.topic][event_id] += 1
                            subjects[event_id] = headers["ce_subject"].decode()
        finally:
            await consumer.stop()
        counts.kafka, counts.kafka_subjects = found, subjects


def _consumer(stack: Stack) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=stack.kafka_bootstrap,
        enable_auto_commit=False,
        group_id=None,
        request_timeout_ms=15000,
    )


def _partitions(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
    partitions = []
    for topic in TOPICS:
        numbers = consumer.partitions_for_topic(topic) or set(range(3))
        partitions += [TopicPartition(topic, p) for p in sorted(numbers)]
    return partitions


def receiver_hits(receiver: Receiver, path: str) -> Counter[str]:
    """webhook-id -> requests the receiver got at `path`."""
    return Counter(r.headers.get("webhook-id", "") for r in receiver.to(path))


# --------------------------------------------------------------------------- judging


@dataclass
class Finding:
    """One effect's tally against what the accepted commands call for."""

    effect: str
    expected: int
    found: int  # distinct things found that were expected
    lost: int = 0
    duplicated: int = 0  # things (per event id) that exist more than once
    strangers: int = 0  # things nobody asked for
    pending: int = 0  # on their way (outbox rows, intents, deliveries not yet sent)
    copies: int = 0  # tolerated extra copies (Kafka records, webhook redeliveries)
    via_kafka: bool = False  # counted from the broker (read once the databases settle)
    settled_after: float | None = None  # seconds after the burst (or heal) it first settled

    @property
    def settled(self) -> bool:
        return self.lost == self.pending == 0

    @property
    def clean(self) -> bool:
        return self.settled and self.duplicated == self.strangers == 0


def _tally(effect: str, expected: set[str], found: dict[str, int]) -> Finding:
    present = expected & set(found)
    return Finding(
        effect,
        expected=len(expected),
        found=len(present),
        lost=len(expected - present),
        duplicated=sum(1 for k in present if found[k] > 1),
        strangers=len(set(found) - expected),
    )


def _by_subject(counts: Counts, topic: str) -> dict[str, list[str]]:
    """subject -> the distinct event ids of `topic` about it, as seen on Kafka."""
    found: dict[str, list[str]] = {}
    for event_id in counts.kafka.get(topic, Counter()):
        found.setdefault(counts.kafka_subjects[event_id], []).append(event_id)
    return found


def judge(accepted: set[str], counts: Counts) -> list[Finding]:
    """Every effect against the accepted creates (`accepted`: the users' ids, which are
    also their identity accounts' ids). provisioning writes user.provisioned straight to
    its outbox (no event store), so its one event per user is counted on Kafka."""
    accounts = _tally("identity accounts", accepted, dict.fromkeys(counts.identity_accounts, 1))
    # An account that exists but not active is not what the create asked for.
    accounts.lost += sum(1 for k in accepted if counts.identity_accounts.get(k) == "disabled")
    provisioned = _by_subject(counts, USER_PROVISIONED)
    findings = [
        accounts,
        _tally(
            "identity account.created events",
            accepted,
            {k: len(v) for k, v in counts.identity_events.items()},
        ),
        _tally("provisioning scim_users", accepted, dict.fromkeys(counts.scim_users, 1)),
        Finding("provisioning pending intents", 0, 0, pending=counts.pending_intents),
        *(
            Finding(f"{service} outbox (tenant's rows)", 0, 0, pending=rows)
            for service, rows in sorted(counts.outbox.items())
        ),
    ]
    event_ids = {
        ACCOUNT_CREATED: {e for k in accepted for e in counts.identity_events.get(k, [])},
        USER_PROVISIONED: {e for k in accepted for e in provisioned.get(k, [])},
    }
    records = counts.kafka.get(ACCOUNT_CREATED, Counter())
    on_kafka = _tally("Kafka account.created records", event_ids[ACCOUNT_CREATED], dict(records))
    user_events = _tally(
        "Kafka user.provisioned (one event per user)",
        accepted,
        {k: len(v) for k, v in provisioned.items()},
    )
    on_kafka.duplicated = 0  # a record twice is a copy the inboxes drop, not an effect
    for finding, topic in ((on_kafka, ACCOUNT_CREATED), (user_events, USER_PROVISIONED)):
        finding.via_kafka = True
        finding.copies = sum(n - 1 for n in counts.kafka.get(topic, Counter()).values())
    findings += [on_kafka, user_events]
    seats = counts.seats or 0
    findings.append(
        Finding(
            "tenancy seats",
            expected=len(accepted),
            found=min(seats, len(accepted)),
            lost=max(0, len(accepted) - seats),
            duplicated=max(0, seats - len(accepted)),
        )
    )
    for service in SERVICES:
        rows = counts.projections.get(service, {})
        finding = _tally(f"{service} account_projection", accepted, dict.fromkeys(rows, 1))
        finding.lost += sum(1 for k in accepted if rows.get(k) == "disabled")
        findings.append(finding)
    all_events = event_ids[ACCOUNT_CREATED] | event_ids[USER_PROVISIONED]
    messages = _tally(
        "webhook messages", all_events, {k: len(v) for k, v in counts.messages.items()}
    )
    # Until Kafka is read, user.provisioned's event ids are unknown: its messages count as
    # expected ones, by number, and are judged exactly once Kafka has been read.
    messages.via_kafka = True
    findings.append(messages)
    message_ids = {m for e in all_events for m in counts.messages.get(e, [])}
    deliveries = _tally(
        "webhook deliveries", message_ids, {k: len(v) for k, v in counts.deliveries.items()}
    )
    deliveries.pending = sum(
        1 for m in message_ids for s in counts.deliveries.get(m, []) if s != "succeeded"
    )
    deliveries.copies = sum(max(0, n - 1) for n in counts.successful_attempts.values())
    deliveries.via_kafka = True
    hits = _tally("receiver webhook-ids", message_ids, dict(counts.receiver))
    hits.duplicated = 0  # at-least-once to customers: a redelivery of one id is allowed
    hits.copies = sum(n - 1 for n in counts.receiver.values())
    hits.via_kafka = True
    findings += [deliveries, hits]
    return findings


def databases_settled(accepted: set[str], counts: Counts) -> bool:
    """Before reading Kafka: everything counted in the databases is there (2 webhook
    messages per user, each delivered once and received)."""
    findings = judge(accepted, counts)
    if not all(f.settled for f in findings if not f.via_kafka):
        return False
    wanted = 2 * len(accepted)
    delivered = sum(1 for statuses in counts.deliveries.values() if statuses == ["succeeded"])
    return len(counts.messages) >= wanted and delivered >= wanted and len(counts.receiver) >= wanted


def as_json(counts: Counts) -> dict[str, Any]:
    """The raw tallies for the report: sizes, not the ids themselves."""
    raw = asdict(counts)
    return {
        key: (len(value) if isinstance(value, (dict, set, list)) else value)
        for key, value in raw.items()
        if key not in ("outbox", "projections", "kafka", "kafka_subjects")
    } | {
        "outbox": counts.outbox,
        "projections": {s: len(rows) for s, rows in counts.projections.items()},
        "kafka_records": {t: sum(c.values()) for t, c in counts.kafka.items()},
        "kafka_distinct": {t: len(c) for t, c in counts.kafka.items()},
        "receiver_hits": sum(counts.receiver.values()),
    }


async def wait_counted(
    databases: DatabaseCounters, tenant_id: str, counts: Counts, deadline: float
) -> None:
    """Count, retrying while a database is away (after a Postgres fault), until deadline."""
    while True:
        try:
            await databases.count(tenant_id, counts)
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
