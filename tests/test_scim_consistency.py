"""SCIM user writes land on both sides (the directory and identity's account) or on
neither, whichever step fails: a refused resource, identity refusing or unreachable, the
provisioning api SIGKILLed before or after identity's write. Non-ASCII and long userNames
work up to the documented limit; a deleted user created again is a working account."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import unicodedata
from collections.abc import AsyncIterator, Coroutine
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest

from tenantry_testkit.asgi import (
    Receive,
    Scope,
    Send,
    free_port,
    lifespan,
    read_request,
    reply,
    serve,
)
from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import Stack

from .test_identity import bearer
from .test_plans import override
from .test_scim import ERROR, PATCH_OP, USER, account_status, scim_client, scim_tenant

pytestmark = pytest.mark.kafka
PROJECTING = ("identity", "provisioning", "webhooks", "ratelimit", "tenancy")


async def accounts_of(stack: Stack, operator_headers: dict[str, str], tenant_id: str) -> list[Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(
            f"{stack.service_url('identity')}/v1/tenants/{tenant_id}/accounts",
            headers=operator_headers,
        )
    assert r.status_code == 200, r.text
    found: list[Any] = r.json()
    return found


async def users_named(scim: httpx.AsyncClient, user_name: str) -> list[Any]:
    r = await scim.get("/Users", params={"filter": f'userName eq "{user_name}"'})
    assert r.status_code == 200, r.text
    found: list[Any] = r.json()["Resources"]
    return found


def refused(r: httpx.Response, status: int, scim_type: str, mentions: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["schemas"] == [ERROR]
    assert body.get("scimType") == scim_type, body
    assert mentions in body["detail"], body


# ---------------------------------------------------------------- userName (item 2)


async def test_non_ascii_and_long_user_names_work_up_to_the_limit(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    tag = uuid4().hex[:6]
    unicode_name = f"ünïcødé.x-{tag}@example.com"
    domain = "@example.com"
    longest = "l" * (256 - len(domain) - len(tag)) + tag + domain
    # 256 characters once composed (NFC), more as sent (NFD: base letter + accent)
    decomposed = unicodedata.normalize("NFD", "é" * (250 - len(tag)) + tag + "@x.io")
    async with scim_client(stack, key) as scim:
        for name in (unicode_name, longest, decomposed):
            made = await scim.post("/Users", json={"schemas": [USER], "userName": name})
            assert made.status_code == 201, made.text
            assert made.json()["userName"] == name
            assert await account_status(stack, operator_headers, tenant_id, made.json()["id"]) == (
                "active"
            )
            assert [u["id"] for u in await users_named(scim, name)] == [made.json()["id"]]
        before = len(await accounts_of(stack, operator_headers, tenant_id))
        too_long = "l" * (257 - len(domain)) + domain
        refused(
            await scim.post("/Users", json={"schemas": [USER], "userName": too_long}),
            400,
            "invalidValue",
            "userName",
        )
        for bad in (f"tab\t{tag}@example.com", f"line\n{tag}@example.com", f"sp ace{tag}"):
            r = await scim.post("/Users", json={"schemas": [USER], "userName": bad})
            refused(r, 400, "invalidValue", "userName")
            assert "Idempotency" not in r.text
        assert len(await accounts_of(stack, operator_headers, tenant_id)) == before


# ---------------------------------------------------------------- re-create (item 3)


async def test_a_deleted_user_created_again_is_an_enabled_account_within_the_seat_limit(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    await override(stack, operator_headers, tenant_id, {"seats": 1})
    name = f"again-{uuid4().hex[:6]}@example.com"
    other = f"other-{uuid4().hex[:6]}@example.com"

    async def projected_everywhere(account_id: str, status: str) -> bool:
        for service in PROJECTING:
            found = await service_dbs[service].fetchval(
                "SELECT status FROM account_projection WHERE account_id = $1", UUID(account_id)
            )
            if found != status:
                return False
        return True

    async with scim_client(stack, key) as scim:
        first = await scim.post("/Users", json={"schemas": [USER], "userName": name})
        assert first.status_code == 201, first.text
        user_id = first.json()["id"]
        assert (await scim.delete(f"/Users/{user_id}")).status_code == 204
        assert await account_status(stack, operator_headers, tenant_id, user_id) == "disabled"
        await eventually(
            lambda: projected_everywhere(user_id, "disabled"), timeout=30, message="disabled"
        )

        again = await scim.post("/Users", json={"schemas": [USER], "userName": name})
        assert again.status_code == 201, again.text
        assert again.json()["id"] == user_id, "the account comes back, not a second one"
        assert again.json().get("active", True) is True
        assert await account_status(stack, operator_headers, tenant_id, user_id) == "active"
        # account.enabled reached every service: its tokens are accepted again everywhere
        await eventually(
            lambda: projected_everywhere(user_id, "active"), timeout=30, message="enabled"
        )
        assert len(await accounts_of(stack, operator_headers, tenant_id)) == 1

        # The seat is taken again: another user does not fit; deleting frees it.
        over = await scim.post("/Users", json={"schemas": [USER], "userName": other})
        assert over.status_code == 403, over.text
        assert await users_named(scim, other) == []

        # active:false then active:true (PATCH) re-enables the account too.
        for active, status in ((False, "disabled"), (True, "active")):
            r = await scim.patch(
                f"/Users/{user_id}",
                json={
                    "schemas": [PATCH_OP],
                    "Operations": [{"op": "replace", "value": {"active": active}}],
                },
            )
            assert r.status_code == 200, r.text
            assert await account_status(stack, operator_headers, tenant_id, user_id) == status

        # A re-create past the seat limit is refused and changes nothing.
        assert (await scim.delete(f"/Users/{user_id}")).status_code == 204
        taken = await scim.post("/Users", json={"schemas": [USER], "userName": other})
        assert taken.status_code == 201, taken.text
        refused_again = await scim.post("/Users", json={"schemas": [USER], "userName": name})
        assert refused_again.status_code == 403, refused_again.text
        assert await users_named(scim, name) == []
        assert await account_status(stack, operator_headers, tenant_id, user_id) == "disabled"


async def test_identity_drifted_from_the_directory_is_set_by_the_next_write(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    """A user active in the directory whose account was disabled behind its back (as the
    earlier re-create bug left them): PATCH active:true enables the account."""
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        made = await scim.post(
            "/Users", json={"schemas": [USER], "userName": f"drift-{uuid4().hex[:6]}@example.com"}
        )
        user_id = made.json()["id"]
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(
                f"{stack.service_url('identity')}/v1/tenants/{tenant_id}"
                f"/provisioned-accounts/{user_id}/deprovision",
                headers=bearer(key),
            )
            assert r.status_code == 200, r.text
        prov = await asyncpg.connect(stack.owner_dsn(stack.service_database("provisioning")))
        try:
            await eventually(
                lambda: prov.fetchval(
                    "SELECT status = 'disabled' FROM account_projection WHERE account_id = $1",
                    UUID(user_id),
                ),
                timeout=30,
                message="the disable projected in provisioning",
            )
        finally:
            await prov.close()
        on = {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {"active": True}}]}
        assert (await scim.patch(f"/Users/{user_id}", json=on)).status_code == 200
        assert await account_status(stack, operator_headers, tenant_id, user_id) == "active"


# ---------------------------------------------------------------- both sides or neither (item 4)


class IdentityPeer:
    """Stands between a provisioning api and identity. `mode` decides what happens to
    provisioning's writes to provisioned accounts: forwarded; forwarded with the answer
    held (`answered` is set: identity has written); held without forwarding (`arrived`);
    or answered 503 without forwarding."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.mode = "forward"
        self.arrived = asyncio.Event()
        self.answered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        request = await read_request(scope, receive)
        held = request.method == "POST" and "/provisioned-accounts" in request.path
        if held and self.mode == "unavailable":
            await reply(send, 503, b"{}", [(b"content-type", b"application/problem+json")])
            return
        if held and self.mode == "hold-before":
            self.arrived.set()
            await self.release.wait()
            await reply(send, 503, b"{}")
            return
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.request(
                request.method,
                f"{self.identity}{request.path}",
                headers=headers,
                content=request.body,
            )
        if held and self.mode == "hold-after":
            self.answered.set()
            await self.release.wait()
        await reply(
            send,
            answer.status_code,
            answer.content,
            [(b"content-type", answer.headers.get("content-type", "application/json").encode())],
        )


