"""Every operation that changes state, in every service, leaves an audit entry (issue 19
§3): the test reads each service's OpenAPI document, performs each state-changing
operation once for real (a successful call, with its own X-Request-Id), and finds the
entry that names that request in the tenant's audit log. An operation with no scenario
here fails the test, so a new route cannot ship unaudited; the few left out are listed
with the reason."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx

from tenantry_testkit.dns import LoopbackDns
from tenantry_testkit.fixtures import eventually
from tenantry_testkit.mailbox import Mailbox, links
from tenantry_testkit.receiver import Receiver
from tenantry_testkit.saml_idp import SamlIdp
from tenantry_testkit.stack import REPO, Stack

from .conftest import SERVICES
from .test_audit_log import account_of, entries
from .test_identity import bearer
from .test_offboarding import PASSWORD, Tenant, tenant_with_people
from .test_sso import User, code_of, dns, idp, saml_login_at_idp

__all__ = ["dns", "idp"]  # the fixtures, used by name

Operation = tuple[str, str]  # (method, OpenAPI path)

# Not a change in a tenant, or not one a single-region stack can make; each is covered
# elsewhere or has no tenant to audit it in.
NOT_WALKED: dict[Operation, str] = {
    ("POST", "/v1/operators/bootstrap"): "creates the platform's first operator: no tenant",
    ("POST", "/v1/signing-keys/rotate"): "the platform's token keys: no tenant",
    (
        "PUT",
        "/v1/plans/{plan_id}",
    ): "a plan's definition: no tenant (its tenants' limits_changed are)",
    ("PUT", "/v1/rate-plans/{plan_id}"): "a rate plan's definition: no tenant",
    ("DELETE", "/v1/rate-plans/{plan_id}"): "a rate plan's definition: no tenant",
    ("POST", "/v1/decisions"): "a rate-limit question, not a change",
    ("POST", "/v1/tenants/{tenant_id}/purge"): "deletes the tenant's log with the tenant",
    ("POST", "/v1/tenants/{tenant_id}/moves"): "needs two regions (tests/test_region_move.py)",
    ("POST", "/v1/legal/notices"): "told to every tenant: each one's entry names the operator",
    (
        "POST",
        "/v1/tenants/{tenant_id}/legal/notices/{notice_id}/objection",
    ): "needs a notice told to every tenant: tests/test_legal_notices.py checks its entry",
}
CHANGES = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Walk:
    """What the scenarios share: the tenant, its people, and what earlier steps made."""

    tenant: Tenant
    operator: dict[str, str]
    stack: Stack
    idp: SamlIdp
    dns: LoopbackDns
    receiver: Receiver
    http: httpx.AsyncClient
    identity_db: asyncpg.Pool  # as the superuser: the walk moves a record back in time
    made: dict[str, Any] = field(default_factory=dict)
    current: Operation = ("", "")  # the operation being walked
    # (request id, tenant whose log must hold it) for every call made
    calls: dict[Operation, tuple[str, str]] = field(default_factory=dict)

    def url(self, service: str, path: str) -> str:
        return self.stack.service_url(service) + path.replace("{tenant_id}", self.tenant.tenant_id)

    async def call(
        self,
        service: str,
        headers: dict[str, str],
        *,
        at: dict[str, Any] | None = None,
        json: Any = None,
        auth: Any = None,
    ) -> httpx.Response:
        """The walked operation itself (`current`), its path parameters from `at`, under its
        own request id."""
        method, path = self.current
        for name, value in (at or {}).items():
            path = path.replace(f"{{{name}}}", str(value))
        request_id = f"walk-{uuid4()}"
        r = await self.http.request(
            method,
            self.url(service, path),
            headers={**headers, "X-Request-Id": request_id},
            json=json,
            auth=auth,
        )
        assert r.status_code in (200, 201, 202, 204), (self.current, r.status_code, r.text[:300])
        self.calls[self.current] = (request_id, self.tenant.tenant_id)
        return r

    async def setup(self, service: str, path: str, headers: dict[str, str], json: Any) -> Any:
        """A call that prepares a walked one (not itself checked)."""
        r = await self.http.post(self.url(service, path), headers=headers, json=json)
        assert r.status_code in (200, 201, 202), (path, r.status_code, r.text[:300])
        return r.json() if r.content else None

    @property
    def owner(self) -> dict[str, str]:
        return self.tenant.headers["owner"]


Scenario = Callable[[Walk], Awaitable[None]]
SCENARIOS: dict[Operation, Scenario] = {}


def walks(method: str, path: str) -> Callable[[Scenario], Scenario]:
    def register(scenario: Scenario) -> Scenario:
        SCENARIOS[(method, path)] = scenario
        return scenario

    return register


TENANT = "/v1/tenants/{tenant_id}"


# ---------------------------------------------------------------------- identity: people


@walks("POST", f"{TENANT}/accounts")
async def create_account(w: Walk) -> None:
    email = f"walk-{uuid4().hex[:8]}@example.com"
    w.made["mailbox"] = Mailbox(REPO / ".local" / "mail")  # mail from now on
    body = {"email": email, "role": "member", "password": PASSWORD}
    r = await w.call("identity", w.owner, json=body)
    w.made["account"], w.made["account_email"] = r.json()["account_id"], email


@walks("POST", f"{TENANT}/accounts/{{account_id}}/verification-email")
async def resend_verification(w: Walk) -> None:
    # A resend waits a minute after the last mail (identity's rule): once the first one is
    # out, the walk moves its record back two minutes instead of waiting.
    mailbox: Mailbox = w.made["mailbox"]
    await mailbox.wait_for(w.made["account_email"], subject_contains="Verify", timeout=30)
    await w.identity_db.execute(
        """UPDATE email_verifications SET created_at = created_at - interval '2 minutes'
           WHERE account_id = $1""",
        UUID(w.made["account"]),
    )
    w.made["mailbox"] = Mailbox(REPO / ".local" / "mail")  # the resent mail from now on
    await w.call("identity", w.owner, at={"account_id": w.made["account"]})


@walks("POST", "/v1/email-verifications")
async def confirm_email(w: Walk) -> None:
    mailbox: Mailbox = w.made["mailbox"]
    mail = await mailbox.wait_for(w.made["account_email"], subject_contains="Verify", timeout=30)
    token = links(mail)[0].split("token=", 1)[1]
    await w.call("identity", {}, json={"token": token})


@walks("POST", f"{TENANT}/accounts/{{account_id}}/disable")
async def disable_account(w: Walk) -> None:
    await w.call("identity", w.owner, at={"account_id": w.made["account"]}, json={})


@walks("PUT", f"{TENANT}/accounts/{{account_id}}/subscriptions/{{topic}}")
async def subscribe(w: Walk) -> None:
    at = {"account_id": account_of(w.owner), "topic": "legal-notices"}
    await w.call("identity", w.owner, at=at)


@walks("DELETE", f"{TENANT}/accounts/{{account_id}}/subscriptions/{{topic}}")
async def unsubscribe(w: Walk) -> None:
    at = {"account_id": account_of(w.owner), "topic": "legal-notices"}
    await w.call("identity", w.owner, at=at)


@walks("POST", f"{TENANT}/api-keys")
async def create_key(w: Walk) -> None:
    r = await w.call("identity", w.owner, json={"name": "walk", "scopes": ["tenant:read"]})
    w.made["key_id"] = r.json()["api_key"]["key_id"]
    # ratelimit sets a key's policies once it knows the key (its projection)
    await known_to(w, "ratelimit", bearer(r.json()["key"]))


async def known_to(w: Walk, service: str, headers: dict[str, str]) -> None:
    await answers(w, service, headers, 200)


@walks("PUT", f"{TENANT}/api-keys/{{key_id}}/rate-policies")
async def key_policies(w: Walk) -> None:
    policy = {"policies": [{"name": "walk", "limit": 10, "period_seconds": 60, "burst": 10}]}
    await w.call("ratelimit", w.operator, at={"key_id": w.made["key_id"]}, json=policy)


@walks("DELETE", f"{TENANT}/api-keys/{{key_id}}")
async def revoke_key(w: Walk) -> None:
    await w.call("identity", w.owner, at={"key_id": w.made["key_id"]})


@walks("POST", f"{TENANT}/provisioned-accounts")
async def provision(w: Walk) -> None:
    scim = await w.setup(
        "identity", f"{TENANT}/api-keys", w.owner, {"name": "scim", "scopes": ["scim:write"]}
    )
    w.made["scim"] = bearer(scim["key"])
    await known_to(w, "identity", w.made["scim"])
    email = f"scim-{uuid4().hex[:8]}@example.com"
    r = await w.call("identity", w.made["scim"], json={"email": email})
    w.made["provisioned"] = r.json()["account_id"]


@walks("POST", f"{TENANT}/provisioned-accounts/{{account_id}}/deprovision")
async def deprovision(w: Walk) -> None:
    await w.call("identity", w.made["scim"], at={"account_id": w.made["provisioned"]})


@walks("POST", f"{TENANT}/provisioned-accounts/{{account_id}}/reprovision")
async def reprovision(w: Walk) -> None:
    await w.call("identity", w.made["scim"], at={"account_id": w.made["provisioned"]})


# ---------------------------------------------------------------------- identity: sessions


@walks("POST", "/v1/sessions")
async def sign_in(w: Walk) -> None:
    r = await w.call("identity", {}, json=w.tenant.login("member"))
    w.made["refresh"] = r.json()["refresh_token"]


@walks("POST", "/v1/sessions/refresh")
async def refresh(w: Walk) -> None:
    await w.call("identity", {}, json={"refresh_token": w.made["refresh"]})


# ---------------------------------------------------------------------- identity: SSO

CONNECTION = f"{TENANT}/sso/connections/{{connection_id}}"
DOMAIN = f"{TENANT}/sso/domains/{{domain}}"


@walks("POST", f"{TENANT}/sso/connections")
async def create_connection(w: Walk) -> None:
    body = {
        "kind": "saml",
        "name": "Walk IdP",
        "saml": {"metadata_url": w.idp.metadata_url},
        "attribute_mapping": {"roles": {"tenant-admins": "admin"}},
    }
    connection = (await w.call("identity", w.owner, json=body)).json()
    w.made["connection"] = connection["id"]
    w.idp.register_sp((await w.http.get(connection["saml"]["sp_metadata_url"])).text)


@walks("PATCH", CONNECTION)
async def change_connection(w: Walk) -> None:
    await w.call(
        "identity", w.owner, at={"connection_id": w.made["connection"]}, json={"name": "Walk 2"}
    )


@walks("POST", f"{CONNECTION}/metadata/refresh")
async def refresh_metadata(w: Walk) -> None:
    await w.call("identity", w.owner, at={"connection_id": w.made["connection"]})


@walks("POST", "/sso/saml/{connection_id}/acs")
async def acs(w: Walk) -> None:
    """The IdP's answer, posted by the browser to the ACS (a 303 to the product)."""
    action, fields = await saml_login_at_idp(w.http, w.stack, w.made["connection"])
    request_id = f"walk-{uuid4()}"
    answer = await w.http.post(action, data=fields, headers={"X-Request-Id": request_id})
    w.made["code"] = code_of(answer)
    w.calls[w.current] = (request_id, w.tenant.tenant_id)


