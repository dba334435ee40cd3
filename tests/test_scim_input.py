"""SCIM input validation on the running suite: wrongly typed and out-of-range members of
list parameters, SearchRequests, BulkRequests, PatchOps and resources are 400 SCIM Errors
with the RFC 7644 §3.12 scimType, never 500, and change nothing; group members must be
users of the tenant's own directory, refused alike whether the id exists elsewhere or not."""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantry_testkit.stack import Stack

from .test_fuzz_openapi import JSON_VALUES
from .test_scim import ERROR, GROUP, PATCH_OP, USER, scim_client, scim_tenant

pytestmark = pytest.mark.kafka
SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
BEYOND_64_BITS = [2**63, 2**64, 99999999999999999999, -(2**63) - 1, -(2**70)]


def refused(response: httpx.Response, scim_type: str | None, status: int = 400) -> str:
    """The response is a SCIM Error with this status and scimType; returns its detail."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [ERROR], body
    assert body["status"] == str(status), body
    assert body.get("scimType") == scim_type, body
    detail: str = body["detail"]
    return detail


async def directory_rows(stack: Stack, tenant_id: str) -> tuple[Any, ...]:
    """Everything the tenant's directory holds, to compare before and after."""
    conn = await asyncpg.connect(stack.owner_dsn(stack.service_database("provisioning")))
    try:
        rows = []
        for table in ("scim_users", "scim_groups", "scim_group_members"):
            found = await conn.fetch(
                f"SELECT * FROM {table} WHERE tenant_id = $1::uuid ORDER BY 1, 2", tenant_id
            )
            rows.append(tuple(tuple(r.items()) for r in found))
        return tuple(rows)
    finally:
        await conn.close()


async def user_and_group(scim: httpx.AsyncClient) -> tuple[str, str]:
    made = await scim.post(
        "/Users", json={"schemas": [USER], "userName": f"in-{uuid4().hex[:8]}@example.com"}
    )
    assert made.status_code == 201, made.text
    group = await scim.post(
        "/Groups",
        json={"schemas": [GROUP], "displayName": "Team", "members": [{"value": made.json()["id"]}]},
    )
    assert group.status_code == 201, group.text
    return made.json()["id"], group.json()["id"]


# ---------------------------------------------------------------- item 1: lists and searches


async def test_start_index_and_count_beyond_64_bits_are_invalid_values(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        await user_and_group(scim)
        before = await directory_rows(stack, tenant_id)
        for number in BEYOND_64_BITS:
            for name in ("startIndex", "count"):
                for url in ("/Users", "/Groups"):
                    r = await scim.get(url, params={name: str(number)})
                    assert name in refused(r, "invalidValue")
                for url in ("/Users/.search", "/Groups/.search", "/.search"):
                    body = f'{{"schemas": ["{SEARCH}"], "{name}": {number}}}'
                    r = await scim.post(url, content=body.encode())
                    assert name in refused(r, "invalidValue")
        # the largest bigint is a page past the end, and the smallest reads as 1
        far = await scim.get("/Users", params={"startIndex": str(2**63 - 1)})
        assert far.status_code == 200, far.text
        assert far.json()["Resources"] == []
        first = await scim.get("/Users", params={"startIndex": str(-(2**63)), "count": "-5"})
        assert (first.json()["startIndex"], first.json()["itemsPerPage"]) == (1, 0)
        assert await directory_rows(stack, tenant_id) == before


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("filter", 123),
        ("filter", ["userName pr"]),
        ("sortBy", 5),
        ("sortOrder", {"x": 1}),
        ("attributes", 5),
        ("attributes", ["userName", 7]),
        ("excludedAttributes", {"a": 1}),
        ("excludedAttributes", [None]),
        ("startIndex", "1"),
        ("startIndex", 1.5),
        ("count", True),
        ("cursor", 5),
    ],
)
async def test_search_members_of_the_wrong_type_are_invalid_values(
    stack: Stack, operator_headers: dict[str, str], member: str, value: Any
) -> None:
    _, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        for url in ("/Users/.search", "/Groups/.search", "/.search"):
            r = await scim.post(url, json={"schemas": [SEARCH], member: value})
            assert member in refused(r, "invalidValue")
            lower = await scim.post(url, json={"schemas": [SEARCH], member.lower(): value})
            assert member in refused(lower, "invalidValue"), "names are case-insensitive"