@contextlib.asynccontextmanager
async def rig(
    stack: Stack, key: str
) -> AsyncIterator[tuple[IdentityPeer, _Instance, httpx.AsyncClient, httpx.AsyncClient]]:
    """The peer, a provisioning api behind it, and SCIM clients of the stack's
    provisioning and of that api."""
    peer = IdentityPeer(stack.service_url("identity"))
    async with (
        serve(peer) as peer_url,
        provisioning_behind(stack, peer_url) as instance,
        scim_client(stack, key) as scim,
        httpx.AsyncClient(
            base_url=f"{instance.url}/scim/v2", headers=dict(scim.headers), timeout=30
        ) as behind,
    ):
        yield peer, instance, scim, behind


@contextlib.asynccontextmanager
async def provisioning_behind(stack: Stack, peer_url: str) -> AsyncIterator[_Instance]:
    """A second provisioning api (a real process, on the real database) that reaches
    identity through the peer."""
    env = stack.service_env("provisioning")
    urls = ",".join(
        f"identity={peer_url}" if item.startswith("identity=") else item
        for item in env["TENANTRY_SERVICE_URLS"].split(",")
    )
    instance = _Instance(
        stack.extra_api("provisioning", free_port(), {"TENANTRY_SERVICE_URLS": urls})
    )
    await instance.start()
    try:
        yield instance
    finally:
        await instance.kill()


