"""The crypto-shredding keys across the running suite (docs/data-keys.md): tenancy's
internal key API answers the deployment's services only; each service keeps a wrapped
copy in its own database and reads it after a restart without asking tenancy; a
destroyed key is 410 at tenancy and gone from a service once it forgets it; a tenancy
outage is "unavailable", never "erased"."""

from __future__ import annotations

import base64
import socket
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import httpx
import pytest
import pytest_asyncio
from uuid_utils.compat import uuid4

from tenantry_credentials.crypto import SecretBox
from tenantry_events.pg import Database
from tenantry_events.sealing import KeysUnavailable
from tenantry_service.data_keys import (
    INTERNAL_AUTH_SCHEME,
    ServiceDataKeys,
    TenancyKeyClient,
    key_api_path,
    transport_box,
    transport_context,
)
from tenantry_tenancy.data_keys import DataKeyStore
from tenantry_testkit.fixtures import running_service_db
from tenantry_testkit.stack import REPO, Stack

from .conftest import PROJECTING
from .test_identity import bearer, create_key, new_tenant

PASSWORD = "correct horse battery staple"
TENANCY_LOG = REPO / ".local" / "log" / "tenancy-api.log"


def internal(stack: Stack, secret: str | None = None) -> dict[str, str]:
    value = stack.env["TENANTRY_INTERNAL_API_SECRET"] if secret is None else secret
    return {"Authorization": f"{INTERNAL_AUTH_SCHEME} {value}"}


def master_key(stack: Stack, service: str) -> SecretBox:
    return SecretBox.from_base64(stack.service_env(service)["TENANTRY_MASTER_KEY"])


def service_keys(stack: Stack, service: str, *, tenancy_url: str | None = None) -> ServiceDataKeys:
    """A service's keys as a fresh process holds them (nothing cached)."""
    client = TenancyKeyClient(
        tenancy_url or stack.service_url("tenancy"),
        stack.env["TENANTRY_INTERNAL_API_SECRET"],
        caller=service,
    )
    return ServiceDataKeys(service, master_key(stack, service), client)


def closed_port() -> int:
    """A loopback port nothing listens on (tenancy down, as a service sees it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def served_count(tenant_id: UUID) -> int:
    """How many keys of the tenant tenancy's api has served (its log says each one)."""
    needle = f"data key served: tenant {tenant_id}"
    return sum(needle in line for line in TENANCY_LOG.read_text().splitlines())


@pytest_asyncio.fixture
async def service_databases(stack: Stack) -> AsyncIterator[dict[str, Database]]:
    """Each projecting service's database as its app role (what the service sees)."""
    opened: dict[str, Database] = {}
    contexts = [running_service_db(stack, s) for s in PROJECTING]
    try:
        for service, context in zip(PROJECTING, contexts, strict=True):
            opened[service] = await context.__aenter__()
        yield opened
    finally:
        for context in contexts[: len(opened)]:
            await context.__aexit__(None, None, None)


@pytest_asyncio.fixture
async def tenancy_keys(stack: Stack) -> AsyncIterator[DataKeyStore]:
    """Tenancy's key store on the running tenancy's database (destroying is tenancy's
    own purge step, not something the key API offers)."""
    async with running_service_db(stack, "tenancy") as db:
        yield DataKeyStore(db, master_key(stack, "tenancy"))


async def copies(db: Database, tenant_id: UUID) -> list[asyncpg.Record]:
    async with db.transaction() as tx:
        rows: list[asyncpg.Record] = await tx.fetch(
            "SELECT subject_id, wrapped_key FROM data_key_copies WHERE tenant_id = $1",
            tenant_id,
        )
    return rows


