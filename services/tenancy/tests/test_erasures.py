"""One person's erasure in tenancy (erasures.py) on a real database, with a clock the test
moves: opening it destroys the person's subject key with the request, once per person;
the scheduler asks again while reports lack; the fifth service's report completes it and
emits subject.erased, once, whatever is redelivered."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest
from uuid_utils.compat import uuid4

from tenantry_credentials.crypto import SecretBox
from tenantry_events.payloads.tenancy import SubjectErasedBy, SubjectErasureRequested
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_platform.clock import utc
from tenantry_service.data_keys import KeyDestroyed
from tenantry_tenancy.data_keys import DataKeyStore, TenancyDataKeys
from tenantry_tenancy.erasures import ERASURE_PARTICIPANTS, ErasureStore
from tenantry_tenancy.lifecycle import LifecycleScheduler, Pass
from tenantry_tenancy.purges import PurgeStore
from tenantry_tenancy.store import TenantRepository
from tenantry_testkit.fixtures import ScratchDatabase

from .test_lifecycle_scheduler import REGION, SOURCE, Parts


class ErasureParts(Parts):
    def __init__(self, scratch: ScratchDatabase) -> None:
        super().__init__(scratch)
        self.keys = DataKeyStore(self.db, SecretBox(os.urandom(32)), clock=self.clock)
        self.erasures = ErasureStore(
            PostgresOutbox(self.db), TenancyDataKeys(self.keys), source=SOURCE, region=REGION
        )

    def scheduler(self) -> LifecycleScheduler:
        outbox = PostgresOutbox(self.db)
        return LifecycleScheduler(
            self.db,
            TenantRepository(PostgresEventStore(outbox), source=SOURCE, region=REGION),
            PurgeStore(outbox, source=SOURCE, region=REGION),
            clock=self.clock,
            resend_after=timedelta(minutes=10),
            erasures=self.erasures,
        )

    async def open(self, tenant_id: UUID, subject_id: UUID) -> bool:
        request = SubjectErasureRequested(erasure_id=uuid4(), subject_id=subject_id, by="op")
        async with self.db.transaction(tenant_id=tenant_id) as tx:
            return await self.erasures.open(
                tx, tenant_id, request, reason="asked", now=utc(self.clock)
            )

    async def report(self, tenant_id: UUID, erasure_id: UUID, service: str) -> bool:
        report = SubjectErasedBy(
            erasure_id=erasure_id,
            subject_id=await self.subject_of(tenant_id, erasure_id),
            service=service,
            tables=[],
            completed_at=utc(self.clock),
        )
        async with self.db.transaction(tenant_id=tenant_id) as tx:
            return await self.erasures.record_report(tx, tenant_id, report, utc(self.clock))

    async def subject_of(self, tenant_id: UUID, erasure_id: UUID) -> UUID:
        async with self.db.transaction(tenant_id=tenant_id) as tx:
            view = await self.erasures.view(tx, tenant_id, erasure_id)
        assert view is not None
        return view.subject_id

    async def topics(self, tenant_id: UUID) -> list[str]:
        return [topic for topic, _ in await self.emitted(tenant_id)]


@pytest.fixture
def parts(tenancy_db: ScratchDatabase) -> ErasureParts:
    return ErasureParts(tenancy_db)


async def test_opening_destroys_the_subject_key_with_the_request_once_per_person(
    parts: ErasureParts,
) -> None:
    tenant_id, person, other = uuid4(), uuid4(), uuid4()
    await parts.keys.get_or_create(tenant_id, person)
    other_key = await parts.keys.get_or_create(tenant_id, other)

    assert await parts.open(tenant_id, person)
    assert not await parts.open(tenant_id, person), "one erasure per person"
    async with parts.db.transaction(platform=True) as tx:
        with pytest.raises(KeyDestroyed):
            await parts.keys.read(tx, tenant_id, person)
        assert await parts.keys.read(tx, tenant_id, other) == other_key
        assert await parts.keys.read(tx, tenant_id) is not None, "the tenant's key stays"
        erasure = await parts.erasures.of_subject(tx, tenant_id, person)
    assert await parts.topics(tenant_id) == ["subject.erasure_requested"]
    assert erasure is not None
    assert (erasure.status, erasure.reported) == ("running", [])
    assert erasure.waiting_for == list(ERASURE_PARTICIPANTS)


async def test_missing_reports_are_asked_for_again_and_the_fifth_completes_it_once(
    parts: ErasureParts,
) -> None:
    tenant_id, person = uuid4(), uuid4()
    assert await parts.open(tenant_id, person)
    async with parts.db.transaction(platform=True) as tx:
        opened = await parts.erasures.of_subject(tx, tenant_id, person)
    assert opened is not None
    erasure_id = opened.erasure_id

    assert await parts.scheduler().run_once() == Pass()  # just asked
    parts.advance(minutes=11)
    assert await parts.scheduler().run_once() == Pass(erasures_asked_again=1)
    assert await parts.scheduler().run_once() == Pass(), "asked again once per period"
    requests: list[dict[str, Any]] = [
        value
        for topic, value in await parts.emitted(tenant_id)
        if topic == "subject.erasure_requested"
    ]
    assert len(requests) == 2
    assert {r["erasure_id"] for r in requests} == {str(erasure_id)}, "the same erasure"

    *first, last = ERASURE_PARTICIPANTS
    for service in first:
        assert not await parts.report(tenant_id, erasure_id, service)
    assert not await parts.report(tenant_id, erasure_id, first[0]), "a repeat changes nothing"
    assert await parts.report(tenant_id, erasure_id, last)
    assert not await parts.report(tenant_id, erasure_id, last), "a redelivered last report"
    assert (await parts.topics(tenant_id)).count("subject.erased") == 1

    async with parts.db.transaction(tenant_id=tenant_id) as tx:
        done = await parts.erasures.view(tx, tenant_id, erasure_id)
    assert done is not None
    assert (done.status, done.reported, done.waiting_for) == (
        "completed",
        sorted(ERASURE_PARTICIPANTS),
        [],
    )
    assert msgspec.to_builtins(done.reports[last])["service"] == last
    parts.advance(minutes=11)
    assert await parts.scheduler().run_once() == Pass(), "a completed erasure is not re-sent"