class _Instance:
    def __init__(self, manager: contextlib.AbstractContextManager[str]) -> None:
        self._manager = manager
        self.url = ""
        self._running = False

    async def start(self) -> None:
        self.url = await asyncio.to_thread(self._manager.__enter__)
        self._running = True

    async def kill(self) -> None:
        """SIGKILL (Stack.extra_api's exit): no shutdown, no cleanup."""
        if self._running:
            self._running = False
            await asyncio.to_thread(self._manager.__exit__, None, None, None)


async def killed_midway(
    peer: IdentityPeer,
    reached: asyncio.Event,
    instance: _Instance,
    call: Coroutine[Any, Any, httpx.Response],
) -> None:
    """Send `call` to the instance and SIGKILL it once the peer says the write `reached`
    its point; the request dies with it."""
    pending = asyncio.create_task(call)
    await asyncio.wait_for(reached.wait(), timeout=20)
    await instance.kill()
    with pytest.raises(httpx.HTTPError):
        await pending
    peer.release.set()


async def _converged(
    stack: Stack,
    operator_headers: dict[str, str],
    tenant_id: str,
    scim: httpx.AsyncClient,
    user_name: str,
) -> tuple[list[Any], list[Any]]:
    """The directory's users of that name and identity's active accounts, once they agree:
    an active user has an active account (a seat) and no active account lacks one."""

    async def agree() -> tuple[list[Any], list[Any]] | None:
        users = await users_named(scim, user_name)
        accounts = await accounts_of(stack, operator_headers, tenant_id)
        active = [a["account_id"] for a in accounts if a["status"] == "active"]
        if sorted(u["id"] for u in users if u.get("active") is not False) == sorted(active):
            return users, active
        return None

    found = await eventually(agree, timeout=40, interval=0.5, message="both sides or neither")
    return found


