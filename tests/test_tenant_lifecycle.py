"""Tenancy's side of the data lifecycle on the running suite: offboarding's rules (who may
start and cancel it, the slug confirmation, purge_at, the previous state restored), the
early purge's rules, and the export job's admission (plan feature, one at a time).
The purge and export sagas end to end, across the five services, are in
tests/test_lifecycle_sagas.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from uuid_utils.compat import uuid4

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import Stack

from .test_identity import bearer, create_key, new_tenant

pytestmark = pytest.mark.kafka


async def slug_of(client: httpx.AsyncClient, tenant_id: str, headers: dict[str, str]) -> str:
    r = await client.get(f"/v1/tenants/{tenant_id}", headers=headers)
    assert r.status_code == 200, r.text
    slug: str = r.json()["slug"]
    return slug


async def test_offboarding_by_the_tenant_needs_its_slug_and_cancelling_restores_active(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers, plan="team")
    key = bearer(
        (await create_key(stack, operator_headers, tenant_id, ["tenant:read", "tenant:write"]))[
            "key"
        ]
    )
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        slug = await slug_of(client, tenant_id, key)
        url = f"/v1/tenants/{tenant_id}/offboarding"
        unconfirmed = await client.post(url, headers=key, json={"reason": "leaving"})
        assert unconfirmed.status_code == 400
        assert unconfirmed.json()["type"].endswith("/confirmation-required")
        wrong = await client.post(url, headers=key, json={"reason": "x", "confirm_slug": "nope"})
        assert wrong.status_code == 400
        soon = datetime.now(UTC) + timedelta(days=1)
        not_operator = await client.post(
            url,
            headers=key,
            json={"reason": "x", "confirm_slug": slug, "purge_at": soon.isoformat()},
        )
        assert not_operator.status_code == 403
        assert (await client.get(url, headers=key)).status_code == 404  # not offboarding yet

        started = await client.post(url, headers=key, json={"reason": "x", "confirm_slug": slug})
        assert started.status_code == 200, started.text
        view = started.json()
        assert (view["status"], view["previous_status"]) == ("offboarding", "active")
        purge_at = datetime.fromisoformat(view["purge_at"])
        started_at = datetime.fromisoformat(view["started_at"])
        assert purge_at - started_at == timedelta(days=30)  # the team plan's grace period
        assert view["certificate_url"].startswith("/v1/deletion-certificates/")
        assert (await client.get(url, headers=key)).json() == view
        # Offboarding twice is refused by the rules (an operator passes the tenant guard,
        # which would refuse the tenant's own write with 403 tenant-offboarding).
        again = await client.post(url, headers=operator_headers, json={"reason": "x"})
        assert again.status_code == 409

        cancelled = await client.delete(url, headers=key, params={"reason": "we stay"})
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "active"
        assert cancelled.json()["purge_at"] is None

        async def readable() -> httpx.Response | None:
            # The key is let in again once tenancy's own projection has heard of the cancel.
            r = await client.get(f"/v1/tenants/{tenant_id}/history", headers=key)
            return r if r.status_code == 200 else None

        history = (await eventually(readable, timeout=30, message="access restored")).json()
        assert [(h["type"], h["status"], h["reason"]) for h in history[-2:]] == [
            ("tenant.offboarding_started", "offboarding", "x"),
            ("tenant.offboarding_cancelled", "active", "we stay"),
        ]
        assert history[-1]["by"].startswith("api_key:")


async def test_an_operator_offboards_a_suspended_tenant_on_a_date_and_cancel_restores_suspended(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id = await new_tenant(stack, operator_headers, plan="enterprise")
    async with httpx.AsyncClient(
        base_url=stack.service_url("tenancy"), timeout=10, headers=operator_headers
    ) as client:
        tenant = f"/v1/tenants/{tenant_id}"
        assert (
            await client.post(f"{tenant}/suspend", json={"reason": "unpaid"})
        ).status_code == 200
        past = datetime.now(UTC) - timedelta(minutes=1)
        refused = await client.post(
            f"{tenant}/offboarding", json={"reason": "x", "purge_at": past.isoformat()}
        )
        assert refused.status_code == 400
        default = await client.post(f"{tenant}/offboarding", json={"reason": "contract ended"})
        assert default.status_code == 200, default.text
        view = default.json()
        assert view["previous_status"] == "suspended"
        grace = datetime.fromisoformat(view["purge_at"]) - datetime.fromisoformat(
            view["started_at"]
        )
        assert grace == timedelta(days=90)  # enterprise
        early_without_reason = await client.post(f"{tenant}/purge", json={"reason": ""})
        assert early_without_reason.status_code == 400
        assert (await client.get(f"{tenant}/purge")).status_code == 404  # no purge yet
        back = await client.delete(f"{tenant}/offboarding")
        assert back.status_code == 200
        assert back.json()["status"] == "suspended"
        # A date the operator chose (a contract's end) instead of the plan's grace period.
        on = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
        dated = await client.post(
            f"{tenant}/offboarding", json={"reason": "ends", "purge_at": on.isoformat()}
        )
        assert dated.status_code == 200
        assert datetime.fromisoformat(dated.json()["purge_at"]) == on


async def test_only_operators_purge_early(stack: Stack, operator_headers: dict[str, str]) -> None:
    tenant_id = await new_tenant(stack, operator_headers)
    key = bearer(
        (await create_key(stack, operator_headers, tenant_id, ["tenant:read", "tenant:write"]))[
            "key"
        ]
    )
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        tenant = f"/v1/tenants/{tenant_id}"
        offboard = await client.post(
            f"{tenant}/offboarding", headers=operator_headers, json={"reason": "x"}
        )
        assert offboard.status_code == 200
        by_tenant = await client.post(f"{tenant}/purge", headers=key, json={"reason": "now"})
        assert by_tenant.status_code == 403


async def export_request(
    client: httpx.AsyncClient, tenant_id: str, headers: dict[str, str], body: dict[str, Any]
) -> httpx.Response:
    return await client.post(f"/v1/tenants/{tenant_id}/exports", headers=headers, json=body)


async def test_an_export_needs_the_plan_feature_and_runs_one_at_a_time(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    free = await new_tenant(stack, operator_headers, plan="free")
    team = await new_tenant(stack, operator_headers, plan="team")
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        refused = await export_request(client, free, operator_headers, {})
        assert refused.status_code == 403
        assert refused.json()["type"].endswith("/feature-not-in-plan")
        read_only = bearer(
            (await create_key(stack, operator_headers, team, ["tenant:read"]))["key"]
        )
        assert (await export_request(client, team, read_only, {})).status_code == 403

        exporter = bearer(
            (await create_key(stack, operator_headers, team, ["tenant:export"]))["key"]
        )
        first = await export_request(client, team, exporter, {})
        assert first.status_code == 202, first.text
        job = first.json()
        assert job["status"] in ("running", "assembling", "completed")
        assert job["requested_by"].startswith("api_key:")
        second = await export_request(client, team, exporter, {})
        if job["status"] != "completed":  # one at a time, while the first is open
            assert second.status_code in (409, 202)
        unknown = await client.get(f"/v1/tenants/{team}/exports/{uuid4()}", headers=exporter)
        assert unknown.status_code == 404
        listed = (await client.get(f"/v1/tenants/{team}/exports", headers=exporter)).json()
        assert job["export_id"] in [e["export_id"] for e in listed]
        # Another tenant's export is not reachable with this tenant's key.
        other = await client.get(f"/v1/tenants/{free}/exports", headers=exporter)
        assert other.status_code == 404
        no_link_yet = await client.post(
            f"/v1/tenants/{team}/exports/{job['export_id']}/links", headers=exporter, json={}
        )
        assert no_link_yet.status_code in (409, 201)
        bad_token = await client.get("/v1/export-downloads/tnx_not-a-real-token")
        assert bad_token.status_code == 404