@walks("POST", "/v1/sso/token")
async def exchange_code(w: Walk) -> None:
    product = ("product", w.stack.env["TENANTRY_SSO_CLIENT_SECRET"])
    r = await w.call("identity", {}, json={"code": w.made["code"]}, auth=product)
    w.made["sso_access"] = bearer(r.json()["tokens"]["access_token"])


@walks("POST", "/v1/sso/logout")
async def sso_logout(w: Walk) -> None:
    await w.call("identity", w.made["sso_access"], json={})


@walks("POST", f"{TENANT}/sso/domains")
async def claim_domain(w: Walk) -> None:
    domain = f"walk-{uuid4().hex[:8]}.example"
    w.made["domain"] = (await w.call("identity", w.owner, json={"domain": domain})).json()


@walks("POST", f"{DOMAIN}/verify")
async def verify_domain(w: Walk) -> None:
    claim = w.made["domain"]
    w.dns.set_txt(claim["txt_record_name"], [claim["txt_record_value"]])
    await w.call("identity", w.owner, at={"domain": claim["domain"]})


@walks("PATCH", DOMAIN)
async def route_domain(w: Walk) -> None:
    body = {"connection_id": w.made["connection"]}
    await w.call("identity", w.owner, at={"domain": w.made["domain"]["domain"]}, json=body)


