"""The export and purge sagas end to end on the running suite, driven only through the
public API, as a customer and an operator would (issue 17):

- export: a tenant with data in all five services is exported; the archive downloaded
  through a single-use link verifies (the manifest's signature against tenancy's document
  JWKS, each file's sha256, size and line count), holds every service's share, its SCIM
  files are SCIM resources, and no secret is in it;
- purge: offboarded with a purge_at seconds away, the scheduler starts the purge, all
  five services report, the tenant becomes a tombstone with a signed deletion certificate;
  then no table of any database, no Kafka record and no Redis key holds the tenant's
  marker in plaintext, while a neighbour keeps all of its rows, and the slug is
  quarantined.

Each service's own share in detail (counts per table, redelivery, a worker killed
mid-purge) is in tests/test_purge.py and tests/test_export_parts.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import zipfile
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from joserfc import jwt
from joserfc.jwk import KeySet

from tenantry_credentials.tokens import ALGORITHM
from tenantry_events.catalog import load_all
from tenantry_testkit.fixtures import eventually
from tenantry_testkit.mailbox import Mailbox
from tenantry_testkit.receiver import Receiver
from tenantry_testkit.stack import REPO, Stack

from .conftest import SERVICES
from .test_export_parts import PASSWORD, insert_scim_users, object_store_of
from .test_identity import new_tenant
from .test_purge import (
    GROWING,
    kept_tables,
    populated_tenant,
    redis_keys_of,
    rows_by_table,
    traces_of,
)

pytestmark = pytest.mark.kafka
SCIM_CORE = "urn:ietf:params:scim:schemas:core:2.0:"
# What a purged tenant leaves in tenancy on purpose: the tombstone, the saga's record,
# the slug's quarantine, the destroyed-key marker (ids and dates, no personal data).
TENANCY_REMAINS = frozenset(
    {"tenant_tombstones", "purges", "slug_quarantine", "tenant_purges", "tenant_data_keys"}
)


async def directory_told(superuser_dbs: dict[str, asyncpg.Pool], tenant_id: UUID) -> None:
    """The purged tenant's routing facts (id, region, "purged", its quarantined slug) left
    tenancy's queue for the global directory, which keeps them (docs/residency.md)."""

    async def drained() -> bool | None:
        pending = await superuser_dbs["tenancy"].fetchval(
            "SELECT count(*) FROM directory_pending WHERE tenant_id = $1", tenant_id
        )
        return pending == 0 or None

    await eventually(drained, timeout=30, message="the purged tenant's facts pushed")


