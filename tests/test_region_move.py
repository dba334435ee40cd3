"""Moving a tenant between two real regions (issue 18 §7; docs/residency.md "Moving a
tenant"): a tenant of us, with every flow that stores data driven (accounts with
passwords, an API key, SCIM users and a group, a webhook endpoint and its deliveries, a
SAML connection and a just-in-time login), is moved to eu by us's operator. Then:

- eu has it, active again, with its home region eu (tenant.moved), its audit trail read
  in full (the sealed fields of its event stream open: its data key moved), its owner
  signing in with the same password, its returning SSO user signing in through the same
  connection, and its webhook endpoint signing with the same secret (secrets travel
  sealed for the trip and are sealed again with eu's key);
- the directory routes it to eu: us answers 307 for it;
- us has purged it, with a deletion certificate: no marked field of it is left in any
  table of us's databases, and its move row says where it went;
- credentials of us (the API key) are not carried over.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from tenantry_testkit.fixtures import eventually, operator_token
from tenantry_testkit.leak_scan import scan_postgres
from tenantry_testkit.receiver import Receiver
from tenantry_testkit.regions import Region
from tenantry_testkit.saml_idp import running_idp

from .test_residency_leaks import PASSWORD, jit_user, new_marks, populated_tenant
from .test_sso import code_of, exchange, saml_login

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(900)]
Regions = dict[str, Region]


async def operator(region: Region) -> dict[str, str]:
    return {"Authorization": f"Bearer {await operator_token(region)}"}


async def move_state(
    http: httpx.AsyncClient, region: Region, headers: dict[str, str], tenant: UUID, move: str
) -> dict[str, Any] | None:
    answer = await http.get(
        f"{region.service_url('tenancy')}/v1/tenants/{tenant}/moves/{move}", headers=headers
    )
    return answer.json() if answer.status_code == 200 else None


async def test_a_tenant_moves_to_another_region_whole(
    two_regions: Regions, tmp_path: Path, receiver: Receiver
) -> None:
    us, eu = two_regions["us"], two_regions["eu"]
    ops = {"us": await operator(us), "eu": await operator(eu)}
    marks = new_marks("us")
    async with running_idp(tmp_path / "idp", login_as=lambda: jit_user(*marks)) as idp:
        tenant = await populated_tenant((us, eu), ops["us"], marks, idp, receiver)
        tid = tenant.tenant_id
        base = f"/v1/tenants/{tid}"
        async with httpx.AsyncClient(timeout=30, follow_redirects=False) as http:
            endpoints = await http.get(
                f"{us.service_url('webhooks')}{base}/webhooks/endpoints", headers=ops["us"]
            )
            endpoint = endpoints.json()["data"][0]["endpoint_id"]
            secret_before = await http.get(
                f"{us.service_url('webhooks')}{base}/webhooks/endpoints/{endpoint}/secret",
                headers=ops["us"],
            )
            history_before = await http.get(
                f"{us.service_url('tenancy')}{base}/history", headers=ops["us"]
            )
            assert history_before.status_code == 200, history_before.text
            connections = await http.get(
                f"{us.service_url('identity')}{base}/sso/connections", headers=ops["us"]
            )
            connection = connections.json()[0]["id"]

            # Bad input first: nothing starts.
            for body, status in (
                ({"to_region": "ap", "reason": "x"}, 422),
                ({"to_region": "us", "reason": "x"}, 422),
                ({"to_region": "eu", "reason": " "}, 400),
            ):
                refused = await http.post(
                    f"{us.service_url('tenancy')}{base}/moves", json=body, headers=ops["us"]
                )
                assert refused.status_code == status, refused.text
                assert refused.headers["content-type"].startswith("application/problem+json")

            started = await http.post(
                f"{us.service_url('tenancy')}{base}/moves",
                json={"to_region": "eu", "reason": "the customer chose EU residency"},
                headers=ops["us"],
            )
            assert started.status_code == 202, started.text
            move = started.json()["move_id"]
            assert started.json()["state"] == "exporting"
            assert started.json()["previous_status"] == "active"
            again = await http.post(
                f"{us.service_url('tenancy')}{base}/moves",
                json={"to_region": "eu", "reason": "twice"},
                headers=ops["us"],
            )
            assert again.status_code == 409, again.text

            async def arrived() -> dict[str, Any] | None:
                state = await move_state(http, eu, ops["eu"], tid, move)
                if state is not None and state["state"] == "failed":
                    raise AssertionError(f"the move failed in eu: {state}")
                return state if state is not None and state["state"] == "completed" else None

            arrival = await eventually(arrived, timeout=300, message="the move completed in eu")
            assert set(arrival["imported"]) == {
                "tenancy",
                "identity",
                "provisioning",
                "ratelimit",
                "webhooks",
            }

            # eu has it: active, at home in eu, its audit trail whole and readable.
            read = await http.get(f"{eu.service_url('tenancy')}{base}", headers=ops["eu"])
            assert read.status_code == 200, read.text
            assert read.json()["home_region"] == "eu"
            assert read.json()["status"] == "active"
            history_after = await http.get(
                f"{eu.service_url('tenancy')}{base}/history", headers=ops["eu"]
            )
            entries = history_after.json()
            assert entries[: len(history_before.json())] == history_before.json()
            assert "[erased]" not in history_after.text

            # The directory sends us's callers to eu.
            async def routed() -> bool:
                answer = await http.get(f"{us.service_url('tenancy')}{base}", headers=ops["us"])
                return answer.status_code == 307 and answer.headers["tenantry-region"] == "eu"

            await eventually(routed, timeout=60, message="us routing the tenant to eu")

            # The owner signs in in eu with the password set in us.
            owner = f"{tenant.field('owner')}@{marks[1]}"

            # (eu's identity routes the tenant here once it has consumed tenant.moved.)
            async def signed_in_in_eu() -> httpx.Response | None:
                answer = await http.post(
                    f"{eu.service_url('identity')}/v1/sessions",
                    json={"email": owner, "password": PASSWORD, "tenant_id": str(tid)},
                )
                assert answer.status_code in (201, 307), answer.text
                return answer if answer.status_code == 201 else None

            await eventually(signed_in_in_eu, timeout=30, message="the owner signed in in eu")

            # The endpoint signs with the same secret, sealed again with eu's key.
            secret_after = await http.get(
                f"{eu.service_url('webhooks')}{base}/webhooks/endpoints/{endpoint}/secret",
                headers=ops["eu"],
            )
            assert secret_after.status_code == 200, secret_after.text
            assert secret_after.json() == secret_before.json()
            hook_path = f"/ok/{tenant.field('hook')}"
            delivered_before = len(receiver.to(hook_path))
            made = await http.post(
                f"{eu.service_url('identity')}{base}/accounts",
                json={"email": f"after-move@{marks[1]}", "password": PASSWORD, "role": "member"},
                headers={**ops["eu"], "Idempotency-Key": str(tid) + "-after"},
            )
            assert made.status_code == 201, made.text

            async def delivered_in_eu() -> bool:
                return any(b"after-move@" in r.body for r in receiver.to(hook_path))

            await eventually(delivered_in_eu, timeout=60, message="a delivery from eu")
            signed = next(r for r in receiver.to(hook_path) if b"after-move@" in r.body)
            Webhook(secret_after.json()["secret"]).verify(signed.body, signed.headers)
            assert len(receiver.to(hook_path)) > delivered_before

            # The us API key did not move: eu does not know it, on the tenant's own path.
            old_key_in_eu = await http.get(
                f"{eu.service_url('tenancy')}{base}",
                headers={"Authorization": f"Bearer {tenant.key}"},
            )
            assert old_key_in_eu.status_code == 401, old_key_in_eu.text

        # The returning SSO user signs in through the same connection, now in eu.
        async with httpx.AsyncClient(timeout=30) as browser:
            code = code_of(await saml_login(browser, eu, connection))
            signed_in = await exchange(browser, eu, code)
        assert signed_in.status_code == 200, signed_in.text
        assert signed_in.json()["profile"]["email"] == f"{marks[0]}-jit@{marks[1]}"

    # us purged its copy: the move says so, a certificate exists, no marked field is left.
    async with httpx.AsyncClient(timeout=30) as http:

        async def purged_in_us() -> dict[str, Any] | None:
            state = await move_state(http, us, ops["us"], tid, move)
            return state if state is not None and state["state"] == "completed" else None

        left = await eventually(purged_in_us, timeout=300, message="us's copy purged")
        assert left["to_region"] == "eu"
        # ... and us no longer knows the key either.
        old_key = await http.get(
            f"{us.service_url('identity')}/v1/whoami",
            headers={"Authorization": f"Bearer {tenant.key}"},
        )
        assert old_key.status_code == 401, old_key.text
    found, _ = await scan_postgres(us, tenant.needles)
    assert found == [], "left in us after the move: " + "; ".join(map(str, found))

    # Back to us: refused there (its purge records would drop its events): the move fails
    # in eu with the reason, the tenant stays in eu, suspended, and an operator restores it.
    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as http:
        back = await http.post(
            f"{eu.service_url('tenancy')}/v1/tenants/{tid}/moves",
            json={"to_region": "us", "reason": "changed our mind"},
            headers=ops["eu"],
        )
        assert back.status_code == 202, back.text

        async def failed() -> dict[str, Any] | None:
            state = await move_state(http, eu, ops["eu"], tid, back.json()["move_id"])
            return state if state is not None and state["state"] == "failed" else None

        refusal = await eventually(failed, timeout=120, message="the move back refused")
        assert "purged here" in refusal["failure"], refusal
        restored = await http.post(
            f"{eu.service_url('tenancy')}/v1/tenants/{tid}/reactivate",
            json={"reason": "the move back was refused"},
            headers=ops["eu"],
        )
        assert restored.status_code == 200, restored.text
        assert restored.json()["home_region"] == "eu"


# ---------------------------------------------------------------- faults and bad input


def sigkill(region: Region, process: str) -> None:
    """A real SIGKILL to one of the region's processes (e.g. "tenancy-worker")."""
    os.kill(int((region.local_dir / "run" / f"{process}.pid").read_text()), signal.SIGKILL)


