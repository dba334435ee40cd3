"""Email verification end to end: the worker mails the link over real SMTP to the local
sink, the test reads it from the delivered message, and the link works once."""

from __future__ import annotations

import httpx
import pytest
from uuid_utils.compat import uuid4

from tenantry_testkit.mailbox import Mailbox, links
from tenantry_testkit.stack import REPO, Stack

from .test_identity import bearer, new_tenant

pytestmark = pytest.mark.kafka
PASSWORD = "correct horse battery staple"


async def test_verification_round_trip_through_smtp(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    mailbox = Mailbox(REPO / ".local" / "mail")
    tenant_id = await new_tenant(stack, operator_headers)
    email = f"admin-{uuid4().hex[:8]}@example.com"
    async with httpx.AsyncClient(base_url=stack.service_url("identity"), timeout=10) as client:
        made = await client.post(
            f"/v1/tenants/{tenant_id}/accounts",
            headers=operator_headers,
            json={"email": email, "password": PASSWORD, "role": "admin"},
        )
        assert made.status_code == 201
        account_id = made.json()["account_id"]
        assert made.json()["email_verified"] is False

        message = await mailbox.wait_for(email, subject_contains="Verify", timeout=30)
        (link,) = links(message)
        assert link.startswith(f"{stack.service_url('identity')}/v1/email-verifications/confirm")
        token = link.split("token=", 1)[1]
        page = await client.get(link)
        assert page.status_code == 200, "opening the link changes nothing (mail scanners)"

        login = {"email": email, "password": PASSWORD, "tenant_id": tenant_id}
        unverified = (await client.post("/v1/sessions", json=login)).json()["access_token"]
        refused = await client.post(
            f"/v1/tenants/{tenant_id}/api-keys",
            headers=bearer(unverified),
            json={"name": "k", "scopes": ["tenant:read"]},
        )
        assert refused.status_code == 403
        assert refused.json()["type"].endswith("/email-not-verified")
        assert (
            await client.get(f"/v1/tenants/{tenant_id}/accounts", headers=bearer(unverified))
        ).status_code == 200, "reads allowed"

        too_soon = await client.post(
            f"/v1/tenants/{tenant_id}/accounts/{account_id}/verification-email",
            headers=bearer(unverified),
        )
        assert too_soon.status_code == 429
        assert int(too_soon.headers["retry-after"]) > 0

        forged = await client.post("/v1/email-verifications", json={"token": token[:-3] + "abc"})
        assert forged.status_code == 404
        assert forged.headers["content-type"].startswith("application/problem+json")
        ok = await client.post("/v1/email-verifications", json={"token": token})
        assert ok.status_code == 200
        assert ok.json() == {"account_id": account_id, "email_verified": True}
        again = await client.post("/v1/email-verifications", json={"token": token})
        assert again.status_code == 410

        verified = (await client.post("/v1/sessions", json=login)).json()["access_token"]
        created = await client.post(
            f"/v1/tenants/{tenant_id}/api-keys",
            headers=bearer(verified),
            json={"name": "k", "scopes": ["tenant:read"]},
        )
        assert created.status_code == 201
        already = await client.post(
            f"/v1/tenants/{tenant_id}/accounts/{account_id}/verification-email",
            headers=bearer(verified),
        )
        assert already.status_code == 409


async def test_a_tenant_created_with_an_owner_email_onboards_its_owner(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    """The first admin without SSO: tenant.created -> owner account -> invitation mail ->
    the link sets the password -> the owner signs in with a verified address."""
    mailbox = Mailbox(REPO / ".local" / "mail")
    owner = f"owner-{uuid4().hex[:8]}@Example.com"
    async with httpx.AsyncClient(timeout=10) as client:
        made = await client.post(
            f"{stack.service_url('tenancy')}/v1/tenants",
            headers=operator_headers,
            json={"name": "Onboard", "slug": f"ob-{uuid4().hex[:10]}", "owner_email": owner},
        )
        assert made.status_code == 201, made.text
        tenant_id = made.json()["tenant_id"]
        bad = await client.post(
            f"{stack.service_url('tenancy')}/v1/tenants",
            headers=operator_headers,
            json={"name": "Bad", "slug": f"ob-{uuid4().hex[:10]}", "owner_email": "not-an-email"},
        )
        assert bad.status_code == 400

        message = await mailbox.wait_for(
            owner.lower().replace("example.com", "example.com"),
            subject_contains="Verify",
            timeout=30,
        )
        token = links(message)[0].split("token=", 1)[1]
        identity = stack.service_url("identity")
        no_password = await client.post(f"{identity}/v1/email-verifications", json={"token": token})
        assert no_password.status_code == 400
        assert no_password.json()["type"].endswith("/password-required")
        done = await client.post(
            f"{identity}/v1/email-verifications", json={"token": token, "password": PASSWORD}
        )
        assert done.status_code == 200
        session = await client.post(
            f"{identity}/v1/sessions",
            json={"email": owner, "password": PASSWORD, "tenant_id": tenant_id},
        )
        assert session.status_code == 201
        me = (
            await client.get(
                f"{identity}/v1/whoami", headers=bearer(session.json()["access_token"])
            )
        ).json()
        assert me["roles"] == ["owner"]
        assert me["email_verified"] is True