async def verified_claims(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    """The claims of a document tenancy signed, checked against its published keys."""
    keys = KeySet.import_key_set((await client.get("/.well-known/document-jwks.json")).json())
    claims: dict[str, Any] = jwt.decode(token, keys, algorithms=[ALGORITHM]).claims
    return claims


async def finished_export(
    client: httpx.AsyncClient, tenant_id: UUID, export_id: str, headers: dict[str, str]
) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        r = await client.get(f"/v1/tenants/{tenant_id}/exports/{export_id}", headers=headers)
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        return job if job["status"] in ("completed", "failed") else None

    return await eventually(done, timeout=180, message="the export finished")


async def test_an_exported_tenant_archive_verifies_and_holds_every_service_share(
    stack: Stack,
    operator_headers: dict[str, str],
    superuser_dbs: dict[str, asyncpg.Pool],
    receiver: Receiver,
) -> None:
    tenant = await populated_tenant(stack, operator_headers, superuser_dbs, receiver)
    mailbox = Mailbox(REPO / ".local" / "mail")
    async with httpx.AsyncClient(
        base_url=stack.service_url("tenancy"), timeout=30, headers=operator_headers
    ) as client:
        exports = f"/v1/tenants/{tenant.tenant_id}/exports"
        started = await client.post(exports, json={})
        assert started.status_code == 202, started.text
        export_id = started.json()["export_id"]
        job = await finished_export(client, tenant.tenant_id, export_id, operator_headers)
        assert job["status"] == "completed", job["failure"]
        assert sorted(job["parts"]) == sorted(SERVICES)
        assert datetime.fromisoformat(job["expires_at"]) - datetime.fromisoformat(
            job["completed_at"]
        ) == timedelta(days=7)
        # The requester (here the operator) is told by mail.
        ready = await mailbox.wait_for(
            stack.env["TENANTRY_OPERATOR_EMAIL"], subject_contains="export is ready", timeout=60
        )
        assert ready["X-Tenantry-Notice"] == "tenant-export-completed"
        assert export_id in ready.get_content()

        link = await client.post(f"{exports}/{export_id}/links", json={"uses": 1})
        assert link.status_code == 201, link.text
        url = link.json()["url"]
        async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=60) as anon:
            download = await anon.get(url)  # the link is the capability: no credential
            assert download.status_code == 200, download.text
            assert download.headers["content-type"] == "application/zip"
            archive = download.content
            assert len(archive) == job["bytes"]
            assert hashlib.sha256(archive).hexdigest() == job["sha256"]
            assert (await anon.get(url)).status_code == 404  # one use only
        revocable = (await client.post(f"{exports}/{export_id}/links", json={})).json()
        revoked = await client.delete(f"{exports}/{export_id}/links/{revocable['link_id']}")
        assert revoked.status_code == 204
        assert (await client.get(revocable["url"])).status_code == 404

        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            manifest = json.loads(z.read("manifest.json"))
            claims = await verified_claims(client, z.read("manifest.jws").decode().strip())
            assert claims == manifest
            assert manifest["tenant_id"] == str(tenant.tenant_id)
            assert manifest["export_id"] == export_id
            assert "README.md" in z.namelist()
            contents = {}
            for file in manifest["files"]:
                data = z.read(file["name"])
                assert hashlib.sha256(data).hexdigest() == file["sha256"], file["name"]
                assert (len(data), data.count(b"\n")) == (file["bytes"], file["records"])
                contents[file["name"]] = [json.loads(line) for line in data.splitlines()]
    assert {name.split("/")[0] for name in contents} == set(SERVICES)
    assert manifest["records"] == job["records"] == sum(len(v) for v in contents.values())

    everything = json.dumps(contents)
    assert tenant.marker in everything  # the tenant's own data is in its export
    for secret in ("$argon2", "whsec_", "key_sha256", "wrapped_key"):
        assert secret not in everything, secret
    # No password field, nor a password itself ("password" as a word is fine: the audit
    # log says a session started by password).
    assert '"password":' not in everything
    assert '\\"password\\":' not in everything
    assert PASSWORD not in everything

    scim = [r for name, rows in contents.items() if name.startswith("provisioning/") for r in rows]
    users = [r for r in scim if SCIM_CORE + "User" in r.get("schemas", [])]
    groups = [r for r in scim if SCIM_CORE + "Group" in r.get("schemas", [])]
    assert len(users) == 2
    assert len(groups) == 1
    for resource in users + groups:
        assert UUID(resource["id"])
        assert resource["meta"]["resourceType"] in ("User", "Group")
    assert {u["userName"] for u in users} == {
        f"{tenant.marker}-{n}@example.com" for n in ("bob", "carol")
    }
    accounts = await superuser_dbs["identity"].fetchval(
        "SELECT count(*) FROM accounts WHERE tenant_id = $1", tenant.tenant_id
    )
    assert len(contents["identity/accounts.ndjson"]) == accounts
    tenants = contents["tenancy/tenant.ndjson"]
    assert [t["tenant_id"] for t in tenants] == [str(tenant.tenant_id)]


