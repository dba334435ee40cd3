"""Each service's share of a tenant export (issue 17 §1), on the running stack: a tenant
with data in identity, provisioning, webhooks and ratelimit; tenant.export_requested put in
tenancy's outbox (its real relay publishes it); one tenant.export_part from each of the four
on the real broker; then every file read back from the object store the workers write to.

What could fail: a checksum or size that is not the bytes stored, a record count that is
not the service's rows of the tenant, a line that is not JSON or not a SCIM resource, a
secret in a file, another person's rows in a per-person export."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from scim2_models import Context, Group, User
from uuid_utils.compat import uuid4

from tenantry_events.envelope import new_event
from tenantry_events.kafka_codec import from_record
from tenantry_events.payloads.tenancy import TenantExportPart, TenantExportRequested
from tenantry_events.pg import Database
from tenantry_events.storage import PostgresOutbox
from tenantry_objectstore import LocalDirectoryStore, ObjectStoreError
from tenantry_platform.settings import ServiceSettings
from tenantry_provisioning.export import PROVISIONING_EXPORTS
from tenantry_ratelimit.export import RATELIMIT_EXPORTS
from tenantry_service.export import (
    ExportScope,
    ExportSource,
    TenantExporter,
    WorkerObjectStore,
    is_transient_export_error,
)
from tenantry_testkit.fixtures import eventually, running_service_db
from tenantry_testkit.mailbox import Mailbox, links
from tenantry_testkit.oidc_provider import OidcProvider
from tenantry_testkit.receiver import Receiver
from tenantry_testkit.seaweedfs import S3Server, seaweedfs_server
from tenantry_testkit.stack import REPO, Stack

from .test_identity import bearer, create_key
from .test_scim import GROUP, USER, scim_client, scim_tenant
from .test_sso import OIDC_SECRET, oidc_connection
from .test_sso import oidc_provider as oidc_provider  # a fixture: a real OIDC provider

pytestmark = pytest.mark.kafka
EXPORTING = ("identity", "provisioning", "webhooks", "ratelimit")
PASSWORD = "correct horse battery staple"

# Each file each service writes, and how to count the tenant's rows it must hold ($1).
ROW_COUNTS: dict[str, str] = {
    "identity/accounts.ndjson": "SELECT count(*) FROM accounts WHERE tenant_id = $1",
    "identity/api_keys.ndjson": "SELECT count(*) FROM api_keys WHERE tenant_id = $1",
    "identity/sessions.ndjson": """SELECT count(*) FROM refresh_tokens r
                                   JOIN accounts a USING (account_id) WHERE a.tenant_id = $1""",
    "identity/sso_connections.ndjson": "SELECT count(*) FROM sso_connections WHERE tenant_id = $1",
    "identity/sso_domains.ndjson": "SELECT count(*) FROM sso_domains WHERE tenant_id = $1",
    "identity/sso_identities.ndjson": "SELECT count(*) FROM sso_identities WHERE tenant_id = $1",
    "identity/sso_sessions.ndjson": "SELECT count(*) FROM sso_sessions WHERE tenant_id = $1",
    "identity/sso_login_failures.ndjson": (
        "SELECT count(*) FROM sso_login_failures WHERE tenant_id = $1"
    ),
    "identity/notice_subscriptions.ndjson": (
        "SELECT count(*) FROM notice_subscriptions WHERE tenant_id = $1"
    ),
    "provisioning/users.ndjson": "SELECT count(*) FROM scim_users WHERE tenant_id = $1",
    "provisioning/groups.ndjson": "SELECT count(*) FROM scim_groups WHERE tenant_id = $1",
    "webhooks/endpoints.ndjson": "SELECT count(*) FROM endpoints WHERE tenant_id = $1",
    "webhooks/messages.ndjson": "SELECT count(*) FROM messages WHERE tenant_id = $1",
    "webhooks/deliveries.ndjson": "SELECT count(*) FROM deliveries WHERE tenant_id = $1",
    "webhooks/attempts.ndjson": "SELECT count(*) FROM attempts WHERE tenant_id = $1",
    "ratelimit/tenant_policies.ndjson": (
        "SELECT count(*) FROM tenant_rate_policies WHERE tenant_id = $1"
    ),
    "ratelimit/key_policies.ndjson": "SELECT count(*) FROM key_rate_policies WHERE tenant_id = $1",
}
# Files the populated tenant has no rows for (nobody signed in through SSO, no domain).
EMPTY_FILES = frozenset(
    {
        "identity/sso_domains.ndjson",
        "identity/sso_identities.ndjson",
        "identity/sso_sessions.ndjson",
        "identity/sso_login_failures.ndjson",
        "identity/notice_subscriptions.ndjson",
    }
)
SCHEMAS = {
    "provisioning/users.ndjson": USER,
    "provisioning/groups.ndjson": GROUP,
}


def object_store_of(stack: Stack, service: str) -> LocalDirectoryStore:
    """The local store the service's worker writes to: its object_store_dir, relative to
    the worker's working directory unless absolute."""
    folder = Path(stack.service_env(service).get("TENANTRY_OBJECT_STORE_DIR", ".local/objects"))
    if not folder.is_absolute():
        pid = int((REPO / ".local" / "run" / f"{service}-worker.pid").read_text())
        folder = Path(os.readlink(f"/proc/{pid}/cwd")) / folder
    return LocalDirectoryStore(folder)


