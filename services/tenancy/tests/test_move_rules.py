"""A move's rules (pure): who may move where, how a move waits and backs off, and the
tenant aggregate's arrival in its new region (tenant.moved), folded from its stream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st
from uuid_utils.compat import uuid4

from tenantry_events.aggregates import fold
from tenantry_tenancy.domain import DomainError, Tenant
from tenantry_tenancy.moves import (
    IMPORT_ORDER,
    MAX_BACKOFF,
    Move,
    MoveRefused,
    check_move,
    next_attempt,
)

from .test_tenant_fold import recorded

NOW = datetime(2026, 12, 7, tzinfo=UTC)
EVERY = timedelta(seconds=2)
REGIONS = ["us", "eu"]


@pytest.mark.parametrize(
    ("to_region", "status", "slug", "http"),
    [
        ("ap", "active", "unknown-region", 422),
        ("us", "active", "same-region", 422),
        ("eu", "offboarding", "illegal-transition", 409),
        ("eu", "purging", "illegal-transition", 409),
    ],
)
def test_a_move_is_refused_with_the_reason(
    to_region: str, status: str, slug: str, http: int
) -> None:
    with pytest.raises(MoveRefused) as refused:
        check_move(own_region="us", to_region=to_region, regions=REGIONS, status=status)
    assert (refused.value.slug, refused.value.status) == (slug, http)


@pytest.mark.parametrize("status", ["active", "suspended"])
def test_an_active_or_suspended_tenant_may_move(status: str) -> None:
    check_move(own_region="us", to_region="eu", regions=REGIONS, status=status)


def a_move() -> Move:
    return Move(
        move_id=UUID(str(uuid4())),
        tenant_id=UUID(str(uuid4())),
        direction="in",
        from_region="us",
        to_region="eu",
        state="importing",
        previous_status="active",
        reason="residency",
        requested_by="operator:op",
    )


@given(errors=st.integers(0, 40))
def test_waiting_is_at_the_next_scan_and_errors_back_off_to_a_bound(errors: int) -> None:
    move = a_move()
    for n in range(errors):
        move = move.waiting(f"error {n}")
    later = next_attempt(move.waiting(), NOW, EVERY)
    if errors == 0:
        assert later == NOW
    else:
        assert later - NOW == min(EVERY * 2 ** (errors - 1), MAX_BACKOFF)
    # Progress forgets the errors.
    assert next_attempt(move.advanced("switching"), NOW, EVERY) == NOW


def test_services_import_in_order_tenancy_first() -> None:
    move = a_move()
    seen = []
    while (service := move.next_service()) is not None:
        seen.append(service)
        move = move.with_import(service, [])
    assert seen == list(IMPORT_ORDER)
    assert seen[0] == "tenancy"


def test_a_tenant_arrives_with_its_home_region_and_status_and_folds_so() -> None:
    tenant_id = UUID(str(uuid4()))
    created = Tenant.create(
        tenant_id, name="Acme", slug="acme", plan="free", home_region="us", created_by="op"
    )
    stream = [recorded(tenant_id, created, 1)]
    tenant = Tenant.start(stream[0])
    suspended = tenant.suspend(reason="moving to region eu", by="op")
    stream.append(recorded(tenant_id, suspended, 2))
    tenant = tenant.apply(stream[-1])
    with pytest.raises(DomainError):  # the tenant's home is us, not ap
        tenant.arrive(from_region="ap", to_region="eu", move_id=uuid4(), status="active", by="m")
    with pytest.raises(DomainError):  # a move restores active or suspended only
        tenant.arrive(from_region="us", to_region="eu", move_id=uuid4(), status="purged", by="m")
    moved = tenant.arrive(
        from_region="us", to_region="eu", move_id=uuid4(), status="active", by="system:move"
    )
    assert (moved.tenant.home_region, moved.tenant.status) == ("eu", "active")
    stream.append(recorded(tenant_id, moved, 3))
    folded = fold(Tenant.start, stream)
    assert folded is not None
    assert folded.state == moved.tenant
    assert folded.version == 3
