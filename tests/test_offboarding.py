"""Offboarding enforced in every service (issue 17 §2), driven through tenancy's routes:
during the grace period an owner or admin may sign in and read, and nothing else is
admitted anywhere (a walk over every route of every service's OpenAPI document, so a new
route is covered the day it is added); SCIM reads stay open and its writes are refused;
webhooks deliver tenant.offboarding_started and then pause; owners and admins are mailed;
cancelling restores exactly what was before (active, or suspended)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
import pytest_asyncio
from uuid_utils.compat import uuid4

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.mailbox import Mailbox, links, recipients
from tenantry_testkit.oidc_provider import OidcAccount, OidcClient, OidcProvider
from tenantry_testkit.receiver import Receiver, running_receiver
from tenantry_testkit.stack import REPO, Stack

from .conftest import PROJECTING, SERVICES
from .test_identity import bearer, create_key, whoami_everywhere
from .test_sso import (
    OIDC_SECRET,
    code_of,
    error_of,
    exchange,
    failures,
    oidc_connection,
    oidc_login,
)
from .test_sso import browser_http as browser_http
from .test_sso import identity as identity
from .test_suspension import all_five

pytestmark = pytest.mark.kafka
PASSWORD = "correct horse battery staple"
SCIM_JSON = "application/scim+json"
SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
SCIM_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
SEARCH_REQUEST = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
ROLES = ("owner", "admin", "member")
# Routes that declare the offboarding state (`opt={"tenant_states": [...]}`): whoever
# passes the route's own requirement may use them during the grace period. The walk reads
# them instead of expecting a refusal, and never writes through them (the DELETE would end
# the offboarding). A route that starts admitting offboarding must be named here, or the
# walk fails on it. Exports are made during the grace period (issue 17 §1).
DECLARED_FOR_OFFBOARDING = {
    ("GET", "/v1/tenants/{tenant_id}/offboarding"),
    ("DELETE", "/v1/tenants/{tenant_id}/offboarding"),
    # One person may still be erased during the grace period (docs/lifecycle.md).
    ("POST", "/v1/tenants/{tenant_id}/erasures"),
    ("GET", "/v1/tenants/{tenant_id}/erasures/{erasure_id}"),
}


def declared_for_offboarding(method: str, path: str) -> bool:
    return (method, path) in DECLARED_FOR_OFFBOARDING or "/exports" in path


@dataclass
class Tenant:
    tenant_id: str
    slug: str
    emails: dict[str, str]  # role -> address
    # Authorization headers by role (owner, admin, member) and "key": an API key holding
    # every scope.
    headers: dict[str, dict[str, str]]
    refresh: dict[str, str]  # role -> the refresh token of its session

    def login(self, role: str) -> dict[str, str]:
        return {"email": self.emails[role], "password": PASSWORD, "tenant_id": self.tenant_id}


@pytest_asyncio.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with running_receiver() as running:
        yield running


def problem_type(response: httpx.Response) -> str:
    """The last segment of a problem's type ("tenant-offboarding"), else ""."""
    try:
        body = response.json()
    except ValueError:
        return ""
    kind = body.get("type", "") if isinstance(body, dict) else ""
    return str(kind).rsplit("/", 1)[-1]