@walks("DELETE", DOMAIN)
async def release_domain(w: Walk) -> None:
    await w.call("identity", w.owner, at={"domain": w.made["domain"]["domain"]})


@walks("DELETE", CONNECTION)
async def remove_connection(w: Walk) -> None:
    await w.call("identity", w.owner, at={"connection_id": w.made["connection"]})


# ---------------------------------------------------------------------- webhooks

ENDPOINT = f"{TENANT}/webhooks/endpoints/{{endpoint_id}}"


@walks("POST", f"{TENANT}/webhooks/endpoints")
async def create_endpoint(w: Walk) -> None:
    body = {"url": f"{w.receiver.url}/ok/walk", "event_types": ["tenant.limits_changed"]}
    r = await w.call("webhooks", w.owner, json=body)
    w.made["endpoint"] = r.json()["endpoint"]["endpoint_id"]


@walks("PATCH", ENDPOINT)
async def change_endpoint(w: Walk) -> None:
    at = {"endpoint_id": w.made["endpoint"]}
    await w.call("webhooks", w.owner, at=at, json={"description": "walked"})


@walks("POST", f"{ENDPOINT}/test")
async def send_test(w: Walk) -> None:
    r = await w.call("webhooks", w.owner, at={"endpoint_id": w.made["endpoint"]})
    w.made["message"] = r.json()["message_id"]


