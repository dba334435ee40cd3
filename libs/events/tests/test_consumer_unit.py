"""EventConsumer logic on the in-memory stores (fast; the real-broker flows are in
test_backbone_kafka.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from uuid_utils.compat import uuid4

from tenantry_events.consumer import EventConsumer, TransientFailure
from tenantry_events.envelope import Envelope
from tenantry_events.kafka_codec import to_record
from tenantry_events.memory import MemoryDatabase, MemoryDataKeys, MemoryInbox, MemoryTx
from tenantry_events.sealing import ERASED, KeysUnavailable, seal

from .contracts import note, ping


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[tuple[str, bytes]]]] = []

    async def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        self.sent.append((topic, list(headers)))


def consumer(
    handler: Any, keys: MemoryDataKeys | None = None
) -> tuple[EventConsumer[MemoryTx], Sink]:
    db = MemoryDatabase()
    sink = Sink()
    return EventConsumer(
        group="unit",
        db=db,
        inbox=MemoryInbox(db),
        handlers={"test.contract_ping": handler, "test.contract_note": handler},
        dead_letters=sink,
        transient_backoff=0,
        keys=keys,
    ), sink


async def test_redelivery_is_a_duplicate_with_no_second_effect() -> None:
    applied: list[int] = []

    async def handler(tx: MemoryTx, event: Envelope[Any]) -> None:
        applied.append(event.payload.n)

    c, _ = consumer(handler)
    record = to_record(ping(3))
    assert await c.process(record.topic, record.key, record.headers, record.value) == "applied"
    assert await c.process(record.topic, record.key, record.headers, record.value) == "duplicate"
    assert applied == [3]


async def test_a_failing_handler_rolls_back_its_inbox_mark_then_dead_letters() -> None:
    calls = 0

    async def handler(tx: MemoryTx, event: Envelope[Any]) -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad data")

    c, sink = consumer(handler)
    record = to_record(ping(1))
    assert (
        await c.process(record.topic, record.key, record.headers, record.value) == "dead-lettered"
    )
    assert calls == 3, "each attempt ran: the inbox mark was rolled back with the failure"
    ((topic, headers),) = sink.sent
    assert topic == "dlt.unit"
    assert dict(headers)["dlt_error_type"] == b"ValueError"


async def test_transient_errors_are_raised_for_redelivery_not_dead_lettered() -> None:
    async def handler(tx: MemoryTx, event: Envelope[Any]) -> None:
        raise ConnectionRefusedError("database down")

    c, sink = consumer(handler)
    record = to_record(ping(1))
    with pytest.raises(TransientFailure):
        await c.process(record.topic, record.key, record.headers, record.value)
    assert sink.sent == []


async def test_the_consumer_span_continues_the_producers_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    seen: list[int] = []

    async def handler(tx: MemoryTx, event: Envelope[Any]) -> None:
        seen.append(trace.get_current_span().get_span_context().trace_id)

    c, _ = consumer(handler)
    with tracer.start_as_current_span("http request") as request_span:
        event = ping(2)  # captures the current span as traceparent
    assert event.traceparent is not None
    record = to_record(event)
    await c.process(record.topic, record.key, record.headers, record.value)
    assert seen == [request_span.get_span_context().trace_id]


async def test_the_handler_sees_personal_fields_opened_or_erased() -> None:
    seen: list[str] = []

    async def handler(tx: MemoryTx, event: Envelope[Any]) -> None:
        seen.append(event.payload.text)

    keys = MemoryDataKeys()
    c, _ = consumer(handler, keys)
    kept, purged = uuid4(), uuid4()
    for tenant in (kept, purged):
        record = to_record(await seal(note("Ada", tenant_id=tenant), keys, None))
        assert b"Ada" not in record.value
        await c.process(record.topic, record.key, record.headers, record.value)
    sealed_before_the_purge = to_record(await seal(note("Bob", tenant_id=purged), keys, None))
    keys.destroy(purged)
    late = to_record(await seal(note("Ada", tenant_id=kept), keys, None))
    for record in (late, sealed_before_the_purge):
        await c.process(record.topic, record.key, record.headers, record.value)
    assert seen == ["Ada", "Ada", "Ada", ERASED]


async def test_an_unreachable_key_source_is_transient_not_poison() -> None:
    class Down(MemoryDataKeys):
        async def for_opening(self, *args: Any, **kwargs: Any) -> bytes | None:
            raise KeysUnavailable("tenancy unreachable")

    async def handler(tx: MemoryTx, event: Envelope[Any]) -> None:
        raise AssertionError("the handler must not see a sealed event")

    keys = Down()
    c, sink = consumer(handler, keys)
    record = to_record(await seal(note("Ada", tenant_id=uuid4()), keys, None))
    with pytest.raises(TransientFailure):
        await c.process(record.topic, record.key, record.headers, record.value)
    assert sink.sent == []


async def test_a_sealed_value_that_does_not_open_is_poison() -> None:
    async def handler(tx: MemoryTx, event: Envelope[Any]) -> None:
        raise AssertionError("the handler must not see a damaged event")

    keys = MemoryDataKeys()
    c, sink = consumer(handler, keys)
    tenant = uuid4()
    source = await seal(note("Ada", tenant_id=tenant), keys, None)
    other = note("Bob", tenant_id=tenant)
    # Ada's sealed text copied into another event: it is bound to the event it was made for.
    moved = to_record(msgspec.structs.replace(other, payload=source.payload))
    assert await c.process(moved.topic, moved.key, moved.headers, moved.value) == "dead-lettered"
    ((_, headers),) = sink.sent
    assert dict(headers)["dlt_error_type"] == b"UnreadableSeal"
