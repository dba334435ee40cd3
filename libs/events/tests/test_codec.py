"""The envelope's two encodings (JSON in the store, CloudEvents binary on Kafka)."""

from __future__ import annotations

import contextlib
from uuid import UUID

from hypothesis import given
from hypothesis import strategies as st

from tenantry_events.envelope import MalformedEvent, decode_envelope, encode_envelope, new_event
from tenantry_events.kafka_codec import from_record, to_record
from tenantry_events.payloads.tenancy import TenantCreated, TenantState

names = st.text(min_size=1, max_size=50)


def created(name: str) -> TenantCreated:
    return TenantCreated(
        tenant=TenantState(name=name, slug="acme", status="active", plan="free", home_region="eu"),
        created_by="op",
    )


@given(names, st.uuids(), st.integers(min_value=1, max_value=2**31 - 1))
def test_envelope_round_trips_through_json_and_kafka(name: str, tenant: UUID, version: int) -> None:
    event = new_event(
        created(name),
        tenant_id=tenant,
        subject=str(tenant),
        aggregate_version=version,
        source="/tenantry/tenancy",
        region="eu",
    )
    assert decode_envelope(encode_envelope(event)) == event
    record = to_record(event)
    assert record.topic == "tenant.created"
    assert record.key == str(tenant).encode()
    assert from_record(record.headers, record.value) == event


def test_new_events_get_time_ordered_uuidv7_ids() -> None:
    ids = [
        new_event(
            created("a"),
            tenant_id=UUID(int=1),
            subject="s",
            aggregate_version=1,
            source="/t",
            region="r",
        ).id
        for _ in range(50)
    ]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ce_type", "ce_id", "ce_tenantid", "ce_time", "x"]),
            st.binary(max_size=40),
        ),
        max_size=6,
    ),
    st.binary(max_size=200),
)
def test_arbitrary_records_decode_or_raise_malformed_never_anything_else(
    headers: list[tuple[str, bytes]], value: bytes
) -> None:
    with contextlib.suppress(MalformedEvent):
        from_record(headers, value)


@given(st.binary(max_size=300))
def test_arbitrary_stored_bytes_decode_or_raise_malformed(data: bytes) -> None:
    with contextlib.suppress(MalformedEvent):
        decode_envelope(data)