async def test_a_refused_resource_reaches_nothing_in_identity(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    """Everything Postgres would refuse is found before identity is called: a NUL, an
    externalId too large for its index."""
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        for extra in (
            {"displayName": "nul\u0000here"},
            {"name": {"givenName": "a\u0000"}},
            {"externalId": secrets.token_urlsafe(6000)},
        ):
            name = f"bad-{uuid4().hex[:6]}@example.com"
            r = await scim.post("/Users", json={"schemas": [USER], "userName": name, **extra})
            assert r.status_code == 400, r.text
            assert r.json()["schemas"] == [ERROR]
            assert await users_named(scim, name) == []
    assert await accounts_of(stack, operator_headers, tenant_id) == []
    assert not await service_dbs["provisioning"].fetchval(
        "SELECT count(*) FROM scim_user_intents WHERE tenant_id = $1", UUID(tenant_id)
    )


async def test_identity_refusing_or_unreachable_leaves_neither_side_and_a_retry_converges(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    await override(stack, operator_headers, tenant_id, {"seats": 0})
    name = f"refused-{uuid4().hex[:6]}@example.com"
    body = {"schemas": [USER], "userName": name}
    async with rig(stack, key) as (peer, _instance, scim, behind):
        over = await scim.post("/Users", json=body)
        assert over.status_code == 403, over.text
        await override(stack, operator_headers, tenant_id, {"seats": 5})
        peer.mode = "unavailable"
        down = await behind.post("/Users", json=body)
        assert down.status_code == 503, down.text
        assert down.json()["schemas"] == [ERROR]
        assert "retry-after" in down.headers
        assert await users_named(scim, name) == []
        assert await accounts_of(stack, operator_headers, tenant_id) == []
        retried = await scim.post("/Users", json=body)  # the directory's retry
        assert retried.status_code == 201, retried.text
        users, accounts = await _converged(stack, operator_headers, tenant_id, scim, name)
        assert len(users) == 1
        assert len(accounts) == 1


async def test_sigkill_between_identity_and_the_directory_converges_to_both_sides(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    """The provisioning api is SIGKILLed after identity seated the account and before the
    directory row: the worker completes the create; the directory's retry of the same POST
    finds the one user (409 uniqueness, the user it links to)."""
    tenant_id, key = await scim_tenant(stack, operator_headers)
    name = f"killed-{uuid4().hex[:6]}@example.com"
    body = {"schemas": [USER], "userName": name, "displayName": "Killed Midway"}
    async with rig(stack, key) as (peer, instance, scim, behind):
        peer.mode = "hold-after"
        await killed_midway(peer, peer.answered, instance, behind.post("/Users", json=body))
        assert [a["status"] for a in await accounts_of(stack, operator_headers, tenant_id)] == [
            "active"
        ], "identity wrote, the directory did not (yet)"
        users, accounts = await _converged(stack, operator_headers, tenant_id, scim, name)
        assert len(users) == 1, "the worker completed the create"
        assert users[0]["displayName"] == "Killed Midway"
        retry = await scim.post("/Users", json=body)
        assert retry.status_code == 409, retry.text
        assert retry.json()["scimType"] == "uniqueness"
        users, accounts = await _converged(stack, operator_headers, tenant_id, scim, name)
        assert len(users) == 1
        assert len(accounts) == 1
        assert len(await accounts_of(stack, operator_headers, tenant_id)) == 1


async def test_sigkill_before_identity_leaves_neither_side_and_a_retry_converges(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    name = f"early-{uuid4().hex[:6]}@example.com"
    body = {"schemas": [USER], "userName": name}
    async with rig(stack, key) as (peer, instance, scim, behind):
        peer.mode = "hold-before"
        await killed_midway(peer, peer.arrived, instance, behind.post("/Users", json=body))
        assert await users_named(scim, name) == []
        assert await accounts_of(stack, operator_headers, tenant_id) == []
        retried = await scim.post("/Users", json=body)
        assert retried.status_code == 201, retried.text
        users, accounts = await _converged(stack, operator_headers, tenant_id, scim, name)
        assert len(users) == 1
        assert len(accounts) == 1


@pytest.mark.parametrize("write", ["delete", "deactivate"])
async def test_sigkill_between_identity_and_the_directory_completes_a_delete_or_replace(
    stack: Stack, operator_headers: dict[str, str], write: str
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    name = f"{write}-{uuid4().hex[:6]}@example.com"
    async with rig(stack, key) as (peer, instance, scim, behind):
        made = await scim.post("/Users", json={"schemas": [USER], "userName": name})
        user_id = made.json()["id"]
        peer.mode = "hold-after"
        if write == "delete":
            call = behind.delete(f"/Users/{user_id}")
        else:
            off = {
                "schemas": [PATCH_OP],
                "Operations": [{"op": "replace", "value": {"active": False}}],
            }
            call = behind.patch(f"/Users/{user_id}", json=off)
        await killed_midway(peer, peer.answered, instance, call)
        assert await account_status(stack, operator_headers, tenant_id, user_id) == "disabled"

        async def directory_caught_up() -> bool:
            r = await scim.get(f"/Users/{user_id}")
            if write == "delete":
                return r.status_code == 404
            return r.status_code == 200 and r.json().get("active") is False

        await eventually(directory_caught_up, timeout=40, interval=0.5, message=write)
        users, accounts = await _converged(stack, operator_headers, tenant_id, scim, name)
        assert accounts == []
        assert len(users) == (0 if write == "delete" else 1)
