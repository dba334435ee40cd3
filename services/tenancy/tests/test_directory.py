"""The global directory's store on a real PostgreSQL (a scratch database): claims that race
are decided once, the change feed misses nothing under concurrent writers, releases free a
slug, and a replica fed by the feed ends equal to the directory."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from uuid import UUID, uuid4

import pytest
import pytest_asyncio

from tenantry_events.pg import package_migrations
from tenantry_platform.clock import FakeClock
from tenantry_projections.directory_replica import DirectoryReplica
from tenantry_regions.directory import ClaimRequest, HomeRegionMismatch, TenantFacts
from tenantry_service.residency import ReplicaPuller
from tenantry_tenancy.directory.store import DirectoryStore
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.stack import Stack


@pytest_asyncio.fixture
async def directory_db(stack: Stack) -> AsyncIterator[ScratchDatabase]:
    """The directory's tables (and a replica's: every scratch database has the
    projections) in one throwaway database."""
    migrations = package_migrations("tenantry_tenancy.directory")
    scratch = await create_scratch_database(stack, migrations, "dir")
    try:
        yield scratch
    finally:
        await drop_scratch_database(stack, scratch)


def slug_claim(slug: str, tenant_id: UUID, region: str) -> ClaimRequest:
    return ClaimRequest(kind="slug", value=slug, tenant_id=tenant_id, home_region=region)


async def test_claims_racing_from_two_regions_have_exactly_one_winner(
    directory_db: ScratchDatabase,
) -> None:
    store = DirectoryStore(directory_db.db)
    for round_number in range(5):
        contenders = [(uuid4(), region) for region in ("us", "eu") for _ in range(4)]
        random.shuffle(contenders)
        answers = await asyncio.gather(
            *(store.claim(slug_claim(f"acme-{round_number}", t, r)) for t, r in contenders)
        )
        winners = [c for c, a in zip(contenders, answers, strict=True) if a.granted]
        assert len(winners) == 1
        ((winner_id, winner_region),) = winners
        losers = [a for a in answers if not a.granted]
        assert {a.held_by_region for a in losers} == {winner_region}
        holder = await store.holder("slug", f"acme-{round_number}")
        assert holder is not None
        assert (holder.tenant_id, holder.home_region) == (winner_id, winner_region)


async def test_a_claim_is_idempotent_for_its_tenant_and_domains_ignore_case(
    directory_db: ScratchDatabase,
) -> None:
    store = DirectoryStore(directory_db.db)
    tenant = uuid4()
    assert (await store.claim(slug_claim("globex", tenant, "eu"))).granted
    assert (await store.claim(slug_claim("globex", tenant, "eu"))).granted
    domain = ClaimRequest(kind="domain", value="Globex.EXAMPLE", tenant_id=tenant, home_region="eu")
    assert (await store.claim(domain)).granted
    other = ClaimRequest(kind="domain", value="globex.example", tenant_id=uuid4(), home_region="us")
    refused = await store.claim(other)
    assert not refused.granted
    assert refused.held_by_region == "eu"
    facts = await store.lookup(tenant)
    assert facts is not None
    assert (facts.slug, facts.domains, facts.home_region) == ("globex", ["globex.example"], "eu")


async def test_a_tenant_cannot_claim_from_a_second_region(directory_db: ScratchDatabase) -> None:
    store = DirectoryStore(directory_db.db)
    tenant = uuid4()
    assert (await store.claim(slug_claim("initech", tenant, "us"))).granted
    answer = await store.claim(
        ClaimRequest(kind="domain", value="initech.example", tenant_id=tenant, home_region="eu")
    )
    assert not answer.granted
    assert answer.held_by_region == "us"


async def test_facts_without_the_slug_release_it_for_another_tenant(
    directory_db: ScratchDatabase,
) -> None:
    store = DirectoryStore(directory_db.db)
    first, second = uuid4(), uuid4()
    assert (await store.claim(slug_claim("umbrella", first, "us"))).granted
    assert not (await store.claim(slug_claim("umbrella", second, "eu"))).granted
    # Purged, slug still quarantined: the directory keeps both.
    purged = await store.record(
        TenantFacts(tenant_id=first, home_region="us", status="purged", slug="umbrella")
    )
    assert (purged.status, purged.slug) == ("purged", "umbrella")
    assert not (await store.claim(slug_claim("umbrella", second, "eu"))).granted
    # The quarantine ends: facts without the slug give it back, the tombstone stays.
    released = await store.record(
        TenantFacts(tenant_id=first, home_region="us", status="purged", slug=None)
    )
    assert released.slug is None
    assert released.seq > purged.seq
    assert (await store.claim(slug_claim("umbrella", second, "eu"))).granted
    # A fact set cannot take a slug it never claimed.
    sneaky = await store.record(
        TenantFacts(tenant_id=first, home_region="us", status="active", slug="umbrella")
    )
    assert sneaky.slug is None


async def test_a_replica_following_the_feed_during_concurrent_writes_ends_equal(
    directory_db: ScratchDatabase,
) -> None:
    """Writers in two regions claim and change tenants while a replica pulls the feed in
    small pages; once the writers stop and the replica catches up, it holds exactly the
    directory's facts (nothing skipped by a page boundary or an out-of-order commit)."""
    store = DirectoryStore(directory_db.db)
    replica = DirectoryReplica(directory_db.db)
    clock = FakeClock()
    puller = ReplicaPuller(replica, store, clock)
    statuses = ("active", "suspended", "offboarding")
    writing = True

    async def writer(region: str, name: str) -> None:
        tenants: list[UUID] = []
        for n in range(60):
            if tenants and n % 3:
                tenant = random.choice(tenants)
                await store.record(
                    TenantFacts(
                        tenant_id=tenant, home_region=region, status=random.choice(statuses)
                    )
                )
            else:
                tenant = uuid4()
                assert (await store.claim(slug_claim(f"{name}-{n}", tenant, region))).granted
                tenants.append(tenant)

    async def follower() -> None:
        while writing:
            await puller.pull()
            await asyncio.sleep(0)

    follow = asyncio.create_task(follower())
    try:
        await asyncio.gather(writer("us", "a"), writer("eu", "b"), writer("us", "c"))
    finally:
        writing = False
        await follow
    await puller.pull()  # the end of the feed, once the writers are done

    page = await store.changes(0, 1000)
    assert page.complete
    expected = {f.tenant_id: f for f in page.facts}
    replicated = {tenant_id: await replica.tenant(tenant_id) for tenant_id in expected}
    assert replicated == expected
    assert (await replica.state()).seq == max(f.seq for f in expected.values())