async def tenant_with_people(stack: Stack, operator_headers: dict[str, str]) -> Tenant:
    """An enterprise tenant (every feature, and a rate a route walk stays under) with an
    owner, an admin and a member, verified and signed in, and an API key with every scope
    (so that what refuses them is the tenant's state, not a missing scope or address)."""
    from tenantry_identity.domain import KNOWN_SCOPES

    mailbox = Mailbox(REPO / ".local" / "mail")
    slug = f"off-{uuid4().hex[:10]}"
    identity = stack.service_url("identity")
    async with httpx.AsyncClient(timeout=10) as client:
        made = await client.post(
            f"{stack.service_url('tenancy')}/v1/tenants",
            json={"name": "Leaving", "slug": slug, "plan": "enterprise"},
            headers=operator_headers,
        )
        assert made.status_code == 201, made.text
        tenant_id: str = made.json()["tenant_id"]
        # create_key waits until all five accept the key: every service knows the tenant.
        key = await create_key(stack, operator_headers, tenant_id, sorted(KNOWN_SCOPES))
        emails = {role: f"{role}-{uuid4().hex[:8]}@example.com" for role in ROLES}
        for role, email in emails.items():
            r = await client.post(
                f"{identity}/v1/tenants/{tenant_id}/accounts",
                headers=operator_headers,
                json={"email": email, "password": PASSWORD, "role": role},
            )
            assert r.status_code == 201, r.text
        for email in emails.values():
            verify = await mailbox.wait_for(email, subject_contains="Verify", timeout=30)
            (link,) = links(verify)
            confirmed = await client.post(
                f"{identity}/v1/email-verifications", json={"token": link.split("token=", 1)[1]}
            )
            assert confirmed.status_code == 200, confirmed.text
        tenant = Tenant(tenant_id, slug, emails, {"key": bearer(key["key"])}, {})
        for role in ROLES:
            r = await client.post(f"{identity}/v1/sessions", json=tenant.login(role))
            assert r.status_code == 201, r.text
            tenant.headers[role] = bearer(r.json()["access_token"])
            tenant.refresh[role] = r.json()["refresh_token"]
    return tenant


async def start_offboarding(
    stack: Stack, headers: dict[str, str], tenant_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"{stack.service_url('tenancy')}/v1/tenants/{tenant_id}/offboarding",
            headers=headers,
            json=body,
        )
    assert r.status_code == 200, r.text
    view: dict[str, Any] = r.json()
    assert view["status"] == "offboarding"
    return view


async def cancel_offboarding(stack: Stack, headers: dict[str, str], tenant_id: str) -> str:
    """The tenant's status after the cancellation."""
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.delete(
            f"{stack.service_url('tenancy')}/v1/tenants/{tenant_id}/offboarding",
            headers=headers,
            params={"reason": "we stay"},
        )
    assert r.status_code == 200, r.text
    status: str = r.json()["status"]
    return status


async def projected_status(service_dbs: dict[str, asyncpg.Pool], tenant_id: str) -> set[str]:
    found = set()
    for service in PROJECTING:
        found.add(
            await service_dbs[service].fetchval(
                "SELECT status FROM tenant_projection WHERE tenant_id = $1", UUID(tenant_id)
            )
        )
    return found


# ---------------------------------------------------------------- the route walk


@dataclass(frozen=True)
class Route:
    service: str
    method: str
    path: str

    def url(self, stack: Stack, tenant_id: str) -> str:
        """Our tenant in {tenant_id}; any other parameter a fresh id (nothing is found)."""
        path = self.path.replace("{tenant_id}", tenant_id)
        return stack.service_url(self.service) + re.sub(r"\{[^}]+\}", str(uuid4()), path)


async def every_route(stack: Stack) -> list[Route]:
    """Every route of every service's OpenAPI document that takes a credential (a public
    one says `security: []`: the tenant guard never sees it)."""
    routes = []
    async with httpx.AsyncClient(timeout=10) as client:
        for service in SERVICES:
            spec = (await client.get(f"{stack.service_url(service)}/schema/openapi.json")).json()
            for path, item in spec["paths"].items():
                for method, operation in item.items():
                    method = method.upper()
                    walked = method in ("GET", "POST", "PUT", "PATCH", "DELETE")
                    if walked and operation.get("security", spec.get("security")):
                        routes.append(Route(service, method, path))
    return routes


async def walk(
    stack: Stack, tenant: Tenant, who: str, routes: list[Route]
) -> dict[Route, httpx.Response]:
    """Each route once as `who` (declared writes skipped: they would act)."""
    answers = {}
    async with httpx.AsyncClient(timeout=15) as client:
        for route in routes:
            declared = declared_for_offboarding(route.method, route.path)
            if declared and route.method != "GET":
                continue
            answers[route] = await client.request(
                route.method,
                route.url(stack, tenant.tenant_id),
                headers=tenant.headers[who],
                json=None if route.method == "GET" else {},
            )
    return answers


def refused_by_the_guard(response: httpx.Response) -> bool:
    return response.status_code == 403 and problem_type(response) == "tenant-offboarding"


