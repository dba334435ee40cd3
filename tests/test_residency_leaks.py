"""Nothing personal crosses regions (issue 18 §5; docs/residency.md), on the two-region stack
(tenantry_testkit.regions): in us and in eu, a tenant whose every personal field carries a
marker of its region goes through every flow that stores personal data: its creation with
an owner (the invitation mail, the owner setting a password), an admin with a password (the
verification mail), an API key, a webhook endpoint receiving deliveries, SCIM users and a
group, a SAML connection and a just-in-time login; every request of these that carries
personal data (and the password sign-ins, and the SSO login with the user's email as its
hint) is sent to the other region first, which must
answer 307 without keeping anything of it. Then each region's PostgreSQL (every
table of every database), Kafka (every record of every topic), Redis (every key and value),
logs and mail are scanned (tenantry_testkit.leak_scan): no marker of the other region's
tenant anywhere, its id only in the directory's tables, and the region's own markers found
(a scan that reads nothing would pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from redis.asyncio import Redis

from tenantry_testkit.fixtures import eventually, operator_token
from tenantry_testkit.leak_scan import Found, Needle, RegionScan, scan_region
from tenantry_testkit.mailbox import Mailbox, links
from tenantry_testkit.receiver import Receiver
from tenantry_testkit.regions import SERVICES, Region
from tenantry_testkit.saml_idp import SamlIdp, SamlUser, running_idp

from .test_identity import bearer, whoami_everywhere
from .test_scim import GROUP, USER, scim_client
from .test_sso import REDIRECT, code_of, exchange, saml_connection, saml_login

# The test itself takes well under a minute; the first test may start both regions (up to
# ~300 s cold on a loaded machine), which pytest-timeout counts in it.
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(600)]
Regions = dict[str, Region]
PASSWORD = "correct horse battery staple"
# Every personal field of a tenant, each carrying its own marker so a hit names the field.
FIELDS = (
    "name",  # the tenant's name (customer data)
    "owner",  # owner_email at creation: the invitation, the owner's account
    "admin",  # an account made with a password: the verification mail
    "key",  # an API key's name
    "hook",  # a webhook endpoint's URL path and description; its deliveries
    "scim-user",  # SCIM users' userName, emails and names
    "scim-group",  # a SCIM group's displayName
    "sso",  # a SAML connection's name
    "jit",  # the user signed in just in time through it
)
# Where a region may hold another region's tenant id: its directory facts.
DIRECTORY_TABLES = ("directory_replica",)
DIRECTORY_DATABASE = "tenantry_directory"


@dataclass(frozen=True)
class MarkedTenant:
    region: str
    tenant_id: UUID
    marker: str  # mrk-<region>-<random>; each field's value carries marker-<field>
    key: str

    def field(self, name: str) -> str:
        return f"{self.marker}-{name}"

    @property
    def needles(self) -> list[Needle]:
        return [Needle.text(self.field(name)) for name in FIELDS]

    @property
    def id_needle(self) -> Needle:
        return Needle.uuid(self.tenant_id)


async def sent_home(
    http: httpx.AsyncClient,
    route: tuple[Region, Region],
    service: str,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str],
) -> httpx.Response:
    """POST `body` to `path` of `service` in the wrong region first (a misdirected client:
    the request, personal data and all, reaches the other region), which must answer 307
    to the same path at home; then POST it there, and return that answer."""
    home, elsewhere = route
    misdirected = await http.post(
        f"{elsewhere.service_url(service)}{path}", json=body, headers=headers
    )
    assert misdirected.status_code == 307, (service, path, misdirected.text)
    location = misdirected.headers["location"]
    assert location == f"{home.service_url(service)}{path}", (service, location)
    return await http.post(location, json=body, headers=headers)


async def login_sent_home(
    browser: httpx.AsyncClient, route: tuple[Region, Region], connection_id: str, email: str
) -> None:
    """An SSO login started in the wrong region, with the user's email as the login hint:
    sent home by its connection id (once the other region's replica has it), query and
    all."""
    home, elsewhere = route
    query = {"connection_id": connection_id, "email": email, "redirect_uri": REDIRECT}

    async def redirected() -> httpx.Response | None:
        answer = await browser.get(
            f"{elsewhere.service_url('identity')}/sso/authorize", params=query
        )
        return answer if answer.status_code == 307 else None

    misdirected = await eventually(redirected, timeout=30, message="the login sent home")
    location = httpx.URL(misdirected.headers["location"])
    assert str(location.copy_with(query=None)) == f"{home.service_url('identity')}/sso/authorize"
    assert dict(location.params) == query


async def created_tenant(
    http: httpx.AsyncClient,
    route: tuple[Region, Region],
    operator: dict[str, str],
    marker: str,
    domain: str,
) -> UUID:
    region = route[0]
    # The slug is a directory fact (it crosses, by design): no marker in it.
    made = await sent_home(
        http,
        route,
        "tenancy",
        "/v1/tenants",
        headers=operator,
        body={
            "name": f"Tenant {marker}-name",
            "slug": f"lk-{uuid4().hex[:12]}",
            "plan": "enterprise",
            "home_region": region.id,
            "owner_email": f"{marker}-owner@{domain}",
        },
    )
    assert made.status_code == 201, made.text
    tenant_id = UUID(made.json()["tenant_id"])
    conn = await asyncpg.connect(region.owner_dsn("tenantry_identity"))
    try:
        await eventually(
            lambda: conn.fetchval("SELECT 1 FROM tenant_limits WHERE tenant_id = $1", tenant_id),
            timeout=30,
            message=f"the tenant's limits known to {region.id}'s identity",
        )
    finally:
        await conn.close()
    return tenant_id


async def verified_by_mail(
    http: httpx.AsyncClient, region: Region, mailbox: Mailbox, email: str, password: str | None
) -> None:
    """The verification (or invitation) link mailed to `email`, followed; with `password`
    the account gets it (an invited owner has none yet)."""
    message = await mailbox.wait_for(email, subject_contains="Verify", timeout=60)
    token = links(message)[0].split("token=", 1)[1]
    body: dict[str, Any] = {"token": token}
    if password is not None:
        body["password"] = password
    done = await http.post(f"{region.service_url('identity')}/v1/email-verifications", json=body)
    assert done.status_code == 200, done.text


async def populated_tenant(
    route: tuple[Region, Region],
    operator: dict[str, str],
    marks: tuple[str, str],
    idp: SamlIdp,
    receiver: Receiver,
) -> MarkedTenant:
    """A tenant of its home region, `route[0]`, through every flow that stores personal
    data, each finished; the requests that carry personal data go to the other region,
    `route[1]`, first (and are sent home)."""
    region = route[0]
    marker, domain = marks
    identity = region.service_url("identity")
    mailbox = Mailbox(region.mail_dir)
    async with httpx.AsyncClient(timeout=20) as http:
        tenant_id = await created_tenant(http, route, operator, marker, domain)
        tenant_url = f"/v1/tenants/{tenant_id}"
        hook = marker + "-hook"
        endpoint = await sent_home(
            http,
            route,
            "webhooks",
            f"{tenant_url}/webhooks/endpoints",
            headers=operator,
            body={
                "url": f"{receiver.url}/ok/{hook}",
                "event_types": ["account.*"],
                "description": f"deliveries for {hook}",
            },
        )
        assert endpoint.status_code == 201, endpoint.text

        owner = f"{marker}-owner@{domain}"
        await verified_by_mail(http, region, mailbox, owner, PASSWORD)
        admin = f"{marker}-admin@{domain}"
        made = await sent_home(
            http,
            route,
            "identity",
            f"{tenant_url}/accounts",
            headers={**operator, "Idempotency-Key": str(uuid4())},
            body={"email": admin, "password": PASSWORD, "role": "admin"},
        )
        assert made.status_code == 201, made.text
        await verified_by_mail(http, region, mailbox, admin, None)
        for email in (owner, admin):
            login = {"email": email, "password": PASSWORD, "tenant_id": str(tenant_id)}
            # A password sign-in is routed by the tenant in its body.
            session = await sent_home(http, route, "identity", "/v1/sessions", login, {})
            assert session.status_code == 201, session.text

        created_key = await sent_home(
            http,
            route,
            "identity",
            f"{tenant_url}/api-keys",
            headers=operator,
            body={"name": f"{marker}-key", "scopes": ["scim:write", "tenant:read"]},
        )
        assert created_key.status_code == 201, created_key.text
        key: str = created_key.json()["key"]
        assert key.startswith(f"tnty_live_{region.id}_")

        async with scim_client(region, key) as scim:

            async def scim_accepts_key() -> bool:
                return (await scim.get("/Users")).status_code == 200

            await eventually(scim_accepts_key, timeout=60, message="the key known to SCIM")
            members = []
            for name in ("bob", "carol"):
                user = await sent_home(
                    http,
                    route,
                    "provisioning",
                    "/scim/v2/Users",
                    headers=dict(scim.headers),
                    body={
                        "schemas": [USER],
                        "userName": f"{marker}-scim-user-{name}@{domain}",
                        "name": {"givenName": name.title(), "familyName": f"{marker}-scim-user"},
                        "emails": [{"value": f"{marker}-scim-user-{name}@{domain}"}],
                        "active": True,
                    },
                )
                assert user.status_code == 201, user.text
                members.append({"value": user.json()["id"]})
            group = await sent_home(
                http,
                route,
                "provisioning",
                "/scim/v2/Groups",
                headers=dict(scim.headers),
                body={
                    "schemas": [GROUP],
                    "displayName": f"{marker}-scim-group",
                    "members": members,
                },
            )
            assert group.status_code == 201, group.text

        async with httpx.AsyncClient(base_url=identity, timeout=20, headers=operator) as admin_http:
            connection = await saml_connection(
                admin_http, str(tenant_id), idp, name=f"IdP {marker}-sso"
            )
        async with httpx.AsyncClient(timeout=20) as browser:
            await login_sent_home(browser, route, connection["id"], f"{marker}-jit@{domain}")
            code = code_of(await saml_login(browser, region, connection["id"]))
            signed_in = await exchange(browser, region, code)
        assert signed_in.status_code == 200, signed_in.text
        assert signed_in.json()["profile"]["email"] == f"{marker}-jit@{domain}"

        # An hourly policy: its Redis key outlives the test, so Redis holds the tenant's
        # keys when it is scanned (a per-second one expires in seconds).
        hourly = {"name": "hourly", "limit": 900, "period_seconds": 3600, "burst": 50}
        policies = await http.put(
            f"{region.service_url('ratelimit')}{tenant_url}/rate-policies",
            headers=operator,
            json={"policies": [hourly]},
        )
        assert policies.status_code == 200, policies.text

    # Delivered: the account.created of the admin, the SCIM users and the JIT user (the
    # owner's may come before the endpoint: identity makes it on tenant.created).
    async def delivered() -> bool:
        bodies = b"".join(r.body for r in receiver.to(f"/ok/{hook}"))
        return all(f"{marker}-{who}".encode() in bodies for who in ("admin", "scim-user", "jit"))

    await eventually(delivered, timeout=90, message=f"{region.id}'s webhook deliveries")
    return MarkedTenant(region.id, tenant_id, marker, key)


def jit_user(marker: str, domain: str) -> SamlUser:
    """Whom a region's IdP signs in: every attribute marked."""
    email = f"{marker}-jit@{domain}"
    return SamlUser(
        name_id=email,
        attributes={"email": [email], "givenName": [f"{marker}-jit"], "sn": [f"{marker}-jit"]},
    )


def new_marks(region: str) -> tuple[str, str]:
    """(marker, email domain) for a region's tenant. Domains can be directory facts (they
    route SSO), so they carry no marker."""
    return f"mrk-{region}-{uuid4().hex[:10]}", f"lk{uuid4().hex[:10]}.example"


async def replicated(other: Region, tenant: MarkedTenant) -> None:
    """The tenant is in every directory replica of `other` (the directory facts crossed,
    so the scan below sees a region that knows of it)."""

    async def everywhere() -> bool:
        for service in SERVICES:
            conn = await asyncpg.connect(other.super_dsn(other.service_database(service)))
            try:
                known = await conn.fetchval(
                    "SELECT home_region FROM directory_replica WHERE tenant_id = $1",
                    tenant.tenant_id,
                )
            finally:
                await conn.close()
            if known != tenant.region:
                return False
        return True

    await eventually(everywhere, timeout=60, message=f"{tenant.region}'s tenant in {other.id}")


async def counted_in_redis(region: Region, tenant: MarkedTenant) -> None:
    """The tenant's key used until its region's Redis holds the tenant's counters (once
    the hourly policy has reached the services)."""

    async def counted() -> bool:
        await whoami_everywhere(region, bearer(tenant.key))
        async with Redis.from_url(region.redis_url) as redis:
            return bool([k async for k in redis.scan_iter(match=f"rl:{{{tenant.tenant_id}}}*")])

    await eventually(counted, timeout=30, message=f"{region.id}'s rate-limit keys in Redis")


def allowed_id_place(region: Region, found: Found) -> bool:
    """Where a foreign tenant's id may be: a directory replica, or the directory itself."""
    if found.source != "postgres":
        return False
    database, _, table = found.where.split(".")
    return table in DIRECTORY_TABLES or (region.hosts_directory and database == DIRECTORY_DATABASE)


async def test_nothing_personal_of_a_tenant_is_found_in_the_other_region(
    two_regions: Regions, tmp_path: Path, receiver: Receiver
) -> None:
    operators = {
        name: {"Authorization": f"Bearer {await operator_token(region)}"}
        for name, region in two_regions.items()
    }
    marks = {name: new_marks(name) for name in two_regions}
    async with (
        running_idp(tmp_path / "us", login_as=lambda: jit_user(*marks["us"])) as us_idp,
        running_idp(tmp_path / "eu", login_as=lambda: jit_user(*marks["eu"])) as eu_idp,
    ):
        idps = {"us": us_idp, "eu": eu_idp}
        populated = await asyncio.gather(
            *(
                populated_tenant(
                    (region, next(r for r in two_regions.values() if r is not region)),
                    operators[name],
                    marks[name],
                    idps[name],
                    receiver,
                )
                for name, region in two_regions.items()
            )
        )
    tenants = {tenant.region: tenant for tenant in populated}
    for name, tenant in tenants.items():
        other = next(r for r in two_regions if r != name)
        await replicated(two_regions[other], tenant)
    for name, tenant in tenants.items():
        await counted_in_redis(two_regions[name], tenant)

    needles = [n for t in tenants.values() for n in (*t.needles, t.id_needle)]
    scans: dict[str, RegionScan] = dict(
        zip(
            two_regions,
            await asyncio.gather(*(scan_region(r, needles) for r in two_regions.values())),
            strict=True,
        )
    )
    for name in scans:
        # A store that read nothing is the scanner's failure (a fresh client's metadata, in
        # a CI run), not a clean region: scan that region again, bounded, before judging.
        for _ in range(2):
            if all(scans[name].read.values()):
                break
            await asyncio.sleep(2.0)
            scans[name] = await scan_region(two_regions[name], needles)
    for name, scan in scans.items():
        own = tenants[name]
        foreign = next(t for t in tenants.values() if t.region != name)
        region = two_regions[name]
        assert all(scan.read.values()), f"{name}: a store read empty: {scan.read}"

        # The scan sees this region's own tenant: each marked field in PostgreSQL, the
        # mailed addresses in the mail, its id in Kafka's records, Redis's keys and logs.
        in_postgres = {f.needle for f in scan.found if f.source == "postgres"}
        assert {n.label for n in own.needles} <= in_postgres, (name, sorted(in_postgres))
        in_mail = {f.needle for f in scan.found if f.source == "mail"}
        assert {own.field("owner"), own.field("admin")} <= in_mail, (name, in_mail)
        id_sources = {f.source for f in scan.of(str(own.tenant_id))}
        assert {"postgres", "kafka", "redis", "log"} <= id_sources, (name, id_sources)

        # LEAK CHECK: no marked field of the other region's tenant, in any store.
        leaked = [f for n in foreign.needles for f in scan.of(n.label)]
        assert leaked == [], f"personal data of {foreign.region}'s tenant in {name}: " + "; ".join(
            map(str, leaked)
        )
        # LEAK CHECK: its id only among the directory's facts (logs aside: a routed
        # request's path names the tenant, which is no personal data).
        misplaced = [
            f
            for f in scan.of(str(foreign.tenant_id))
            if f.source != "log" and not allowed_id_place(region, f)
        ]
        assert misplaced == [], (
            f"{foreign.region}'s tenant id outside the directory in {name}: "
            + ("; ".join(map(str, misplaced)))
        )
        # ... and there it is (the replica holds it: the scan would have seen more).
        assert any(allowed_id_place(region, f) for f in scan.of(str(foreign.tenant_id)))


async def test_the_scan_finds_what_is_planted_in_every_store_and_encoding(
    two_regions: Regions,
) -> None:
    """The scanner itself: a marker planted in each store of eu, in the encodings data
    takes there (bytea, JSON, a text array, a Kafka header, a binary Kafka key, a Redis
    hash, a log line, a base64 mail body), is found where it was put; then removed."""
    eu = two_regions["eu"]
    probe = f"probe-{uuid4().hex[:10]}"
    planted_id = uuid4()
    places = {
        "bytea": "postgres",
        "json": "postgres",
        "array": "postgres",
        "header": "kafka",
        "redis": "redis",
        "log": "log",
        "mail": "mail",
    }
    database = f"leak_{probe.replace('-', '_')}"
    topic = f"leak-scan.{probe}"
    log = eu.log_dir / f"{probe}.log"
    mail = eu.mail_dir / "new" / f"{probe}.eml"
    admin = await asyncpg.connect(eu.super_dsn())
    kafka = AIOKafkaAdminClient(bootstrap_servers=eu.kafka_bootstrap)
    await kafka.start()
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        conn = await asyncpg.connect(eu.super_dsn(database))
        try:
            await conn.execute("CREATE SCHEMA kept")
            await conn.execute("CREATE TABLE kept.things (b bytea, j jsonb, a text[], n int)")
            await conn.execute(
                "INSERT INTO kept.things VALUES ($1, $2::jsonb, $3, 1)",
                f"\x00{probe}-bytea".encode(),
                json.dumps({"deep": [{"field": f"{probe}-JSON"}]}),
                ["x", f"{probe}-array"],
            )
        finally:
            await conn.close()
        await kafka.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=eu.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                topic, b"{}", key=planted_id.bytes, headers=[("h", f"{probe}-header".encode())]
            )
        finally:
            await producer.stop()
        async with Redis.from_url(eu.redis_url) as redis:
            await redis.hset(f"leak-scan:{probe}", "field", f"{probe}-redis")
            await redis.expire(f"leak-scan:{probe}", 120)
        log.write_text(f'{{"msg": "a line naming {probe}-log"}}\n')
        message = EmailMessage()
        message["To"] = "someone@example.com"
        message["Subject"] = "probe"
        message.set_content(f"a body naming {probe}-mail", cte="base64")
        mail.write_bytes(message.as_bytes())

        needles = [Needle.text(f"{probe}-{place}") for place in places]

        async def scan_seeing_the_new_topic() -> Any:
            # A topic created a moment ago can be missing from a fresh client's metadata
            # (seen in CI): scan again until the broker shows it, bounded.
            scan = await scan_region(eu, [*needles, Needle.uuid(planted_id)])
            return scan if scan.of(str(planted_id)) else None

        scan = await eventually(
            scan_seeing_the_new_topic, timeout=60, interval=1, message="the probe topic scanned"
        )
        for place, source in places.items():
            found = scan.of(f"{probe}-{place}")
            assert [f.source for f in found] == [source], (place, found)
        assert [f.where for f in scan.of(f"{probe}-json")] == [f"{database}.kept.things"]
        assert [f.where for f in scan.of(str(planted_id))] == [f"{topic}[0]"]
    finally:
        log.unlink(missing_ok=True)
        mail.unlink(missing_ok=True)
        async with Redis.from_url(eu.redis_url) as redis:
            await redis.delete(f"leak-scan:{probe}")
        with contextlib.suppress(Exception):
            await kafka.delete_topics([topic])
        await kafka.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