async def kafka_records_holding(stack: Stack, needles: list[bytes]) -> list[str]:
    """Every record of every catalog topic, from the beginning: where any needle shows in
    its value or headers (plaintext that should have been sealed or erased)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(load_all().topics())
    finally:
        await admin.close()
    partitions = [
        TopicPartition(topic["topic"], p["partition"])
        for topic in described
        if not topic.get("error_code")
        for p in topic["partitions"]
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    found: list[str] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    blob = (record.value or b"") + b"".join(v for _, v in record.headers)
                    if any(n in blob for n in needles):
                        found.append(f"{tp.topic}@{tp.partition}:{record.offset}")
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return found


async def test_offboarding_to_purge_leaves_a_certificate_and_nothing_readable_of_the_tenant(
    stack: Stack,
    operator_headers: dict[str, str],
    superuser_dbs: dict[str, asyncpg.Pool],
    receiver: Receiver,
) -> None:
    tenant = await populated_tenant(stack, operator_headers, superuser_dbs, receiver)
    neighbour = await populated_tenant(stack, operator_headers, superuser_dbs, receiver)
    neighbours_before = {
        s: await rows_by_table(superuser_dbs[s], neighbour.tenant_id) for s in SERVICES
    }
    # The marker is in Kafka's records before the purge only inside sealed values (the
    # emails, names and user names) or in fields that are not personal (the tenant's name
    # and slug, the endpoint URL): collect where it shows now, to compare after.
    emails = [f"{tenant.marker}-{n}@example.com".encode() for n in ("alice", "bob", "carol")]
    assert await kafka_records_holding(stack, emails) == [], "personal fields travel sealed"

    async with httpx.AsyncClient(
        base_url=stack.service_url("tenancy"), timeout=30, headers=operator_headers
    ) as client:
        url = f"/v1/tenants/{tenant.tenant_id}"
        soon = datetime.now(UTC) + timedelta(seconds=3)
        offboarded = await client.post(
            f"{url}/offboarding", json={"reason": "contract ended", "purge_at": soon.isoformat()}
        )
        assert offboarded.status_code == 200, offboarded.text
        certificate_url = offboarded.json()["certificate_url"]

        async def concluded() -> dict[str, Any] | None:
            r = await client.get(f"{url}/purge")
            return r.json() if r.status_code == 200 and r.json()["completed_at"] else None

        purge = await eventually(concluded, timeout=180, message="every service purged")
        assert purge["early"] is False
        assert purge["waiting_for"] == []
        assert sorted(purge["reported"]) == sorted(SERVICES)
        assert (await client.get(url)).status_code == 404  # a tombstone, not a tenant

        async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=30) as anon:
            issued = (await anon.get(certificate_url)).json()
            page = await anon.get(certificate_url, headers={"Accept": "text/html"})
        certificate = issued["certificate"]
        assert await verified_claims(client, issued["jws"]) == certificate
        assert certificate["sub"] == str(tenant.tenant_id)
        assert sorted(certificate["services"]) == sorted(SERVICES)
        # The master key is destroyed in tenancy; a service that ever fetched a copy
        # reports it destroyed too (the scan below finds no copy left anywhere).
        assert certificate["services"]["tenancy"]["data_key_destroyed"] is True
        assert certificate["rows_deleted"] > 0
        assert certificate["services"]["provisioning"]["tables"]["scim_users"] == 2
        assert tenant.marker not in json.dumps(issued)  # no name, slug or email in it
        assert page.status_code == 200
        assert "Deletion certificate" in page.text

        reused = await client.post(
            "/v1/tenants", json={"name": "Taken", "slug": tenant.marker, "plan": "free"}
        )
        assert reused.status_code == 409  # the slug is quarantined

    await directory_told(superuser_dbs, tenant.tenant_id)
    for service in SERVICES:
        skip = TENANCY_REMAINS if service == "tenancy" else kept_tables(service)
        # Each service's projection keeps a tombstone of the tenant (its id and `purged`,
        # no name or slug), so that a request for it is refused at once.
        projection = await superuser_dbs[service].fetchrow(
            "SELECT name, slug, status FROM tenant_projection WHERE tenant_id = $1",
            tenant.tenant_id,
        )
        if projection is not None:
            assert (projection["name"], projection["slug"], projection["status"]) == (
                "",
                "",
                "purged",
            ), service
        traces = await traces_of(superuser_dbs[service], tenant, skip | {"tenant_projection"})
        assert traces == [], f"{service} still holds the tenant in {traces}"
        after = await rows_by_table(superuser_dbs[service], neighbour.tenant_id)
        before = neighbours_before[service]
        assert {t: n for t, n in after.items() if t not in GROWING} == {
            t: n for t, n in before.items() if t not in GROWING
        }, service
    assert await redis_keys_of(stack, tenant.tenant_id) == []
    # Kafka keeps its records (append-only), but the tenant's personal fields in them were
    # sealed with keys that no longer exist: nothing of them reads as plaintext.
    assert await kafka_records_holding(stack, emails) == []


def worker_pid(service: str) -> int:
    return int((REPO / ".local" / "run" / f"{service}-worker.pid").read_text().strip())


def gone(pid: int) -> bool:
    """Dead and reaped, or a zombie (a killed process stays one for a moment)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


