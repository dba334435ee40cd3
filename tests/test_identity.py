"""Identity core across the running suite: every route needs a credential, API keys and
tokens work in all five services, revocation reaches all five, refresh tokens rotate and a
reused one revokes its family, and a tenant's credential never reaches another tenant."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from uuid_utils.compat import uuid4

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import Stack

from .conftest import SERVICES

pytestmark = pytest.mark.kafka
PUBLIC_ROUTES = {
    ("POST", "/v1/operators/bootstrap"),
    ("POST", "/v1/sessions"),
    ("POST", "/v1/sessions/refresh"),
    ("GET", "/.well-known/jwks.json"),
    ("POST", "/v1/email-verifications"),
    ("GET", "/v1/email-verifications/confirm"),
    # SSO: the product's backend authenticates with its client secret (HTTP Basic), and
    # browsers and IdPs reach the login routes without a credential.
    ("POST", "/v1/sso/token"),
    ("GET", "/sso/authorize"),
    ("GET", "/sso/saml/{connection_id}/metadata"),
    ("POST", "/sso/saml/{connection_id}/acs"),
    ("GET", "/sso/saml/{connection_id}/slo"),
    ("GET", "/sso/oidc/callback"),
    # The data lifecycle (tenancy): a deletion certificate and an export download are read
    # by their unguessable id or token (the capability), the document keys by anyone.
    ("GET", "/v1/deletion-certificates/{certificate_id}"),
    ("GET", "/v1/export-downloads/{token}"),
    ("GET", "/.well-known/document-jwks.json"),
    # The legal documents' catalog: a prospective customer reads the DPA before signing up.
    ("GET", "/v1/legal/documents"),
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_tenant(
    stack: Stack, operator_headers: dict[str, str], plan: str | None = None
) -> str:
    """A new tenant (on `plan`, else the default plan) whose limits identity knows."""
    body = {"name": "Id", "slug": f"id-{uuid4().hex[:10]}"}
    if plan is not None:
        body["plan"] = plan
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        r = await client.post("/v1/tenants", json=body, headers=operator_headers)
        assert r.status_code == 201, r.text
        tenant_id: str = r.json()["tenant_id"]
    # identity enforces plan limits from its own projection: wait until it has them.
    conn = await asyncpg.connect(stack.owner_dsn(stack.service_database("identity")))
    try:
        await eventually(
            lambda: conn.fetchval(
                "SELECT 1 FROM tenant_limits WHERE tenant_id = $1", UUID(tenant_id)
            ),
            timeout=30,
            message="the tenant's limits known to identity",
        )
    finally:
        await conn.close()
    return tenant_id


async def create_key(
    stack: Stack, headers: dict[str, str], tenant_id: str, scopes: list[str]
) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.service_url("identity"), timeout=10) as client:
        r = await client.post(
            f"/v1/tenants/{tenant_id}/api-keys",
            json={"name": "ci", "scopes": scopes},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
    # Keys work everywhere once each service has projected apikey.created: wait for it,
    # so a test never races the projection it is not about.
    key = body["key"]

    last: dict[str, int] = {}

    async def accepted() -> bool:
        last.update(await whoami_everywhere(stack, bearer(key)))
        return set(last.values()) == {200}

    # 60 s: a projection on a loaded two-core machine (right after the chaos rounds) can lag;
    # the answers on timeout say which service did.
    try:
        await eventually(accepted, timeout=60, message="the new key accepted by all five")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last answers by service: {last}") from None
    return body


async def whoami_everywhere(stack: Stack, headers: dict[str, str]) -> dict[str, int]:
    async with httpx.AsyncClient(timeout=10) as client:
        responses = await asyncio.gather(
            *(client.get(f"{stack.service_url(s)}/v1/whoami", headers=headers) for s in SERVICES)
        )
    return {s: r.status_code for s, r in zip(SERVICES, responses, strict=True)}


async def test_no_route_of_any_service_is_reachable_without_a_credential(stack: Stack) -> None:
    checked = 0
    async with httpx.AsyncClient(timeout=10) as client:
        for service in SERVICES:
            base = stack.service_url(service)
            spec = (await client.get(f"{base}/schema/openapi.json")).json()
            for path, item in spec["paths"].items():
                for method in item:
                    if method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                        continue
                    if (method.upper(), path) in PUBLIC_ROUTES:
                        continue
                    url = base + re.sub(
                        r"\{[a-z_]+\}",
                        lambda m: "key_x" if m.group() == "{key_id}" else str(uuid4()),
                        path,
                    )
                    for headers in ({}, bearer("garbage"), bearer("tnty_live_" + "A" * 38)):
                        r = await client.request(method.upper(), url, headers=headers, json={})
                        assert r.status_code == 401, (service, method, path, r.status_code)
                        assert r.headers["content-type"].startswith("application/problem+json")
                        assert r.headers["www-authenticate"].startswith("Bearer")
                        checked += 1
    assert checked >= 3 * 8


async def test_api_key_works_in_all_five_services_and_revocation_reaches_all_five(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    created = await create_key(stack, operator_headers, tenant_id, ["tenant:read"])
    key = created["key"]
    assert key.startswith("tnty_live_")
    assert "key" not in created["api_key"]
    statuses = await eventually(
        lambda: _when(whoami_everywhere(stack, bearer(key)), lambda s: set(s.values()) == {200}),
        timeout=30,
        message="the new key accepted by all five services",
    )
    assert set(statuses.values()) == {200}

    async with httpx.AsyncClient(base_url=stack.service_url("identity"), timeout=10) as client:
        listed = (
            await client.get(f"/v1/tenants/{tenant_id}/api-keys", headers=operator_headers)
        ).json()
        assert [k["key_id"] for k in listed] == [created["api_key"]["key_id"]]
        assert key not in str(listed)
        revoked = await client.delete(
            f"/v1/tenants/{tenant_id}/api-keys/{created['api_key']['key_id']}",
            headers=operator_headers,
        )
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"]
    started = time.monotonic()
    await eventually(
        lambda: _when(whoami_everywhere(stack, bearer(key)), lambda s: set(s.values()) == {401}),
        timeout=30,
        message="the revoked key refused by all five services",
    )
    print(f"revocation reached all five services in {time.monotonic() - started:.3f}s")


async def test_a_credential_of_tenant_a_never_reaches_tenant_b(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_a = await new_tenant(stack, operator_headers)
    tenant_b = await new_tenant(stack, operator_headers)
    key_a = (
        await create_key(
            stack,
            operator_headers,
            tenant_a,
            ["tenant:read", "apikeys:read", "apikeys:write", "accounts:read"],
        )
    )["key"]
    await eventually(
        lambda: _when(whoami_everywhere(stack, bearer(key_a)), lambda s: set(s.values()) == {200}),
        timeout=30,
        message="key of A accepted",
    )
    async with httpx.AsyncClient(timeout=10) as client:
        tenancy, identity = stack.service_url("tenancy"), stack.service_url("identity")
        own = await client.get(f"{tenancy}/v1/tenants/{tenant_a}", headers=bearer(key_a))
        assert own.status_code == 200
        for method, url in [
            ("GET", f"{tenancy}/v1/tenants/{tenant_b}"),
            ("GET", f"{identity}/v1/tenants/{tenant_b}/api-keys"),
            ("POST", f"{identity}/v1/tenants/{tenant_b}/api-keys"),
            ("GET", f"{identity}/v1/tenants/{tenant_b}/accounts"),
        ]:
            r = await client.request(
                method, url, headers=bearer(key_a), json={"name": "x", "scopes": ["tenant:read"]}
            )
            assert r.status_code == 404, (method, url, r.status_code)
        # Operator-only routes stay closed to tenant keys (403, a valid credential).
        assert (await client.get(f"{tenancy}/v1/tenants", headers=bearer(key_a))).status_code == 403
        # A scope the key lacks is a 403 on its own tenant too.
        r = await client.post(
            f"{identity}/v1/tenants/{tenant_a}/accounts",
            headers=bearer(key_a),
            json={"email": "x@example.com"},
        )
        assert r.status_code == 403


async def test_refresh_tokens_rotate_and_a_reused_one_revokes_the_family(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    email, password = f"u-{uuid4().hex[:8]}@example.com", "correct horse battery staple"
    async with httpx.AsyncClient(base_url=stack.service_url("identity"), timeout=10) as client:
        made = await client.post(
            f"/v1/tenants/{tenant_id}/accounts",
            headers=operator_headers,
            json={"email": email, "password": password, "role": "admin"},
        )
        assert made.status_code == 201, made.text
        dup = await client.post(
            f"/v1/tenants/{tenant_id}/accounts",
            headers=operator_headers,
            json={"email": email.upper(), "password": password},
        )
        assert dup.status_code == 409, "email is unique per tenant, case-insensitively"
        wrong = await client.post(
            "/v1/sessions",
            json={"email": email, "password": "nope-nope-nope", "tenant_id": tenant_id},
        )
        assert wrong.status_code == 401
        first = (
            await client.post(
                "/v1/sessions", json={"email": email, "password": password, "tenant_id": tenant_id}
            )
        ).json()
        assert (await whoami_everywhere(stack, bearer(first["access_token"]))) == dict.fromkeys(
            SERVICES, 200
        )

        second = await client.post(
            "/v1/sessions/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert second.status_code == 201
        rotated = second.json()
        assert rotated["refresh_token"] != first["refresh_token"]
        reuse = await client.post(
            "/v1/sessions/refresh", json={"refresh_token": first["refresh_token"]}
        )
        assert reuse.status_code == 401
        assert "reused" in reuse.json()["detail"]
        after = await client.post(
            "/v1/sessions/refresh", json={"refresh_token": rotated["refresh_token"]}
        )
        assert after.status_code == 401, "the whole family was revoked"


async def test_signing_key_rotation_keeps_old_tokens_valid_and_new_ones_verify(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    # Requests keep flowing through the rotation; none may be refused.
    stop = asyncio.Event()
    seen: list[int] = []

    async def traffic() -> None:
        while not stop.is_set():
            seen.extend((await whoami_everywhere(stack, operator_headers)).values())

    background = asyncio.create_task(traffic())
    async with httpx.AsyncClient(base_url=stack.service_url("identity"), timeout=10) as client:
        await asyncio.sleep(0.2)
        rotated = await client.post("/v1/signing-keys/rotate", headers=operator_headers)
        await asyncio.sleep(0.5)
        stop.set()
        await background
        assert len(seen) >= 10
        assert set(seen) == {200}, "no request refused while the key rotated"
        assert rotated.status_code == 201
        jwks = (await client.get("/.well-known/jwks.json")).json()
        kids = [k["kid"] for k in jwks["keys"]]
        assert rotated.json()["kid"] == kids[0]
        assert len(kids) >= 2
        for key in jwks["keys"]:
            assert "d" not in key, "never publish a private key"
    # The old operator token (signed before the rotation) still works everywhere...
    assert await whoami_everywhere(stack, operator_headers) == dict.fromkeys(SERVICES, 200)
    # ...and a token signed with the new key is accepted at once (unknown kid -> refetch).
    from tenantry_testkit.fixtures import operator_token

    fresh = await operator_token(stack)
    # Each service refetches the JWKS on the unknown kid (at most once a second).
    await eventually(
        lambda: _when(whoami_everywhere(stack, bearer(fresh)), lambda s: set(s.values()) == {200}),
        timeout=10,
        message="a token of the new key accepted by all five services",
    )


async def _when(probe: Any, condition: Any) -> Any:
    value = await probe
    return value if condition(value) else None


async def test_a_revoked_key_cannot_replay_an_idempotent_response(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    created = await create_key(
        stack, operator_headers, tenant_id, ["apikeys:read", "apikeys:write"]
    )
    key, key_id = created["key"], created["api_key"]["key_id"]
    await eventually(
        lambda: _when(whoami_everywhere(stack, bearer(key)), lambda s: s["identity"] == 200),
        timeout=30,
        message="the key accepted by identity",
    )
    async with httpx.AsyncClient(base_url=stack.service_url("identity"), timeout=10) as client:
        url = f"/v1/tenants/{tenant_id}/api-keys"
        headers = {**bearer(key), "Idempotency-Key": str(uuid4())}
        body = {"name": "child", "scopes": ["tenant:read"]}
        first = await client.post(url, json=body, headers=headers)
        assert first.status_code == 201, first.text
        replay = await client.post(url, json=body, headers=headers)
        assert replay.headers.get("idempotent-replayed") == "true"
        assert (await client.delete(f"{url}/{key_id}", headers=operator_headers)).status_code == 200
        await eventually(
            lambda: _when(whoami_everywhere(stack, bearer(key)), lambda s: s["identity"] == 401),
            timeout=30,
            message="the key refused by identity",
        )
        after = await client.post(url, json=body, headers=headers)
        assert after.status_code == 401, "no stored response for a revoked credential"
        assert "idempotent-replayed" not in after.headers


async def test_disabling_an_account_ends_its_tokens_sessions_and_personal_keys_everywhere(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    email, password = f"d-{uuid4().hex[:8]}@example.com", "correct horse battery staple"
    async with httpx.AsyncClient(base_url=stack.service_url("identity"), timeout=10) as client:
        made = await client.post(
            f"/v1/tenants/{tenant_id}/accounts",
            headers=operator_headers,
            json={"email": email, "password": password, "role": "member"},
        )
        account_id = made.json()["account_id"]
        login = {"email": email, "password": password, "tenant_id": tenant_id}
        session = (await client.post("/v1/sessions", json=login)).json()
        token = session["access_token"]
        await eventually(
            lambda: _when(
                whoami_everywhere(stack, bearer(token)), lambda s: set(s.values()) == {200}
            ),
            timeout=30,
            message="the user's token accepted everywhere",
        )
        disabled = await client.post(
            f"/v1/tenants/{tenant_id}/accounts/{account_id}/disable",
            headers=operator_headers,
            json={"reason": "left"},
        )
        assert disabled.status_code == 200
        assert disabled.json()["status"] == "disabled"
        again = await client.post(
            f"/v1/tenants/{tenant_id}/accounts/{account_id}/disable",
            headers=operator_headers,
            json={},
        )
        assert again.status_code == 409
        await eventually(
            lambda: _when(
                whoami_everywhere(stack, bearer(token)), lambda s: set(s.values()) == {401}
            ),
            timeout=30,
            message="the disabled user's unexpired token refused everywhere",
        )
        assert (await client.post("/v1/sessions", json=login)).status_code == 401
        refresh = await client.post(
            "/v1/sessions/refresh", json={"refresh_token": session["refresh_token"]}
        )
        assert refresh.status_code == 401


async def test_api_key_last_used_time_reaches_identity_from_any_service(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    created = await create_key(stack, operator_headers, tenant_id, ["apikeys:read"])
    key = created["key"]
    assert created["api_key"]["last_used_at"] is None
    async with httpx.AsyncClient(timeout=10) as client:

        async def used_via_webhooks() -> bool:
            r = await client.get(f"{stack.service_url('webhooks')}/v1/whoami", headers=bearer(key))
            return r.status_code == 200

        await eventually(used_via_webhooks, timeout=30, message="the key accepted by webhooks")

        async def last_used() -> str | None:
            keys = (
                await client.get(
                    f"{stack.service_url('identity')}/v1/tenants/{tenant_id}/api-keys",
                    headers=operator_headers,
                )
            ).json()
            value: str | None = keys[0]["last_used_at"]
            return value

        stamp = await eventually(
            last_used, timeout=60, interval=0.5, message="last_used_at recorded by identity"
        )
        assert stamp.startswith(str(datetime.now(UTC).year))


async def test_no_tenant_scoped_route_of_any_service_serves_another_tenant(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    """Walk every /v1/tenants/{tenant_id}/... route of every service's OpenAPI with a key of
    tenant A that holds every scope: each one, every method, answers 404 for tenant B."""
    from tenantry_identity.domain import KNOWN_SCOPES

    tenant_a = await new_tenant(stack, operator_headers)
    tenant_b = await new_tenant(stack, operator_headers)
    key = (await create_key(stack, operator_headers, tenant_a, sorted(KNOWN_SCOPES)))["key"]
    await eventually(
        lambda: _when(whoami_everywhere(stack, bearer(key)), lambda s: set(s.values()) == {200}),
        timeout=30,
        message="key of A accepted",
    )
    walked = 0
    async with httpx.AsyncClient(timeout=10) as client:
        for service in SERVICES:
            base = stack.service_url(service)
            spec = (await client.get(f"{base}/schema/openapi.json")).json()
            for path, item in spec["paths"].items():
                if "{tenant_id}" not in path:
                    continue
                for method in item:
                    if method.upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                        continue
                    url = base + path.replace("{tenant_id}", tenant_b).replace(
                        "{account_id}", str(uuid4())
                    ).replace("{key_id}", "key_x")
                    r = await client.request(method.upper(), url, headers=bearer(key), json={})
                    assert r.status_code == 404, (service, method, path, r.status_code)
                    walked += 1
    assert walked >= 8
