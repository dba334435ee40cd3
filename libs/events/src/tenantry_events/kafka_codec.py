"""The envelope on Kafka: CloudEvents binary content mode.

Attributes travel as `ce_*` headers, the payload alone is the record value (JSON), and the
record key is the tenant id so one tenant's events keep their order within a topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec

from tenantry_events.actors import Actor
from tenantry_events.catalog import CATALOG, Catalog
from tenantry_events.envelope import Envelope, MalformedEvent

CONTENT_TYPE = "application/json"
Headers = list[tuple[str, bytes]]


class KafkaRecord(msgspec.Struct, frozen=True):
    topic: str
    key: bytes
    headers: Headers
    value: bytes


_ENCODER = msgspec.json.Encoder()
_ACTOR = msgspec.json.Decoder(Actor)


def header_values(envelope: Envelope[Any]) -> list[tuple[str, str]]:
    """The record's headers as text: what `to_record` sends, and what the outbox stores
    (as JSON) for events that did not come through the event store."""
    values = [
        ("ce_specversion", "1.0"),
        ("ce_id", str(envelope.id)),
        ("ce_source", envelope.source),
        ("ce_type", envelope.type),
        ("ce_subject", envelope.subject),
        ("ce_time", envelope.occurred_at.isoformat()),
        ("ce_tenantid", str(envelope.tenant_id)),
        ("ce_aggregateversion", str(envelope.aggregate_version)),
        ("ce_schemaversion", str(envelope.schema_version)),
        ("ce_region", envelope.region),
        ("content-type", CONTENT_TYPE),
    ]
    if envelope.traceparent:
        values.append(("ce_traceparent", envelope.traceparent))
    if envelope.tracestate:
        values.append(("ce_tracestate", envelope.tracestate))
    if envelope.actor is not None:  # a CloudEvents extension; its personal fields are sealed
        values.append(("ce_actor", _ENCODER.encode(envelope.actor).decode()))
    return values


def record_headers(envelope: Envelope[Any]) -> Headers:
    """The CloudEvents headers of an envelope; its payload is not read (the outbox builds
    them from a stored envelope whose payload stays raw JSON)."""
    return [(name, value.encode()) for name, value in header_values(envelope)]


def record_key(envelope: Envelope[Any]) -> bytes:
    """The tenant id: one tenant's events keep their order within a topic."""
    return str(envelope.tenant_id).encode()


def to_record(envelope: Envelope[Any]) -> KafkaRecord:
    return KafkaRecord(
        topic=envelope.type,
        key=record_key(envelope),
        headers=record_headers(envelope),
        value=_ENCODER.encode(envelope.payload),
    )


def from_record(
    headers: Sequence[tuple[str, bytes]] | dict[str, Any],
    value: bytes,
    catalog: Catalog = CATALOG,
) -> Envelope[Any]:
    """Rebuild the envelope from a record; anything malformed raises MalformedEvent."""
    items = headers.items() if isinstance(headers, dict) else headers
    try:
        attrs = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in items}
        event_type = catalog.by_name(attrs["ce_type"])
        payload = msgspec.json.decode(value, type=event_type.payload)
        return Envelope(
            id=UUID(attrs["ce_id"]),
            type=event_type.name,
            source=attrs["ce_source"],
            tenant_id=UUID(attrs["ce_tenantid"]),
            subject=attrs["ce_subject"],
            aggregate_version=int(attrs["ce_aggregateversion"]),
            occurred_at=datetime.fromisoformat(attrs["ce_time"]),
            schema_version=int(attrs["ce_schemaversion"]),
            region=attrs["ce_region"],
            traceparent=attrs.get("ce_traceparent"),
            tracestate=attrs.get("ce_tracestate"),
            actor=_ACTOR.decode(attrs["ce_actor"]) if "ce_actor" in attrs else None,
            payload=payload,
        )
    except (KeyError, ValueError, LookupError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"{type(exc).__name__}: {exc}") from exc
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedEvent(str(exc)) from exc