@pytest.mark.chaos
async def test_every_worker_killed_mid_purge_and_the_saga_still_ends_with_the_right_counts(
    stack: Stack,
    operator_headers: dict[str, str],
    superuser_dbs: dict[str, asyncpg.Pool],
    receiver: Receiver,
) -> None:
    """Each service's purge is held inside its transaction (the test holds the tenant's
    purge lock in every database), then all five workers, tenancy's orchestrator among
    them, get SIGKILL. Restarted, they purge again from the start and the saga concludes
    with the counts of the rows that were there."""
    tenant = await populated_tenant(stack, operator_headers, superuser_dbs, receiver)
    before = {s: await rows_by_table(superuser_dbs[s], tenant.tenant_id) for s in SERVICES}
    lock = f"tenantry.purge:{tenant.tenant_id}"
    holders = {s: await superuser_dbs[s].acquire() for s in SERVICES}
    killed: dict[str, int] = {}
    try:
        for conn in holders.values():
            await conn.execute("SELECT pg_advisory_lock_shared(hashtextextended($1, 0))", lock)
        async with httpx.AsyncClient(
            base_url=stack.service_url("tenancy"), timeout=30, headers=operator_headers
        ) as client:
            url = f"/v1/tenants/{tenant.tenant_id}"
            assert (
                await client.post(f"{url}/offboarding", json={"reason": "x"})
            ).status_code == 200
            early = await client.post(f"{url}/purge", json={"reason": "the contract says now"})
            assert early.status_code == 202, early.text

        async def every_purge_waits() -> bool:
            for service in SERVICES:
                waiting = await superuser_dbs[service].fetchval(
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE datname = current_database() AND wait_event_type = 'Lock'
                         AND query LIKE '%pg_advisory_xact_lock(%'"""
                )
                if not waiting:
                    return False
            return True

        await eventually(every_purge_waits, timeout=90, message="five purges held on the lock")
        for service in SERVICES:
            killed[service] = worker_pid(service)
            os.kill(killed[service], signal.SIGKILL)
    finally:
        for service, conn in holders.items():
            await conn.execute("SELECT pg_advisory_unlock_all()")
            await superuser_dbs[service].release(conn)

    async def all_gone() -> bool:
        return all(gone(pid) for pid in killed.values())

    await eventually(all_gone, timeout=15, message="the five killed workers gone")
    for service in SERVICES:  # every purge rolled back: no record, the rows still there
        still = await rows_by_table(superuser_dbs[service], tenant.tenant_id)
        assert all(still.get(t, 0) >= n for t, n in before[service].items()), service
        assert (
            await superuser_dbs[service].fetchval(
                "SELECT count(*) FROM tenant_purges WHERE tenant_id = $1", tenant.tenant_id
            )
            == 0
        ), service
    started = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(REPO / "deploy" / "local" / "services.sh"), "start"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    assert all(worker_pid(s) != killed[s] for s in SERVICES)

    async with httpx.AsyncClient(
        base_url=stack.service_url("tenancy"), timeout=30, headers=operator_headers
    ) as client:

        async def concluded() -> dict[str, Any] | None:
            r = await client.get(f"/v1/tenants/{tenant.tenant_id}/purge")
            return r.json() if r.status_code == 200 and r.json()["completed_at"] else None

        purge = await eventually(concluded, timeout=180, message="the purge after the kills")
        assert purge["early"] is True
        certificate = await client.get(f"/v1/deletion-certificates/{purge['certificate_id']}")
        services = certificate.json()["certificate"]["services"]
    await directory_told(superuser_dbs, tenant.tenant_id)
    for service in SERVICES:
        purged = services[service]["tables"]
        # Every table that held rows of the tenant before is counted, with at least those
        # rows (inbox marks and usage reports may have grown since the count).
        short = {
            t: (n, purged.get(t, 0))
            for t, n in before[service].items()
            if n and t not in GROWING | TENANCY_REMAINS | {"tenants"} and purged.get(t, 0) < n
        }
        assert not short, f"{service}: rows before vs purged {short}"
        traces = await traces_of(
            superuser_dbs[service],
            tenant,
            (TENANCY_REMAINS if service == "tenancy" else kept_tables(service))
            | {"tenant_projection"},
        )
        assert traces == [], f"{service} still holds {traces}"


@pytest.mark.chaos
async def test_the_orchestrator_and_a_service_killed_mid_export_and_the_export_completes(
    stack: Stack, operator_headers: dict[str, str], superuser_dbs: dict[str, asyncpg.Pool]
) -> None:
    """SIGKILL of provisioning's worker while it streams its file, and of tenancy's worker
    (which collects the parts and assembles the archive) at the same moment: restarted,
    provisioning writes its part again, tenancy picks the job up from its row, and the
    archive holds every user once."""
    users = 40_000
    tenant_id = UUID(await new_tenant(stack, operator_headers, plan="business"))
    await insert_scim_users(superuser_dbs["provisioning"], tenant_id, users)
    parts = object_store_of(stack, "provisioning").root
    killed: dict[str, int] = {}
    try:
        async with httpx.AsyncClient(
            base_url=stack.service_url("tenancy"), timeout=30, headers=operator_headers
        ) as client:
            started = await client.post(f"/v1/tenants/{tenant_id}/exports", json={})
            assert started.status_code == 202, started.text
            export_id = started.json()["export_id"]
            folder = parts / "exports" / str(tenant_id) / export_id / "provisioning"

            async def writing() -> bool:
                return folder.is_dir() and any(p.name.startswith(".tmp-") for p in folder.iterdir())

            await eventually(
                writing, timeout=60, interval=0.01, max_interval=0.01, message="mid-file"
            )
            for service in ("provisioning", "tenancy"):
                killed[service] = worker_pid(service)
                os.kill(killed[service], signal.SIGKILL)

            async def both_gone() -> bool:
                return all(gone(pid) for pid in killed.values())

            await eventually(both_gone, timeout=15, message="the killed workers gone")
            restarted = await asyncio.to_thread(
                subprocess.run,
                ["bash", str(REPO / "deploy" / "local" / "services.sh"), "start"],
                capture_output=True,
                timeout=300,
                check=False,
            )
            assert restarted.returncode == 0, restarted.stderr
            job = await finished_export(client, tenant_id, export_id, operator_headers)
            assert job["status"] == "completed", job["failure"]
            assert job["parts"]["provisioning"]["records"] == users
            link = (
                await client.post(f"/v1/tenants/{tenant_id}/exports/{export_id}/links", json={})
            ).json()
            archive = (await client.get(link["url"])).content
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            data = z.read("provisioning/users.ndjson")
        ids = [json.loads(line)["id"] for line in data.splitlines()]
        assert len(ids) == len(set(ids)) == users
    finally:
        await superuser_dbs["provisioning"].execute(
            "DELETE FROM scim_users WHERE tenant_id = $1", tenant_id
        )
