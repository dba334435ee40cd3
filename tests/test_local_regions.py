"""Two regions locally (issue 18, part 4): `regions.sh start us eu` runs two complete,
separate regions beside the default stack. Each answers on its own ports, runs in its own
region, and has its own PostgreSQL cluster, Kafka cluster, Redis server and SMTP sink; the
default stack is still there afterwards."""

from __future__ import annotations

import json
import smtplib
from email.message import EmailMessage
from pathlib import Path

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from aiokafka.admin import AIOKafkaAdminClient
from uuid_utils.compat import uuid4

from tenantry_testkit.mailbox import Mailbox, recipients
from tenantry_testkit.regions import SERVICES, Region
from tenantry_testkit.stack import REPO, Stack

Regions = dict[str, Region]

# The first test may start both regions: minutes on a loaded machine (tenantry_testkit.regions).
pytestmark = pytest.mark.timeout(600)


def process_environment(local_dir: Path, process: str) -> dict[str, str]:
    """What a running process of a stack really got: the pid file in the stack's state
    directory (.local/ or .local/regions/<id>/), then /proc/<pid>/environ."""
    pid = (local_dir / "run" / f"{process}.pid").read_text().strip()
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_every_api_and_worker_answers_on_its_regions_ports(
    two_regions: Regions, stack: Stack
) -> None:
    seen: dict[str, str] = {}
    default_urls = {stack.service_url(s) for s in SERVICES}
    for region in two_regions.values():
        for service in SERVICES:
            for url in (region.service_url(service), region.worker_health_url(service)):
                assert httpx.get(f"{url}/readyz", timeout=5).status_code == 200, url
                assert url not in seen, f"{region.id} {service} and {seen.get(url)} share {url}"
                assert url not in default_urls
                seen[url] = f"{region.id} {service}"


def test_each_process_runs_in_its_own_region_with_the_same_region_list(
    two_regions: Regions,
) -> None:
    us, eu = two_regions["us"], two_regions["eu"]
    expected = [
        {"id": r.id, "jurisdiction": r.id.upper(), "urls": r.service_urls}
        for r in two_regions.values()
    ]
    for region in (us, eu):
        for service in SERVICES:
            for role in ("api", "worker"):
                env = process_environment(region.local_dir, f"{service}-{role}")
                assert env["TENANTRY_REGION"] == region.id, (service, role)
                assert json.loads(env["TENANTRY_REGIONS"]) == expected
                assert env["TENANTRY_DIRECTORY_REGION"] == "us"
                assert env["TENANTRY_DIRECTORY_URL"] == us.service_url("tenancy")
                assert env["TENANTRY_DIRECTORY_SECRET"] == region.directory_secret
                assert env["TENANTRY_DATABASE_URL"] == region.app_dsn(f"tenantry_{service}")
                # Only tenancy of the directory's region reaches the directory's database.
                hosts = service == "tenancy" and region is us
                assert ("TENANTRY_DIRECTORY_DATABASE_URL" in env) == hosts, (region.id, service)
    assert process_environment(us.local_dir, "tenancy-api")[
        "TENANTRY_DIRECTORY_DATABASE_URL"
    ] == us.app_dsn("tenantry_directory")


async def test_each_region_has_its_own_postgres_cluster(two_regions: Regions, stack: Stack) -> None:
    identities: dict[int, str] = {}
    for name, cluster in {"default": stack, **two_regions}.items():
        conn = await asyncpg.connect(cluster.super_dsn())
        try:
            system_id = await conn.fetchval("SELECT system_identifier FROM pg_control_system()")
            data_dir = await conn.fetchval("SHOW data_directory")
            databases = {
                row["datname"]
                for row in await conn.fetch(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'tenantry_%'"
                )
            }
        finally:
            await conn.close()
        assert system_id not in identities, f"{name} is {identities.get(system_id)}'s cluster"
        identities[system_id] = name
        if isinstance(cluster, Region):
            assert Path(data_dir) == cluster.local_dir / "pg" / "data"
            assert set(cluster.databases) <= databases
            assert ("tenantry_directory" in databases) == cluster.hosts_directory