async def request_export(
    stack: Stack,
    tenant_id: str,
    subject_account_id: str | None = None,
    *,
    export_id: UUID | None = None,
    meanwhile: Callable[[str], Awaitable[None]] | None = None,
) -> tuple[UUID, str, dict[str, TenantExportPart]]:
    """tenant.export_requested through tenancy's outbox and relay (a new event each time,
    for a new export unless `export_id` is given); the four parts it was answered with.
    `meanwhile(prefix)` runs once the request is out, before the parts are awaited."""
    export_id = export_id or UUID(str(uuid4()))
    prefix = f"exports/{tenant_id}/{export_id}/"
    consumer = AIOKafkaConsumer(
        "tenant.export_part",
        bootstrap_servers=stack.kafka_bootstrap,
        group_id=None,
    )
    await consumer.start()
    # Only parts answering this request: start at the end (`position` resolves it now,
    # before the request goes out), so an earlier answer to the same export is not read.
    assert consumer.assignment(), "no partition of tenant.export_part assigned"
    await consumer.seek_to_end()
    for partition in consumer.assignment():
        await consumer.position(partition)
    parts: dict[str, TenantExportPart] = {}
    try:
        async with (
            running_service_db(stack, "tenancy") as db,
            db.transaction(tenant_id=UUID(tenant_id)) as tx,
        ):
            request = TenantExportRequested(
                export_id=export_id,
                prefix=prefix,
                requested_by="test_export_parts",
                subject_account_id=UUID(subject_account_id) if subject_account_id else None,
            )
            event = new_event(
                request,
                tenant_id=UUID(tenant_id),
                subject=f"tenant/{tenant_id}",
                aggregate_version=0,
                source="/tenantry/tenancy",
                region=stack.env["TENANTRY_REGION"],
            )
            await PostgresOutbox(db).put(tx, [event])
        if meanwhile is not None:
            await meanwhile(prefix)

        async def all_parts() -> bool:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    envelope = from_record(list(record.headers), record.value or b"")
                    part = envelope.payload
                    if isinstance(part, TenantExportPart) and part.export_id == export_id:
                        assert part.service not in parts, f"two parts from {part.service}"
                        parts[part.service] = part
            return set(EXPORTING) <= set(parts)

        await eventually(all_parts, timeout=90, message="tenant.export_part from all four")
    finally:
        await consumer.stop()
    return export_id, prefix, parts


async def read_files(stack: Stack, part: TenantExportPart) -> dict[str, bytes]:
    """Each file of the part, read back from the store, its checksum and size checked."""
    store = object_store_of(stack, part.service)
    contents: dict[str, bytes] = {}
    for file in part.files:
        data = b"".join([chunk async for chunk in store.get(file.object_key)])
        assert hashlib.sha256(data).hexdigest() == file.sha256, file.name
        assert len(data) == file.bytes, file.name
        assert data == b"" or data.endswith(b"\n"), file.name
        assert data.count(b"\n") == file.records, file.name
        contents[file.name] = data
    return contents