def refused_before_the_guard(response: httpx.Response) -> bool:
    """The route's own requirement (operators only, a role the member lacks) is checked
    before the tenant guard, in every state: a refusal too, just not the state's."""
    return response.status_code == 403 and problem_type(response) == "forbidden"


def check_walk(answers: dict[Route, httpx.Response], who: str) -> int:
    """Owners and admins read: a GET is never refused for the state. Anything else is:
    403 tenant-offboarding (or the route's own 403). Declared routes are read by anyone.
    Returns how many the guard refused."""
    refused = 0
    for route, r in answers.items():
        where = (who, route.service, route.method, route.path, r.status_code, r.text[:200])
        assert r.status_code < 500, where
        admitted = declared_for_offboarding(route.method, route.path) or (
            who in ("owner", "admin") and route.method == "GET"
        )
        if admitted:
            assert r.status_code != 403 or refused_before_the_guard(r), where
        else:
            assert refused_by_the_guard(r) or refused_before_the_guard(r), where
            refused += refused_by_the_guard(r)
    return refused


# ---------------------------------------------------------------- the tests


async def test_during_offboarding_admins_read_and_nothing_else_passes_in_any_service(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    routes = await every_route(stack)
    assert {r.service for r in routes} == set(SERVICES)
    for who in (*ROLES, "key"):
        await all_five(stack, tenant.headers[who], 200, f"{who} admitted while active")

    # The owner, confirming with the slug.
    view = await start_offboarding(
        stack,
        tenant.headers["owner"],
        tenant.tenant_id,
        {"reason": "contract ended", "confirm_slug": tenant.slug},
    )
    assert view["previous_status"] == "active"
    for who in ("member", "key"):
        await all_five(stack, tenant.headers[who], 403, f"{who} refused while offboarding")
    for who in ("owner", "admin"):
        await all_five(stack, tenant.headers[who], 200, f"{who} still reads")
    assert await projected_status(service_dbs, tenant.tenant_id) == {"offboarding"}

    guard_refusals = {}
    for who in ("owner", "admin", "member", "key"):
        guard_refusals[who] = check_walk(await walk(stack, tenant, who, routes), who)
    writes = [r for r in routes if r.method != "GET"]
    # Most writes are refused by the guard itself (not an operator-only role check).
    assert guard_refusals["owner"] > len(writes) // 2, guard_refusals
    # (A member's refusal of an admins' route comes from the role check, before the guard.)
    assert min(guard_refusals.values()) > 0, guard_refusals

    identity = stack.service_url("identity")
    async with httpx.AsyncClient(timeout=10) as client:
        # Owners and admins sign in and refresh; a member does neither.
        for role in ("owner", "admin"):
            r = await client.post(f"{identity}/v1/sessions", json=tenant.login(role))
            assert r.status_code == 201, r.text
            r = await client.post(
                f"{identity}/v1/sessions/refresh", json={"refresh_token": tenant.refresh[role]}
            )
            assert r.status_code == 201, r.text
        r = await client.post(f"{identity}/v1/sessions", json=tenant.login("member"))
        assert (r.status_code, problem_type(r)) == (403, "tenant-offboarding"), r.text
        r = await client.post(
            f"{identity}/v1/sessions/refresh", json={"refresh_token": tenant.refresh["member"]}
        )
        assert (r.status_code, problem_type(r)) == (403, "tenant-offboarding"), r.text
        # Anyone of the tenant reads the offboarding itself (the route declares it).
        offboarding = f"{stack.service_url('tenancy')}/v1/tenants/{tenant.tenant_id}/offboarding"
        for who in (*ROLES, "key"):
            r = await client.get(offboarding, headers=tenant.headers[who])
            assert r.status_code == 200, (who, r.text)
            assert r.json()["purge_at"] == view["purge_at"]
        # Only the owner (or an operator) calls it off.
        r = await client.delete(offboarding, headers=tenant.headers["admin"])
        assert r.status_code == 403

    assert await cancel_offboarding(stack, tenant.headers["owner"], tenant.tenant_id) == "active"
    for who in ("member", "key"):
        await all_five(stack, tenant.headers[who], 200, f"{who} admitted again")
    assert await projected_status(service_dbs, tenant.tenant_id) == {"active"}
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(f"{identity}/v1/sessions", json=tenant.login("member"))
        assert r.status_code == 201, r.text
        r = await client.post(
            f"{identity}/v1/tenants/{tenant.tenant_id}/api-keys",
            headers=tenant.headers["owner"],
            json={"name": "after", "scopes": ["tenant:read"]},
        )
        assert r.status_code == 201, "writes are back"


async def test_scim_reads_stay_open_and_writes_are_refused_with_a_scim_error(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    scim = httpx.AsyncClient(
        base_url=f"{stack.service_url('provisioning')}/scim/v2",
        headers={**tenant.headers["key"], "Content-Type": SCIM_JSON, "Accept": SCIM_JSON},
        timeout=15,
    )

    def new_user() -> dict[str, Any]:
        name = f"scim-{uuid4().hex[:8]}@example.com"
        return {"schemas": [SCIM_USER], "userName": name, "emails": [{"value": name}]}

    async with scim:
        made = await scim.post("/Users", json=new_user())
        assert made.status_code == 201, made.text
        user_id = made.json()["id"]
        await start_offboarding(stack, operator_headers, tenant.tenant_id, {"reason": "ends"})
        await all_five(stack, tenant.headers["member"], 403, "offboarding seen everywhere")

        for method, path, body in (
            ("POST", "/Users", new_user()),
            ("PUT", f"/Users/{user_id}", new_user()),
            ("PATCH", f"/Users/{user_id}", {"schemas": [], "Operations": []}),
            ("DELETE", f"/Users/{user_id}", None),
            ("POST", "/Groups", {"displayName": "g"}),
            ("POST", "/Bulk", {"Operations": []}),
        ):
            r = await scim.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.text)
            assert r.headers["content-type"].startswith(SCIM_JSON)
            error = r.json()
            assert (error["schemas"], error["status"]) == ([SCIM_ERROR], "403")
            assert "offboarding" in error["detail"], error
        for path in ("/Users", f"/Users/{user_id}", "/Groups", "/ServiceProviderConfig"):
            r = await scim.get(path)
            assert r.status_code == 200, (path, r.text)
        search = {"schemas": [SEARCH_REQUEST], "filter": f'id eq "{user_id}"'}
        r = await scim.post("/Users/.search", json=search)
        assert r.status_code == 200, r.text
        assert r.json()["totalResults"] == 1
        r = await scim.get(f"/Users/{user_id}")
        assert r.headers["ETag"] == made.headers["ETag"], "nothing changed"

        await cancel_offboarding(stack, operator_headers, tenant.tenant_id)
        await all_five(stack, tenant.headers["member"], 200, "offboarding over everywhere")
        r = await scim.post("/Users", json=new_user())
        assert r.status_code == 201, r.text


async def test_cancelling_the_offboarding_of_a_suspended_tenant_restores_the_suspension(
    stack: Stack, operator_headers: dict[str, str], service_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    tenancy = stack.service_url("tenancy")
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"{tenancy}/v1/tenants/{tenant.tenant_id}/suspend",
            headers=operator_headers,
            json={"reason": "unpaid"},
        )
        assert r.status_code == 200, r.text
    await all_five(stack, tenant.headers["owner"], 403, "the owner refused while suspended")
    seen = await whoami_everywhere(stack, tenant.headers["owner"])
    assert seen == dict.fromkeys(SERVICES, 403)

    view = await start_offboarding(stack, operator_headers, tenant.tenant_id, {"reason": "gone"})
    assert view["previous_status"] == "suspended"
    # Offboarding is its own state: the owner may read again, the member still may not.
    await all_five(stack, tenant.headers["owner"], 200, "the owner reads while offboarding")
    await all_five(stack, tenant.headers["member"], 403, "the member refused")
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(
            f"{stack.service_url('webhooks')}/v1/whoami", headers=tenant.headers["member"]
        )
        assert problem_type(r) == "tenant-offboarding"

    assert await cancel_offboarding(stack, operator_headers, tenant.tenant_id) == "suspended"
    await all_five(stack, tenant.headers["owner"], 403, "suspended again everywhere")
    async with httpx.AsyncClient(timeout=10) as client:
        for service in SERVICES:
            r = await client.get(
                f"{stack.service_url(service)}/v1/whoami", headers=tenant.headers["owner"]
            )
            assert problem_type(r) == "tenant-suspended", (service, r.text)
        r = await client.post(
            f"{stack.service_url('identity')}/v1/sessions", json=tenant.login("owner")
        )
        assert (r.status_code, problem_type(r)) == (403, "tenant-suspended")
    assert await projected_status(service_dbs, tenant.tenant_id) == {"suspended"}


async def test_webhooks_deliver_the_offboarding_notice_then_pause_until_it_is_called_off(
    stack: Stack,
    operator_headers: dict[str, str],
    receiver: Receiver,
    service_dbs: dict[str, asyncpg.Pool],
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    webhooks = f"{stack.service_url('webhooks')}/v1/tenants/{tenant.tenant_id}/webhooks"
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"{webhooks}/endpoints",
            headers=operator_headers,
            json={"url": f"{receiver.url}/ok", "event_types": ["tenant.*", "account.*"]},
        )
        assert r.status_code == 201, r.text

        def types() -> list[str]:
            return [json.loads(m.body)["type"] for m in receiver.to("/ok")]

        await start_offboarding(stack, operator_headers, tenant.tenant_id, {"reason": "ends"})
        await eventually(
            lambda: _now("tenant.offboarding_started" in types()),
            timeout=30,
            message="the offboarding notice delivered",
        )
        # While offboarding, an operator still acts on the tenant: its events are kept...
        r = await client.post(
            f"{stack.service_url('identity')}/v1/tenants/{tenant.tenant_id}/accounts",
            headers=operator_headers,
            json={"email": f"late-{uuid4().hex[:8]}@example.com"},
        )
        assert r.status_code == 201, r.text

        async def held() -> list[Any] | None:
            async with service_dbs["webhooks"].acquire() as conn, conn.transaction():
                # The rows are behind RLS (forced, for their owner too): as the tenant.
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant.tenant_id)
                rows: list[Any] = await conn.fetch(
                    """SELECT d.status, d.attempts FROM deliveries d
                       JOIN messages m ON m.message_id = d.message_id
                       WHERE d.tenant_id = $1 AND m.event_type = 'account.created'""",
                    UUID(tenant.tenant_id),
                )
            return rows or None

        await eventually(held, timeout=30, message="the account.created message held")
        await asyncio.sleep(3)  # several dispatcher rounds: nothing more may go out
        assert types() == ["tenant.offboarding_started"]
        assert [tuple(row) for row in await held() or []] == [("pending", 0)], "clock stopped"

        await cancel_offboarding(stack, operator_headers, tenant.tenant_id)
    # ...and go out once it is called off, with the cancellation.
    await eventually(
        lambda: _now({"account.created", "tenant.offboarding_cancelled"} <= set(types())),
        timeout=30,
        message="the held message and the cancellation delivered",
    )
    assert types()[0] == "tenant.offboarding_started"


