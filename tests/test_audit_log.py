"""The customer-facing audit log (issue 19 §3; docs/audit.md), on the real stack: actions in
several services become entries naming who (kind, id, IP, user agent, request id), what,
to what and with which outcome; filters, paging and both exports agree; the hash chain
verifies with the customer's tool and shows a changed or removed entry; a tenant never
sees another's entries; entries stream as audit.recorded to an endpoint that opted in and
to no other; a person's erasure erases their IP and user agent while the chain still
verifies; retention cuts a prefix and leaves a chain that verifies from its anchor."""

from __future__ import annotations

import base64
import csv
import io
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from uuid_utils.compat import uuid4

from tenantry_events.storage import PostgresOutbox
from tenantry_platform.clock import FakeClock
from tenantry_tenancy.audit.consumer import AuditRetention
from tenantry_tenancy.audit.store import AuditStore
from tenantry_tenancy.store import PlanStore
from tenantry_testkit.fixtures import eventually, running_service_db
from tenantry_testkit.receiver import Receiver
from tenantry_testkit.stack import Stack
from tools.verify_audit_chain import check

from .test_lifecycle_sagas import verified_claims
from .test_offboarding import Tenant, tenant_with_people

AGENT = "audit-test/1.0 (+loopback)"


def account_of(headers: dict[str, str]) -> str:
    """The account id an access token was issued to (its `sub`)."""
    token = headers["Authorization"].split(" ", 1)[1]
    claims = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["sub"])


def audit_url(stack: Stack, tenant_id: str) -> str:
    return f"{stack.service_url('tenancy')}/v1/tenants/{tenant_id}/audit-events"


async def entries(
    stack: Stack, tenant_id: str, headers: dict[str, str], **params: Any
) -> list[dict[str, Any]]:
    """Every entry matching, following the cursor."""
    found: list[dict[str, Any]] = []
    cursor = None
    async with httpx.AsyncClient(timeout=15) as http:
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            r = await http.get(audit_url(stack, tenant_id), params=query, headers=headers)
            assert r.status_code == 200, r.text
            page = r.json()
            found.extend(page["data"])
            cursor = page["next_cursor"]
            if not cursor:
                return found


async def entry_of_request(
    stack: Stack, tenant_id: str, headers: dict[str, str], request_id: str
) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]] | None:
        return await entries(stack, tenant_id, headers, request_id=request_id) or None

    return await eventually(probe, timeout=30, message=f"an audit entry of {request_id}")


async def export(stack: Stack, tenant_id: str, headers: dict[str, str], fmt: str) -> str:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(
            audit_url(stack, tenant_id), params={"format": fmt, "order": "asc"}, headers=headers
        )
    assert r.status_code == 200, r.text
    return r.text


async def chain_state(stack: Stack, tenant_id: str, headers: dict[str, str]) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=15) as http:
        r = await http.get(f"{audit_url(stack, tenant_id)}/chain", headers=headers)
    assert r.status_code == 200, r.text
    state: dict[str, Any] = r.json()
    return state


async def verified(stack: Stack, tenant: Tenant, headers: dict[str, str]) -> str | None:
    """The customer's procedure (tools/verify_audit_chain.py) over a fresh export. The
    log may grow between reading its head and exporting it (a saga's late events): then
    the export goes past the head read, and both are read again."""
    for _ in range(5):
        state = await chain_state(stack, tenant.tenant_id, headers)
        lines = (await export(stack, tenant.tenant_id, headers, "ndjson")).splitlines()
        exported = [json.loads(line) for line in lines if line]
        grew = bool(exported) and exported[-1]["seq"] > state["head_seq"]
        if not grew:
            head = (state["head_seq"], state["head_hash"])
            return check(exported, state["anchor_hash"], head)
    raise AssertionError("the log kept growing while it was read")