def lines(data: bytes) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    assert all(isinstance(line, dict) for line in parsed)
    return parsed


async def populated_tenant(
    stack: Stack,
    operator_headers: dict[str, str],
    superuser_dbs: dict[str, asyncpg.Pool],
    receiver: Receiver,
    oidc: OidcProvider,
) -> dict[str, Any]:
    """A business tenant with rows in the four services, made through their routes; what
    the test must find (and the secrets it must not)."""
    tenant_id, scim_key = await scim_tenant(stack, operator_headers)
    secrets: list[str] = [scim_key, PASSWORD]
    async with httpx.AsyncClient(timeout=15) as client:
        hooks = f"{stack.service_url('webhooks')}/v1/tenants/{tenant_id}/webhooks/endpoints"
        endpoint = await client.post(
            hooks,
            headers=operator_headers,
            json={
                "url": f"{receiver.url}/ok",
                "event_types": ["account.*"],
                "headers": {"X-Receiver-Token": "hdr-token-never-exported"},
            },
        )
        assert endpoint.status_code == 201, endpoint.text
        secrets += [endpoint.json()["secret"], "hdr-token-never-exported"]

        # Alice: a password account with a session and a personal API key.
        identity = stack.service_url("identity")
        alice_email = f"alice-{uuid4().hex[:8]}@example.com"
        made = await client.post(
            f"{identity}/v1/tenants/{tenant_id}/accounts",
            headers=operator_headers,
            json={"email": alice_email, "password": PASSWORD, "role": "admin"},
        )
        assert made.status_code == 201, made.text
        alice = made.json()["account_id"]
        mailbox = Mailbox(REPO / ".local" / "mail")
        while True:
            mail = await mailbox.wait_for(alice_email, subject_contains="Verify", timeout=30)
            (link,) = links(mail)
            token = link.split("token=", 1)[1]
            confirmed = await client.post(
                f"{identity}/v1/email-verifications", json={"token": token}
            )
            # Mail is at least once: a worker restarted while mailing (others restart the
            # shared stack) sends another link, and the first token went with its rollback.
            if confirmed.status_code != 404:
                break
        assert confirmed.status_code == 200, confirmed.text
        secrets.append(token)
        login = {"email": alice_email, "password": PASSWORD, "tenant_id": tenant_id}
        session = (await client.post(f"{identity}/v1/sessions", json=login)).json()
        secrets += [session["access_token"], session["refresh_token"]]
        personal = await client.post(
            f"{identity}/v1/tenants/{tenant_id}/api-keys",
            headers=bearer(session["access_token"]),
            json={"name": "alice's", "scopes": ["tenant:read"], "kind": "personal"},
        )
        assert personal.status_code == 201, personal.text
        secrets.append(personal.json()["key"])
        service_key = await create_key(stack, operator_headers, tenant_id, ["tenant:read"])
        secrets.append(service_key["key"])

        # The directory: Bob and Carol in one group, Dan in none.
        people: dict[str, str] = {}
        async with scim_client(stack, scim_key) as scim:
            for name in ("bob", "carol", "dan"):
                r = await scim.post(
                    "/Users",
                    json={
                        "schemas": [USER],
                        "userName": f"{name}-{uuid4().hex[:6]}@example.com",
                        "name": {"givenName": name.title(), "familyName": "Export"},
                        "emails": [{"value": f"{name}@example.com", "primary": True}],
                        "active": True,
                    },
                )
                assert r.status_code == 201, r.text
                people[name] = r.json()["id"]
            group = await scim.post(
                "/Groups",
                json={
                    "schemas": [GROUP],
                    "displayName": "Exporters",
                    "members": [{"value": people["bob"]}, {"value": people["carol"]}],
                },
            )
            assert group.status_code == 201, group.text

        # ratelimit: the tenant's override and a policy of the service key.
        ratelimit = stack.service_url("ratelimit")
        r = await client.put(
            f"{ratelimit}/v1/tenants/{tenant_id}/rate-policies",
            headers=operator_headers,
            json={
                "policies": [{"name": "hourly", "limit": 900, "period_seconds": 3600, "burst": 90}]
            },
        )
        assert r.status_code == 200, r.text
        key_id = service_key["api_key"]["key_id"]
        r = await client.put(
            f"{ratelimit}/v1/tenants/{tenant_id}/api-keys/{key_id}/rate-policies",
            headers=operator_headers,
            json={"policies": [{"name": "script", "limit": 5, "period_seconds": 60, "burst": 5}]},
        )
        assert r.status_code == 200, r.text

    # An OIDC connection made through identity's route: its client secret is stored
    # (encrypted), and must reach no file.
    async with httpx.AsyncClient(
        base_url=stack.service_url("identity"), timeout=20, headers=operator_headers
    ) as identity_admin:
        await oidc_connection(identity_admin, tenant_id, oidc)
    secrets.append(OIDC_SECRET)

    # Accounts made by SCIM belong to identity: Bob's account is the one SCIM gave him.
    bob_account = await eventually(
        lambda: superuser_dbs["provisioning"].fetchval(
            """SELECT a.account_id FROM scim_user_accounts a JOIN scim_users u
                 ON u.tenant_id = a.tenant_id AND lower(u.user_name) = lower(a.user_name)
               WHERE u.id = $1""",
            UUID(people["bob"]),
        ),
        message="Bob's account",
    )

    # Wait until webhooks is still (every event of the tenant stored as a message, every
    # account.created delivered, nothing new for a while), so that the counts the test
    # takes after the export are the ones the export saw.
    last: list[Any] = []

    async def webhooks_still() -> bool:
        row = await superuser_dbs["webhooks"].fetchrow(
            """SELECT (SELECT count(*) FROM messages WHERE tenant_id = $1) AS messages,
                      (SELECT count(*) FROM messages WHERE tenant_id = $1
                       AND event_type = 'account.created') AS accounts,
                      (SELECT count(*) FROM deliveries WHERE tenant_id = $1
                       AND status = 'succeeded') AS delivered,
                      (SELECT count(*) FROM attempts WHERE tenant_id = $1) AS attempts""",
            UUID(tenant_id),
        )
        assert row is not None
        counts = tuple(row.values())
        # Alice, Bob, Carol, Dan: four accounts, four deliveries.
        settled = bool(row["accounts"] >= 4 and row["delivered"] == row["accounts"])
        still = bool(last) and last[-1] == counts
        last.append(counts)
        if still:
            return settled
        await asyncio.sleep(1.5)
        return False

    await eventually(webhooks_still, timeout=60, message="webhooks still")
    hashes = await superuser_dbs["identity"].fetch(
        """SELECT encode(key_sha256, 'hex') AS h FROM api_keys WHERE tenant_id = $1
           UNION ALL SELECT encode(token_sha256, 'hex') FROM refresh_tokens r
           JOIN accounts a USING (account_id) WHERE a.tenant_id = $1
           UNION ALL SELECT password_hash FROM accounts
           WHERE tenant_id = $1 AND password_hash IS NOT NULL""",
        UUID(tenant_id),
    )
    secrets += [row["h"] for row in hashes]
    return {
        "tenant_id": tenant_id,
        "alice": alice,
        "bob_account": str(bob_account),
        "people": people,
        "secrets": secrets,
    }