@pytest_asyncio.fixture
async def leaving_idp(stack: Stack, tmp_path: Path) -> AsyncIterator[OidcProvider]:
    """An OIDC provider whose "admins" group maps to admin: carol and dave sign in before
    the offboarding (an admin and a member), erin only during it."""
    callback = f"{stack.service_url('identity')}/sso/oidc/callback"
    async with OidcProvider.running(
        tmp_path,
        clients=[
            OidcClient(client_id="tenantry", client_secret=OIDC_SECRET, redirect_uris=[callback])
        ],
        accounts={
            "u-carol": OidcAccount(email="carol@leaving.example", groups=["admins"]),
            "u-dave": OidcAccount(email="dave@leaving.example", groups=["staff"]),
            "u-erin": OidcAccount(email="erin@leaving.example", groups=["admins"]),
        },
    ) as op:
        yield op


async def test_sso_signs_in_only_existing_owners_and_admins_during_offboarding(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    leaving_idp: OidcProvider,
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    connection_id = (await oidc_connection(identity, tenant.tenant_id, leaving_idp))["id"]

    async def sign_in(login: str) -> httpx.Response:
        return await oidc_login(browser_http, stack, leaving_idp, connection_id, login)

    for login, role in (("u-carol", "admin"), ("u-dave", "member")):
        code = code_of(await sign_in(login))
        r = await exchange(browser_http, stack, code)
        assert r.status_code == 200, r.text
        assert r.json()["profile"]["role"] == role

    await start_offboarding(stack, operator_headers, tenant.tenant_id, {"reason": "ends"})

    async def dave_refused() -> bool:
        answer = await sign_in("u-dave")
        if answer.status_code == 303 and "error=" not in answer.headers["location"]:
            return False  # signed in: identity has not heard of the offboarding yet
        return error_of(answer) == "tenant-offboarding"

    await eventually(dave_refused, timeout=30, message="the member's SSO login refused")
    # The admin still signs in and gets tokens that read.
    r = await exchange(browser_http, stack, code_of(await sign_in("u-carol")))
    assert r.status_code == 200, r.text
    assert r.json()["profile"]["role"] == "admin"
    carol = bearer(r.json()["tokens"]["access_token"])
    await all_five(stack, carol, 200, "the SSO admin reads everywhere")
    # No account is made just in time, even for someone the IdP calls an admin.
    assert error_of(await sign_in("u-erin")) == "tenant-offboarding"
    r = await identity.get(f"/v1/tenants/{tenant.tenant_id}/accounts")
    assert "erin@leaving.example" not in r.text
    assert "tenant-offboarding" in await failures(identity, tenant.tenant_id, connection_id)

    await cancel_offboarding(stack, operator_headers, tenant.tenant_id)

    r = await exchange(browser_http, stack, code_of(await eventually_signed_in(sign_in)))
    assert r.json()["profile"]["role"] == "member"


async def eventually_signed_in(sign_in: Any) -> httpx.Response:
    """dave's login once identity has heard that the offboarding was called off."""

    async def signed_in() -> httpx.Response | None:
        r: httpx.Response = await sign_in("u-dave")
        return r if "code=" in r.headers.get("location", "") else None

    return await eventually(signed_in, timeout=30, message="the member signs in again")


async def test_owners_and_admins_are_mailed_when_offboarding_starts_and_before_the_purge(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    mailbox = Mailbox(REPO / ".local" / "mail")
    tenant = await tenant_with_people(stack, operator_headers)
    # Six days of grace: the scheduler's T-7 reminder is due at its next pass.
    purge_at = (datetime.now(UTC) + timedelta(days=6)).replace(microsecond=0)
    await start_offboarding(
        stack,
        operator_headers,
        tenant.tenant_id,
        {"reason": "contract ended", "purge_at": purge_at.isoformat()},
    )
    owner = tenant.emails["owner"]
    started = await mailbox.wait_for(owner, subject_contains="will be deleted on", timeout=30)
    assert f"{purge_at:%Y-%m-%d}" in str(started["Subject"])
    assert started["X-Tenantry-Notice"] == "tenant-offboarding-started"
    text = _text(started)
    assert f"{purge_at:%Y-%m-%d at %H:%M} UTC" in text
    assert "contract ended" in text
    assert f"DELETE /v1/tenants/{tenant.tenant_id}/offboarding" in text
    assert f"POST /v1/tenants/{tenant.tenant_id}/exports" in text

    reminder = await mailbox.wait_for(owner, subject_contains="will be deleted in", timeout=90)
    assert reminder["X-Tenantry-Notice"] == "tenant-offboarding-reminder"
    assert "in 6 days" in str(reminder["Subject"])
    assert f"{purge_at:%Y-%m-%d at %H:%M} UTC" in _text(reminder)
    admin = tenant.emails["admin"]
    await mailbox.wait_for(admin, subject_contains="will be deleted on", timeout=30)
    await mailbox.wait_for(admin, subject_contains="will be deleted in", timeout=30)
    # The owners and admins are told, not the member.
    notices = [m for m in await mailbox.messages() if m["X-Tenantry-Notice"]]
    assert not [m for m in notices if tenant.emails["member"] in recipients(m)]


def _text(message: Any) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


async def _now(value: Any) -> Any:
    return value
