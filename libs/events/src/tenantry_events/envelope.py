"""The one envelope every event travels in (see DESIGN.md, "Events")."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import msgspec
from uuid_utils.compat import uuid7

from tenantry_events.actors import Actor, current_actor
from tenantry_events.catalog import CATALOG, Catalog
from tenantry_events.tracing import current_trace_headers

P = TypeVar("P")  # the payload: a catalogued msgspec Struct (msgspec.Raw while decoding)


class Envelope(msgspec.Struct, Generic[P], frozen=True, kw_only=True):
    id: UUID
    type: str
    source: str
    tenant_id: UUID
    subject: str
    aggregate_version: int
    occurred_at: datetime
    schema_version: int
    region: str
    traceparent: str | None = None
    tracestate: str | None = None
    actor: Actor | None = None  # who caused it (tenantry_events.actors); None: the system
    payload: P


class MalformedEvent(ValueError):
    """Bytes that do not decode to a catalogued event: a poison message."""


S = TypeVar("S", bound=msgspec.Struct)


def new_event(
    payload: S,
    *,
    tenant_id: UUID,
    subject: str,
    aggregate_version: int,
    source: str,
    region: str,
    occurred_at: datetime | None = None,
    catalog: Catalog = CATALOG,
) -> Envelope[S]:
    """Wrap a payload; type and schema version come from the catalog, trace context from the
    current span, so a consumer continues the trace of the request that caused the event,
    and the actor from the request (or the event being handled) that caused it."""
    event_type = catalog.by_payload(type(payload))
    traceparent, tracestate = current_trace_headers()
    return Envelope(
        id=uuid7(),
        type=event_type.name,
        source=source,
        tenant_id=tenant_id,
        subject=subject,
        aggregate_version=aggregate_version,
        occurred_at=occurred_at or datetime.now(UTC),
        schema_version=event_type.version,
        region=region,
        traceparent=traceparent,
        tracestate=tracestate,
        actor=current_actor(),
        payload=payload,
    )


_ENCODER = msgspec.json.Encoder()
_RAW_DECODER = msgspec.json.Decoder(Envelope[msgspec.Raw])


def encode_envelope(envelope: Envelope[Any]) -> bytes:
    return _ENCODER.encode(envelope)


def decode_envelope(data: bytes, catalog: Catalog = CATALOG) -> Envelope[Any]:
    """Decode a stored envelope (JSON), typing its payload from the catalog."""
    try:
        raw = _RAW_DECODER.decode(data)
        payload_type = catalog.by_name(raw.type).payload
        payload = msgspec.json.decode(raw.payload, type=payload_type)
    except (msgspec.DecodeError, msgspec.ValidationError, LookupError) as exc:
        raise MalformedEvent(str(exc)) from exc
    return msgspec.structs.replace(raw, payload=payload)