async def test_the_key_api_answers_the_deployments_services_only(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    api_key = (await create_key(stack, operator_headers, tenant_id, ["tenant:read"]))["key"]
    identity = stack.service_url("identity")
    email = f"k-{uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        created = await client.post(
            f"{identity}/v1/tenants/{tenant_id}/accounts",
            headers=operator_headers,
            json={"email": email, "password": PASSWORD, "role": "admin"},
        )
        assert created.status_code == 201, created.text
        login = {"email": email, "password": PASSWORD, "tenant_id": tenant_id}
        session = await client.post(f"{identity}/v1/sessions", json=login)
        assert session.status_code == 201, session.text
        path = key_api_path(UUID(tenant_id))
        secret = stack.env["TENANTRY_INTERNAL_API_SECRET"]
        refused = {
            "no credential": {},
            "a wrong secret": internal(stack, secret + "x"),
            "the secret as a bearer token": bearer(secret),
            "the operator's token": operator_headers,
            "the tenant admin's token": bearer(session.json()["access_token"]),
            "the tenant's API key": bearer(api_key),
        }
        for what, headers in refused.items():
            for method in ("GET", "PUT"):
                answer = await client.request(method, path, headers=headers)
                assert answer.status_code == 401, f"{method} with {what}: {answer.status_code}"
                assert answer.json()["type"].endswith("/unauthenticated")
                assert "key" not in answer.json()
        unknown = key_api_path(UUID(str(uuid4())))
        assert (await client.get(unknown, headers=internal(stack))).status_code == 404
        # (the tenant's own key exists by now: identity sealed its admin's address with it)

        made = await client.put(path, headers=internal(stack))
        assert made.status_code == 200, made.text
        assert made.headers["cache-control"] == "no-store"
        again = await client.get(path, headers=internal(stack))
        key = transport_box(secret).decrypt(
            base64.b64decode(made.json()["key"]), transport_context(UUID(tenant_id), None)
        )
        assert len(key) == 32
        # Wrapped anew for each answer, the same key inside; never the key in clear.
        assert again.json()["key"] != made.json()["key"]
        assert (
            transport_box(secret).decrypt(
                base64.b64decode(again.json()["key"]), transport_context(UUID(tenant_id), None)
            )
            == key
        )
        for text in (made.content, again.content, TENANCY_LOG.read_bytes()):
            assert base64.b64encode(key) not in text
            assert key.hex().encode() not in text
        schema = await client.get("/schema/openapi.json")
        assert schema.status_code == 200
        assert not [p for p in schema.json()["paths"] if p.startswith("/internal")]


async def test_each_service_keeps_a_wrapped_copy_and_reads_it_without_tenancy(
    stack: Stack, service_databases: dict[str, Database]
) -> None:
    tenant_id, person = UUID(str(uuid4())), UUID(str(uuid4()))
    sealing: dict[str, tuple[bytes | None, bytes | None]] = {}
    for service, db in service_databases.items():
        keys = service_keys(stack, service)
        try:
            async with db.transaction() as tx:
                sealing[service] = (
                    await keys.for_sealing(tx, tenant_id),
                    await keys.for_sealing(tx, tenant_id, person),
                )
        finally:
            await keys.aclose()
    assert len(set(sealing.values())) == 1, "every service has the same two keys"
    tenant_key, person_key = next(iter(sealing.values()))
    assert tenant_key is not None
    assert person_key is not None
    assert tenant_key != person_key
    served = served_count(tenant_id)
    assert served >= 2 * len(PROJECTING)

    for service, db in service_databases.items():
        rows = await copies(db, tenant_id)
        assert sorted(str(r["subject_id"]) for r in rows) == sorted(["None", str(person)])
        for row in rows:  # only wrapped, and with this service's own master key
            for key in (tenant_key, person_key):
                assert key not in bytes(row["wrapped_key"])
        # The service restarts while tenancy is down: it reads its own copy.
        restarted = service_keys(stack, service, tenancy_url=f"http://127.0.0.1:{closed_port()}")
        try:
            async with db.transaction() as tx:
                assert await restarted.for_opening(tx, tenant_id) == tenant_key
                assert await restarted.for_opening(tx, tenant_id, person) == person_key
                assert await restarted.for_sealing(tx, tenant_id) == tenant_key
        finally:
            await restarted.aclose()
    assert served_count(tenant_id) == served, "no restarted service asked tenancy"


