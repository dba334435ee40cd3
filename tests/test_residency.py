"""Data residency across two real regions (issue 18; docs/residency.md): regions "us"
(hosting the global directory) and "eu", each with its own PostgreSQL, Kafka, Redis and
five services (tenantry_testkit.regions).

A tenant is created only in its home region; slugs are unique across regions, also when
claims race; a request for another region's tenant is answered 307 to the same path there,
by tenant path, API key prefix or token issuer; a forged key prefix is refused by its
checksum; with the directory's region down, routing continues from the replicas and claims
fail closed (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
import pytest_asyncio

from tenantry_testkit.dns import LoopbackDns
from tenantry_testkit.fixtures import eventually, operator_token
from tenantry_testkit.regions import Region
from tenantry_testkit.saml_idp import SamlUser, running_idp

# The first test may start both regions (up to ~300 s cold on a loaded machine).
pytestmark = pytest.mark.timeout(600)
Regions = dict[str, Region]


@dataclass
class Deployment:
    regions: Regions
    operators: dict[str, dict[str, str]]  # region -> Authorization header of its operator

    def url(self, region: str, service: str) -> str:
        return self.regions[region].service_url(service)


@pytest_asyncio.fixture(scope="module")
async def deployment(two_regions: Regions) -> Deployment:
    operators = {
        name: {"Authorization": f"Bearer {await operator_token(region)}"}
        for name, region in two_regions.items()
    }
    return Deployment(two_regions, operators)


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # Redirects are what is under test: never followed by the client itself.
    async with httpx.AsyncClient(timeout=15, follow_redirects=False) as http:
        yield http


def new_tenant(slug: str, home_region: str | None, plan: str = "free") -> dict[str, Any]:
    body: dict[str, Any] = {"name": f"Tenant {slug}", "slug": slug, "plan": plan}
    if home_region is not None:
        body["home_region"] = home_region
    return body


async def create_tenant(
    client: httpx.AsyncClient, deployment: Deployment, region: str, slug: str, plan: str = "free"
) -> UUID:
    response = await client.post(
        f"{deployment.url(region, 'tenancy')}/v1/tenants",
        json=new_tenant(slug, region, plan),
        headers=deployment.operators[region],
    )
    assert response.status_code == 201, response.text
    return UUID(response.json()["tenant_id"])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid4().hex[:10]}"


async def test_a_tenant_is_created_only_in_its_home_region(
    client: httpx.AsyncClient, deployment: Deployment
) -> None:
    slug = unique("home")
    sent_to_us = await client.post(
        f"{deployment.url('us', 'tenancy')}/v1/tenants",
        json=new_tenant(slug, "eu"),
        headers=deployment.operators["us"],
    )
    assert sent_to_us.status_code == 307, sent_to_us.text
    assert sent_to_us.headers["location"] == f"{deployment.url('eu', 'tenancy')}/v1/tenants"
    assert sent_to_us.headers["tenantry-region"] == "eu"
    assert sent_to_us.headers["content-type"].startswith("application/problem+json")
    # Operators are per region: eu's creates it, where the 307 pointed.
    created = await client.post(
        sent_to_us.headers["location"],
        json=new_tenant(slug, "eu"),
        headers=deployment.operators["eu"],
    )
    assert created.status_code == 201, created.text
    assert created.json()["home_region"] == "eu"
    tenant_id = created.json()["tenant_id"]
    # us has no row of it: its tenancy answers for it with a 307, never with data.
    read_in_us = await client.get(
        f"{deployment.url('us', 'tenancy')}/v1/tenants/{tenant_id}",
        headers=deployment.operators["us"],
    )
    assert read_in_us.status_code == 307
    assert read_in_us.headers["location"] == (
        f"{deployment.url('eu', 'tenancy')}/v1/tenants/{tenant_id}"
    )


@pytest.mark.parametrize("home_region", ["ap", "EU", "local", ""])
async def test_an_unknown_home_region_is_refused(
    client: httpx.AsyncClient, deployment: Deployment, home_region: str
) -> None:
    response = await client.post(
        f"{deployment.url('us', 'tenancy')}/v1/tenants",
        json=new_tenant(unique("nowhere"), home_region),
        headers=deployment.operators["us"],
    )
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if home_region:  # the empty string fails the schema's length first
        assert response.json()["type"].endswith("/unknown-region")
        assert "eu" in response.json()["detail"]


async def test_a_slug_is_unique_across_regions(
    client: httpx.AsyncClient, deployment: Deployment
) -> None:
    slug = unique("once")
    await create_tenant(client, deployment, "eu", slug)
    again_in_us = await client.post(
        f"{deployment.url('us', 'tenancy')}/v1/tenants",
        json=new_tenant(slug, "us"),
        headers=deployment.operators["us"],
    )
    assert again_in_us.status_code == 409, again_in_us.text
    assert again_in_us.json()["type"].endswith("/slug-taken")


async def test_creates_racing_in_both_regions_for_one_slug_have_one_winner(
    client: httpx.AsyncClient, deployment: Deployment
) -> None:
    for _ in range(3):
        slug = unique("race")
        attempts = [region for region in ("us", "eu") for _ in range(3)]
        answers = await asyncio.gather(
            *(
                client.post(
                    f"{deployment.url(region, 'tenancy')}/v1/tenants",
                    json=new_tenant(slug, region),
                    headers=deployment.operators[region],
                )
                for region in attempts
            )
        )
        codes = sorted(a.status_code for a in answers)
        assert codes == [201, 409, 409, 409, 409, 409], [a.text for a in answers]


async def test_every_service_sends_another_regions_tenant_home(
    client: httpx.AsyncClient, deployment: Deployment
) -> None:
    tenant_id = await create_tenant(client, deployment, "eu", unique("routed"))
    paths = {
        "tenancy": f"/v1/tenants/{tenant_id}/history",
        "identity": f"/v1/tenants/{tenant_id}/api-keys?limit=5",
        "webhooks": f"/v1/tenants/{tenant_id}/webhooks/endpoints",
        "ratelimit": f"/v1/tenants/{tenant_id}/rate-policies",
    }
    for service, path in paths.items():
        response = await client.get(
            f"{deployment.url('us', service)}{path}", headers=deployment.operators["us"]
        )
        assert response.status_code == 307, (service, response.text)
        assert response.headers["location"] == f"{deployment.url('eu', service)}{path}"
        location = response.headers["location"]

        # At home, with the home region's operator, the same request is served (once the
        # tenant's events have reached that service).
        async def served(location: str = location) -> httpx.Response | None:
            answer = await client.get(location, headers=deployment.operators["eu"])
            return answer if answer.status_code == 200 else None

        assert await eventually(served, timeout=30, message=f"{service} serving {path}")


async def test_api_keys_and_tokens_name_their_region(
    client: httpx.AsyncClient, deployment: Deployment
) -> None:
    tenant_id = await create_tenant(client, deployment, "eu", unique("keys"), "enterprise")
    created = await client.post(
        f"{deployment.url('eu', 'identity')}/v1/tenants/{tenant_id}/api-keys",
        json={"name": "scim", "scopes": ["scim:write"]},
        headers=deployment.operators["eu"],
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith("tnty_live_eu_")
    scim_users = "/scim/v2/Users"
    # SCIM has no tenant in its path: the key's prefix routes it.
    in_us = await client.get(
        f"{deployment.url('us', 'provisioning')}{scim_users}",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert in_us.status_code == 307, in_us.text
    assert in_us.headers["location"] == f"{deployment.url('eu', 'provisioning')}{scim_users}"

    async def served_at_home() -> httpx.Response | None:
        response = await client.get(
            in_us.headers["location"], headers={"Authorization": f"Bearer {key}"}
        )
        return response if response.status_code == 200 else None

    assert await eventually(served_at_home, timeout=30)  # the key's event reaches eu's SCIM
    # The prefix edited to name us: its checksum fails in us, and in eu.
    forged = "tnty_live_us_" + key.removeprefix("tnty_live_eu_")
    for region in ("us", "eu"):
        refused = await client.get(
            f"{deployment.url(region, 'provisioning')}{scim_users}",
            headers={"Authorization": f"Bearer {forged}"},
        )
        assert refused.status_code == 401, (region, refused.text)

    # An eu token (its issuer is eu's identity) on a route without a tenant, in us.
    eu_operator = deployment.operators["eu"]
    plans_in_us = await client.get(
        f"{deployment.url('us', 'tenancy')}/v1/plans", headers=eu_operator
    )
    assert plans_in_us.status_code == 307, plans_in_us.text
    assert plans_in_us.headers["location"] == f"{deployment.url('eu', 'tenancy')}/v1/plans"


async def test_a_tenant_no_region_knows_is_not_found_in_either(
    client: httpx.AsyncClient, deployment: Deployment
) -> None:
    for region in ("us", "eu"):
        response = await client.get(
            f"{deployment.url(region, 'tenancy')}/v1/tenants/{uuid4()}",
            headers=deployment.operators[region],
        )
        assert response.status_code == 404, (region, response.text)


async def test_with_the_directory_down_routing_continues_and_claims_fail_closed(
    client: httpx.AsyncClient, deployment: Deployment
) -> None:
    """SIGKILL us's tenancy api (it serves the directory): eu still routes a us tenant it
    has replicated (307), answers 503 + Retry-After for a tenant it cannot place, and
    refuses to create a tenant (the slug cannot be claimed); restarted, all is well."""
    us = deployment.regions["us"]
    known = await create_tenant(client, deployment, "us", unique("known"))

    async def replicated_in_eu() -> bool | None:
        """eu's webhooks has the tenant in its replica (its worker pulled the feed)."""
        conn = await asyncpg.connect(deployment.regions["eu"].app_dsn("tenantry_webhooks"))
        try:
            found = await conn.fetchval(
                "SELECT home_region FROM directory_replica WHERE tenant_id = $1", known
            )
        finally:
            await conn.close()
        return found == "us" or None

    assert await eventually(replicated_in_eu, timeout=30, message="eu's replica")
    pid = int((us.local_dir / "run" / "tenancy-api.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    try:
        still_routed = await client.get(
            f"{deployment.url('eu', 'webhooks')}/v1/tenants/{known}/webhooks/endpoints",
            headers=deployment.operators["eu"],
        )
        assert still_routed.status_code == 307, still_routed.text
        unplaceable = await client.get(
            f"{deployment.url('eu', 'webhooks')}/v1/tenants/{uuid4()}/webhooks/endpoints",
            headers=deployment.operators["eu"],
        )
        assert unplaceable.status_code == 503, unplaceable.text
        assert int(unplaceable.headers["retry-after"]) > 0
        refused = await client.post(
            f"{deployment.url('eu', 'tenancy')}/v1/tenants",
            json=new_tenant(unique("closed"), "eu"),
            headers=deployment.operators["eu"],
        )
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) > 0
    finally:
        restart = await asyncio.create_subprocess_exec(
            "bash",
            str(us.stack_script.parent / "regions.sh"),
            "exec",
            "us",
            "bash",
            str(us.stack_script.parent / "services.sh"),
            "start",
            "tenancy",
            env={
                **{k: v for k, v in os.environ.items() if k != "TENANTRY_LOCAL_DIR"},
                "REGIONS": "us eu",
            },
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, errors = await asyncio.wait_for(restart.communicate(), timeout=120)
        assert restart.returncode == 0, errors.decode()[-2000:]
    await create_tenant(client, deployment, "eu", unique("reopened"))


# ---------------------------------------------------------------- SSO entry points
REDIRECT = "http://127.0.0.1:8199/sso/callback"  # TENANTRY_SSO_REDIRECT_URIS (stack.env)


@pytest.fixture(scope="module")
def dns(two_regions: Regions) -> Iterator[LoopbackDns]:
    """The DNS server both regions' identity ask (TENANTRY_SSO_DNS_NAMESERVERS)."""
    host, port = two_regions["eu"].env["TENANTRY_SSO_DNS_NAMESERVERS"].split(",")[0].rsplit(":", 1)
    with LoopbackDns(host, int(port)) as server:
        yield server


async def verify_domain(
    client: httpx.AsyncClient,
    deployment: Deployment,
    dns: LoopbackDns,
    region: str,
    tenant_id: UUID,
    domain: str,
) -> httpx.Response:
    base = f"{deployment.url(region, 'identity')}/v1/tenants/{tenant_id}/sso/domains"
    operator = deployment.operators[region]
    claimed = await client.post(base, json={"domain": domain}, headers=operator)
    assert claimed.status_code == 201, claimed.text
    dns.add_txt(claimed.json()["txt_record_name"], claimed.json()["txt_record_value"])
    return await client.post(f"{base}/{domain}/verify", headers=operator)


async def test_sso_logins_start_in_the_region_of_their_connection_or_domain(
    client: httpx.AsyncClient, deployment: Deployment, dns: LoopbackDns, tmp_path: Path
) -> None:
    tenant_id = await create_tenant(client, deployment, "eu", unique("sso"), "business")
    async with running_idp(tmp_path, login_as=lambda: SamlUser(name_id="x@example.org")) as idp:
        connection = await client.post(
            f"{deployment.url('eu', 'identity')}/v1/tenants/{tenant_id}/sso/connections",
            json={"kind": "saml", "name": "IdP", "saml": {"metadata_xml": idp.metadata_xml()}},
            headers=deployment.operators["eu"],
        )
    assert connection.status_code == 201, connection.text
    connection_id = connection.json()["id"]
    # A product with one login URL for every region: us sends the login to eu.
    query = f"connection_id={connection_id}&redirect_uri={REDIRECT}&state=s1"
    start = await client.get(f"{deployment.url('us', 'identity')}/sso/authorize?{query}")
    assert start.status_code == 307, start.text
    assert start.headers["location"] == f"{deployment.url('eu', 'identity')}/sso/authorize?{query}"
    # SP metadata (a path naming the connection) too.
    metadata = f"/sso/saml/{connection_id}/metadata"
    r = await client.get(f"{deployment.url('us', 'identity')}{metadata}")
    assert r.status_code == 307, r.text
    assert r.headers["location"] == f"{deployment.url('eu', 'identity')}{metadata}"

    # Home realm discovery: a domain verified in eu routes logins by email address there,
    # and no tenant of us can verify it while eu holds it.
    domain = f"{unique('hrd')}.example"
    verified = await verify_domain(client, deployment, dns, "eu", tenant_id, domain)
    assert verified.status_code == 200, verified.text
    assert verified.json()["verified"]
    by_email = f"email=Erin%40{domain.upper()}&redirect_uri={REDIRECT}"
    start = await client.get(f"{deployment.url('us', 'identity')}/sso/authorize?{by_email}")
    assert start.status_code == 307, start.text
    assert start.headers["location"].startswith(
        f"{deployment.url('eu', 'identity')}/sso/authorize?"
    )

    rival = await create_tenant(client, deployment, "us", unique("rival"), "business")
    refused = await verify_domain(client, deployment, dns, "us", rival, domain)
    assert refused.status_code == 409, refused.text
    assert refused.json()["type"].endswith("/domain-taken")
    # eu lets the domain go: now us may verify it, and logins by it go to us.
    released = await client.delete(
        f"{deployment.url('eu', 'identity')}/v1/tenants/{tenant_id}/sso/domains/{domain}",
        headers=deployment.operators["eu"],
    )
    assert released.status_code == 204, released.text
    again = await client.post(
        f"{deployment.url('us', 'identity')}/v1/tenants/{rival}/sso/domains/{domain}/verify",
        headers=deployment.operators["us"],
    )
    assert again.status_code == 200, again.text
    assert again.json()["verified"]

    async def routed_to_us() -> httpx.Response | None:
        answer = await client.get(f"{deployment.url('eu', 'identity')}/sso/authorize?{by_email}")
        return answer if answer.status_code == 307 else None

    moved = await eventually(routed_to_us, timeout=30, message="eu routing the domain to us")
    assert moved.headers["location"].startswith(
        f"{deployment.url('us', 'identity')}/sso/authorize?"
    )


async def test_an_operator_of_any_region_lists_every_regions_tenants_as_directory_facts(
    client: httpx.AsyncClient, deployment: Deployment
) -> None:
    slug = unique("listed")
    tenant_id = await create_tenant(client, deployment, "us", slug)
    regions = await client.get(
        f"{deployment.url('eu', 'tenancy')}/v1/regions", headers=deployment.operators["eu"]
    )
    assert regions.status_code == 200, regions.text
    by_id = {r["id"]: r for r in regions.json()}
    assert set(by_id) == {"us", "eu"}
    assert by_id["us"]["hosts_directory"]
    assert by_id["eu"]["current"]
    assert by_id["eu"]["urls"]["tenancy"] == deployment.url("eu", "tenancy")

    seen: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"region": "us", "limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = await client.get(
            f"{deployment.url('eu', 'tenancy')}/v1/regions/tenants",
            params=params,
            headers=deployment.operators["eu"],
        )
        assert page.status_code == 200, page.text
        seen |= {item["tenant_id"]: item for item in page.json()["data"]}
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    listed = seen[str(tenant_id)]
    assert (listed["slug"], listed["home_region"], listed["status"]) == (slug, "us", "active")
    assert {item["home_region"] for item in seen.values()} == {"us"}
    # Directory facts only: no name, no address crosses.
    assert set(listed) == {
        "tenant_id",
        "home_region",
        "status",
        "slug",
        "domains",
        "connection_ids",
        "seq",
    }
    forged = await client.get(
        f"{deployment.url('eu', 'tenancy')}/v1/regions/tenants",
        params={"cursor": "not-a-cursor"},
        headers=deployment.operators["eu"],
    )
    assert forged.status_code == 400


async def test_sign_ins_refreshes_and_sso_codes_are_sent_to_their_region(
    client: httpx.AsyncClient, deployment: Deployment
) -> None:
    """Routes whose body says where they belong: a password sign-in names its tenant, a
    refresh token and an SSO code name their region (rt_eu.…, code_eu.…)."""
    eu = deployment.regions["eu"]
    tenant_id = await create_tenant(client, deployment, "eu", unique("signin"))
    login = {"email": "nobody@example.org", "password": "x" * 12, "tenant_id": str(tenant_id)}
    sent = await client.post(f"{deployment.url('us', 'identity')}/v1/sessions", json=login)
    assert sent.status_code == 307, sent.text
    assert sent.headers["location"] == f"{deployment.url('eu', 'identity')}/v1/sessions"

    # eu's operator signs in at eu: its refresh token names eu, and us sends it home.
    signed_in = await client.post(
        f"{deployment.url('eu', 'identity')}/v1/sessions",
        json={"email": eu.operator_email, "password": eu.operator_password},
    )
    assert signed_in.status_code == 201, signed_in.text
    refresh_token = signed_in.json()["refresh_token"]
    assert refresh_token.startswith("rt_eu.")
    refreshed_in_us = await client.post(
        f"{deployment.url('us', 'identity')}/v1/sessions/refresh",
        json={"refresh_token": refresh_token},
    )
    assert refreshed_in_us.status_code == 307, refreshed_in_us.text
    refreshed = await client.post(
        refreshed_in_us.headers["location"], json={"refresh_token": refresh_token}
    )
    assert refreshed.status_code == 201, refreshed.text

    code = "code_eu.not-a-real-code"
    exchanged = await client.post(
        f"{deployment.url('us', 'identity')}/v1/sso/token", json={"code": code}
    )
    assert exchanged.status_code == 307, exchanged.text
    assert exchanged.headers["location"] == f"{deployment.url('eu', 'identity')}/v1/sso/token"
