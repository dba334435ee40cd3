"""Identity's event-sourced aggregates (account, API key, SSO connection): after every
command path of the running service, each state row is the fold of its stream; and
`tenantry-identity verify-state` finds rows changed or lost behind the service's back and
rebuilds what the events carry (real Postgres, a real SAML IdP, real SMTP)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
import pytest_asyncio
from uuid_utils.compat import uuid4

from tenantry_events.pg import Database
from tenantry_events.state_check import AggregateKind, check_one
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_identity.sso.store import SSO_CONNECTIONS, connection_stream
from tenantry_identity.state_rows import ACCOUNTS, API_KEYS
from tenantry_identity.store import account_stream, api_key_stream
from tenantry_service.data_keys import ServiceDataKeys
from tenantry_testkit.fixtures import running_service_db
from tenantry_testkit.mailbox import Mailbox, links
from tenantry_testkit.saml_idp import SamlIdp, SamlUser
from tenantry_testkit.stack import REPO, Stack

from .test_data_keys import service_keys
from .test_identity import bearer
from .test_sso import ALICE, User, code_of, exchange, saml_connection, saml_login, sso_tenant
from .test_sso import browser_http as browser_http
from .test_sso import identity as identity
from .test_sso import idp as idp

pytestmark = pytest.mark.kafka
PASSWORD = "correct horse battery staple"


@pytest_asyncio.fixture
async def identity_db(stack: Stack) -> AsyncIterator[Database]:
    async with running_service_db(stack, "identity") as db:
        yield db


class Folds:
    """Checks that the rows of the aggregates a test touched are their streams' folds."""

    def __init__(self, db: Database, keys: ServiceDataKeys) -> None:
        self.db = db
        # With identity's keys: the events' personal fields are sealed; the rows hold
        # plaintext (a fresh process's keys, fetched from tenancy as identity's are).
        self.events = PostgresEventStore(PostgresOutbox(db, keys=keys))
        self.watched: list[tuple[AggregateKind[Any, asyncpg.Connection], str]] = []

    def watch(self, kind: AggregateKind[Any, asyncpg.Connection], stream_id: str) -> None:
        self.watched.append((kind, stream_id))

    async def hold(self, after: str) -> None:
        for kind, stream_id in self.watched:
            async with self.db.transaction(platform=True) as tx:
                drift = await check_one(tx, self.events, kind, stream_id)
            assert drift is None, f"after {after}: {drift}"

    async def row(self, kind: AggregateKind[Any, asyncpg.Connection], stream_id: str) -> Any:
        async with self.db.transaction(platform=True) as tx:
            return await kind.read_row(tx, stream_id)


async def test_every_command_path_leaves_each_row_equal_to_the_fold_of_its_stream(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    idp: tuple[SamlIdp, User],
    identity_db: Database,
) -> None:
    folds = Folds(identity_db, service_keys(stack, "identity"))
    server, who = idp
    tenant_id = await sso_tenant(stack, operator_headers)
    tenant = f"/v1/tenants/{tenant_id}"

    async def step(name: str, method: str, url: str, body: Any, status: int) -> Any:
        response = await identity.request(method, url, json=body)
        assert response.status_code == status, (name, response.text)
        await folds.hold(name)
        return response.json() if response.content else None

    # SSO connection: created, changed, switched off and on (deleted at the end).
    connection = await saml_connection(identity, tenant_id, server)
    connection_url = f"{tenant}/sso/connections/{connection['id']}"
    folds.watch(SSO_CONNECTIONS, connection_stream(UUID(connection["id"])))
    await folds.hold("create a connection")
    await step("rename it", "PATCH", connection_url, {"name": "Acme IdP (prod)"}, 200)
    await step("switch it off", "PATCH", connection_url, {"enabled": False}, 200)
    await step("switch it on", "PATCH", connection_url, {"enabled": True}, 200)

    # An account made just in time by an SSO login (tenant-admins: admin), then demoted by
    # the next login (the IdP dropped the group): account.role_changed.
    code = code_of(await saml_login(browser_http, stack, connection["id"]))
    jit_id = (await exchange(browser_http, stack, code)).json()["profile"]["id"]
    folds.watch(ACCOUNTS, account_stream(UUID(jit_id)))
    await folds.hold("a first SSO login")
    who.current = SamlUser(
        name_id=ALICE.name_id, attributes={**ALICE.attributes, "groups": ["engineering"]}
    )
    code_of(await saml_login(browser_http, stack, connection["id"]))
    jit = await folds.row(ACCOUNTS, account_stream(UUID(jit_id)))
    assert (jit.role, jit.version) == ("member", 2)
    await folds.hold("a login that changes the role")

    # An invited account whose address is verified through the mailed link.
    email = f"state-{uuid4().hex[:8]}@example.com"
    invited = await step(
        "invite",
        "POST",
        f"{tenant}/accounts",
        {"email": email, "password": PASSWORD, "role": "admin"},
        201,
    )
    account = f"{tenant}/accounts/{invited['account_id']}"
    folds.watch(ACCOUNTS, account_stream(UUID(invited["account_id"])))
    message = await Mailbox(REPO / ".local" / "mail").wait_for(
        email, subject_contains="Verify", timeout=30
    )
    token = links(message)[0].split("token=", 1)[1]
    await step("verify the email", "POST", "/v1/email-verifications", {"token": token}, 200)

    # API keys: the user's own (personal), a service key, revoked once and refused twice.
    async with httpx.AsyncClient(base_url=stack.service_url("identity"), timeout=10) as user:
        login = {"email": email, "password": PASSWORD, "tenant_id": tenant_id}
        session = (await user.post("/v1/sessions", json=login)).json()
        personal = await user.post(
            f"{tenant}/api-keys",
            headers=bearer(session["access_token"]),
            json={"name": "mine", "kind": "personal", "scopes": ["tenant:read"]},
        )
        assert personal.status_code == 201, personal.text
    personal_id = personal.json()["api_key"]["key_id"]
    folds.watch(API_KEYS, api_key_stream(personal_id))
    await folds.hold("a personal key")
    service_key = {"name": "ci", "scopes": ["tenant:read"]}
    service = await step("a service key", "POST", f"{tenant}/api-keys", service_key, 201)
    service_id = service["api_key"]["key_id"]
    folds.watch(API_KEYS, api_key_stream(service_id))
    await folds.hold("a service key")
    await step("revoke it", "DELETE", f"{tenant}/api-keys/{service_id}", None, 200)
    await step("revoke it again", "DELETE", f"{tenant}/api-keys/{service_id}", None, 404)

    # Disabling the user revokes their personal key in the same transaction.
    await step("disable", "POST", f"{account}/disable", {"reason": "left"}, 200)
    await step("disable again", "POST", f"{account}/disable", {"reason": "x"}, 409)
    key = await folds.row(API_KEYS, api_key_stream(personal_id))
    assert (key.revoked, key.version) == (True, 2)

    # What SCIM asks of identity: provision, deprovision, reprovision (each idempotent).
    provisioned_url = f"{tenant}/provisioned-accounts"
    body = {"email": f"scim-{uuid4().hex[:8]}@example.com"}
    made = await step("provision", "POST", provisioned_url, body, 201)
    folds.watch(ACCOUNTS, account_stream(UUID(made["account_id"])))
    await folds.hold("provision")
    for name in ("deprovision", "deprovision", "reprovision", "reprovision"):
        await step(name, "POST", f"{provisioned_url}/{made['account_id']}/{name}", None, 200)

    # The connection deleted: its row goes, its stream ends in the deletion.
    await step("delete the connection", "DELETE", connection_url, None, 204)
    assert await folds.row(SSO_CONNECTIONS, connection_stream(UUID(connection["id"]))) is None


