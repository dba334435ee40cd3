"""Postgres access of webhooks: endpoints, messages, deliveries and attempts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

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
        fields.url,
        fields.description,
        fields.event_types,
        fields.channels,
        fields.headers,
        fields.enabled,
        fields.rate_limit_per_second,
        fields.fifo,
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
        fields.url,
        fields.description,
        fields.event_types,
        fields.channels,
        fields.headers,
        fields.enabled,
        fields.rate_limit_per_second,
        fields.fifo,
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
) -> bool:
    done: str = await tx.execute(
        """UPDATE endpoints SET previous_secret = secret, secret = $3,
               previous_secret_expires_at = now() + $4, updated_at = now()
           WHERE tenant_id = $1 AND endpoint_id = $2""",
        tenant_id,
        endpoint_id,
        new,
        grace,
    )
    return done.endswith(" 1")


async def count_endpoints(tx: asyncpg.Connection, tenant_id: UUID) -> int:
    return int(await tx.fetchval("SELECT count(*) FROM endpoints WHERE tenant_id = $1", tenant_id))


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
    await tx.execute("NOTIFY tenantry_webhook_deliveries")


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


async def recover(
    tx: asyncpg.Connection, tenant_id: UUID, endpoint_id: str, since: datetime
) -> int:
    """Every failed delivery to the endpoint since `since` goes out again."""
    done: str = await tx.execute(
        """UPDATE deliveries d SET status = 'pending', attempts = 0, next_attempt_at = now(),
               leased_until = NULL, updated_at = now()
           FROM messages m
           WHERE d.message_id = m.message_id AND d.tenant_id = $1 AND d.endpoint_id = $2
             AND d.status = 'failed' AND d.created_at >= $3 AND m.body IS NOT NULL""",
        tenant_id,
        endpoint_id,
        since,
    )
    return int(done.rsplit(" ", 1)[1])


async def expunge(tx: asyncpg.Connection, tenant_id: UUID, message_id: str) -> bool:
    """Drop the body; its pending deliveries fail, since there is nothing left to send
    (as retention does)."""
    done: str = await tx.execute(
        """UPDATE messages SET body = NULL, expunged_at = now()
           WHERE tenant_id = $1 AND message_id = $2 AND body IS NOT NULL""",
        tenant_id,
        message_id,
    )
    if not done.endswith(" 1"):
        return False
    await tx.execute(
        """UPDATE deliveries SET status = 'failed', last_error = 'payload expunged',
               next_attempt_at = NULL, updated_at = now()
           WHERE tenant_id = $1 AND message_id = $2 AND status = 'pending'""",
        tenant_id,
        message_id,
    )
    return True


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