async def test_purged_tenants_leave_the_replica(directory_db: ScratchDatabase) -> None:
    store = DirectoryStore(directory_db.db)
    replica = DirectoryReplica(directory_db.db)
    puller = ReplicaPuller(replica, store, FakeClock())
    tenant = uuid4()
    await store.claim(slug_claim("soylent", tenant, "eu"))
    await puller.pull()
    assert (await replica.tenant(tenant)) is not None
    await store.record(TenantFacts(tenant_id=tenant, home_region="eu", status="purged"))
    await puller.pull()
    assert await replica.tenant(tenant) is None
    state = await replica.state()
    assert state.caught_up_at is not None


@pytest.mark.parametrize(("after", "limit"), [(0, 1), (3, 2), (0, 1000)])
async def test_the_feed_pages_in_order(
    directory_db: ScratchDatabase, after: int, limit: int
) -> None:
    store = DirectoryStore(directory_db.db)
    for n in range(6):
        await store.claim(slug_claim(f"page-{n}", uuid4(), "us"))
    page = await store.changes(after, limit)
    seqs = [f.seq for f in page.facts]
    assert seqs == sorted(seqs)
    assert all(s > after for s in seqs)
    assert len(seqs) <= limit
    assert page.next_after == (seqs[-1] if seqs else after)


async def test_only_a_move_switches_a_tenants_region_and_its_claims_follow(
    directory_db: ScratchDatabase,
) -> None:
    store = DirectoryStore(directory_db.db)
    tenant = uuid4()
    await store.claim(slug_claim("moving", tenant, "us"))
    await store.claim(
        ClaimRequest(kind="domain", value="moving.example", tenant_id=tenant, home_region="us")
    )
    # Facts pushed for it by another region are a bug, refused.
    with pytest.raises(HomeRegionMismatch) as raised:
        await store.record(TenantFacts(tenant_id=tenant, home_region="eu", status="active"))
    assert raised.value.home_region == "us"
    before = await store.lookup(tenant)
    assert before is not None
    moved = await store.move(tenant, "us", "eu")
    assert (moved.home_region, moved.slug, moved.domains) == ("eu", "moving", ["moving.example"])
    assert moved.seq > before.seq
    # A repeated or stale switch changes nothing.
    with pytest.raises(HomeRegionMismatch):
        await store.move(tenant, "us", "eu")
    with pytest.raises(LookupError):
        await store.move(uuid4(), "us", "eu")
    holder = await store.holder("domain", "MOVING.example")
    assert holder is not None
    assert holder.home_region == "eu"


async def test_claims_of_tenants_never_created_are_given_back_after_the_grace(
    directory_db: ScratchDatabase,
) -> None:
    store = DirectoryStore(directory_db.db)
    replica = DirectoryReplica(directory_db.db)
    puller = ReplicaPuller(replica, store, FakeClock())
    created, abandoned = uuid4(), uuid4()
    for tenant, slug in ((created, "kept"), (abandoned, "orphan")):
        assert (await store.claim(slug_claim(slug, tenant, "eu"))).granted
    # The created tenant's region records its facts; the other's create died.
    await store.record(
        TenantFacts(tenant_id=created, home_region="eu", status="active", slug="kept")
    )
    await puller.pull()
    assert await replica.tenant(abandoned) is not None
    assert await store.sweep_unrecorded(timedelta(hours=1)) == 0  # within the grace
    await directory_db.db.pool.execute(
        "UPDATE directory_tenants SET claimed_at = now() - interval '2 hours'"
    )
    assert await store.sweep_unrecorded(timedelta(hours=1)) == 1
    assert await store.sweep_unrecorded(timedelta(hours=1)) == 0
    assert (await store.claim(slug_claim("orphan", uuid4(), "us"))).granted
    assert not (await store.claim(slug_claim("kept", uuid4(), "us"))).granted
    await puller.pull()
    assert await replica.tenant(abandoned) is None  # replicas drop it like a purged one
    assert await replica.tenant(created) is not None
