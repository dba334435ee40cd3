"""Announced changes of the processing terms (issue 19 §2; docs/legal/README.md), on the
real stack: the operator announces a sub-processor change; the tenant's webhook endpoint
receives legal.subprocessor_changed (signed), its subscribed owner gets the mail and its
unsubscribed admin does not; an owner objects once within the notice period, and the
operator sees it; the objection is in the tenant's audit log; bad announcements and
objections change nothing."""

from __future__ import annotations

import json
from email.message import EmailMessage
from typing import Any

import httpx
from uuid_utils.compat import uuid4

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.mailbox import Mailbox, recipients
from tenantry_testkit.receiver import Receiver
from tenantry_testkit.stack import REPO, Stack

from .test_audit_log import account_of, entry_of_request
from .test_offboarding import tenant_with_people

CHANGE = {
    "name": "Pager Inc",
    "change": "added",
    "purpose": "on-call alerts",
    "country": "US",
    "transfer_mechanism": "EU SCCs Module 3",
}


async def test_a_change_is_announced_delivered_mailed_and_objected_to(
    stack: Stack, operator_headers: dict[str, str], receiver: Receiver
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    tenancy, identity = stack.service_url("tenancy"), stack.service_url("identity")
    owner, admin = tenant.headers["owner"], tenant.headers["admin"]
    owner_id = account_of(owner)
    mailbox = Mailbox(REPO / ".local" / "mail")
    async with httpx.AsyncClient(timeout=15) as http:
        # The owner subscribes to legal notices; the admin does not.
        subscribed = await http.put(
            f"{identity}/v1/tenants/{tenant.tenant_id}/accounts/{owner_id}"
            "/subscriptions/legal-notices",
            headers=owner,
        )
        assert subscribed.status_code == 200, subscribed.text
        hooked = await http.post(
            f"{stack.service_url('webhooks')}/v1/tenants/{tenant.tenant_id}/webhooks/endpoints",
            headers=owner,
            json={"url": f"{receiver.url}/ok/legal", "event_types": ["legal.subprocessor_changed"]},
        )
        assert hooked.status_code == 201, hooked.text

        # Bad announcements: a clear problem, nothing announced.
        before = (await http.get(f"{tenancy}/v1/legal/notices", headers=operator_headers)).json()
        for body, status in (
            ({"kind": "rumour", "summary": "x", "changes": [CHANGE]}, 400),
            ({"kind": "subprocessors", "summary": "x", "changes": []}, 422),
            ({"kind": "subprocessors", "summary": "  ", "changes": [CHANGE]}, 422),
            (
                {
                    "kind": "subprocessors",
                    "summary": "x",
                    "changes": [{**CHANGE, "country": "usa"}],
                },
                422,
            ),
            (
                {
                    "kind": "subprocessors",
                    "summary": "x",
                    "changes": [{**CHANGE, "change": "moved"}],
                },
                422,
            ),
            ({"kind": "subprocessors", "summary": "x", "changes": [CHANGE], "notice_days": 0}, 422),
            ({"kind": "document", "summary": "x", "document": "dpa", "version": "1999-01-01"}, 422),
        ):
            r = await http.post(f"{tenancy}/v1/legal/notices", json=body, headers=operator_headers)
            assert r.status_code == status, (body, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        refused = await http.post(
            f"{tenancy}/v1/legal/notices",
            json={"kind": "subprocessors", "summary": "x", "changes": [CHANGE]},
            headers=owner,
        )
        assert refused.status_code == 403, refused.text
        after = (await http.get(f"{tenancy}/v1/legal/notices", headers=operator_headers)).json()
        assert len(after) == len(before)

        summary = f"Pager Inc joins as a sub-processor ({uuid4().hex[:6]})"
        announced = await http.post(
            f"{tenancy}/v1/legal/notices",
            json={"kind": "subprocessors", "summary": summary, "changes": [CHANGE]},
            headers=operator_headers,
        )
        assert announced.status_code == 201, announced.text
        notice = announced.json()
        notice_id = notice["notice_id"]

    def delivered() -> list[dict[str, Any]]:
        bodies = [json.loads(r.body) for r in receiver.to("/ok/legal")]
        return [b for b in bodies if b["data"]["notice_id"] == notice_id]

    async def arrived() -> list[dict[str, Any]] | None:
        return delivered() or None

    (message,) = await eventually(arrived, timeout=90, message="legal.subprocessor_changed")
    assert message["type"] == "legal.subprocessor_changed"
    assert message["data"]["changes"][0]["name"] == "Pager Inc"
    assert message["data"]["effective_at"] == notice["effective_at"]

    def says(message: EmailMessage) -> str:
        return str(message.get("Subject", "")) + message.as_string()

    async def mailed() -> bool:
        return any(
            tenant.emails["owner"] in recipients(m)
            and m.get("X-Tenantry-Notice") == "legal-subprocessor-changed"
            and "Pager Inc" in says(m)
            for m in await mailbox.messages()
        )

    await eventually(mailed, timeout=60, message="the subscribed owner's mail")
    assert not any(
        tenant.emails["admin"] in recipients(m)
        and m.get("X-Tenantry-Notice") == "legal-subprocessor-changed"
        for m in await mailbox.messages()
    ), "the admin did not subscribe"

    objection = f"/v1/tenants/{tenant.tenant_id}/legal/notices/{notice_id}/objection"
    async with httpx.AsyncClient(timeout=15) as http:
        for who, headers, status in (
            ("member", tenant.headers["member"], 403),
            ("key", tenant.headers["key"], 403),
        ):
            r = await http.post(f"{tenancy}{objection}", json={"reason": "no"}, headers=headers)
            assert r.status_code == status, (who, r.text)
        empty = await http.post(f"{tenancy}{objection}", json={"reason": "  "}, headers=admin)
        assert empty.status_code == 422, empty.text
        request_id = f"objection-{uuid4()}"
        objected = await http.post(
            f"{tenancy}{objection}",
            json={"reason": "Our customers may not have data processed in the US."},
            headers={**admin, "X-Request-Id": request_id},
        )
        assert objected.status_code == 201, objected.text
        assert objected.json()["objected_at"] is not None
        again = await http.post(f"{tenancy}{objection}", json={"reason": "x"}, headers=owner)
        assert again.status_code == 409, again.text
        listed = await http.get(
            f"{tenancy}/v1/legal/notices/{notice_id}/objections", headers=operator_headers
        )
        assert listed.status_code == 200, listed.text
        (mine,) = [o for o in listed.json() if o["tenant_id"] == tenant.tenant_id]
        assert mine["objected_by"] == f"user:{account_of(admin)}"
        mine_view = await http.get(
            f"{tenancy}/v1/tenants/{tenant.tenant_id}/legal/notices", headers=owner
        )
        (copy,) = [n for n in mine_view.json() if n["notice"]["notice_id"] == notice_id]
        assert copy["objected_at"] is not None
    (entry,) = await entry_of_request(stack, tenant.tenant_id, owner, request_id)
    assert entry["action"] == "tenant.legal_objection"
    assert entry["actor"]["id"] == account_of(admin)