@pytest_asyncio.fixture
async def tenant(
    stack: Stack,
    operator_headers: dict[str, str],
    superuser_dbs: dict[str, asyncpg.Pool],
    receiver: Receiver,
    oidc_provider: OidcProvider,
) -> dict[str, Any]:
    """populated_tenant's tenant."""
    return await populated_tenant(stack, operator_headers, superuser_dbs, receiver, oidc_provider)


def assert_no_secret(contents: dict[str, bytes], secrets: list[str]) -> None:
    everything = b"".join(contents.values())
    for secret in secrets:
        assert secret.encode() not in everything, f"a secret ({secret[:6]}...) was exported"
    # The signing secret's key material, in case it were stored without its prefix.
    for secret in secrets:
        if secret.startswith("whsec_"):
            assert secret.removeprefix("whsec_").encode() not in everything


async def test_each_service_exports_its_share_of_a_tenant_streamed_counted_and_checksummed(
    stack: Stack, superuser_dbs: dict[str, asyncpg.Pool], tenant: dict[str, Any]
) -> None:
    tenant_id = tenant["tenant_id"]
    export_id, prefix, parts = await request_export(stack, tenant_id)

    contents: dict[str, bytes] = {}
    for service in EXPORTING:
        part = parts[service]
        assert part.error is None, part.error
        assert part.export_id == export_id
        expected = sorted(name for name in ROW_COUNTS if name.startswith(f"{service}/"))
        assert sorted(f.name for f in part.files) == expected
        for file in part.files:
            assert file.object_key == f"{prefix}{file.name}"
            count = await superuser_dbs[service].fetchval(ROW_COUNTS[file.name], UUID(tenant_id))
            assert file.records == count, file.name
            assert file.schema == SCHEMAS.get(file.name, file.schema)
            assert file.schema.startswith(("urn:ietf:params:scim:", f"tenantry.{service}."))
        contents |= await read_files(stack, part)

    assert {name: len(lines(data)) > 0 for name, data in contents.items()} == {
        name: name not in EMPTY_FILES for name in ROW_COUNTS
    }
    for line in lines(contents["provisioning/users.ndjson"]):
        user: User[Any] = User.model_validate(line, scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
        assert user.id
        assert user.meta
        assert user.meta.resource_type == "User"
    groups = lines(contents["provisioning/groups.ndjson"])
    for line in groups:
        group = Group.model_validate(line, scim_ctx=Context.RESOURCE_QUERY_RESPONSE)
        assert group.id
        assert group.meta
        assert group.meta.resource_type == "Group"
    people = tenant["people"]
    assert sorted(m["value"] for m in groups[0]["members"]) == sorted(
        [people["bob"], people["carol"]]
    )
    accounts = lines(contents["identity/accounts.ndjson"])
    assert tenant["alice"] in {a["id"] for a in accounts}
    assert all("password_hash" not in a for a in accounts)
    assert all("key_sha256" not in k for k in lines(contents["identity/api_keys.ndjson"]))
    (connection,) = lines(contents["identity/sso_connections.ndjson"])
    assert connection["kind"] == "oidc"
    assert connection["config"]["client_id"] == "tenantry"
    (endpoint,) = lines(contents["webhooks/endpoints.ndjson"])
    assert endpoint["header_names"] == ["X-Receiver-Token"]
    assert "secret" not in endpoint
    assert "headers" not in endpoint
    messages = lines(contents["webhooks/messages.ndjson"])
    created = [m for m in messages if m["event_type"] == "account.created"]
    assert len(created) >= 4
    assert all(m["payload"]["data"]["tenant_id"] == tenant_id for m in created)
    assert_no_secret(contents, tenant["secrets"])

    # Asked again (a redelivery, or tenancy re-requesting a missing part): the same keys
    # are written over, nothing else appears under the prefix, and each checksum is that
    # of the bytes now stored.
    _, _, again = await request_export(stack, tenant_id, export_id=export_id)
    for service in EXPORTING:
        assert [f.object_key for f in again[service].files] == [
            f.object_key for f in parts[service].files
        ]
        await read_files(stack, again[service])
        listed = await object_store_of(stack, service).list(f"{prefix}{service}/")
        assert sorted(item.key for item in listed) == sorted(
            f.object_key for f in parts[service].files
        )


async def test_a_per_person_export_holds_that_persons_rows_only(
    stack: Stack, tenant: dict[str, Any]
) -> None:
    tenant_id, alice = tenant["tenant_id"], tenant["alice"]

    # Alice: her account, her personal key, her session; no SCIM user, nothing elsewhere.
    _, _, parts = await request_export(stack, tenant_id, alice)
    assert parts["webhooks"].files == []
    assert parts["webhooks"].error is None
    assert parts["ratelimit"].files == []
    assert parts["ratelimit"].error is None
    identity = await read_files(stack, parts["identity"])
    assert sorted(identity) == [
        "identity/accounts.ndjson",
        "identity/api_keys.ndjson",
        "identity/notice_subscriptions.ndjson",
        "identity/sessions.ndjson",
        "identity/sso_identities.ndjson",
        "identity/sso_sessions.ndjson",
    ]
    assert [a["id"] for a in lines(identity["identity/accounts.ndjson"])] == [alice]
    keys = lines(identity["identity/api_keys.ndjson"])
    assert [(k["owner_account_id"], k["kind"]) for k in keys] == [(alice, "personal")]
    sessions = lines(identity["identity/sessions.ndjson"])
    assert sessions
    assert {s["account_id"] for s in sessions} == {alice}
    provisioning = await read_files(stack, parts["provisioning"])
    assert provisioning == {"provisioning/users.ndjson": b"", "provisioning/groups.ndjson": b""}
    assert_no_secret(identity, tenant["secrets"])

    # Bob: his account, his SCIM user, and his group listing him alone.
    bob, people = tenant["bob_account"], tenant["people"]
    _, _, parts = await request_export(stack, tenant_id, bob)
    identity = await read_files(stack, parts["identity"])
    assert [a["id"] for a in lines(identity["identity/accounts.ndjson"])] == [bob]
    assert lines(identity["identity/api_keys.ndjson"]) == []
    provisioning = await read_files(stack, parts["provisioning"])
    (user,) = lines(provisioning["provisioning/users.ndjson"])
    assert user["id"] == people["bob"]
    assert [g["display"] for g in user["groups"]] == ["Exporters"]
    (group,) = lines(provisioning["provisioning/groups.ndjson"])
    assert [m["value"] for m in group["members"]] == [people["bob"]]
    everything = b"".join([*identity.values(), *provisioning.values()])
    for other in (people["carol"], people["dan"], alice):
        assert other.encode() not in everything


@contextlib.asynccontextmanager
async def exporter_on(
    stack: Stack, service: str, sources: Sequence[ExportSource], **settings: Any
) -> AsyncIterator[TenantExporter]:
    """The service's exporter as its worker builds it, in this process, on the service's
    real database (its app role, as the worker), with the given settings changed."""
    env = stack.service_env(service)
    config = ServiceSettings(
        database_url=env["TENANTRY_DATABASE_URL"],
        kafka_bootstrap=stack.kafka_bootstrap,
        service_urls=env["TENANTRY_SERVICE_URLS"],
        **settings,
    )
    db = Database(config.database_url, max_size=2)
    await db.connect()
    store = WorkerObjectStore(config)
    try:
        yield TenantExporter(
            service=service,
            sources=sources,
            db=db,
            store=store,
            settings=config,
            outbox=PostgresOutbox(db),
            source=f"/tenantry/{service}",
        )
    finally:
        await store.aclose()
        await db.close()


def whole_tenant(tenant_id: UUID) -> ExportScope:
    return ExportScope(
        tenant_id=tenant_id,
        subject_account_id=None,
        settings=ServiceSettings(database_url="", kafka_bootstrap=""),
    )


async def insert_scim_users(directory: asyncpg.Pool, tenant_id: UUID, count: int) -> None:
    """`count` users with the attributes a directory usually sends, in one statement."""
    await directory.execute(
        """INSERT INTO scim_users (id, tenant_id, user_name, display_name, name_given,
                                   name_family, title, emails, phone_numbers, addresses,
                                   active)
           SELECT gen_random_uuid(), $1, 'user-' || i || '@example.com', 'User ' || i,
                  'Given ' || i, 'Family ' || i, 'Engineer, team ' || (i % 97),
                  jsonb_build_array(jsonb_build_object(
                      'value', 'user-' || i || '@example.com', 'type', 'work',
                      'primary', true)),
                  jsonb_build_array(
                      jsonb_build_object('value', '+1 555 01' || lpad(i::text, 5, '0'),
                                         'type', 'work', 'primary', true),
                      jsonb_build_object('value', '+1 555 02' || lpad(i::text, 5, '0'),
                                         'type', 'mobile')),
                  jsonb_build_array(jsonb_build_object(
                      'streetAddress', i || ' Long Street Name, Building ' || (i % 13),
                      'formatted', i || ' Long Street Name, Springfield, IL ' || i,
                      'region', 'Illinois', 'locality', 'Springfield',
                      'postalCode', lpad(i::text, 5, '0'), 'country', 'US', 'type', 'work')),
                  true
           FROM generate_series(1, $2) AS i""",
        tenant_id,
        count,
    )


async def peak_growth(exporter: TenantExporter, prefix: str, tenant_id: UUID) -> int:
    """The most memory the export of the tenant held above what was held before it
    (tracemalloc sees every Python and C-extension allocation of the process)."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        await exporter.write(prefix, whole_tenant(tenant_id))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


async def test_twenty_thousand_scim_users_export_in_memory_far_below_their_size(
    stack: Stack, superuser_dbs: dict[str, asyncpg.Pool], tmp_path: Path
) -> None:
    """The export streams (the worker runs this very code): the memory it holds does not
    grow with the tenant (5,000 users or 20,000: about the same), and is a small fraction
    of the file."""
    small, big = UUID(str(uuid4())), UUID(str(uuid4()))
    directory = superuser_dbs["provisioning"]
    await insert_scim_users(directory, small, 5_000)
    await insert_scim_users(directory, big, 20_000)
    try:
        async with exporter_on(
            stack, "provisioning", PROVISIONING_EXPORTS, object_store_dir=str(tmp_path)
        ) as exporter:
            # A first export of an empty tenant warms every lazy import and cache up.
            await exporter.write("warm-up/", whole_tenant(UUID(str(uuid4()))))
            held_small = await peak_growth(exporter, "small/", small)
            held_big = await peak_growth(exporter, "big/", big)
    finally:
        await directory.execute(
            "DELETE FROM scim_users WHERE tenant_id = ANY($1::uuid[])", [small, big]
        )

    data = (tmp_path / "big" / "provisioning" / "users.ndjson").read_bytes()
    assert data.count(b"\n") == 20_000
    assert len(data) > 15_000_000
    # What is held at once: a cursor fetch of rows, a chunk on its way, the store's write
    # buffer; whatever the tenant's size.
    assert held_big < len(data) / 5, f"{held_big:,} bytes held for a {len(data):,} file"
    assert held_big < held_small * 1.5, f"{held_small:,} for 5,000 users, {held_big:,} for 20,000"


class Rollback(Exception):
    """Ends a test's transaction without committing what the handler wrote."""


async def test_a_source_that_fails_ends_the_part_with_a_reason_naming_its_file(
    stack: Stack, tmp_path: Path
) -> None:
    """A bug (here, a column that does not exist) is not retried forever: the part says
    which file failed and why (the exception's type, no data), and has no files."""
    broken = ExportSource(
        file="broken.ndjson",
        schema="tenantry.test.broken/v1",
        query="SELECT no_such_column FROM scim_users WHERE tenant_id = $1",
    )
    tenant_id, export_id = UUID(str(uuid4())), UUID(str(uuid4()))
    request = new_event(
        TenantExportRequested(export_id=export_id, prefix="failing/", requested_by="test"),
        tenant_id=tenant_id,
        subject=f"tenant/{tenant_id}",
        aggregate_version=0,
        source="/tenantry/tenancy",
        region=stack.env["TENANTRY_REGION"],
    )
    async with exporter_on(
        stack, "provisioning", [*PROVISIONING_EXPORTS, broken], object_store_dir=str(tmp_path)
    ) as exporter:
        answered: list[TenantExportPart] = []
        with pytest.raises(Rollback):
            async with exporter._db.transaction(tenant_id=tenant_id) as tx:
                await exporter.handle(tx, request)
                for row in await tx.fetch(
                    "SELECT headers, value FROM outbox WHERE topic = 'tenant.export_part'"
                ):
                    headers = [(k, v.encode()) for k, v in row["headers"]]
                    part = from_record(headers, row["value"]).payload
                    if part.export_id == export_id:
                        answered.append(part)
                raise Rollback
    assert answered == [
        TenantExportPart(
            export_id=export_id,
            service="provisioning",
            files=[],
            error="provisioning/broken.ndjson could not be written (UndefinedColumnError)",
        )
    ]


async def test_an_unreachable_object_store_is_retried_not_reported(
    stack: Stack, unused_tcp_port: int
) -> None:
    """S3 not answering is an outage: raised (the consumer redelivers the request later),
    never a failed part."""
    async with exporter_on(
        stack,
        "ratelimit",
        RATELIMIT_EXPORTS,
        object_store="s3",
        s3_endpoint=f"http://127.0.0.1:{unused_tcp_port}",
        s3_bucket="exports",
        s3_access_key="test",
        s3_secret_key="test-secret",
    ) as exporter:
        with pytest.raises(ObjectStoreError, match="cannot reach") as raised:
            await exporter.write("nowhere/", whole_tenant(UUID(str(uuid4()))))
    assert is_transient_export_error(raised.value)


@pytest.mark.chaos
async def test_a_worker_killed_mid_export_writes_its_part_again_when_restarted(
    stack: Stack, superuser_dbs: dict[str, asyncpg.Pool]
) -> None:
    """kill -9 of provisioning's worker while it streams a file: nothing was committed
    (no inbox mark, no part), so the request comes back to the restarted worker, which
    writes the file whole and answers once."""
    tenant_id, users = UUID(str(uuid4())), 60_000
    directory = superuser_dbs["provisioning"]
    await insert_scim_users(directory, tenant_id, users)
    store = object_store_of(stack, "provisioning")
    killed: list[int] = []

    async def kill_mid_file(prefix: str) -> None:
        folder = store.root / prefix / "provisioning"

        async def writing() -> bool:
            return folder.is_dir() and any(p.name.startswith(".tmp-") for p in folder.iterdir())

        await eventually(writing, timeout=60, interval=0.01, max_interval=0.01, message="writing")
        pid = int((REPO / ".local" / "run" / "provisioning-worker.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        restart = await asyncio.create_subprocess_exec(
            "bash",
            str(REPO / "deploy" / "local" / "services.sh"),
            "start",
            "provisioning",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert await asyncio.wait_for(restart.wait(), timeout=120) == 0

    try:
        _, _, parts = await request_export(stack, str(tenant_id), meanwhile=kill_mid_file)
    finally:
        await directory.execute("DELETE FROM scim_users WHERE tenant_id = $1", tenant_id)
    assert killed
    part = parts["provisioning"]
    assert part.error is None
    contents = await read_files(stack, part)
    assert len(lines(contents["provisioning/users.ndjson"])) == users


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    with seaweedfs_server() as server:
        yield server


async def test_a_share_streams_to_s3_in_parts_and_reads_back_whole(
    stack: Stack, superuser_dbs: dict[str, asyncpg.Pool], s3_server: S3Server
) -> None:
    """The production store (an S3 API: SeaweedFS here): 20,000 users go up as a multipart
    upload of 5 MiB parts, and what is read back is what the part reports."""
    tenant_id, users = UUID(str(uuid4())), 20_000
    directory = superuser_dbs["provisioning"]
    await insert_scim_users(directory, tenant_id, users)
    s3 = {
        "object_store": "s3",
        "s3_endpoint": s3_server.endpoint,
        "s3_region": s3_server.region,
        "s3_access_key": s3_server.access_key,
        "s3_secret_key": s3_server.secret_key,
        "s3_bucket": "exports",
        "s3_create_bucket": True,
        "s3_part_size_bytes": 5 * 1024 * 1024,
    }
    try:
        async with exporter_on(stack, "provisioning", PROVISIONING_EXPORTS, **s3) as exporter:
            files = await exporter.write("s3/", whole_tenant(tenant_id))
            store = await exporter._store.get()
            exported = {f.name: f for f in files}["provisioning/users.ndjson"]
            data = b"".join([chunk async for chunk in store.get(exported.object_key)])
    finally:
        await directory.execute("DELETE FROM scim_users WHERE tenant_id = $1", tenant_id)
    assert exported.bytes > 3 * 5 * 1024 * 1024  # several parts
    assert len(data) == exported.bytes
    assert hashlib.sha256(data).hexdigest() == exported.sha256
    assert data.count(b"\n") == exported.records == users
