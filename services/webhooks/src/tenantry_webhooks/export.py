"""webhooks' share of a tenant's export (tenantry_service.export): the endpoints and what
each subscribes to, the messages still kept (a payload past retention is null, as the API
shows it), every delivery and every attempt. Attempts can number millions: like every
source they stream through a cursor, never loaded whole.

Never exported: the endpoints' signing secrets (current and previous), and the values of
the custom headers an endpoint sends (often the receiver's credentials): their names only.

Per person: nothing. No row here is a person's: messages are the tenant's events as sent
to its endpoints, not indexed by person, so a per-person export writes no webhooks file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from tenantry_service.export import ExportScope, ExportSource, Row


def endpoint_line(row: Row, scope: ExportScope) -> Mapping[str, Any]:
    line = dict(row)
    line["header_names"] = sorted(line.pop("headers") or {})
    return line


def message_line(row: Row, scope: ExportScope) -> Mapping[str, Any]:
    line = dict(row)
    body = line.pop("body")
    # The body is the JSON sent to the endpoints: embedded as it is, never re-parsed.
    line["payload"] = msgspec.Raw(body) if body is not None else None
    return line


ENDPOINTS = ExportSource(
    file="endpoints.ndjson",
    schema="tenantry.webhooks.endpoint/v1",
    query="""SELECT endpoint_id AS id, url, description, event_types, channels, headers,
                    enabled, disabled_reason, rate_limit_per_second, fifo, failing_since,
                    created_at, updated_at
             FROM endpoints WHERE tenant_id = $1 ORDER BY endpoint_id""",
    render=endpoint_line,
)

MESSAGES = ExportSource(
    file="messages.ndjson",
    schema="tenantry.webhooks.message/v1",
    query="""SELECT message_id AS id, event_id, event_type, channels, sequence, created_at,
                    expunged_at, body
             FROM messages WHERE tenant_id = $1 ORDER BY message_id""",
    render=message_line,
)

DELIVERIES = ExportSource(
    file="deliveries.ndjson",
    schema="tenantry.webhooks.delivery/v1",
    query="""SELECT delivery_id AS id, message_id, endpoint_id, status, attempts,
                    next_attempt_at, last_status, last_error, created_at, updated_at
             FROM deliveries WHERE tenant_id = $1 ORDER BY delivery_id""",
)

ATTEMPTS = ExportSource(
    file="attempts.ndjson",
    schema="tenantry.webhooks.attempt/v1",
    query="""SELECT attempt_id AS id, delivery_id, message_id, endpoint_id, attempt,
                    started_at, latency_ms, status_code, error, response_body,
                    response_truncated, next_attempt_at, trigger
             FROM attempts WHERE tenant_id = $1 ORDER BY attempt_id""",
)

WEBHOOKS_EXPORTS = (ENDPOINTS, MESSAGES, DELIVERIES, ATTEMPTS)