async def settled(stack: Stack, tenant: Tenant, headers: dict[str, str]) -> None:
    """Wait until the log stops growing (the set-up's events are all in)."""
    last = -1

    async def probe() -> bool:
        nonlocal last
        head = int((await chain_state(stack, tenant.tenant_id, headers))["head_seq"])
        steady, last = head == last, head
        return steady

    await eventually(probe, timeout=30, interval=0.5, max_interval=1.0, message="a quiet log")


async def test_actions_in_every_service_are_entries_that_name_who_what_and_where(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    owner = tenant.headers["owner"]
    identity = stack.service_url("identity")
    owner_id = account_of(owner)
    async with httpx.AsyncClient(timeout=15) as http:
        made = await http.post(
            f"{identity}/v1/tenants/{tenant.tenant_id}/api-keys",
            headers={
                **owner,
                "X-Request-Id": (key_request := f"audit-{uuid4()}"),
                "User-Agent": AGENT,
            },
            json={"name": "ci", "scopes": ["tenant:read"]},
        )
        assert made.status_code == 201, made.text
        hook = await http.post(
            f"{stack.service_url('webhooks')}/v1/tenants/{tenant.tenant_id}/webhooks/endpoints",
            headers={**tenant.headers["key"], "X-Request-Id": (hook_request := f"audit-{uuid4()}")},
            json={"url": "http://127.0.0.1:9/hook", "event_types": ["tenant.suspended"]},
        )
        assert hook.status_code == 201, hook.text
        suspended = await http.post(
            f"{stack.service_url('tenancy')}/v1/tenants/{tenant.tenant_id}/suspend",
            headers={**operator_headers, "X-Request-Id": (suspend_request := f"audit-{uuid4()}")},
            json={"reason": "audit test"},
        )
        assert suspended.status_code == 200, suspended.text
        back = await http.post(
            f"{stack.service_url('tenancy')}/v1/tenants/{tenant.tenant_id}/reactivate",
            headers=operator_headers,
            json={"reason": "audit test over"},
        )
        assert back.status_code == 200, back.text
        refused = await http.post(
            f"{identity}/v1/sessions",
            headers={"X-Request-Id": (failed_request := f"audit-{uuid4()}"), "User-Agent": AGENT},
            json={**tenant.login("member"), "password": "not the password at all"},
        )
        assert refused.status_code == 401, refused.text

    (by_owner,) = await entry_of_request(stack, tenant.tenant_id, owner, key_request)
    assert by_owner["action"] == "apikey.created"
    assert by_owner["outcome"] == "success"
    assert by_owner["actor"]["kind"] == "user"
    assert by_owner["actor"]["id"] == owner_id
    assert by_owner["actor"]["ip"] == "127.0.0.1"
    assert by_owner["actor"]["user_agent"] == AGENT
    assert by_owner["actor"]["request_id"] == key_request
    assert by_owner["target"]["type"] == "api_key"
    assert by_owner["target"]["id"] == made.json()["api_key"]["key_id"]
    assert "key_sha256" not in by_owner["details"], "no credential digest in the log"
    assert made.json()["key"] not in json.dumps(by_owner)

    (by_key,) = await entry_of_request(stack, tenant.tenant_id, owner, hook_request)
    assert by_key["action"] == "webhook.endpoint_changed"
    assert by_key["actor"]["kind"] == "api_key"
    assert by_key["details"]["change"] == "created"

    by_operator = await entry_of_request(stack, tenant.tenant_id, owner, suspend_request)
    assert [e["action"] for e in by_operator] == ["tenant.suspended"]
    assert by_operator[0]["actor"]["kind"] == "operator"

    (failure,) = await entry_of_request(stack, tenant.tenant_id, owner, failed_request)
    assert failure["action"] == "user.sign_in_failed"
    assert failure["outcome"] == "failure"
    assert failure["actor"]["user_agent"] == AGENT
    assert "not the password" not in json.dumps(failure)

    # The filters agree with the whole log, and paging walks it once.
    await settled(stack, tenant, owner)
    everything = await entries(stack, tenant.tenant_id, owner)
    assert [e["seq"] for e in everything] == sorted((e["seq"] for e in everything), reverse=True)
    paged = await entries(stack, tenant.tenant_id, owner, limit=3)
    assert [e["id"] for e in paged] == [e["id"] for e in everything]
    ascending = await entries(stack, tenant.tenant_id, owner, order="asc", limit=200)
    assert [e["seq"] for e in ascending] == list(range(1, len(everything) + 1))
    checks: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
        ({"action": "apikey.created"}, lambda e: e["action"] == "apikey.created"),
        ({"action": "tenant.*"}, lambda e: e["action"].startswith("tenant.")),
        ({"actor_kind": "operator"}, lambda e: e["actor"]["kind"] == "operator"),
        ({"outcome": "failure"}, lambda e: e["outcome"] == "failure"),
        ({"target_type": "webhook_endpoint"}, lambda e: e["target"]["type"] == "webhook_endpoint"),
        (
            {"actor_id": by_owner["actor"]["id"]},
            lambda e: e["actor"]["id"] == by_owner["actor"]["id"],
        ),
        (
            {"since": by_operator[0]["occurred_at"]},
            lambda e: e["occurred_at"] >= by_operator[0]["occurred_at"],
        ),
        (
            {"until": by_operator[0]["occurred_at"]},
            lambda e: e["occurred_at"] < by_operator[0]["occurred_at"],
        ),
    ]
    for params, keep in checks:
        chosen = await entries(stack, tenant.tenant_id, owner, **params)
        assert [e["id"] for e in chosen] == [e["id"] for e in everything if keep(e)], params
        assert chosen, params

    # Both exports hold the same entries in chain order, and the chain verifies.
    ndjson = [
        json.loads(line)
        for line in (await export(stack, tenant.tenant_id, owner, "ndjson")).splitlines()
    ]
    assert [e["id"] for e in ndjson] == [e["id"] for e in ascending]
    rows = list(csv.DictReader(io.StringIO(await export(stack, tenant.tenant_id, owner, "csv"))))
    assert [r["id"] for r in rows] == [e["id"] for e in ascending]
    assert {r["record"] for r in rows} == {e["chain"]["record"] for e in ascending}
    assert await verified(stack, tenant, owner) is None