@walks("POST", f"{ENDPOINT}/messages/{{message_id}}/resend")
async def resend(w: Walk) -> None:
    at = {"endpoint_id": w.made["endpoint"], "message_id": w.made["message"]}
    await w.call("webhooks", w.owner, at=at)


@walks("POST", f"{ENDPOINT}/recover")
async def recover(w: Walk) -> None:
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    await w.call("webhooks", w.owner, at={"endpoint_id": w.made["endpoint"]}, json={"since": since})


@walks("POST", f"{ENDPOINT}/secret/rotate")
async def rotate(w: Walk) -> None:
    await w.call("webhooks", w.owner, at={"endpoint_id": w.made["endpoint"]})


@walks("DELETE", f"{TENANT}/webhooks/messages/{{message_id}}/content")
async def expunge(w: Walk) -> None:
    await w.call("webhooks", w.owner, at={"message_id": w.made["message"]})


@walks("DELETE", ENDPOINT)
async def remove_endpoint(w: Walk) -> None:
    await w.call("webhooks", w.owner, at={"endpoint_id": w.made["endpoint"]})


# ---------------------------------------------------------------------- ratelimit


@walks("PUT", f"{TENANT}/rate-policies")
async def tenant_policies(w: Walk) -> None:
    policy = {"policies": [{"name": "walk", "limit": 1000, "period_seconds": 60, "burst": 1000}]}
    await w.call("ratelimit", w.operator, json=policy)


# ---------------------------------------------------------------------- tenancy


@walks("POST", "/v1/tenants")
async def create_tenant(w: Walk) -> None:
    """The entry is in the new tenant's log."""
    body = {"name": "Walked", "slug": f"walk-{uuid4().hex[:10]}", "plan": "team"}
    r = await w.call("tenancy", w.operator, json=body)
    request_id, _ = w.calls[w.current]
    w.calls[w.current] = (request_id, r.json()["tenant_id"])


@walks("POST", f"{TENANT}/agreements")
async def accept_dpa(w: Walk) -> None:
    body = {"name": "Ada Lovelace", "title": "CTO", "email": "ada@example.com"}
    await w.call("tenancy", w.owner, json=body)


@walks("POST", f"{TENANT}/limit-overrides")
async def set_override(w: Walk) -> None:
    await w.call("tenancy", w.operator, json={"seats": 500})


@walks("DELETE", f"{TENANT}/limit-overrides/{{limit_name}}")
async def clear_override(w: Walk) -> None:
    await w.call("tenancy", w.operator, at={"limit_name": "seats"})


@walks("POST", f"{TENANT}/plan")
async def change_plan(w: Walk) -> None:
    await w.call("tenancy", w.operator, json={"plan": "business"})


@walks("POST", f"{TENANT}/exports")
async def request_export(w: Walk) -> None:
    export_id = (await w.call("tenancy", w.owner, json={})).json()["export_id"]
    w.made["export"] = export_id

    async def completed() -> bool:
        url = w.url("tenancy", f"{TENANT}/exports/{export_id}")
        view: dict[str, Any] = (await w.http.get(url, headers=w.owner)).json()
        return view.get("status") == "completed"

    await eventually(completed, timeout=90, interval=0.5, max_interval=2, message="the export")


