"""Erasing one person inside a live tenant (issue 17 §3, GDPR Art. 17), on the running stack.

A tenant with four people: Alice (an admin made in identity: password, verified email, a
session, a personal API key) and Carol (a SCIM user, in a group) are erased; Dave
(identity) and Bob (SCIM, in the same group) are not. Every event about them was
delivered by webhook. The erasures go through tenancy's route; then:
- each completes with a report from all five services;
- no column of any table of any service's database holds Alice's or Carol's marker in
  plaintext (text, JSON or bytes), while Dave's and Bob's rows, the group and the tenant
  are all there;
- Alice's personal API key is refused by all five services (the tenant's key is not);
- their events, read back from identity's event store and from Kafka and opened with a
  service's keys, show "[erased]" for the personal fields, while Dave's still open;
- the request, redelivered, gets the same report from each service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast
from uuid import UUID

import asyncpg
import httpx
import msgspec
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from uuid_utils.compat import uuid4

from tenantry_events.envelope import Envelope, decode_envelope, new_event
from tenantry_events.kafka_codec import from_record
from tenantry_events.payloads.tenancy import SubjectErasedBy, SubjectErasureRequested
from tenantry_events.sealing import ERASED, unseal
from tenantry_service.data_keys import ServiceDataKeys
from tenantry_testkit.fixtures import eventually
from tenantry_testkit.mailbox import Mailbox, links
from tenantry_testkit.receiver import Receiver
from tenantry_testkit.stack import REPO, Stack

from .conftest import SERVICES
from .test_data_keys import service_keys
from .test_identity import bearer, create_key, whoami_everywhere
from .test_purge import PopulatedTenant, new_tenant, publish, traces_of
from .test_scim import GROUP, USER, scim_client

pytestmark = pytest.mark.kafka
PASSWORD = "correct horse battery staple"


def marked(marker: str) -> PopulatedTenant:
    """What traces_of looks for: the marker (and an id nobody has: the tenant stays)."""
    return PopulatedTenant(uuid4(), marker, "")


async def identity_account(
    client: httpx.AsyncClient,
    stack: Stack,
    operator_headers: dict[str, str],
    tenant_id: UUID,
    email: str,
    role: str,
) -> UUID:
    made = await client.post(
        f"{stack.service_url('identity')}/v1/tenants/{tenant_id}/accounts",
        headers=operator_headers,
        json={"email": email, "password": PASSWORD, "role": role},
    )
    assert made.status_code == 201, made.text
    return UUID(made.json()["account_id"])


async def sign_in(client: httpx.AsyncClient, stack: Stack, tenant_id: UUID, email: str) -> str:
    login = {"email": email, "password": PASSWORD, "tenant_id": str(tenant_id)}
    r = await client.post(f"{stack.service_url('identity')}/v1/sessions", json=login)
    assert r.status_code in (200, 201), r.text
    token: str = r.json()["access_token"]
    return token


async def verify_email(
    client: httpx.AsyncClient, stack: Stack, mailbox: Mailbox, email: str
) -> None:
    message = await mailbox.wait_for(email, subject_contains="Verify", timeout=60)
    token = links(message)[0].split("token=", 1)[1]
    r = await client.post(
        f"{stack.service_url('identity')}/v1/email-verifications",
        json={"token": token},
    )
    assert r.status_code in (200, 204), r.text


async def scim_user(scim: httpx.AsyncClient, user_name: str, family: str) -> UUID:
    r = await scim.post(
        "/Users",
        json={
            "schemas": [USER],
            "userName": user_name,
            "name": {"givenName": user_name.split("@")[0], "familyName": family},
            "emails": [{"value": user_name, "primary": True}],
            "active": True,
        },
    )
    assert r.status_code == 201, r.text
    return UUID(r.json()["id"])


async def erase(
    tenancy: httpx.AsyncClient, headers: dict[str, str], tenant_id: UUID, account_id: UUID
) -> dict[str, Any]:
    """Ask tenancy to erase the account, then follow the erasure until it completes."""
    r = await tenancy.post(
        f"/v1/tenants/{tenant_id}/erasures",
        headers=headers,
        json={"account_id": str(account_id), "reason": "the person asked (Art. 17)"},
    )
    assert r.status_code == 202, r.text
    assert r.json()["subject_id"] == str(account_id)
    url = f"/v1/tenants/{tenant_id}/erasures/{r.json()['erasure_id']}"
    last: dict[str, Any] = {}

    async def completed() -> bool:
        try:
            got = await tenancy.get(url, headers=headers)
        except httpx.TransportError:  # tenancy restarted by someone (a shared stack)
            return False
        assert got.status_code == 200, got.text
        last.update(got.json())
        return bool(last["status"] == "completed")

    await eventually(completed, timeout=90, message=f"the erasure completes: {last}")
    return last


async def events_of_stream(pool: asyncpg.Pool, stream_id: str) -> list[Envelope[Any]]:
    rows = await pool.fetch(
        "SELECT envelope::text AS e FROM events WHERE stream_id = $1 ORDER BY version", stream_id
    )
    return [decode_envelope(r["e"].encode()) for r in rows]


async def opened(
    keys: ServiceDataKeys, pool: asyncpg.Pool, events: list[Envelope[Any]]
) -> list[Envelope[Any]]:
    async with pool.acquire() as conn, conn.transaction():
        tx = cast(asyncpg.Connection, conn)  # a pooled connection is one
        return [await unseal(e, keys, tx) for e in events]


async def kafka_events(stack: Stack, topic: str, tenant_id: UUID) -> list[Envelope[Any]]:
    """Every record of `topic` of the tenant, from the beginning, as envelopes (sealed)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=stack.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    found: list[Envelope[Any]] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000, max_records=5000)
            for tp, records in batch.items():
                for record in records:
                    if record.key == str(tenant_id).encode():
                        found.append(from_record(record.headers, record.value or b""))
                    if record.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return found