async def start_again(region: Region, service: str) -> None:
    """regions.sh exec <region> services.sh start <service>: what of it is down starts."""
    scripts = region.stack_script.parent
    started = await asyncio.create_subprocess_exec(
        "bash",
        str(scripts / "regions.sh"),
        "exec",
        region.id,
        "bash",
        str(scripts / "services.sh"),
        "start",
        service,
        env={
            **{k: v for k, v in os.environ.items() if k != "TENANTRY_LOCAL_DIR"},
            "REGIONS": "us eu",
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, errors = await asyncio.wait_for(started.communicate(), timeout=120)
    assert started.returncode == 0, errors.decode()[-2000:]


async def fetch_all(region: Region, database: str, query: str, *args: object) -> list[Any]:
    conn = await asyncpg.connect(region.super_dsn(database))
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def test_a_move_survives_its_drivers_and_an_importer_killed(two_regions: Regions) -> None:
    """SIGKILL us's tenancy worker as the move starts, then eu's tenancy worker and eu's
    identity api as soon as eu holds the move; both restarted, the move completes and
    every row arrived once."""
    us, eu = two_regions["us"], two_regions["eu"]
    ops = {"us": await operator(us), "eu": await operator(eu)}
    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as http:
        made = await http.post(
            f"{us.service_url('tenancy')}/v1/tenants",
            json={"name": "Moving Co", "slug": f"mv-{uuid4().hex[:10]}", "home_region": "us"},
            headers=ops["us"],
        )
        assert made.status_code == 201, made.text
        tid = UUID(made.json()["tenant_id"])
        base = f"/v1/tenants/{tid}"
        for n in range(3):

            async def account_made(n: int = n) -> bool:
                answer = await http.post(
                    f"{us.service_url('identity')}{base}/accounts",
                    json={"email": f"user{n}@moving.example", "password": "a long password 1"},
                    headers={**ops["us"], "Idempotency-Key": f"{tid}-{n}"},
                )
                return answer.status_code == 201

            await eventually(account_made, timeout=30, message="an account in us")
        accounts = await fetch_all(
            us,
            "tenantry_identity",
            "SELECT account_id, email FROM accounts WHERE tenant_id = $1 ORDER BY account_id",
            tid,
        )
        started = await http.post(
            f"{us.service_url('tenancy')}{base}/moves",
            json={"to_region": "eu", "reason": "chaos"},
            headers=ops["us"],
        )
        assert started.status_code == 202, started.text
        move = started.json()["move_id"]
        sigkill(us, "tenancy-worker")
        await start_again(us, "tenancy")

        async def held_in_eu() -> bool:
            rows = await fetch_all(
                eu, "tenantry_tenancy", "SELECT 1 FROM tenant_moves WHERE move_id = $1", UUID(move)
            )
            return bool(rows)

        await eventually(held_in_eu, timeout=120, interval=0.05, message="eu holding the move")
        sigkill(eu, "tenancy-worker")
        sigkill(eu, "identity-api")
        await start_again(eu, "tenancy")
        await start_again(eu, "identity")

        for region in (eu, us):

            async def completed(region: Region = region) -> bool:
                state = await move_state(http, region, ops[region.id], tid, move)
                assert state is None or state["state"] != "failed", state
                return state is not None and state["state"] == "completed"

            await eventually(completed, timeout=300, message=f"the move completed in {region.id}")

    moved = await fetch_all(
        eu,
        "tenantry_identity",
        "SELECT account_id, email FROM accounts WHERE tenant_id = $1 ORDER BY account_id",
        tid,
    )
    assert [tuple(r) for r in moved] == [tuple(r) for r in accounts]
    for service in ("tenancy", "identity", "provisioning", "ratelimit", "webhooks"):
        imports = await fetch_all(
            eu,
            f"tenantry_{service}",
            "SELECT move_id FROM tenant_imports WHERE tenant_id = $1",
            tid,
        )
        assert [r["move_id"] for r in imports] == [UUID(move)], service
    left = await fetch_all(
        us, "tenantry_identity", "SELECT count(*) AS n FROM accounts WHERE tenant_id = $1", tid
    )
    assert left[0]["n"] == 0


async def test_the_move_routes_refuse_strangers_and_bad_input(two_regions: Regions) -> None:
    us, eu = two_regions["us"], two_regions["eu"]
    region_auth = {"Authorization": f"Tenantry-Directory {eu.env['TENANTRY_DIRECTORY_SECRET']}"}
    internal = {"Authorization": f"Tenantry-Internal {eu.env['TENANTRY_INTERNAL_API_SECRET']}"}
    hand_over = {
        "move_id": str(uuid4()),
        "tenant_id": str(uuid4()),
        "from_region": "us",
        "to_region": "eu",
        "previous_status": "active",
        "reason": "x",
        "requested_by": "operator:x",
    }
    moves = f"{eu.service_url('tenancy')}/internal/v1/moves"
    async with httpx.AsyncClient(timeout=30, follow_redirects=False) as http:
        for headers in ({}, internal, {"Authorization": "Tenantry-Directory wrong"}):
            refused = await http.post(moves, json=hand_over, headers=headers)
            assert refused.status_code == 401, refused.text
        for change, status in (
            ({"to_region": "us"}, 422),
            ({"from_region": "ap"}, 422),
            ({"previous_status": "purged"}, 422),
            ({"extra": 1}, 400),
            ({"move_id": "not-a-uuid"}, 400),
        ):
            refused = await http.post(moves, json={**hand_over, **change}, headers=region_auth)
            assert refused.status_code == status, (change, refused.text)
            assert refused.headers["content-type"].startswith("application/problem+json")
        assert not await fetch_all(
            eu,
            "tenantry_tenancy",
            "SELECT 1 FROM tenant_moves WHERE move_id = $1",
            UUID(hand_over["move_id"]),
        )
        unknown = await http.get(
            f"{us.service_url('tenancy')}/internal/v1/moves/{uuid4()}/archive",
            headers={"Authorization": f"Tenantry-Directory {us.env['TENANTRY_DIRECTORY_SECRET']}"},
        )
        assert unknown.status_code == 404, unknown.text

        imports = f"{eu.service_url('identity')}/internal/v1/tenants/{uuid4()}/import"
        body = {"move_id": str(uuid4()), "files": {"accounts": "imports/none.ndjson"}}
        for headers in ({}, region_auth):
            refused = await http.post(imports, json=body, headers=headers)
            assert refused.status_code == 401, refused.text
        for files in ({"no_such_table": "x"}, {"accounts": "imports/none.ndjson"}):
            refused = await http.post(imports, json={**body, "files": files}, headers=internal)
            assert refused.status_code == 422, refused.text
            assert refused.json()["type"].endswith("import-refused")