@walks("POST", f"{TENANT}/exports/{{export_id}}/links")
async def make_link(w: Walk) -> None:
    r = await w.call("tenancy", w.owner, at={"export_id": w.made["export"]}, json={})
    w.made["link"] = r.json()["link_id"]


@walks("DELETE", f"{TENANT}/exports/{{export_id}}/links/{{link_id}}")
async def revoke_link(w: Walk) -> None:
    await w.call("tenancy", w.owner, at={"export_id": w.made["export"], "link_id": w.made["link"]})


@walks("POST", f"{TENANT}/erasures")
async def erase(w: Walk) -> None:
    await w.call("tenancy", w.owner, json={"account_id": w.made["account"], "reason": "walked"})


@walks("POST", f"{TENANT}/suspend")
async def suspend(w: Walk) -> None:
    await w.call("tenancy", w.operator, json={"reason": "walk"})
    # tenancy's guard learns of it through Kafka: wait, or a later step races the news.
    await answers(w, "tenancy", w.owner, 403)


@walks("POST", f"{TENANT}/reactivate")
async def reactivate(w: Walk) -> None:
    await w.call("tenancy", w.operator, json={"reason": "walk"})
    await answers(w, "tenancy", w.owner, 200)


async def answers(w: Walk, service: str, headers: dict[str, str], status: int) -> None:
    async def now() -> bool:
        url = w.stack.service_url(service) + "/v1/whoami"
        return (await w.http.get(url, headers=headers)).status_code == status

    await eventually(now, timeout=30, message=f"{service} answers {status}")


@walks("POST", f"{TENANT}/offboarding")
async def start_offboarding(w: Walk) -> None:
    await w.call("tenancy", w.owner, json={"reason": "walk", "confirm_slug": w.tenant.slug})


@walks("DELETE", f"{TENANT}/offboarding")
async def cancel_offboarding(w: Walk) -> None:
    await w.call("tenancy", w.owner)


async def state_changing_operations(stack: Stack) -> set[Operation]:
    found: set[Operation] = set()
    async with httpx.AsyncClient(timeout=10) as http:
        for service in SERVICES:
            spec = (await http.get(f"{stack.service_url(service)}/schema/openapi.json")).json()
            for path, item in spec["paths"].items():
                found |= {(m.upper(), path) for m in item if m.upper() in CHANGES}
    return found


async def test_every_state_change_in_every_service_leaves_an_audit_entry(
    stack: Stack,
    operator_headers: dict[str, str],
    idp: tuple[SamlIdp, User],
    dns: LoopbackDns,
    receiver: Receiver,
    superuser_dbs: dict[str, asyncpg.Pool],
) -> None:
    operations = await state_changing_operations(stack)
    walked = operations - NOT_WALKED.keys()
    assert not NOT_WALKED.keys() - operations, "an exclusion names no operation any more"
    missing = sorted(walked - SCENARIOS.keys())
    assert not missing, f"state-changing operations with no audit scenario: {missing}"
    assert not SCENARIOS.keys() - operations, "a scenario names no operation any more"

    tenant = await tenant_with_people(stack, operator_headers)
    server, _ = idp
    async with httpx.AsyncClient(timeout=30) as http:
        walk = Walk(
            tenant, operator_headers, stack, server, dns, receiver, http, superuser_dbs["identity"]
        )
        for op, scenario in SCENARIOS.items():  # in the order above: later ones use earlier
            walk.current = op
            await scenario(walk)
    assert walk.calls.keys() == SCENARIOS.keys()

    async def unaudited() -> list[tuple[Operation, str]] | None:
        left = []
        for op, (request_id, tenant_id) in walk.calls.items():
            found = await entries(stack, tenant_id, operator_headers, request_id=request_id)
            if not found:
                left.append((op, request_id))
            for entry in found:
                assert entry["actor"]["request_id"] == request_id
                assert entry["actor"]["kind"] != "system", (op, entry)
        return left or None

    async def all_audited() -> bool:
        return await unaudited() is None

    try:
        await eventually(all_audited, timeout=60, interval=1, max_interval=2, message="entries")
    except AssertionError:
        raise AssertionError(f"operations that left no audit entry: {await unaudited()}") from None
