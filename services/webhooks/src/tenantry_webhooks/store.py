"""Postgres access of webhooks: endpoints, messages, deliveries and attempts, and the
dispatcher's queue (claiming, leasing, recording attempts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

# The dispatcher LISTENs here; a transaction that makes a delivery due NOTIFYs at commit.
NOTIFY_CHANNEL = "tenantry_webhook_deliveries"
ENDPOINT_COLUMNS = """endpoint_id, tenant_id, url, description, event_types, channels, headers,
    enabled, disabled_reason, rate_limit_per_second, fifo, failing_since, created_at,
    updated_at"""


class EndpointRow(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint as its tenant sees it (never the secret: that has its own route)."""

    endpoint_id: str
    tenant_id: UUID
    url: str
    description: str
    event_types: list[str]
    channels: list[str]
    headers: dict[str, str]
    enabled: bool
    disabled_reason: str | None
    rate_limit_per_second: float | None
    fifo: bool
    failing_since: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointFields(msgspec.Struct, frozen=True, kw_only=True):
    url: str
    description: str
    event_types: list[str]
    channels: list[str]
    headers: dict[str, str]
    enabled: bool
    rate_limit_per_second: float | None
    fifo: bool


class MessageRow(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    tenant_id: UUID
    event_id: UUID | None
    event_type: str
    channels: list[str]
    created_at: datetime
    expunged_at: datetime | None
    payload: Any = None  # the body as JSON; None once expunged (or when not asked for)


class DeliveryRow(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: int
    message_id: str
    endpoint_id: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class AttemptRow(msgspec.Struct, frozen=True, kw_only=True):
    attempt_id: int
    message_id: str
    endpoint_id: str
    attempt: int
    started_at: datetime
    latency_ms: float
    status_code: int | None
    error: str | None
    response_body: str | None
    response_truncated: bool
    next_attempt_at: datetime | None
    trigger: str


def _endpoint(row: asyncpg.Record) -> EndpointRow:
    return msgspec.convert(dict(row), EndpointRow)


def _values(fields: EndpointFields) -> tuple[object, ...]:
    """The fields as the insert and the update number them ($3 to $10)."""
    return (
        fields.url,
        fields.description,
        fields.event_types,
        fields.channels,
        fields.headers,
        fields.enabled,
        fields.rate_limit_per_second,
        fields.fifo,
    )


# ---------------------------------------------------------------- endpoints


async def insert_endpoint(
    tx: asyncpg.Connection,
    endpoint_id: str,
    tenant_id: UUID,
    fields: EndpointFields,
    secret: bytes,
) -> EndpointRow:
    row = await tx.fetchrow(
        f"""INSERT INTO endpoints (endpoint_id, tenant_id, url, description, event_types,
                channels, headers, enabled, rate_limit_per_second, fifo, secret)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            RETURNING {ENDPOINT_COLUMNS}""",
        endpoint_id,
        tenant_id,
        *_values(fields),
        secret,
    )
    assert row is not None
    return _endpoint(row)


async def update_endpoint(
    tx: asyncpg.Connection, tenant_id: UUID, endpoint_id: str, fields: EndpointFields
) -> EndpointRow | None:
    """Re-enabling clears the reason it was disabled and its failure streak."""
    row = await tx.fetchrow(
        f"""UPDATE endpoints SET url = $3, description = $4, event_types = $5, channels = $6,
                headers = $7, rate_limit_per_second = $9, fifo = $10,
                disabled_reason = CASE WHEN $8 THEN NULL ELSE disabled_reason END,
                failing_since = CASE WHEN $8 AND NOT enabled THEN NULL ELSE failing_since END,
                enabled = $8, updated_at = now()
            WHERE tenant_id = $1 AND endpoint_id = $2
            RETURNING {ENDPOINT_COLUMNS}""",
        tenant_id,
        endpoint_id,
        *_values(fields),
    )
    return _endpoint(row) if row is not None else None


async def get_endpoint(
    tx: asyncpg.Connection, tenant_id: UUID, endpoint_id: str, *, for_update: bool = False
) -> EndpointRow | None:
    row = await tx.fetchrow(
        f"SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE tenant_id = $1 AND endpoint_id = $2"
        + (" FOR UPDATE" if for_update else ""),
        tenant_id,
        endpoint_id,
    )
    return _endpoint(row) if row is not None else None


async def list_endpoints(
    tx: asyncpg.Connection, tenant_id: UUID, after: str | None, limit: int
) -> list[EndpointRow]:
    rows = await tx.fetch(
        f"""SELECT {ENDPOINT_COLUMNS} FROM endpoints
            WHERE tenant_id = $1 AND ($2::text IS NULL OR endpoint_id > $2)
            ORDER BY endpoint_id LIMIT $3""",
        tenant_id,
        after,
        limit + 1,
    )
    return [_endpoint(r) for r in rows]


async def delete_endpoint(tx: asyncpg.Connection, tenant_id: UUID, endpoint_id: str) -> bool:
    done: str = await tx.execute(
        "DELETE FROM endpoints WHERE tenant_id = $1 AND endpoint_id = $2", tenant_id, endpoint_id
    )
    return done.endswith(" 1")


async def secrets_of(
    tx: asyncpg.Connection, tenant_id: UUID, endpoint_id: str
) -> tuple[bytes, bytes | None] | None:
    """The current secret and, while its grace period lasts, the previous one."""
    row = await tx.fetchrow(
        """SELECT secret,
                  CASE WHEN previous_secret_expires_at > now() THEN previous_secret END AS previous
           FROM endpoints WHERE tenant_id = $1 AND endpoint_id = $2""",
        tenant_id,
        endpoint_id,
    )
    return (row["secret"], row["previous"]) if row is not None else None


async def rotate_secret(
    tx: asyncpg.Connection, tenant_id: UUID, endpoint_id: str, new: bytes, grace: timedelta
) -> datetime | None:
    """When the previous secret stops signing (None: no such endpoint)."""
    expires: datetime | None = await tx.fetchval(
        """UPDATE endpoints SET previous_secret = secret, secret = $3,
               previous_secret_expires_at = now() + $4, updated_at = now()
           WHERE tenant_id = $1 AND endpoint_id = $2
           RETURNING previous_secret_expires_at""",
        tenant_id,
        endpoint_id,
        new,
        grace,
    )
    return expires


async def has_endpoint(tx: asyncpg.Connection, tenant_id: UUID, endpoint_id: str) -> bool:
    return bool(
        await tx.fetchval(
            "SELECT 1 FROM endpoints WHERE tenant_id = $1 AND endpoint_id = $2",
            tenant_id,
            endpoint_id,
        )
    )


ENDPOINT_USAGE_SQL = "SELECT count(*) FROM endpoints WHERE tenant_id = $1"


# ---------------------------------------------------------------- messages and fan-out


async def insert_message(
    tx: asyncpg.Connection,
    *,
    message_id: str,
    tenant_id: UUID,
    event_id: UUID | None,
    event_type: str,
    channels: Sequence[str],
    body: bytes,
) -> bool:
    """False if the message exists already (the same event delivered twice)."""
    done: str = await tx.execute(
        """INSERT INTO messages (message_id, tenant_id, event_id, event_type, channels, body)
           VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
        message_id,
        tenant_id,
        event_id,
        event_type,
        list(channels),
        body,
    )
    return done.endswith(" 1")


async def subscriptions(
    tx: asyncpg.Connection, tenant_id: UUID
) -> list[tuple[str, list[str], list[str]]]:
    """(endpoint id, event types, channels) of the tenant's enabled endpoints."""
    rows = await tx.fetch(
        "SELECT endpoint_id, event_types, channels FROM endpoints WHERE tenant_id = $1 AND enabled",
        tenant_id,
    )
    return [(r["endpoint_id"], list(r["event_types"]), list(r["channels"])) for r in rows]


async def insert_deliveries(
    tx: asyncpg.Connection, tenant_id: UUID, message_id: str, endpoint_ids: Sequence[str]
) -> int:
    if not endpoint_ids:
        return 0
    done: str = await tx.execute(
        """INSERT INTO deliveries (message_id, endpoint_id, tenant_id, next_attempt_at)
           SELECT $1, e, $2, now() FROM unnest($3::text[]) AS e
           ON CONFLICT (message_id, endpoint_id) DO NOTHING""",
        message_id,
        tenant_id,
        list(endpoint_ids),
    )
    return int(done.rsplit(" ", 1)[1])


async def notify_due(tx: asyncpg.Connection) -> None:
    """Wake the dispatcher at commit (it also polls)."""
    await tx.execute(f"NOTIFY {NOTIFY_CHANNEL}")


# ---------------------------------------------------------------- the delivery log


async def list_messages(
    tx: asyncpg.Connection,
    tenant_id: UUID,
    *,
    before: tuple[datetime, str] | None,
    limit: int,
    event_type: str | None,
    since: datetime | None,
) -> list[MessageRow]:
    rows = await tx.fetch(
        """SELECT message_id, tenant_id, event_id, event_type, channels, created_at,
                  expunged_at
           FROM messages
           WHERE tenant_id = $1
             AND ($2::timestamptz IS NULL OR (created_at, message_id) < ($2, $3))
             AND ($5::text IS NULL OR event_type = $5)
             AND ($6::timestamptz IS NULL OR created_at >= $6)
           ORDER BY created_at DESC, message_id DESC LIMIT $4""",
        tenant_id,
        before[0] if before else None,
        before[1] if before else "",
        limit + 1,
        event_type,
        since,
    )
    return [msgspec.convert(dict(r), MessageRow) for r in rows]


async def get_message(
    tx: asyncpg.Connection, tenant_id: UUID, message_id: str
) -> MessageRow | None:
    row = await tx.fetchrow(
        """SELECT message_id, tenant_id, event_id, event_type, channels, created_at,
                  expunged_at, body
           FROM messages WHERE tenant_id = $1 AND message_id = $2""",
        tenant_id,
        message_id,
    )
    if row is None:
        return None
    values = dict(row)
    body = values.pop("body")
    values["payload"] = msgspec.json.decode(body) if body is not None else None
    return msgspec.convert(values, MessageRow)


async def has_message(tx: asyncpg.Connection, tenant_id: UUID, message_id: str) -> bool:
    return bool(
        await tx.fetchval(
            "SELECT 1 FROM messages WHERE tenant_id = $1 AND message_id = $2",
            tenant_id,
            message_id,
        )
    )


async def deliveries_of(
    tx: asyncpg.Connection, tenant_id: UUID, message_id: str
) -> list[DeliveryRow]:
    rows = await tx.fetch(
        """SELECT delivery_id, message_id, endpoint_id, status, attempts, next_attempt_at,
                  last_status, last_error, created_at, updated_at
           FROM deliveries WHERE tenant_id = $1 AND message_id = $2 ORDER BY endpoint_id""",
        tenant_id,
        message_id,
    )
    return [msgspec.convert(dict(r), DeliveryRow) for r in rows]


async def list_attempts(
    tx: asyncpg.Connection,
    tenant_id: UUID,
    *,
    message_id: str | None = None,
    endpoint_id: str | None = None,
    before: int | None,
    limit: int,
) -> list[AttemptRow]:
    rows = await tx.fetch(
        """SELECT attempt_id, message_id, endpoint_id, attempt, started_at, latency_ms,
                  status_code, error, response_body, response_truncated, next_attempt_at,
                  trigger
           FROM attempts
           WHERE tenant_id = $1
             AND ($2::text IS NULL OR message_id = $2)
             AND ($3::text IS NULL OR endpoint_id = $3)
             AND ($4::bigint IS NULL OR attempt_id < $4)
           ORDER BY attempt_id DESC LIMIT $5""",
        tenant_id,
        message_id,
        endpoint_id,
        before,
        limit + 1,
    )
    return [msgspec.convert(dict(r), AttemptRow) for r in rows]


async def resend(
    tx: asyncpg.Connection, tenant_id: UUID, endpoint_id: str, message_id: str
) -> bool:
    """Deliver the message to the endpoint again, from a fresh schedule (the same
    webhook-id: the receiver can tell it is the same message)."""
    done: str = await tx.execute(
        """INSERT INTO deliveries (message_id, endpoint_id, tenant_id, next_attempt_at)
           SELECT m.message_id, $2, $1, now() FROM messages m
           WHERE m.tenant_id = $1 AND m.message_id = $3 AND m.body IS NOT NULL
           ON CONFLICT (message_id, endpoint_id) DO UPDATE
               SET status = 'pending', attempts = 0, next_attempt_at = now(),
                   leased_until = NULL, updated_at = now()""",
        tenant_id,
        endpoint_id,
        message_id,
    )
    return done.endswith(" 1")


@dataclass(frozen=True)
class RecoveredDeliveries:
    count: int  # deliveries queued again
    message_ids: list[str]  # their messages, oldest first, at most `limit` of them


async def recover(
    tx: asyncpg.Connection, tenant_id: UUID, endpoint_id: str, since: datetime, limit: int
) -> RecoveredDeliveries:
    """Every failed delivery to the endpoint since `since` goes out again."""
    row = await tx.fetchrow(
        """WITH queued AS (
               UPDATE deliveries d SET status = 'pending', attempts = 0,
                   next_attempt_at = now(), leased_until = NULL, updated_at = now()
               FROM messages m
               WHERE d.message_id = m.message_id AND d.tenant_id = $1 AND d.endpoint_id = $2
                 AND d.status = 'failed' AND d.created_at >= $3 AND m.body IS NOT NULL
               RETURNING d.message_id, m.sequence
           )
           SELECT count(*) AS count,
                  (array_agg(message_id ORDER BY sequence))[1:$4] AS message_ids
           FROM queued""",
        tenant_id,
        endpoint_id,
        since,
        limit,
    )
    assert row is not None
    return RecoveredDeliveries(count=int(row["count"]), message_ids=list(row["message_ids"] or []))


async def expunge(tx: asyncpg.Connection, tenant_id: UUID, message_id: str) -> str | None:
    """Drop the body; its pending deliveries fail, since there is nothing left to send
    (as retention does). The message's event type, None if there was no body to drop."""
    event_type: str | None = await tx.fetchval(
        """UPDATE messages SET body = NULL, expunged_at = now()
           WHERE tenant_id = $1 AND message_id = $2 AND body IS NOT NULL
           RETURNING event_type""",
        tenant_id,
        message_id,
    )
    if event_type is None:
        return None
    await tx.execute(
        """UPDATE deliveries SET status = 'failed', last_error = 'payload expunged',
               next_attempt_at = NULL, updated_at = now()
           WHERE tenant_id = $1 AND message_id = $2 AND status = 'pending'""",
        tenant_id,
        message_id,
    )
    return event_type


async def expunge_older_than(tx: asyncpg.Connection, cutoff: datetime, batch: int) -> int:
    """Retention: drop the bodies (the log of attempts stays); pending deliveries of an
    expunged message fail, since there is nothing left to send."""
    done = await tx.fetchval(
        """WITH old AS (
               SELECT message_id FROM messages
               WHERE created_at < $1 AND body IS NOT NULL
               ORDER BY created_at LIMIT $2
           ), cleared AS (
               UPDATE messages m SET body = NULL, expunged_at = now()
               FROM old WHERE m.message_id = old.message_id RETURNING m.message_id
           ), failed AS (
               UPDATE deliveries d SET status = 'failed', last_error = 'payload expunged',
                   next_attempt_at = NULL, updated_at = now()
               FROM cleared WHERE d.message_id = cleared.message_id AND d.status = 'pending'
               RETURNING 1
           )
           SELECT count(*) FROM cleared""",
        cutoff,
        batch,
    )
    return int(done)


# ---------------------------------------------------------------- the dispatcher's queue
# Time comes from the dispatcher's clock (`now`), never from the database's now(): tests
# and the benchmark move it. Every query runs in platform scope: row-level security hides
# every delivery from a bare pool query.


@dataclass(frozen=True)
class Claimed:
    """A delivery leased to this dispatcher until the lease runs out."""

    delivery_id: int
    message_id: str
    endpoint_id: str
    tenant_id: UUID
    attempts: int


@dataclass(frozen=True)
class Deliverable:
    """What one send needs: the endpoint as it is now, and the message's body (None once
    expunged)."""

    url: str
    headers: dict[str, str]
    enabled: bool
    rate_limit_per_second: float | None
    secret: bytes
    previous_secret: bytes | None  # while its grace period lasts
    body: bytes | None


@dataclass(frozen=True)
class ClaimLimits:
    """How much one claim may take (see DispatcherSettings)."""

    total: int
    per_endpoint: int
    per_tenant_claim: int
    lease_seconds: float


# What a tenant's state lets the dispatcher send. Active: everything. Offboarding: only the
# notice that offboarding started, then nothing until it is called off (the deliveries
# wait, as a suspended tenant's do). Any other state: nothing. A waiting delivery is never
# attempted, so its attempts and backoff stand still: it goes out as soon as it may.
SENDABLE = """(tp.status = 'active'
               OR (tp.status = 'offboarding' AND m.event_type = 'tenant.offboarding_started'))"""


async def next_due(tx: asyncpg.Connection, now: datetime) -> datetime | None:
    """When the earliest delivery a claim could take comes due, if after `now`: pending,
    its endpoint enabled, its tenant's state letting it go (SENDABLE)."""
    due: datetime | None = await tx.fetchval(
        f"""SELECT d.next_attempt_at FROM deliveries d
            JOIN endpoints e ON e.endpoint_id = d.endpoint_id AND e.enabled
            JOIN messages m ON m.message_id = d.message_id
            JOIN tenant_projection tp ON tp.tenant_id = d.tenant_id AND {SENDABLE}
            WHERE d.status = 'pending' AND d.next_attempt_at > $1
            ORDER BY d.next_attempt_at LIMIT 1""",
        now,
    )
    return due


async def claim(
    tx: asyncpg.Connection,
    now: datetime,
    limits: ClaimLimits,
    *,
    busy_endpoints: Sequence[str],
    full_tenants: Sequence[UUID],
) -> list[Claimed]:
    """Lease due deliveries that their tenant's state lets go (SENDABLE) to enabled
    endpoints, the same number from every tenant with due work (round robin by rank), at
    most `per_endpoint` per endpoint and none of an endpoint or tenant already at its cap.
    A FIFO endpoint gives only its oldest pending message (so an offboarding notice waits
    behind older messages there, and with them until offboarding is called off)."""
    rows = await tx.fetch(
        f"""WITH tenants AS (
               SELECT DISTINCT d.tenant_id FROM deliveries d
               WHERE d.status = 'pending' AND d.next_attempt_at <= $6
                 AND (d.leased_until IS NULL OR d.leased_until < $6)
           ), candidates AS (
               SELECT c.delivery_id, c.endpoint_id, c.next_attempt_at,
                      row_number() OVER (PARTITION BY t.tenant_id
                                         ORDER BY c.next_attempt_at) AS tenant_rank,
                      row_number() OVER (PARTITION BY c.endpoint_id
                                         ORDER BY c.next_attempt_at) AS endpoint_rank
               FROM tenants t
               JOIN tenant_projection tp
                 ON tp.tenant_id = t.tenant_id AND tp.status IN ('active', 'offboarding')
                 AND NOT (t.tenant_id = ANY($7::uuid[]))
               CROSS JOIN LATERAL (
                   SELECT d.delivery_id, d.endpoint_id, d.next_attempt_at
                   FROM deliveries d
                   JOIN endpoints e ON e.endpoint_id = d.endpoint_id AND e.enabled
                   JOIN messages m ON m.message_id = d.message_id
                   WHERE d.tenant_id = t.tenant_id AND d.status = 'pending' AND {SENDABLE}
                     AND d.next_attempt_at <= $6
                     AND (d.leased_until IS NULL OR d.leased_until < $6)
                     AND NOT (d.endpoint_id = ANY($1::text[]))
                     -- FIFO: only an endpoint's oldest pending message may go
                     AND (NOT e.fifo OR NOT EXISTS (
                         SELECT 1 FROM deliveries d2
                         JOIN messages m2 ON m2.message_id = d2.message_id
                         WHERE d2.endpoint_id = d.endpoint_id
                           AND d2.status = 'pending' AND m2.sequence < m.sequence))
                   ORDER BY d.next_attempt_at
                   LIMIT $2
               ) c
           ), picked AS (
               SELECT delivery_id FROM candidates
               WHERE endpoint_rank <= $3
               ORDER BY tenant_rank, next_attempt_at
               LIMIT $4
           )
           UPDATE deliveries d
           SET leased_until = $6 + make_interval(secs => $5)
           FROM picked
           WHERE d.delivery_id = picked.delivery_id AND d.status = 'pending'
             AND (d.leased_until IS NULL OR d.leased_until < $6)
           RETURNING d.delivery_id, d.message_id, d.endpoint_id, d.tenant_id,
                     d.attempts""",
        list(busy_endpoints),
        limits.per_tenant_claim,
        limits.per_endpoint,
        limits.total,
        limits.lease_seconds,
        now,
        list(full_tenants),
    )
    return [Claimed(**dict(r)) for r in rows]


async def release(tx: asyncpg.Connection, delivery_ids: Sequence[int]) -> None:
    """Give leased deliveries back unsent, due as they were."""
    await tx.execute(
        "UPDATE deliveries SET leased_until = NULL WHERE delivery_id = ANY($1)",
        list(delivery_ids),
    )


async def postpone(tx: asyncpg.Connection, delivery_id: int, seconds: float, now: datetime) -> None:
    """Give a leased delivery back, due no sooner than `seconds` from `now`; no attempt
    is spent."""
    await tx.execute(
        """UPDATE deliveries SET leased_until = NULL,
               next_attempt_at = greatest(
                   next_attempt_at, $3::timestamptz + make_interval(secs => $2))
           WHERE delivery_id = $1""",
        delivery_id,
        seconds,
        now,
    )


async def deliverable(
    tx: asyncpg.Connection, delivery_id: int, now: datetime
) -> Deliverable | None:
    """None if the delivery is gone (its endpoint deleted meanwhile)."""
    row = await tx.fetchrow(
        """SELECT e.url, e.headers, e.enabled, e.rate_limit_per_second, e.secret,
                  CASE WHEN e.previous_secret_expires_at > $2
                       THEN e.previous_secret END AS previous_secret,
                  m.body
           FROM deliveries d
           JOIN endpoints e ON e.endpoint_id = d.endpoint_id
           JOIN messages m ON m.message_id = d.message_id
           WHERE d.delivery_id = $1""",
        delivery_id,
        now,
    )
    if row is None:
        return None
    values = dict(row)
    values["headers"] = {str(k): str(v) for k, v in (values["headers"] or {}).items()}
    return Deliverable(**values)


async def fail_expunged(tx: asyncpg.Connection, delivery_id: int) -> None:
    """A pending delivery whose message was expunged meanwhile: nothing will ever be sent."""
    await tx.execute(
        """UPDATE deliveries SET status = 'failed', last_error = 'payload expunged',
               next_attempt_at = NULL, leased_until = NULL, updated_at = now()
           WHERE delivery_id = $1 AND status = 'pending'""",
        delivery_id,
    )


@dataclass(frozen=True)
class Attempt:
    """One send and what came of it, as the delivery log shows it."""

    number: int  # 1 for the first attempt
    started_at: datetime
    latency_ms: float
    status_code: int | None
    error: str | None
    response_body: str
    response_truncated: bool
    next_attempt_at: datetime | None  # None: no further attempt
    delivery_status: str  # what the delivery is now: pending, succeeded or failed


async def record_attempt(tx: asyncpg.Connection, item: Claimed, attempt: Attempt) -> None:
    """Log the attempt and move the delivery on (its lease ends)."""
    await tx.execute(
        """INSERT INTO attempts (delivery_id, tenant_id, message_id, endpoint_id,
               attempt, started_at, latency_ms, status_code, error, response_body,
               response_truncated, next_attempt_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
        item.delivery_id,
        item.tenant_id,
        item.message_id,
        item.endpoint_id,
        attempt.number,
        attempt.started_at,
        attempt.latency_ms,
        attempt.status_code,
        attempt.error,
        attempt.response_body.replace("\x00", "\ufffd"),  # text cannot hold NUL
        attempt.response_truncated,
        attempt.next_attempt_at,
    )
    await tx.execute(
        """UPDATE deliveries SET status = $2, attempts = $3, next_attempt_at = $4,
               leased_until = NULL, last_status = $5, last_error = $6, updated_at = now()
           WHERE delivery_id = $1""",
        item.delivery_id,
        attempt.delivery_status,
        attempt.number,
        attempt.next_attempt_at,
        attempt.status_code,
        attempt.error,
    )


async def end_failing_streak(tx: asyncpg.Connection, endpoint_id: str) -> None:
    await tx.execute(
        """UPDATE endpoints SET failing_since = NULL
           WHERE endpoint_id = $1 AND failing_since IS NOT NULL""",
        endpoint_id,
    )


async def failing_since(tx: asyncpg.Connection, endpoint_id: str, now: datetime) -> datetime | None:
    """Start the endpoint's failing streak at `now` unless one is running; when it began
    (None if the endpoint is gone)."""
    since: datetime | None = await tx.fetchval(
        """UPDATE endpoints SET failing_since = coalesce(failing_since, $2)
           WHERE endpoint_id = $1 RETURNING failing_since""",
        endpoint_id,
        now,
    )
    return since


async def disable_endpoint(tx: asyncpg.Connection, endpoint_id: str, reason: str) -> bool:
    """True if this call disabled it (False: already disabled or gone)."""
    disabled = await tx.fetchval(
        """UPDATE endpoints SET enabled = false, disabled_reason = $2, updated_at = now()
           WHERE endpoint_id = $1 AND enabled RETURNING true""",
        endpoint_id,
        reason,
    )
    return bool(disabled)