async def test_a_destroyed_key_is_410_at_tenancy_and_gone_from_each_service_that_forgets(
    stack: Stack, service_databases: dict[str, Database], tenancy_keys: DataKeyStore
) -> None:
    tenant_id, person = UUID(str(uuid4())), UUID(str(uuid4()))
    neighbour = UUID(str(uuid4()))
    held: dict[str, ServiceDataKeys] = {}
    for service, db in service_databases.items():
        held[service] = service_keys(stack, service)
        async with db.transaction() as tx:
            assert await held[service].for_sealing(tx, tenant_id, person) is not None
            assert await held[service].for_sealing(tx, neighbour) is not None
    try:
        assert await tenancy_keys.destroy_tenant_key(tenant_id) is True

        async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
            for subject in (None, person):
                for method in ("GET", "PUT"):
                    answer = await client.request(
                        method, key_api_path(tenant_id, subject), headers=internal(stack)
                    )
                    assert answer.status_code == 410, answer.text
                    assert answer.json()["type"].endswith("/key-destroyed")
                    assert "key" not in answer.json()

        for service, db in service_databases.items():
            async with db.transaction() as tx:
                await held[service].forget(tx, tenant_id)
            assert await copies(db, tenant_id) == []
            assert len(await copies(db, neighbour)) == 1, "a neighbour's copy stays"
            # This process, and a fresh one (nothing cached, no copy): erased, for good.
            for keys in (held[service], service_keys(stack, service)):
                async with db.transaction() as tx:
                    assert await keys.for_opening(tx, tenant_id) is None
                    assert await keys.for_opening(tx, tenant_id, person) is None
                    assert await keys.for_sealing(tx, tenant_id) is None
                    assert await keys.for_sealing(tx, tenant_id, person) is None
                    assert await keys.for_opening(tx, neighbour) is not None
            assert await copies(db, tenant_id) == [], "nothing fetched back"
    finally:
        for keys in held.values():
            await keys.aclose()


async def test_a_tenancy_outage_is_unavailable_never_erased(
    stack: Stack, service_databases: dict[str, Database]
) -> None:
    tenant_id = UUID(str(uuid4()))
    db = service_databases["webhooks"]
    down = service_keys(stack, "webhooks", tenancy_url=f"http://127.0.0.1:{closed_port()}")
    misconfigured = ServiceDataKeys(
        "webhooks",
        master_key(stack, "webhooks"),
        TenancyKeyClient(stack.service_url("tenancy"), "not-the-secret", caller="webhooks"),
    )
    try:
        for keys in (down, misconfigured):
            async with db.transaction() as tx:
                with pytest.raises(KeysUnavailable):
                    await keys.for_sealing(tx, tenant_id)
                with pytest.raises(KeysUnavailable):
                    await keys.for_opening(tx, tenant_id)
        assert await copies(db, tenant_id) == []
    finally:
        await down.aclose()
        await misconfigured.aclose()


async def test_erasing_one_person_leaves_the_tenants_key(
    stack: Stack, service_databases: dict[str, Database], tenancy_keys: DataKeyStore
) -> None:
    tenant_id, erased, kept = UUID(str(uuid4())), UUID(str(uuid4())), UUID(str(uuid4()))
    db = service_databases["provisioning"]
    keys = service_keys(stack, "provisioning")
    try:
        async with db.transaction() as tx:
            tenant_key = await keys.for_sealing(tx, tenant_id)
            assert await keys.for_sealing(tx, tenant_id, erased) is not None
            kept_key = await keys.for_sealing(tx, tenant_id, kept)
        assert await tenancy_keys.destroy_subject_key(tenant_id, erased) is True
        async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
            gone = await client.get(key_api_path(tenant_id, erased), headers=internal(stack))
            assert gone.status_code == 410
            assert (await client.get(key_api_path(tenant_id), headers=internal(stack))).is_success
        async with db.transaction() as tx:
            await keys.forget_subject(tx, tenant_id, erased)
        assert sorted(str(r["subject_id"]) for r in await copies(db, tenant_id)) == sorted(
            ["None", str(kept)]
        )
        for fresh in (keys, service_keys(stack, "provisioning")):
            async with db.transaction() as tx:
                assert await fresh.for_opening(tx, tenant_id, erased) is None
                assert await fresh.for_sealing(tx, tenant_id, erased) is None
                assert await fresh.for_opening(tx, tenant_id) == tenant_key
                assert await fresh.for_opening(tx, tenant_id, kept) == kept_key
    finally:
        await keys.aclose()
