"""SCIM 2.0 against the running suite: an independent compliance checker (scim2-tester)
and client (scim2-client), the request sequences Okta and Entra ID send, SCIM Errors for
everything, ETags, plan rules, and the effect on identity (deprovisioned users lose
access, reprovisioned ones get it back)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import Stack

from .test_identity import bearer, create_key
from .test_plans import override

pytestmark = pytest.mark.kafka
SCIM_JSON = "application/scim+json"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


async def scim_tenant(
    stack: Stack, operator_headers: dict[str, str], plan: str = "business"
) -> tuple[str, str]:
    """A tenant on a plan with SCIM and its SCIM key, known to provisioning and identity."""
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as client:
        r = await client.post(
            "/v1/tenants",
            json={"name": "Directory", "slug": f"scim-{uuid4().hex[:10]}", "plan": plan},
            headers=operator_headers,
        )
        assert r.status_code == 201, r.text
        tenant_id: str = r.json()["tenant_id"]
    for service in ("provisioning", "identity"):
        conn = await asyncpg.connect(stack.owner_dsn(stack.service_database(service)))
        try:
            await eventually(
                lambda conn=conn: conn.fetchval(  # type: ignore[misc]
                    "SELECT 1 FROM tenant_limits WHERE tenant_id = $1::uuid", tenant_id
                ),
                timeout=30,
                message=f"the tenant's limits known to {service}",
            )
        finally:
            await conn.close()
    key = (await create_key(stack, operator_headers, tenant_id, ["scim:write"]))["key"]
    return tenant_id, key


def scim_client(stack: Stack, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{stack.service_url('provisioning')}/scim/v2",
        headers={**bearer(key), "Content-Type": SCIM_JSON, "Accept": SCIM_JSON},
        timeout=15,
    )


def entra_user(user_name: str, external_id: str) -> dict[str, Any]:
    """The body Microsoft Entra ID sends to create a user (its provisioning guide)."""
    return {
        "schemas": [USER, ENTERPRISE],
        "externalId": external_id,
        "userName": user_name,
        "active": True,
        "displayName": "Test User",
        "emails": [{"primary": True, "type": "work", "value": user_name}],
        "meta": {"resourceType": "User"},
        "name": {
            "formatted": "givenName familyName",
            "familyName": "familyName",
            "givenName": "givenName",
        },
        "roles": [],
        ENTERPRISE: {"department": "Sales", "employeeNumber": "701984"},
    }


async def account_status(
    stack: Stack, operator_headers: dict[str, str], tenant_id: str, account_id: str
) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(
            f"{stack.service_url('identity')}/v1/tenants/{tenant_id}/accounts/{account_id}",
            headers=operator_headers,
        )
    assert r.status_code == 200, r.text
    status: str = r.json()["status"]
    return status


async def test_an_independent_compliance_checker_finds_no_error(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    import httpx2
    from scim2_client.engines.httpx2 import SyncSCIMClient
    from scim2_tester import check_server
    from scim2_tester.utils import Status

    _, key = await scim_tenant(stack, operator_headers)

    def check() -> list[Any]:
        with httpx2.Client(
            base_url=f"{stack.service_url('provisioning')}/scim/v2", headers=bearer(key), timeout=15
        ) as http:
            client = SyncSCIMClient(http)
            return list(check_server(client))

    results = await asyncio.to_thread(check)
    failed = [
        f"{r.title}: {r.reason}" for r in results if r.status in (Status.ERROR, Status.CRITICAL)
    ]
    assert results, "the checker ran checks"
    assert failed == [], "\n".join(failed)


async def test_okta_provisioning_sequence(stack: Stack, operator_headers: dict[str, str]) -> None:
    """Okta's documented flow: look up by userName (count and startIndex), create, read,
    update with PUT, deactivate with a PATCH replace without a path, reactivate."""
    tenant_id, key = await scim_tenant(stack, operator_headers)
    user_name = f"okta-{uuid4().hex[:8]}@example.com"
    async with scim_client(stack, key) as scim:
        r = await scim.get(
            "/Users", params={"filter": f'userName eq "{user_name}"', "startIndex": 1, "count": 100}
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(SCIM_JSON)
        assert r.json()["totalResults"] == 0
        assert r.json()["Resources"] == []
        created = await scim.post(
            "/Users",
            json={
                "schemas": [USER],
                "userName": user_name,
                "name": {"givenName": "Ada", "familyName": "Lovelace"},
                "emails": [{"primary": True, "value": user_name, "type": "work"}],
                "displayName": "Ada Lovelace",
                "locale": "en-US",
                "externalId": "00u1",
                "groups": [],
                "password": "never-stored-1!",
                "active": True,
            },
        )
        assert created.status_code == 201, created.text
        user = created.json()
        user_id = user["id"]
        assert created.headers["Location"].endswith(f"/scim/v2/Users/{user_id}")
        assert "password" not in user
        assert user["meta"]["version"] == created.headers["ETag"]
        # Lookups are case-insensitive on userName.
        found = await scim.get("/Users", params={"filter": f'userName eq "{user_name.upper()}"'})
        assert [u["id"] for u in found.json()["Resources"]] == [user_id]
        assert await account_status(stack, operator_headers, tenant_id, user_id) == "active"

        user["name"]["familyName"] = "King"
        replaced = await scim.put(f"/Users/{user_id}", json=user)
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["name"]["familyName"] == "King"

        deactivated = await scim.patch(
            f"/Users/{user_id}",
            json={
                "schemas": [PATCH_OP],
                "Operations": [{"op": "replace", "value": {"active": False}}],
            },
        )
        assert deactivated.status_code == 200, deactivated.text
        assert deactivated.json()["active"] is False
        still_readable = await scim.get(f"/Users/{user_id}")
        assert still_readable.status_code == 200
        assert still_readable.json()["active"] is False
        assert await account_status(stack, operator_headers, tenant_id, user_id) == "disabled"

        reactivated = await scim.patch(
            f"/Users/{user_id}",
            json={
                "schemas": [PATCH_OP],
                "Operations": [{"op": "replace", "value": {"active": True}}],
            },
        )
        assert reactivated.json()["active"] is True
        assert await account_status(stack, operator_headers, tenant_id, user_id) == "active"


async def test_entra_provisioning_sequence(stack: Stack, operator_headers: dict[str, str]) -> None:
    """What Entra ID sends: capitalised ops, "False" strings, dotted keys in a PATCH value,
    replace on emails[type eq "work"].value, groups with its extra schema, member removal
    with a value list, and DELETE."""
    tenant_id, key = await scim_tenant(stack, operator_headers)
    user_name = f"entra-{uuid4().hex[:8]}@contoso.example"
    async with scim_client(stack, key) as scim:
        probe = await scim.get("/Users", params={"filter": f'userName eq "{user_name}"'})
        assert probe.json()["totalResults"] == 0
        created = await scim.post("/Users", json=entra_user(user_name, "0a21f0f2-8d2a-4f8e"))
        assert created.status_code == 201, created.text
        user_id = created.json()["id"]
        assert created.json()[ENTERPRISE]["employeeNumber"] == "701984"
        second = await scim.post("/Users", json=entra_user(f"two-{user_name}", "b"))
        other_id = second.json()["id"]

        patched = await scim.patch(
            f"/Users/{user_id}",
            json={
                "schemas": [PATCH_OP],
                "Operations": [
                    {"op": "Replace", "path": "displayName", "value": "Renamed User"},
                    {
                        "op": "Add",
                        "value": {"name.givenName": "Grace", f"{ENTERPRISE}:department": "R&D"},
                    },
                    {
                        "op": "Replace",
                        "path": 'emails[type eq "work"].value',
                        "value": "new@contoso.example",
                    },
                    {
                        "op": "Replace",
                        "path": 'phoneNumbers[type eq "mobile"].value',
                        "value": "+1 555 0100",
                    },
                ],
            },
        )
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert body["displayName"] == "Renamed User"
        assert body["name"]["givenName"] == "Grace"
        assert body[ENTERPRISE]["department"] == "R&D"
        assert [e["value"] for e in body["emails"] if e.get("type") == "work"] == [
            "new@contoso.example"
        ]
        assert body["phoneNumbers"][0]["value"] == "+1 555 0100"

        disabled = await scim.patch(
            f"/Users/{user_id}",
            json={
                "schemas": [PATCH_OP],
                "Operations": [{"op": "Replace", "path": "active", "value": "False"}],
            },
        )
        assert disabled.json()["active"] is False
        assert await account_status(stack, operator_headers, tenant_id, user_id) == "disabled"

        group = await scim.post(
            "/Groups",
            json={
                "schemas": [
                    GROUP,
                    "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group",
                ],
                "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
                "displayName": "Group1DisplayName",
                "meta": {"resourceType": "Group"},
            },
        )
        assert group.status_code == 201, group.text
        group_id = group.json()["id"]
        add = await scim.patch(
            f"/Groups/{group_id}",
            json={
                "schemas": [PATCH_OP],
                "Operations": [
                    {
                        "op": "Add",
                        "path": "members",
                        "value": [{"value": user_id}, {"value": other_id}],
                    }
                ],
            },
        )
        assert add.status_code == 200, add.text
        assert {m["value"] for m in add.json()["members"]} == {user_id, other_id}
        remove = await scim.patch(
            f"/Groups/{group_id}",
            json={
                "schemas": [PATCH_OP],
                "Operations": [{"op": "Remove", "path": "members", "value": [{"value": user_id}]}],
            },
        )
        assert [m["value"] for m in remove.json()["members"]] == [other_id]
        renamed = await scim.patch(
            f"/Groups/{group_id}",
            json={
                "schemas": [PATCH_OP],
                "Operations": [{"op": "Replace", "path": "displayName", "value": "Group1NewName"}],
            },
        )
        assert renamed.json()["displayName"] == "Group1NewName"
        member_of = await scim.get("/Groups", params={"filter": f'members.value eq "{other_id}"'})
        assert [g["id"] for g in member_of.json()["Resources"]] == [group_id]
        excluded = await scim.get(f"/Groups/{group_id}", params={"excludedAttributes": "members"})
        assert "members" not in excluded.json()

        deleted = await scim.delete(f"/Users/{other_id}")
        assert deleted.status_code == 204
        gone = await scim.get(f"/Users/{other_id}")
        assert gone.status_code == 404
        assert gone.json()["schemas"] == [ERROR]
        assert await account_status(stack, operator_headers, tenant_id, other_id) == "disabled"
        assert (await scim.delete(f"/Groups/{group_id}")).status_code == 204


async def test_every_error_is_a_scim_error(stack: Stack, operator_headers: dict[str, str]) -> None:
    _, key = await scim_tenant(stack, operator_headers)
    base = f"{stack.service_url('provisioning')}/scim/v2"
    async with httpx.AsyncClient(timeout=10) as client:
        for response in (
            await client.get(f"{base}/Users"),  # no credential
            await client.get(f"{base}/Users", headers=bearer("tnty_live_" + "A" * 38)),
            await client.get(f"{base}/NoSuchThing", headers=bearer(key)),
            await client.get(
                f"{base}/Users", params={"filter": "userName eq"}, headers=bearer(key)
            ),
            await client.get(f"{base}/Users/{uuid4()}", headers=bearer(key)),
            await client.post(f"{base}/Users", content=b"{not json", headers=bearer(key)),
        ):
            assert response.headers["content-type"].startswith(SCIM_JSON), response.text
            body = response.json()
            assert body["schemas"] == [ERROR], body
            assert body["status"] == str(response.status_code)
        bad_filter = await client.get(
            f"{base}/Users", params={"filter": 'userName zz "x"'}, headers=bearer(key)
        )
        assert bad_filter.status_code == 400
        assert bad_filter.json()["scimType"] == "invalidFilter"
        # application/json is accepted as well as application/scim+json
        user_name = f"plain-{uuid4().hex[:6]}@example.com"
        made = await client.post(
            f"{base}/Users",
            json={"schemas": [USER], "userName": user_name},
            headers={**bearer(key), "Content-Type": "application/json"},
        )
        assert made.status_code == 201, made.text
        duplicate = await client.post(
            f"{base}/Users",
            json={"schemas": [USER], "userName": user_name.upper()},
            headers=bearer(key),
        )
        assert duplicate.status_code == 409
        assert duplicate.json()["scimType"] == "uniqueness"
        user_id, tag = made.json()["id"], made.headers["ETag"]
        cached = await client.get(
            f"{base}/Users/{user_id}", headers={**bearer(key), "If-None-Match": tag}
        )
        assert cached.status_code == 304
        stale = await client.put(
            f"{base}/Users/{user_id}",
            json={"schemas": [USER], "userName": user_name, "title": "x"},
            headers={**bearer(key), "If-Match": 'W/"999"'},
        )
        assert stale.status_code == 412
        assert stale.json()["schemas"] == [ERROR]


async def test_plan_rules_scim_needs_the_feature_and_creates_take_seats(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers, plan="team")  # no SCIM
    async with scim_client(stack, key) as scim:
        refused = await scim.get("/Users")
        assert refused.status_code == 403
        assert refused.json()["schemas"] == [ERROR]
        assert "scim" in refused.json()["detail"]
    tenant_id, key = await scim_tenant(stack, operator_headers)
    await override(stack, operator_headers, tenant_id, {"seats": 2})
    async with scim_client(stack, key) as scim:
        results = await asyncio.gather(
            *(
                scim.post(
                    "/Users",
                    json={"schemas": [USER], "userName": f"s{i}-{uuid4().hex[:6]}@example.com"},
                )
                for i in range(4)
            )
        )
        statuses = sorted(r.status_code for r in results)
        assert statuses == [201, 201, 403, 403], [r.text for r in results]
        over = next(r for r in results if r.status_code == 403).json()
        assert over["schemas"] == [ERROR]
        listed = await scim.get("/Users")
        assert listed.json()["totalResults"] == 2, "a refused create leaves nothing behind"


async def test_scim2_client_drives_users_and_groups(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    """scim2-client (not ours) creates, reads, searches, replaces and deletes."""
    import httpx2
    from scim2_client.engines.httpx2 import SyncSCIMClient
    from scim2_models import Group, GroupMember, User

    _, key = await scim_tenant(stack, operator_headers)

    def run() -> None:
        with httpx2.Client(
            base_url=f"{stack.service_url('provisioning')}/scim/v2", headers=bearer(key), timeout=15
        ) as http:
            client = SyncSCIMClient(http, resource_models=[User, Group])
            client.discover()
            name = f"lib-{uuid4().hex[:6]}@example.com"
            user: Any = client.create(User(user_name=name, display_name="Lib"))
            assert isinstance(user, User)
            assert user.id is not None
            fetched = client.query(User, user.id)
            assert isinstance(fetched, User)
            assert fetched.user_name == name
            user.display_name = "Lib Renamed"
            replaced = client.replace(user)
            assert isinstance(replaced, User)
            assert replaced.display_name == "Lib Renamed"
            group = client.create(
                Group(
                    display_name="Lib Group",
                    members=[GroupMember(value=user.id, type="User", ref=None)],
                )
            )
            assert isinstance(group, Group)
            assert [m.value for m in group.members or []] == [user.id]
            client.delete(group)
            client.delete(replaced)  # the latest version: `user` is stale now (If-Match)

    await asyncio.to_thread(run)


async def test_index_and_cursor_paging_walk_every_user_once(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    _, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        made = set()
        for i in range(7):
            r = await scim.post(
                "/Users",
                json={"schemas": [USER], "userName": f"p{i}-{uuid4().hex[:6]}@example.com"},
            )
            made.add(r.json()["id"])
        by_index, start = [], 1
        while True:
            page = (await scim.get("/Users", params={"startIndex": start, "count": 3})).json()
            assert page["totalResults"] == 7
            by_index += [u["id"] for u in page["Resources"]]
            if start + 3 > page["totalResults"]:
                break
            start += 3
        assert len(by_index) == 7
        assert set(by_index) == made
        by_cursor, cursor = [], ""
        while True:
            page = (await scim.get("/Users", params={"cursor": cursor, "count": 3})).json()
            assert "startIndex" not in page
            by_cursor += [u["id"] for u in page["Resources"]]
            if "nextCursor" not in page:
                break
            cursor = page["nextCursor"]
        assert by_cursor == by_index, "the same stable order"
        bad = await scim.get("/Users", params={"cursor": "garbage!", "count": 3})
        assert bad.status_code == 400
        assert bad.json()["scimType"] == "invalidCursor"
        config = (await scim.get("/ServiceProviderConfig")).json()
        assert config["pagination"]["cursor"] is True


async def test_bulk_resolves_bulk_ids_and_stops_after_fail_on_errors(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    _, key = await scim_tenant(stack, operator_headers)
    bulk = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
    name = f"bulk-{uuid4().hex[:6]}@example.com"
    async with scim_client(stack, key) as scim:
        r = await scim.post(
            "/Bulk",
            json={
                "schemas": [bulk],
                "Operations": [
                    {
                        "method": "POST",
                        "path": "/Users",
                        "bulkId": "u1",
                        "data": {"schemas": [USER], "userName": name},
                    },
                    {
                        "method": "POST",
                        "path": "/Groups",
                        "bulkId": "g1",
                        "data": {
                            "schemas": [GROUP],
                            "displayName": "Bulk group",
                            "members": [{"value": "bulkId:u1"}],
                        },
                    },
                    {
                        "method": "PATCH",
                        "path": "/Users/bulkId:u1",
                        "data": {
                            "schemas": [PATCH_OP],
                            "Operations": [{"op": "replace", "path": "title", "value": "Bulked"}],
                        },
                    },
                ],
            },
        )
        assert r.status_code == 200, r.text
        results = r.json()["Operations"]
        assert [o["status"] for o in results] == ["201", "201", "200"]
        user_id = results[0]["location"].rsplit("/", 1)[1]
        group = (await scim.get(results[1]["location"].split("/scim/v2", 1)[1])).json()
        assert [m["value"] for m in group["members"]] == [user_id]
        assert (await scim.get(f"/Users/{user_id}")).json()["title"] == "Bulked"

        failing = await scim.post(
            "/Bulk",
            json={
                "schemas": [bulk],
                "failOnErrors": 1,
                "Operations": [
                    {
                        "method": "POST",
                        "path": "/Users",
                        "data": {"schemas": [USER], "userName": name},
                    },
                    {
                        "method": "POST",
                        "path": "/Users",
                        "data": {"schemas": [USER], "userName": "x@y.z"},
                    },
                ],
            },
        )
        outcome = failing.json()["Operations"]
        assert len(outcome) == 1, "processing stops at the first error"
        assert outcome[0]["status"] == "409"
        assert outcome[0]["response"]["scimType"] == "uniqueness"
        over = await scim.post(
            "/Bulk",
            json={
                "schemas": [bulk],
                "Operations": [{"method": "DELETE", "path": "/Users/x"}] * 101,
            },
        )
        assert over.status_code == 413
        assert over.json()["schemas"] == [ERROR]
        wrong_method = await scim.post("/ServiceProviderConfig", json={})
        assert wrong_method.status_code == 405
        assert wrong_method.json()["schemas"] == [ERROR]


async def test_directory_events_and_account_status_travel_the_real_broker(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    """user.* and group.* leave provisioning through Kafka (here: to the tenant's webhook
    endpoint), and identity's account.disabled / account.enabled reach the projections of
    the other services."""
    from tenantry_testkit.receiver import running_receiver

    tenant_id, key = await scim_tenant(stack, operator_headers)
    webhooks_db = await asyncpg.connect(stack.owner_dsn(stack.service_database("webhooks")))
    async with running_receiver() as receiver, httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"{stack.service_url('webhooks')}/v1/tenants/{tenant_id}/webhooks/endpoints",
            headers=operator_headers,
            json={"url": f"{receiver.url}/ok", "event_types": ["user.*", "group.*"]},
        )
        assert r.status_code == 201, r.text
        async with scim_client(stack, key) as scim:
            made = await scim.post(
                "/Users",
                json={"schemas": [USER], "userName": f"ev-{uuid4().hex[:6]}@example.com"},
            )
            user_id = made.json()["id"]
            group = await scim.post(
                "/Groups",
                json={"schemas": [GROUP], "displayName": "G", "members": [{"value": user_id}]},
            )
            assert group.status_code == 201
            off = {
                "schemas": [PATCH_OP],
                "Operations": [{"op": "replace", "value": {"active": False}}],
            }
            assert (await scim.patch(f"/Users/{user_id}", json=off)).status_code == 200

            async def projected(status: str) -> bool:
                found = await webhooks_db.fetchval(
                    "SELECT status FROM account_projection WHERE account_id = $1::uuid", user_id
                )
                return bool(found == status)

            await eventually(lambda: projected("disabled"), timeout=30, message="disabled")
            on = {
                "schemas": [PATCH_OP],
                "Operations": [{"op": "replace", "value": {"active": True}}],
            }
            assert (await scim.patch(f"/Users/{user_id}", json=on)).status_code == 200
            await eventually(lambda: projected("active"), timeout=30, message="enabled again")

        wanted = {
            "user.provisioned",
            "group.created",
            "group.members_changed",
            "user.deprovisioned",
            "user.updated",
        }

        async def delivered() -> set[str] | None:
            import json

            types = {json.loads(r.body)["type"] for r in receiver.to("/ok")}
            return types if wanted <= types else None

        await eventually(delivered, timeout=30, message="directory events delivered")
    await webhooks_db.close()


async def test_identity_refuses_a_provisioned_account_it_cannot_name(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    url = f"{stack.service_url('identity')}/v1/tenants/{tenant_id}/provisioned-accounts"
    async with httpx.AsyncClient(timeout=10) as client:
        for bad in ({"email": "has space@example.com"}, {"email": "x"}, {}, {"email": 5}):
            r = await client.post(url, headers=bearer(key), json=bad)
            assert r.status_code in (400, 422), (bad, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
        listed = await client.get(
            f"{stack.service_url('identity')}/v1/tenants/{tenant_id}/accounts",
            headers=operator_headers,
        )
        assert listed.json() == [], "no account was created"