@pytest.mark.parametrize(
    "body",
    [
        {"schemas": 5},
        {"schemas": SEARCH},
        {"schemas": [5]},
        {"schemas": None},
        {"schemas": {"x": SEARCH}},
        {},
        {"schemas": ["urn:x"]},
    ],
)
async def test_search_bodies_without_a_list_of_schemas_are_invalid_syntax(
    stack: Stack, operator_headers: dict[str, str], body: Any
) -> None:
    _, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        for url in ("/Users/.search", "/Groups/.search", "/.search"):
            assert "schemas" in refused(await scim.post(url, json=body), "invalidSyntax")
        for not_an_object in ([SEARCH], "x", 5, None):
            refused(await scim.post("/.search", json=not_an_object), "invalidSyntax")


async def test_query_parameters_that_could_reach_postgres_are_refused(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    """NUL, unpaired surrogates and integers past 64 bits in a query never reach Postgres."""
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        user_id, group_id = await user_and_group(scim)
        before = await directory_rows(stack, tenant_id)
        for url in ("/Users", "/Groups"):
            for text in (
                'userName eq "a\\u0000"',
                'displayName eq "a\\u0000"',
                'externalId eq "\\ud800"',
                "userName eq 99999999999999999999",
                "displayName gt -99999999999999999999",
                "meta.created gt 99999999999999999999",
                "active eq 99999999999999999999",
            ):
                r = await scim.get(url, params={"filter": text})
                refused(r, "invalidFilter")
                r = await scim.post(f"{url}/.search", json={"schemas": [SEARCH], "filter": text})
                refused(r, "invalidFilter")
            # a raw NUL anywhere in a query: the shared input guard or the filter parser
            for name, value in (("filter", 'userName eq "a\x00"'), ("filter", "userName\x00 pr")):
                r = await scim.get(url, params={name: value})
                assert r.json()["scimType"] in ("invalidValue", "invalidFilter"), r.text
                refused(r, r.json()["scimType"])
            for name in ("attributes", "excludedAttributes", "sortBy", "sortOrder", "cursor"):
                r = await scim.get(url, params={name: "userName\x00"})
                assert name in refused(r, "invalidValue")
        for path in (f"/Users/{user_id}", f"/Groups/{group_id}"):
            r = await scim.get(path, params={"attributes": "id\x00"})
            assert "attributes" in refused(r, "invalidValue")
        root = await scim.post("/.search", json={"schemas": [SEARCH], "filter": 'userName eq "a'})
        refused(root, "invalidFilter")  # a syntax error is one at the root too
        assert await directory_rows(stack, tenant_id) == before


# ---------------------------------------------------------------- items 1 and 6: Bulk


def bulk_body(*operations: Any, **members: Any) -> dict[str, Any]:
    return {"schemas": [BULK], "Operations": list(operations), **members}


def create_op(user_name: str) -> dict[str, Any]:
    return {
        "method": "POST",
        "path": "/Users",
        "bulkId": "u",
        "data": {"schemas": [USER], "userName": user_name},
    }


@pytest.mark.parametrize(
    ("operations", "scim_type", "named"),
    [
        ([1], "invalidSyntax", "Operations[1]"),
        ([None], "invalidSyntax", "Operations[1]"),
        (["POST"], "invalidSyntax", "Operations[1]"),
        ([{"method": 5}], "invalidValue", "method"),
        ([{"method": "GET", "path": "/Users"}], "invalidValue", "method"),
        ([{"method": "DELETE", "path": 5}], "invalidValue", "path"),
        ([{"method": "DELETE"}], "invalidValue", "path"),
        ([{"method": "DELETE", "path": "/Users/x", "bulkId": 5}], "invalidValue", "bulkId"),
        ([{"method": "DELETE", "path": "/Users/x", "version": 1}], "invalidValue", "version"),
        ([{"method": "DELETE", "path": "/Users/x", "data": "x"}], "invalidValue", "data"),
        ([{"method": "POST", "path": "/Users", "data": "x"}], "invalidValue", "data"),
        ([{"method": "PUT", "path": "/Users/x", "data": [1]}], "invalidValue", "data"),
        ([{"method": "PATCH", "path": "/Groups/x"}], "invalidValue", "data"),
        (
            [{"method": "DELETE", "path": "/Users/x", "bulkId": "b" * 1025}],
            "invalidValue",
            "bulkId",
        ),
    ],
)
async def test_malformed_bulk_operations_refuse_the_whole_request(
    stack: Stack,
    operator_headers: dict[str, str],
    operations: list[Any],
    scim_type: str,
    named: str,
) -> None:
    """A valid create before the malformed operation does not run either."""
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        before = await directory_rows(stack, tenant_id)
        user_name = f"bulk-{uuid4().hex[:8]}@example.com"
        r = await scim.post("/Bulk", json=bulk_body(create_op(user_name), *operations))
        assert named in refused(r, scim_type)
        assert await directory_rows(stack, tenant_id) == before


@pytest.mark.parametrize(
    ("body", "scim_type", "named"),
    [
        ({"schemas": [BULK], "Operations": "x"}, "invalidSyntax", "Operations"),
        ({"schemas": [BULK], "Operations": {"method": "POST"}}, "invalidSyntax", "Operations"),
        ({"schemas": [BULK]}, "invalidSyntax", "Operations"),
        ({"schemas": BULK, "Operations": []}, "invalidSyntax", "schemas"),
        ({"schemas": 5, "Operations": []}, "invalidSyntax", "schemas"),
        ({"schemas": [5], "Operations": []}, "invalidSyntax", "schemas"),
        (
            {"schemas": [BULK], "Operations": [], "failOnErrors": "1"},
            "invalidValue",
            "failOnErrors",
        ),
        (
            {"schemas": [BULK], "Operations": [], "failOnErrors": 2**64},
            "invalidValue",
            "failOnErrors",
        ),
    ],
)
async def test_malformed_bulk_requests_are_400(
    stack: Stack, operator_headers: dict[str, str], body: Any, scim_type: str, named: str
) -> None:
    _, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        assert named in refused(await scim.post("/Bulk", json=body), scim_type)


async def test_an_unknown_bulk_id_fails_its_operation_not_the_request(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    _, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        user_name = f"bulk-{uuid4().hex[:8]}@example.com"
        r = await scim.post(
            "/Bulk",
            json=bulk_body(
                create_op(user_name),
                {"method": "DELETE", "path": "/Users/bulkId:nope"},
            ),
        )
        assert r.status_code == 200, r.text
        results = r.json()["Operations"]
        assert [o["status"] for o in results] == ["201", "409"]
        assert results[1]["response"]["scimType"] == "invalidValue"
        listed = await scim.get("/Users", params={"filter": f'userName eq "{user_name}"'})
        assert listed.json()["totalResults"] == 1


# ---------------------------------------------------------------- items 6 and 16: PATCH


@pytest.mark.parametrize(
    ("body", "scim_type", "expected"),
    [
        (
            {"schemas": [PATCH_OP], "Operations": [{"path": "displayName", "value": "x"}]},
            "invalidSyntax",
            "op is missing",
        ),
        (
            {"schemas": [PATCH_OP], "Operations": [{"op": 5, "value": {}}]},
            "invalidSyntax",
            "op must be",
        ),
        (
            {"schemas": [PATCH_OP], "Operations": [{"op": "move", "value": {}}]},
            "invalidSyntax",
            "'move'",
        ),
        (
            {"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": 5, "value": "x"}]},
            "invalidPath",
            "path must be a string",
        ),
        ({"schemas": [PATCH_OP], "Operations": "x"}, "invalidSyntax", "Operations must be"),
        ({"schemas": [PATCH_OP], "Operations": [7]}, "invalidSyntax", "Operations[0]"),
        ({"schemas": 5, "Operations": []}, "invalidSyntax", "schemas"),
        ({"schemas": None, "Operations": []}, "invalidSyntax", "schemas"),
        ({"schemas": PATCH_OP, "Operations": []}, "invalidSyntax", "schemas"),
        ({"Operations": []}, "invalidSyntax", "schemas"),
    ],
)
async def test_malformed_patches_say_what_is_wrong_and_change_nothing(
    stack: Stack,
    operator_headers: dict[str, str],
    body: dict[str, Any],
    scim_type: str,
    expected: str,
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        user_id, group_id = await user_and_group(scim)
        before = await directory_rows(stack, tenant_id)
        for path in (f"/Groups/{group_id}", f"/Users/{user_id}"):
            detail = refused(await scim.patch(path, json=body), scim_type)
            assert expected in detail
            assert "_Missing" not in detail
        bulk = await scim.post(
            "/Bulk",
            json=bulk_body({"method": "PATCH", "path": f"/Groups/{group_id}", "data": body}),
        )
        assert bulk.status_code == 200, bulk.text
        outcome = bulk.json()["Operations"][0]
        assert (outcome["status"], outcome["response"].get("scimType")) == ("400", scim_type)
        assert await directory_rows(stack, tenant_id) == before


@pytest.mark.parametrize("schemas", [5, "x", [5], {"a": GROUP}, True])
async def test_resources_whose_schemas_is_not_a_list_of_strings_are_refused(
    stack: Stack, operator_headers: dict[str, str], schemas: Any
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        user_id, group_id = await user_and_group(scim)
        before = await directory_rows(stack, tenant_id)
        user = {"schemas": schemas, "userName": f"s-{uuid4().hex[:8]}@example.com"}
        group = {"schemas": schemas, "displayName": "Renamed"}
        for response in (
            await scim.post("/Users", json=user),
            await scim.put(f"/Users/{user_id}", json=user),
            await scim.post("/Groups", json=group),
            await scim.put(f"/Groups/{group_id}", json=group),
        ):
            assert "schemas" in refused(response, "invalidSyntax")
        assert await directory_rows(stack, tenant_id) == before


async def test_group_and_user_scalars_of_the_wrong_type_are_refused(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        _, group_id = await user_and_group(scim)
        before = await directory_rows(stack, tenant_id)
        for bad in (5, ["x"], {"a": "b"}, True):
            group = {"schemas": [GROUP], "displayName": "G", "externalId": bad}
            assert "externalId" in refused(await scim.post("/Groups", json=group), "invalidValue")
            assert "externalId" in refused(
                await scim.put(f"/Groups/{group_id}", json=group), "invalidValue"
            )
            user = {
                "schemas": [USER],
                "userName": f"t-{uuid4().hex[:8]}@example.com",
                "name": {"givenName": bad},
            }
            assert "givenName" in refused(await scim.post("/Users", json=user), "invalidValue")
        assert await directory_rows(stack, tenant_id) == before


async def test_bodies_that_are_not_json_media_and_oversized_values_are_refused(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    """A body sent as text/plain (which the shared input guard does not read) is 415 even
    when it holds a NUL; schemas past 16 URNs or 256 characters and group strings past
    1,024 characters are 400; nothing changes."""
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        user_id, group_id = await user_and_group(scim)
        before = await directory_rows(stack, tenant_id)
        group = {"schemas": [GROUP], "displayName": "N\u0000"}
        for media in ("text/plain", "application/xml", "application/x-www-form-urlencoded"):
            for method, path, body in (
                ("POST", "/Groups", group),
                ("PUT", f"/Groups/{group_id}", group),
                ("PATCH", f"/Groups/{group_id}", {"schemas": [PATCH_OP]}),
                ("POST", "/Users", {"schemas": [USER], "userName": "a\u0000@example.com"}),
                ("POST", "/.search", {"schemas": [SEARCH]}),
                ("POST", "/Bulk", bulk_body(create_op("b@example.com"))),
            ):
                r = await scim.request(
                    method, path, content=json.dumps(body).encode(), headers={"Content-Type": media}
                )
                assert media in refused(r, None, 415)
        for response in (
            await scim.post("/Groups", json={"schemas": [GROUP] * 17, "displayName": "G"}),
            await scim.put(
                f"/Groups/{group_id}", json={"schemas": ["u" * 257], "displayName": "G"}
            ),
            await scim.post("/.search", json={"schemas": [SEARCH] + ["x"] * 16}),
            await scim.post("/Bulk", json={"schemas": [BULK] * 17, "Operations": []}),
            await scim.patch(
                f"/Users/{user_id}", json={"schemas": [PATCH_OP] * 17, "Operations": []}
            ),
        ):
            assert "schemas holds at most 16" in refused(response, "invalidValue")
        for name, value in (("displayName", "d" * 1025), ("externalId", "e" * 1025)):
            r = await scim.post(
                "/Groups", json={"schemas": [GROUP], "displayName": "G", name: value}
            )
            assert name in refused(r, "invalidValue")
        long_names = ",".join(["userName"] * 101)
        assert "attributes" in refused(
            await scim.get("/Users", params={"attributes": long_names}), "invalidValue"
        )
        assert await directory_rows(stack, tenant_id) == before


# ---------------------------------------------------------------- item 5: members


async def test_group_members_must_be_users_of_the_tenant(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    """Another tenant's user and an id nobody holds are refused with the same words, in
    POST, PUT, PATCH and Bulk; the group does not change."""
    _, other_key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, other_key) as other:
        foreign_user, _ = await user_and_group(other)
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        own_user, group_id = await user_and_group(scim)
        before = await directory_rows(stack, tenant_id)
        details = []
        for stranger in (foreign_user, str(uuid4())):
            members = [{"value": own_user}, {"value": stranger}]
            attempts = [
                await scim.post(
                    "/Groups", json={"schemas": [GROUP], "displayName": "X", "members": members}
                ),
                await scim.put(
                    f"/Groups/{group_id}",
                    json={"schemas": [GROUP], "displayName": "Team", "members": members},
                ),
                await scim.patch(
                    f"/Groups/{group_id}",
                    json={
                        "schemas": [PATCH_OP],
                        "Operations": [
                            {"op": "add", "path": "members", "value": [{"value": stranger}]}
                        ],
                    },
                ),
            ]
            for response in attempts:
                details.append(refused(response, "invalidValue").replace(stranger, "<id>"))
            bulk = await scim.post(
                "/Bulk",
                json=bulk_body(
                    {
                        "method": "POST",
                        "path": "/Groups",
                        "data": {"schemas": [GROUP], "displayName": "B", "members": members},
                    }
                ),
            )
            outcome = bulk.json()["Operations"][0]
            assert (outcome["status"], outcome["response"]["scimType"]) == ("400", "invalidValue")
            details.append(outcome["response"]["detail"].replace(stranger, "<id>"))
        assert len(set(details)) == 1, details  # no oracle: the same words either way
        for not_an_id in ("x", 5, None, {"a": 1}):
            r = await scim.post(
                "/Groups",
                json={"schemas": [GROUP], "displayName": "Y", "members": [{"value": not_an_id}]},
            )
            assert "member" in refused(r, "invalidValue")
        assert await directory_rows(stack, tenant_id) == before


# ---------------------------------------------------------------- property: any member, any JSON

SEARCH_MEMBERS = st.sampled_from(
    [
        "schemas",
        "filter",
        "sortBy",
        "sortOrder",
        "startIndex",
        "count",
        "attributes",
        "excludedAttributes",
        "cursor",
    ]
)
BULK_MEMBERS = st.sampled_from(["method", "path", "bulkId", "version", "data"])
PATCH_MEMBERS = st.sampled_from(["op", "path", "value"])


@pytest.mark.parametrize("kind", ["search", "bulk", "patch"])
async def test_any_json_in_any_member_is_400_or_success_and_changes_nothing_when_refused(
    stack: Stack, operator_headers: dict[str, str], kind: str
) -> None:
    tenant_id, key = await scim_tenant(stack, operator_headers)
    async with scim_client(stack, key) as scim:
        _, group_id = await user_and_group(scim)
        seen: list[int] = []

        async def send(member: str, value: Any) -> None:
            if kind == "search":
                body: Any = {"schemas": [SEARCH], "count": 2, member: value}
                r = await scim.post("/.search", json=body)
            elif kind == "bulk":
                op = {"method": "DELETE", "path": f"/Groups/{uuid4()}", member: value}
                r = await scim.post("/Bulk", json=bulk_body(op))
            else:
                op = {"op": "replace", "path": "externalId", member: value}
                r = await scim.patch(
                    f"/Groups/{group_id}", json={"schemas": [PATCH_OP], "Operations": [op]}
                )
            seen.append(r.status_code)
            assert r.status_code < 500, (member, value, r.text)
            assert r.status_code in (200, 400, 404), (member, value, r.text)
            if r.status_code == 400:
                assert r.json()["schemas"] == [ERROR]

        members = {"search": SEARCH_MEMBERS, "bulk": BULK_MEMBERS, "patch": PATCH_MEMBERS}[kind]
        cases: list[tuple[str, Any]] = []

        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        @given(members, JSON_VALUES.filter(lambda v: "\\u0000" not in json.dumps(v)))
        def collect(member: str, value: Any) -> None:
            cases.append((member, value))

        collect()
        before = await directory_rows(stack, tenant_id)
        for member, value in cases:
            if kind == "patch":
                # a refused PATCH changes nothing; a successful one may set externalId
                before = await directory_rows(stack, tenant_id)
                await send(member, value)
                if seen[-1] == 400:
                    assert await directory_rows(stack, tenant_id) == before
            else:
                await send(member, value)
        if kind != "patch":
            assert (
                await directory_rows(stack, tenant_id) == before
            )  # searches and deletes of nothing
        assert 400 in seen
