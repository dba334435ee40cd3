"""The tenant guard admits a tenant's requests only in the states its route admits (active
by default; an offboarding tenant's owners and admins may still read), never once the
purge has begun, and answers 404 for a tenant its projection never hears of (or that is
purged), after a bounded wait; operators pass."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import pytest

from tenantry_http.auth import STATE_KEY, Principal, ProjectionWait, TenantGuard
from tenantry_http.problems import Problem

TENANT = UUID(int=7)
STATES = ("active", "suspended", "offboarding", "purging", "purged", "some-future-state")


class Tenants:
    """A projection that learns of the tenant after `known_after` lookups."""

    def __init__(self, status: str | None, known_after: int = 0) -> None:
        self._status = status
        self._known_after = known_after
        self.lookups = 0

    async def status(self, tenant_id: UUID) -> str | None:
        self.lookups += 1
        return self._status if tenant_id == TENANT and self.lookups > self._known_after else None


class Sleeps:
    def __init__(self) -> None:
        self.total = 0.0

    async def __call__(self, seconds: float) -> None:
        self.total += seconds


class FakeRequest:
    def __init__(self, principal: Principal, method: str = "GET", **opt: Any) -> None:
        self.method = method
        self.route_handler = type("H", (), {"opt": opt})()
        self.state: dict[str, Any] = {STATE_KEY: principal}


def user(role: str = "member") -> Principal:
    return Principal(kind="user", subject="u", tenant_id=TENANT, roles=frozenset({role}))


def key() -> Principal:
    return Principal(kind="api_key", subject="k", tenant_id=TENANT)


def operator() -> Principal:
    return Principal(kind="operator", subject="op", tenant_id=None)


def guard(tenants: Tenants, sleeps: Sleeps | None = None, **kwargs: Any) -> TenantGuard:
    return TenantGuard(
        tenants, wait=ProjectionWait(timeout=2.0, interval=0.05, sleep=sleeps or Sleeps()), **kwargs
    )


async def refusal(g: TenantGuard, request: FakeRequest) -> Problem | None:
    try:
        await g(request)  # type: ignore[arg-type]
    except Problem as problem:
        return problem
    return None


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("principal", [user(), key()], ids=["token", "api-key"])
async def test_only_an_active_tenant_is_admitted_by_default(
    state: str, principal: Principal
) -> None:
    for method in ("GET", "POST"):
        problem = await refusal(guard(Tenants(state)), FakeRequest(principal, method))
        if state == "active":
            assert problem is None
            continue
        assert problem is not None
        if state == "purged":
            assert (problem.status, problem.slug) == (404, "tenant-not-found")
            continue
        assert problem.status == 403
        if state == "suspended":
            assert problem.slug == "tenant-suspended"
        elif state == "offboarding":
            assert problem.slug == "tenant-offboarding"
        else:
            assert problem.slug == "tenant-not-active"
            assert problem.extensions["tenant_status"] == state


@pytest.mark.parametrize(
    ("principal", "method", "admitted"),
    [
        (user("owner"), "GET", True),
        (user("admin"), "HEAD", True),
        (user("owner"), "POST", False),
        (user("admin"), "DELETE", False),
        (user("member"), "GET", False),
        (key(), "GET", False),  # an API key has no role: never an admin
    ],
)
async def test_an_offboarding_tenant_admits_only_its_owners_and_admins_reads(
    principal: Principal, method: str, admitted: bool
) -> None:
    problem = await refusal(guard(Tenants("offboarding")), FakeRequest(principal, method))
    if admitted:
        assert problem is None
    else:
        assert problem is not None
        assert (problem.status, problem.slug) == (403, "tenant-offboarding")
    # The same principal on an active tenant passes, suspended it never does.
    assert await refusal(guard(Tenants("active")), FakeRequest(principal, method)) is None
    suspended = await refusal(guard(Tenants("suspended")), FakeRequest(principal, method))
    assert suspended is not None
    assert suspended.slug == "tenant-suspended"


async def test_a_route_declaring_offboarding_admits_everyone_but_never_a_purge() -> None:
    declared = {"tenant_states": ["active", "offboarding", "purging", "purged"]}
    for principal in (user(), key()):
        request = FakeRequest(principal, "POST", **declared)
        assert await refusal(guard(Tenants("offboarding")), request) is None
        purging = await refusal(guard(Tenants("purging")), request)
        assert purging is not None
        assert (purging.status, purging.slug) == (403, "tenant-not-active")
        purged = await refusal(guard(Tenants("purged")), request)
        assert purged is not None
        assert (purged.status, purged.slug) == (404, "tenant-not-found")


@pytest.mark.parametrize("state", STATES)
async def test_operators_pass_in_every_state(state: str) -> None:
    assert await refusal(guard(Tenants(state)), FakeRequest(operator(), "POST")) is None


async def test_a_route_or_a_route_class_admits_a_later_state_explicitly() -> None:
    tenants = Tenants("offboarding")
    by_route = FakeRequest(user(), "GET", tenant_states=["active", "offboarding"])
    assert await refusal(guard(tenants), by_route) is None
    by_class = guard(tenants, admitted={"export": frozenset({"active", "offboarding"})})
    assert await refusal(by_class, FakeRequest(user(), "GET", rate_class="export")) is None
    # Other classes of the same guard still refuse it.
    refused = await refusal(by_class, FakeRequest(user(), "GET"))
    assert refused is not None
    assert refused.slug == "tenant-offboarding"
    # A route that admits only later states refuses an active tenant.
    only_offboarding = FakeRequest(user(), "GET", tenant_states=["offboarding"])
    refused = await refusal(guard(Tenants("active")), only_offboarding)
    assert refused is not None
    assert refused.status == 403


async def test_an_unknown_tenant_is_waited_for_then_404_never_503() -> None:
    sleeps = Sleeps()
    tenants = Tenants(None)
    problem = await refusal(guard(tenants, sleeps), FakeRequest(user(), "POST"))
    assert problem is not None
    assert (problem.status, problem.slug) == (404, "tenant-not-found")
    assert sleeps.total == pytest.approx(2.0)  # bounded: the wait, then the answer
    assert tenants.lookups == 41


async def test_a_tenant_that_arrives_during_the_wait_is_admitted_by_its_state() -> None:
    sleeps = Sleeps()
    assert await refusal(guard(Tenants("active", 3), sleeps), FakeRequest(key())) is None
    assert sleeps.total == pytest.approx(0.15)
    late_suspended = await refusal(guard(Tenants("suspended", 3)), FakeRequest(key()))
    assert late_suspended is not None
    assert late_suspended.slug == "tenant-suspended"


async def test_a_known_tenant_is_not_waited_for() -> None:
    sleeps = Sleeps()
    assert await refusal(guard(Tenants("active"), sleeps), FakeRequest(user())) is None
    assert sleeps.total == 0