async def test_the_log_is_the_tenants_alone_and_refuses_bad_questions(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    other = await tenant_with_people(stack, operator_headers)
    url = audit_url(stack, tenant.tenant_id)
    async with httpx.AsyncClient(timeout=15) as http:
        for who, headers, status in (
            ("member", tenant.headers["member"], 403),
            ("other tenant's owner", other.headers["owner"], 404),
            ("other tenant's key", other.headers["key"], 404),
            ("nobody", {}, 401),
        ):
            r = await http.get(url, headers=headers)
            assert r.status_code == status, (who, r.text)
        for who in ("admin", "key"):
            r = await http.get(url, headers=tenant.headers[who])
            assert r.status_code == 200, (who, r.text)
        for params in (
            {"actor_kind": "robot"},
            {"outcome": "maybe"},
            {"limit": "0"},
            {"limit": "201"},
            {"cursor": "not-a-cursor"},
            {"since": "2026-12-07T10:00:00"},  # no time zone
            {"since": "2026-12-08T00:00:00Z", "until": "2026-12-07T00:00:00Z"},
            {"format": "xml"},
            {"format": "csv", "limit": "5"},
            {"order": "sideways"},
            {"action": "x" * 201},
        ):
            r = await http.get(url, params=params, headers=tenant.headers["owner"])
            assert r.status_code == 400, (params, r.text)
            assert r.headers["content-type"].startswith("application/problem+json"), params
    await settled(stack, other, other.headers["owner"])
    theirs = await entries(stack, other.tenant_id, other.headers["owner"])
    assert theirs
    for entry in theirs:
        assert json.loads(entry["chain"]["record"])["tenant_id"] == other.tenant_id
    mine = {e["id"] for e in await entries(stack, tenant.tenant_id, tenant.headers["owner"])}
    assert mine.isdisjoint(e["id"] for e in theirs)


async def test_a_changed_or_removed_entry_breaks_the_chain(
    stack: Stack, operator_headers: dict[str, str], superuser_dbs: dict[str, asyncpg.Pool]
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    owner = tenant.headers["owner"]
    await settled(stack, tenant, owner)
    assert await verified(stack, tenant, owner) is None
    # The head comes signed too: what the platform said, checked against its published key.
    state = await chain_state(stack, tenant.tenant_id, owner)
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=15) as http:
        claims = await verified_claims(http, state["signed"])
    assert claims["typ"] == "tenantry.audit-chain-head"
    assert (claims["tenant_id"], claims["head_seq"], claims["head_hash"]) == (
        tenant.tenant_id,
        state["head_seq"],
        state["head_hash"],
    )
    tenancy_db = superuser_dbs["tenancy"]
    tid = UUID(tenant.tenant_id)
    # Someone with database access changes what an entry says...
    original = await tenancy_db.fetchval(
        "SELECT record FROM audit_entries WHERE tenant_id = $1 AND seq = 2", tid
    )
    await tenancy_db.execute(
        "UPDATE audit_entries SET record = replace(record, '\"success\"', '\"failure\"')"
        " WHERE tenant_id = $1 AND seq = 2",
        tid,
    )
    broken = await verified(stack, tenant, owner)
    assert broken is not None
    assert "entry 2" in broken
    await tenancy_db.execute(
        "UPDATE audit_entries SET record = $2 WHERE tenant_id = $1 AND seq = 2", tid, original
    )
    assert await verified(stack, tenant, owner) is None
    # ... or removes one.
    await tenancy_db.execute("DELETE FROM audit_entries WHERE tenant_id = $1 AND seq = 3", tid)
    broken = await verified(stack, tenant, owner)
    assert broken is not None
    assert "missing" in broken


async def test_entries_stream_to_the_endpoint_that_opted_in_and_no_other(
    stack: Stack, operator_headers: dict[str, str], receiver: Receiver
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    owner = tenant.headers["owner"]
    endpoints = f"{stack.service_url('webhooks')}/v1/tenants/{tenant.tenant_id}/webhooks/endpoints"
    async with httpx.AsyncClient(timeout=15) as http:
        for path, types in (("/ok/siem", ["audit.recorded"]), ("/ok/all", ["*"])):
            r = await http.post(
                endpoints,
                headers=owner,
                json={"url": f"{receiver.url}{path}", "event_types": types},
            )
            assert r.status_code == 201, r.text
        wildcard = await http.post(
            endpoints, headers=owner, json={"url": f"{receiver.url}/x", "event_types": ["audit.*"]}
        )
        assert wildcard.status_code == 422, wildcard.text
        overridden = await http.post(
            f"{stack.service_url('tenancy')}/v1/tenants/{tenant.tenant_id}/limit-overrides",
            headers={**operator_headers, "X-Request-Id": (request := f"audit-{uuid4()}")},
            json={"seats": 400},
        )
        assert overridden.status_code == 200, overridden.text
    (entry,) = await entry_of_request(stack, tenant.tenant_id, owner, request)

    def streamed() -> list[dict[str, Any]]:
        bodies = [json.loads(r.body) for r in receiver.to("/ok/siem")]
        return [b for b in bodies if b["data"]["entry_id"] == entry["id"]]

    async def arrived() -> list[dict[str, Any]] | None:
        return streamed() or None

    (message,) = await eventually(arrived, timeout=30, message="audit.recorded at the SIEM")
    assert message["type"] == "audit.recorded"
    data = message["data"]
    assert (data["seq"], data["hash"], data["record"]) == (
        entry["seq"],
        entry["chain"]["hash"],
        entry["chain"]["record"],
    )
    assert data["actor"]["kind"] == "operator"
    assert data["actor"]["ip"] == "127.0.0.1"

    async def change_on_all() -> bool:
        bodies = [json.loads(r.body) for r in receiver.to("/ok/all")]
        return any(b["type"] == "tenant.limits_changed" for b in bodies)

    await eventually(change_on_all, timeout=30, message="tenant.limits_changed on *")
    assert all(json.loads(r.body)["type"] != "audit.recorded" for r in receiver.to("/ok/all"))


async def test_erasing_a_person_erases_their_address_and_the_chain_still_holds(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    owner = tenant.headers["owner"]
    identity = stack.service_url("identity")
    member_id = account_of(tenant.headers["member"])
    async with httpx.AsyncClient(timeout=15) as http:
        signed_in = await http.post(
            f"{identity}/v1/sessions",
            headers={"X-Request-Id": (request := f"audit-{uuid4()}"), "User-Agent": AGENT},
            json=tenant.login("member"),
        )
        assert signed_in.status_code == 201, signed_in.text
    (entry,) = await entry_of_request(stack, tenant.tenant_id, owner, request)
    assert entry["actor"]["id"] == member_id
    assert entry["actor"]["ip"] == "127.0.0.1"
    async with httpx.AsyncClient(timeout=15) as http:
        erased = await http.post(
            f"{stack.service_url('tenancy')}/v1/tenants/{tenant.tenant_id}/erasures",
            headers=owner,
            json={"account_id": member_id, "reason": "GDPR Art. 17 request"},
        )
        assert erased.status_code in (201, 202), erased.text

    async def gone() -> dict[str, Any] | None:
        (now,) = await entries(stack, tenant.tenant_id, owner, request_id=request)
        return now if now["actor"]["ip"] == "[erased]" else None

    now = await eventually(gone, timeout=60, message="the member's address erased")
    assert now["actor"]["user_agent"] == "[erased]"
    assert now["chain"] == entry["chain"], "the chain holds the sealed form, unchanged"
    assert AGENT not in now["chain"]["record"]
    assert await verified(stack, tenant, owner) is None
    # The owner's own entries still read.
    mine = await entries(stack, tenant.tenant_id, owner, actor_kind="operator")
    assert all(e["actor"]["ip"] != "[erased]" for e in mine)


async def test_retention_cuts_a_prefix_and_the_rest_verifies_from_its_anchor(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    owner = tenant.headers["owner"]
    tid = UUID(tenant.tenant_id)
    async with httpx.AsyncClient(timeout=15) as http:
        r = await http.post(
            f"{stack.service_url('tenancy')}/v1/tenants/{tenant.tenant_id}/limit-overrides",
            headers=operator_headers,
            json={"audit_retention_days": 30},
        )
        assert r.status_code == 200, r.text
    await settled(stack, tenant, owner)
    before = await entries(stack, tenant.tenant_id, owner, order="asc", limit=200)
    middle = before[len(before) // 2]
    # Thirty days after the middle entry was recorded, with the retention's own clock.
    recorded = datetime.fromisoformat(middle["recorded_at"])
    clock = FakeClock((recorded + timedelta(days=30, microseconds=1)).timestamp())
    async with running_service_db(stack, "tenancy") as db:
        plans = PlanStore(PostgresOutbox(db), source="/tenantry/tests", region="local")
        removed = await AuditRetention(db, AuditStore(), plans, clock).prune_tenant(tid)
    assert removed == middle["seq"]
    state = await chain_state(stack, tenant.tenant_id, owner)
    assert state["pruned_through_seq"] == middle["seq"]
    assert state["anchor_hash"] == middle["chain"]["hash"]
    after = await entries(stack, tenant.tenant_id, owner, order="asc", limit=200)
    assert after[0]["seq"] == middle["seq"] + 1
    assert await verified(stack, tenant, owner) is None