@pytest.mark.kafka
async def test_each_region_has_its_own_kafka_cluster(two_regions: Regions, stack: Stack) -> None:
    cluster_ids: dict[str, str] = {}
    for name, cluster in {"default": stack, **two_regions}.items():
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.kafka_bootstrap)
        await admin.start()
        try:
            described = await admin.describe_cluster()
        finally:
            await admin.close()
        cluster_id = str(described["cluster_id"])
        assert cluster_id not in cluster_ids, f"{name} is {cluster_ids.get(cluster_id)}'s broker"
        cluster_ids[cluster_id] = name
        brokers = {f"{b['host']}:{b['port']}" for b in described["brokers"]}
        assert brokers == {cluster.kafka_bootstrap}


async def test_each_region_has_its_own_redis(two_regions: Regions, stack: Stack) -> None:
    key, marker = f"test-local-regions:{uuid4()}", str(uuid4())
    clients = {
        name: redis.from_url(s.redis_url) for name, s in {"default": stack, **two_regions}.items()
    }
    try:
        run_ids = {name: (await c.info("server"))["run_id"] for name, c in clients.items()}
        assert len(set(run_ids.values())) == len(run_ids), run_ids
        await clients["us"].set(key, marker, ex=60)
        assert await clients["us"].get(key) == marker.encode()
        assert await clients["eu"].get(key) is None
        assert await clients["default"].get(key) is None
    finally:
        await clients["us"].delete(key)
        for client in clients.values():
            await client.aclose()


async def test_mail_sent_to_a_regions_sink_lands_in_that_regions_mail_dir_only(
    two_regions: Regions, stack: Stack
) -> None:
    mail_dirs = {"default": REPO / ".local" / "mail"} | {
        r.id: r.mail_dir for r in two_regions.values()
    }
    mailboxes = {name: Mailbox(folder) for name, folder in mail_dirs.items()}
    sent: dict[str, str] = {}
    for name, cluster in {"default": stack, **two_regions}.items():
        sent[name] = recipient = f"to-{name}-{uuid4().hex[:12]}@example.com"
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "t@tenantry.local", recipient, name
        message.set_content(f"for the {name} stack's sink")
        with smtplib.SMTP("127.0.0.1", int(cluster.env["TENANTRY_SMTP_PORT"]), timeout=10) as smtp:
            smtp.send_message(message)
    for name, recipient in sent.items():
        await mailboxes[name].wait_for(recipient, subject_contains=name, timeout=15)
    for name, mailbox in mailboxes.items():
        arrived = set().union(*(recipients(m) for m in await mailbox.messages()))
        assert arrived & set(sent.values()) == {sent[name]}, name


async def test_a_service_restarts_in_its_own_region_only(two_regions: Regions) -> None:
    """Region.services runs services.sh in that region: eu's ratelimit gets new processes,
    us's keeps its own, and both answer."""
    us, eu = two_regions["us"], two_regions["eu"]

    def pids() -> dict[str, str]:
        return {
            f"{r.id} {role}": (r.local_dir / "run" / f"ratelimit-{role}.pid").read_text().strip()
            for r in (us, eu)
            for role in ("api", "worker")
        }

    urls = [
        url
        for region in (us, eu)
        for url in (region.service_url("ratelimit"), region.worker_health_url("ratelimit"))
    ]
    before = pids()
    await eu.services("restart", "ratelimit")
    after = pids()
    assert after["eu api"] != before["eu api"]
    assert after["eu worker"] != before["eu worker"]
    assert (after["us api"], after["us worker"]) == (before["us api"], before["us worker"])
    async with httpx.AsyncClient(timeout=5) as client:
        for url in urls:
            assert (await client.get(f"{url}/readyz")).status_code == 200, url


def test_the_default_stack_is_still_up(two_regions: Regions, stack: Stack) -> None:
    """Last: after everything above, the default stack's services still answer, from the
    processes of its own pid files in .local/run (not the regions')."""
    for service in SERVICES:
        assert httpx.get(f"{stack.service_url(service)}/readyz", timeout=5).status_code == 200
        env = process_environment(REPO / ".local", f"{service}-api")
        assert env.get("TENANTRY_REGION") == stack.env["TENANTRY_REGION"]