# ---------------------------------------------------------------- verify-state, tampered


def verify_state(stack: Stack, *argv: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    return subprocess.run(
        [sys.executable, "-m", "tenantry_identity", "verify-state", *argv],
        env={**clean, **stack.service_env("identity")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def test_verify_state_reports_rows_changed_behind_its_back_and_rebuilds_them(
    stack: Stack, operator_headers: dict[str, str], identity: httpx.AsyncClient
) -> None:
    tenant_id = await sso_tenant(stack, operator_headers)
    tenant = f"/v1/tenants/{tenant_id}"
    made = await identity.post(
        f"{tenant}/accounts", json={"email": f"v-{uuid4().hex[:8]}@example.com", "role": "admin"}
    )
    assert made.status_code == 201, made.text
    account_id = UUID(made.json()["account_id"])
    key = await identity.post(f"{tenant}/api-keys", json={"name": "k", "scopes": ["tenant:read"]})
    assert key.status_code == 201, key.text
    key_id = key.json()["api_key"]["key_id"]

    # Everything the suite has made so far folds to its row.
    clean = verify_state(stack)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 difference(s)" in clean.stdout

    owner = await asyncpg.connect(stack.owner_dsn(stack.service_database("identity")))
    try:
        # Row-level security is forced on the owner too: act as the platform, across tenants.
        await owner.execute("SELECT set_config('app.platform', 'on', false)")
        await owner.execute(
            "UPDATE accounts SET role = 'owner', status = 'disabled' WHERE account_id = $1",
            account_id,
        )
        await owner.execute("DELETE FROM api_keys WHERE key_id = $1", key_id)
        found = verify_state(stack)
        assert found.returncode == 1, found.stdout + found.stderr
        assert f"account {account_stream(account_id)}" in found.stdout, found.stdout
        assert "role: row 'owner', events 'admin'" in found.stdout, found.stdout
        assert "status: row 'disabled', events 'active'" in found.stdout, found.stdout
        assert f"api key {api_key_stream(key_id)}" in found.stdout, found.stdout

        rebuilt = verify_state(stack, "--rebuild")
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        row = await owner.fetchrow(
            "SELECT role, status FROM accounts WHERE account_id = $1", account_id
        )
        assert row is not None
        assert (row["role"], row["status"]) == ("admin", "active")
        # The key is back whole: its hash came from apikey.created, and it is not revoked.
        back = await owner.fetchrow(
            "SELECT key_sha256, revoked_at FROM api_keys WHERE key_id = $1", key_id
        )
        assert back is not None
        assert bytes(back["key_sha256"]) == hashlib.sha256(key.json()["key"].encode()).digest()
        assert back["revoked_at"] is None
        again = verify_state(stack)
        assert again.returncode == 0, again.stdout
        assert "0 difference(s)" in again.stdout
    finally:
        await owner.close()
