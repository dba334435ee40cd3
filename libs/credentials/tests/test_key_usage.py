"""KeyUsage batches uses into one apikey.used per key per flush, on real Postgres."""

from __future__ import annotations

from uuid import UUID

from tenantry_credentials.key_usage import KeyUsage
from tenantry_events.kafka_codec import from_record
from tenantry_events.storage import PostgresOutbox
from tenantry_platform.clock import FakeClock
from tenantry_testkit.fixtures import ScratchDatabase


async def test_many_uses_become_one_event_per_key_with_the_latest_time(
    scratch_db: ScratchDatabase,
) -> None:
    clock = FakeClock()
    outbox = PostgresOutbox(scratch_db.db)
    usage = KeyUsage(scratch_db.db, outbox, service="webhooks", region="local", clock=clock)
    for _ in range(100):
        usage.note("key_a", UUID(int=1))
        clock.advance(1)
    usage.note("key_b", UUID(int=2))
    assert await usage.flush() == 2
    assert await usage.flush() == 0, "nothing new, nothing written"
    events = [from_record(e.record.headers, e.record.value) for e in await outbox.fetch(10)]
    by_key = {e.payload.key_id: e for e in events}
    assert set(by_key) == {"key_a", "key_b"}
    assert by_key["key_a"].payload.last_used_at.timestamp() == clock.now() - 1
    assert by_key["key_a"].tenant_id == UUID(int=1)