@pytest.fixture
async def identity_keys(stack: Stack) -> AsyncIterator[ServiceDataKeys]:
    keys = service_keys(stack, "identity")
    yield keys
    await keys.aclose()


async def test_an_erased_person_is_gone_everywhere_and_the_others_are_not(
    stack: Stack,
    operator_headers: dict[str, str],
    superuser_dbs: dict[str, asyncpg.Pool],
    receiver: Receiver,
    identity_keys: ServiceDataKeys,
) -> None:
    erased, kept = f"erase-{uuid4().hex[:12]}", f"keep-{uuid4().hex[:12]}"
    tenant_id = await new_tenant(stack, operator_headers, kept)

    async def identity_knows_the_tenant() -> bool:
        # identity enforces plan limits from its projection: keys wait for it.
        return bool(
            await superuser_dbs["identity"].fetchval(
                "SELECT true FROM tenant_limits WHERE tenant_id = $1", tenant_id
            )
        )

    await eventually(identity_knows_the_tenant, timeout=60, message="identity knows the tenant")
    key = (
        await create_key(
            stack, operator_headers, str(tenant_id), ["scim:write", "tenant:read", "tenant:write"]
        )
    )["key"]
    alice, dave = f"{erased}-alice@example.com", f"{kept}-dave@example.com"
    mailbox = Mailbox(REPO / ".local" / "mail")  # before the mail is sent
    async with httpx.AsyncClient(timeout=15) as client:
        hooks = f"{stack.service_url('webhooks')}/v1/tenants/{tenant_id}/webhooks/endpoints"
        endpoint = await client.post(
            hooks,
            headers=operator_headers,
            json={"url": f"{receiver.url}/ok", "event_types": ["account.*", "user.*"]},
        )
        assert endpoint.status_code == 201, endpoint.text

        alice_id = await identity_account(
            client, stack, operator_headers, tenant_id, alice, "admin"
        )
        dave_id = await identity_account(client, stack, operator_headers, tenant_id, dave, "member")
        await verify_email(client, stack, mailbox, alice)
        alice_token = await sign_in(client, stack, tenant_id, alice)
        await sign_in(client, stack, tenant_id, dave)
        personal = await client.post(
            f"{stack.service_url('identity')}/v1/tenants/{tenant_id}/api-keys",
            headers=bearer(alice_token),
            json={"name": "laptop", "scopes": ["tenant:read"], "kind": "personal"},
        )
        assert personal.status_code == 201, personal.text
        alice_key = personal.json()["key"]

        async with scim_client(stack, key) as scim:
            carol_id = await scim_user(scim, f"{erased}-carol@example.com", erased)
            bob_id = await scim_user(scim, f"{kept}-bob@example.com", kept)
            group = await scim.post(
                "/Groups",
                json={
                    "schemas": [GROUP],
                    "displayName": f"team {kept}",
                    "members": [{"value": str(carol_id)}, {"value": str(bob_id)}],
                },
            )
            assert group.status_code == 201, group.text
            group_id = group.json()["id"]

    async def accepted_everywhere() -> bool:
        return set((await whoami_everywhere(stack, bearer(alice_key))).values()) == {200}

    await eventually(accepted_everywhere, timeout=60, message="Alice's key works everywhere")

    async def delivered_about_everyone() -> bool:
        bodies = await superuser_dbs["webhooks"].fetch(
            "SELECT body FROM messages WHERE tenant_id = $1 AND body IS NOT NULL", tenant_id
        )
        text = b"".join(bytes(r["body"]) for r in bodies)
        return all(str(p).encode() in text for p in (alice_id, dave_id, carol_id, bob_id))

    await eventually(delivered_about_everyone, timeout=60, message="webhooks stored the events")
    # Before: the markers are there to be found (the scan can fail).
    assert await traces_of(superuser_dbs["identity"], marked(erased), frozenset())
    assert await traces_of(superuser_dbs["provisioning"], marked(erased), frozenset())
    assert await traces_of(superuser_dbs["webhooks"], marked(erased), frozenset())

    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=30) as tenancy:
        # The tenant's admin key (tenant:write) erases Alice; an operator erases Carol.
        alice_job = await erase(tenancy, bearer(key), tenant_id, alice_id)
        carol_job = await erase(tenancy, operator_headers, tenant_id, carol_id)
        unknown = await tenancy.post(
            f"/v1/tenants/{tenant_id}/erasures",
            headers=operator_headers,
            json={"account_id": str(uuid4()), "reason": "nobody"},
        )
        assert unknown.status_code == 404, unknown.text
        again = await tenancy.post(
            f"/v1/tenants/{tenant_id}/erasures",
            headers=operator_headers,
            json={"account_id": str(alice_id), "reason": "twice"},
        )
        assert again.status_code == 202
        assert again.json()["erasure_id"] == alice_job["erasure_id"], "one erasure per person"
    for job in (alice_job, carol_job):
        assert job["reported"] == sorted(SERVICES), job
        assert job["waiting_for"] == [], job
    alice_reports = alice_job["reports"]
    identity_counts = {t["table"]: t["rows"] for t in alice_reports["identity"]["tables"]}
    assert identity_counts["accounts"] == 1
    assert identity_counts["api_keys"] == 1, "her personal key revoked"
    assert identity_counts["refresh_tokens"] >= 1
    assert identity_counts["email_verifications"] >= 1
    carol_counts = {t["table"]: t["rows"] for t in carol_job["reports"]["provisioning"]["tables"]}
    assert carol_counts["scim_users"] == 1
    assert carol_counts["scim_group_members"] == 1
    webhook_counts = {t["table"]: t["rows"] for t in alice_reports["webhooks"]["tables"]}
    assert webhook_counts["messages"] >= 2, "account.created and user.email_verified at least"

    # Nothing of Alice or Carol in plaintext, in any table of any service.
    for service in SERVICES:
        traces = await traces_of(superuser_dbs[service], marked(erased), frozenset())
        assert traces == [], (service, traces)
    # Dave, Bob, their group and the tenant are all there.
    assert await traces_of(superuser_dbs["identity"], marked(kept), frozenset())
    assert (
        await superuser_dbs["identity"].fetchval(
            "SELECT email FROM accounts WHERE account_id = $1", dave_id
        )
        == dave
    )
    assert (
        await superuser_dbs["provisioning"].fetchval(
            "SELECT user_name FROM scim_users WHERE id = $1", bob_id
        )
        == f"{kept}-bob@example.com"
    )
    members = await superuser_dbs["provisioning"].fetch(
        "SELECT member_id FROM scim_group_members WHERE group_id = $1", UUID(group_id)
    )
    assert [r["member_id"] for r in members] == [bob_id]
    assert (
        await superuser_dbs["tenancy"].fetchval(
            "SELECT status FROM tenants WHERE tenant_id = $1", tenant_id
        )
        == "active"
    )

    # Alice's personal key is refused by every service; the tenant's key still works.
    async def refused_everywhere() -> bool:
        return set((await whoami_everywhere(stack, bearer(alice_key))).values()) == {401}

    await eventually(refused_everywhere, timeout=60, message="Alice's key refused everywhere")
    assert set((await whoami_everywhere(stack, bearer(key))).values()) == {200}

    # Old events: Alice's read as erased, Dave's still open (identity's event store).
    alice_events = await opened(
        identity_keys,
        superuser_dbs["identity"],
        await events_of_stream(superuser_dbs["identity"], f"account-{alice_id}"),
    )
    created = [e for e in alice_events if e.type == "account.created"]
    assert [e.payload.email for e in created] == [ERASED]
    dave_events = await opened(
        identity_keys,
        superuser_dbs["identity"],
        await events_of_stream(superuser_dbs["identity"], f"account-{dave_id}"),
    )
    assert [e.payload.email for e in dave_events if e.type == "account.created"] == [dave]
    # ... and on Kafka, opened with identity's keys as any consumer would.
    on_kafka = await kafka_events(stack, "account.created", tenant_id)
    emails = {
        e.payload.account_id: e.payload.email
        for e in await opened(identity_keys, superuser_dbs["identity"], on_kafka)
    }
    assert emails[alice_id] == ERASED
    assert emails[carol_id] == ERASED
    assert emails[dave_id] == dave
    assert emails[bob_id] == f"{kept}-bob@example.com"

    # Redelivered, the request gets the same report from every service.
    request = new_event(
        SubjectErasureRequested(
            erasure_id=UUID(alice_job["erasure_id"]), subject_id=alice_id, by="test"
        ),
        tenant_id=tenant_id,
        subject=f"subject/{alice_id}",
        aggregate_version=0,
        source="/tenantry/tenancy",
        region="local",
    )
    await publish(stack, request)

    async def answered_again() -> list[SubjectErasedBy]:
        reports = await kafka_events(stack, "subject.erased_by", tenant_id)
        mine = [r.payload for r in reports if r.payload.subject_id == alice_id]
        return mine if len(mine) >= 2 * len(SERVICES) else []

    repeated = await eventually(answered_again, timeout=60, message="every service answers again")
    for report in repeated:
        first = alice_reports[report.service]
        assert [msgspec.to_builtins(t) for t in report.tables] == first["tables"], report.service
