"""The home-region step in a small Litestar app, with an in-memory directory and replica:
which region each kind of request is sent to, and what it answers when it cannot tell."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import pytest
import pytest_asyncio
from litestar import Litestar, get, post
from litestar.params import FromPath
from litestar.testing import AsyncTestClient

from tenantry_credentials.apikeys import generate
from tenantry_credentials.tokens import ISSUER
from tenantry_http.pipeline import PipelineMiddleware
from tenantry_http.problems import problem_response
from tenantry_regions.directory import (
    ClaimKind,
    DirectoryUnavailable,
    TenantFacts,
)
from tenantry_regions.regions import SERVICES, Region, RegionMap
from tenantry_regions.routing import REGION_BY_QUERY, REGION_LOCAL, HomeRegionStep, TenantRouter


def urls(region: str) -> dict[str, str]:
    return {s: f"https://{s}.{region}.example" for s in SERVICES}


REGIONS = RegionMap("us", [Region(id="us", urls=urls("us")), Region(id="eu", urls=urls("eu"))])


class Facts:
    """The facts of a few tenants, kept in memory: what the replica and the directory
    would answer (the directory may know more than the replica, or be down)."""

    def __init__(self) -> None:
        self.by_tenant: dict[UUID, TenantFacts] = {}
        self.down = False
        self.asked = 0

    def add(self, home_region: str, **fields: Any) -> TenantFacts:
        facts = TenantFacts(tenant_id=uuid4(), home_region=home_region, status="active", **fields)
        self.by_tenant[facts.tenant_id] = facts
        return facts

    async def tenant(self, tenant_id: UUID) -> TenantFacts | None:
        return self.by_tenant.get(tenant_id)

    async def by_connection(self, connection_id: UUID) -> TenantFacts | None:
        return next((f for f in self.by_tenant.values() if connection_id in f.connection_ids), None)

    async def by_domain(self, domain: str) -> TenantFacts | None:
        return next((f for f in self.by_tenant.values() if domain in f.domains), None)


class Directory(Facts):
    def _check(self) -> None:
        self.asked += 1
        if self.down:
            raise DirectoryUnavailable("down")

    async def lookup(self, tenant_id: UUID) -> TenantFacts | None:
        self._check()
        return await self.tenant(tenant_id)

    async def holder(self, kind: ClaimKind, value: str) -> TenantFacts | None:
        self._check()
        if kind == "connection":
            return await self.by_connection(UUID(value))
        return await self.by_domain(value)


@get("/v1/tenants/{tenant_id:uuid}/things")
async def tenant_things(tenant_id: FromPath[UUID]) -> str:
    return f"served {tenant_id}"


@get("/v1/plans")
async def plans() -> str:
    return "plans"


@get("/sso/authorize", opt={REGION_BY_QUERY: True})
async def authorize() -> str:
    return "login"


@get("/sso/saml/{connection_id:uuid}/metadata")
async def metadata(connection_id: FromPath[UUID]) -> str:
    return "metadata"


@post("/internal/v1/tenants/{tenant_id:uuid}/key", opt={REGION_LOCAL: True}, status_code=200)
async def internal(tenant_id: FromPath[UUID]) -> str:
    return "local"


@pytest_asyncio.fixture
async def world() -> AsyncIterator[tuple[AsyncTestClient[Litestar], Facts, Directory]]:
    replica, directory = Facts(), Directory()
    step = HomeRegionStep(REGIONS, "identity", TenantRouter(replica, directory))
    app = Litestar(
        route_handlers=[tenant_things, plans, authorize, metadata, internal],
        middleware=[PipelineMiddleware([step])],
        exception_handlers={Exception: problem_response},
    )
    async with AsyncTestClient(app, base_url="https://identity.us.example") as client:
        client.follow_redirects = False  # the 307s are what is under test
        yield client, replica, directory


World = tuple[AsyncTestClient[Litestar], Facts, Directory]


async def test_a_tenant_of_another_region_is_sent_home_with_its_path_and_query(
    world: World,
) -> None:
    client, replica, _ = world
    eu = replica.add("eu")
    response = await client.get(f"/v1/tenants/{eu.tenant_id}/things?limit=5&x=%20")
    assert response.status_code == 307
    assert response.headers["location"] == (
        f"https://identity.eu.example/v1/tenants/{eu.tenant_id}/things?limit=5&x=%20"
    )
    assert response.headers["tenantry-region"] == "eu"
    assert response.json()["type"].endswith("/wrong-region")
    home = replica.add("us")
    assert (await client.get(f"/v1/tenants/{home.tenant_id}/things")).status_code == 200


async def test_a_tenant_the_replica_lacks_is_asked_of_the_directory_and_misses_are_remembered(
    world: World,
) -> None:
    client, _, directory = world
    new = directory.add("eu")  # replicated nowhere yet
    response = await client.get(f"/v1/tenants/{new.tenant_id}/things")
    assert response.status_code == 307
    unknown = uuid4()
    for _ in range(3):  # nobody knows it: served (the route 404s in real life), asked once
        assert (await client.get(f"/v1/tenants/{unknown}/things")).status_code == 200
    assert directory.asked == 2


async def test_with_the_directory_down_what_the_replica_lacks_is_503_never_a_guess(
    world: World,
) -> None:
    client, replica, directory = world
    known = replica.add("eu")
    directory.down = True
    assert (await client.get(f"/v1/tenants/{known.tenant_id}/things")).status_code == 307
    response = await client.get(f"/v1/tenants/{uuid4()}/things")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["type"].endswith("/region-unknown")


async def test_a_region_missing_from_this_regions_list_is_503_not_a_crash(world: World) -> None:
    client, replica, _ = world
    elsewhere = replica.add("ap")  # a region being added, unknown to this deployment's list
    response = await client.get(f"/v1/tenants/{elsewhere.tenant_id}/things")
    assert response.status_code == 503


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        (generate("live", region="eu"), "eu"),
        (generate("live", region="us"), None),
        (generate("live"), None),  # a key from before regions: this region's
        (generate("live", region="ap"), None),  # not a listed region: auth will refuse it
        ("tnty_live_eu_" + "A" * 38, None),  # a made-up key: its checksum fails
    ],
)
async def test_a_route_without_a_tenant_is_routed_by_the_api_keys_prefix(
    world: World, credential: str, expected: str | None
) -> None:
    client, _, _ = world
    response = await client.get("/v1/plans", headers={"Authorization": f"Bearer {credential}"})
    if expected is None:
        assert response.status_code == 200
    else:
        assert response.status_code == 307
        assert response.headers["location"] == f"https://identity.{expected}.example/v1/plans"


def token_from(issuer: str) -> str:
    import base64
    import json

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'Ed25519'})}.{part({'iss': issuer, 'sub': 'x'})}.c2ln"


async def test_a_route_without_a_tenant_is_routed_by_the_tokens_issuer(world: World) -> None:
    client, _, _ = world
    eu_token = token_from(urls("eu")["identity"])
    response = await client.get("/v1/plans", headers={"Authorization": f"Bearer {eu_token}"})
    assert response.status_code == 307
    for issuer in (urls("us")["identity"], ISSUER, "https://evil.example"):
        token = token_from(issuer)
        ok = await client.get("/v1/plans", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200  # this region's, or nobody's: authentication decides
    garbage = await client.get("/v1/plans", headers={"Authorization": "Bearer a.b.c"})
    assert garbage.status_code == 200


async def test_the_path_wins_over_the_credential_so_nothing_goes_round_in_circles(
    world: World,
) -> None:
    client, replica, _ = world
    home = replica.add("us")
    eu_key = generate("live", region="eu")
    response = await client.get(
        f"/v1/tenants/{home.tenant_id}/things", headers={"Authorization": f"Bearer {eu_key}"}
    )
    assert response.status_code == 200  # us's tenant: served here (auth refuses the key)


async def test_sso_entry_points_route_by_connection_domain_or_tenant(world: World) -> None:
    client, replica, _ = world
    connection = uuid4()
    eu = replica.add("eu", connection_ids=[connection], domains=["acme.example"])
    for query in (
        f"connection_id={connection}",
        "email=erin%40acme.example",
        f"tenant_id={eu.tenant_id}",
    ):
        response = await client.get(f"/sso/authorize?{query}&redirect_uri=x")
        assert response.status_code == 307, query
        assert response.headers["location"].startswith("https://identity.eu.example/sso/authorize?")
    assert (await client.get("/sso/authorize?email=erin%40other.example")).status_code == 200
    assert (await client.get("/sso/authorize?connection_id=not-a-uuid")).status_code == 200
    by_path = await client.get(f"/sso/saml/{connection}/metadata")
    assert by_path.status_code == 307


async def test_internal_routes_answer_for_their_own_region(world: World) -> None:
    client, replica, _ = world
    eu = replica.add("eu")
    assert (await client.post(f"/internal/v1/tenants/{eu.tenant_id}/key")).status_code == 200
