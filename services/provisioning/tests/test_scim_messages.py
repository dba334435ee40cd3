"""SCIM request messages (scim/messages.py): list parameters, SearchRequests and
BulkRequests are read into typed values or refused with a MessageError carrying the RFC
7644 §3.12 scimType; no JSON value in any member gets any other exception through."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantry_provisioning.scim.messages import (
    INT64_MAX,
    INT64_MIN,
    MAX_BULK_TEXT_CHARS,
    MAX_NAMES,
    MAX_SCHEMAS,
    MAX_URN_CHARS,
    BulkRequest,
    ListParams,
    MessageError,
    bulk_request,
    check_schemas,
    list_query,
    schema_list,
    search_request,
)
from tenantry_provisioning.scim.patch import PatchError, apply_patch
from tenantry_provisioning.scim.resources import (
    TEXT_MAX_CHARS,
    ResourceError,
    group_columns,
    user_columns,
)
from tenantry_provisioning.scim.schema import GROUP_SCHEMA, USER_URN
from tenantry_testkit.strategies import json_values

SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"

JSON = json_values(text=st.text(max_size=10), allow_infinity=True)
SEARCH_MEMBERS = [
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


def search(**members: Any) -> ListParams:
    return search_request({"schemas": [SEARCH], **members}, SEARCH, max_results=200)


def attempt(call: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
    """(result, None), or (None, the refusal) for the module's own refusals only: any
    other exception fails the test."""
    try:
        return call(*args, **kwargs), None
    except (MessageError, PatchError) as refused:
        return None, refused


def refusal(call: Any, *args: Any, **kwargs: Any) -> MessageError:
    with pytest.raises(MessageError) as caught:
        call(*args, **kwargs)
    return caught.value


def test_a_search_request_reads_every_member() -> None:
    params = search_request(
        {
            "schemas": [SEARCH.upper()],
            "Filter": 'userName sw "a"',
            "SORTBY": "userName",
            "sortOrder": "descending",
            "startIndex": 3,
            "count": 1000,
            "attributes": ["userName", " emails ", ""],
            "excludedAttributes": "groups,meta",
            "cursor": "",
        },
        SEARCH,
        max_results=200,
    )
    assert params == {
        "cursor": "",
        "filter": 'userName sw "a"',
        "start_index": 3,
        "count": 200,
        "sort_by": "userName",
        "sort_order": "descending",
        "attributes": ["userName", "emails"],
        "excluded": ["groups", "meta"],
    }


def test_nulls_and_absent_members_take_the_defaults() -> None:
    expected: ListParams = {
        "cursor": None,
        "filter": None,
        "start_index": 1,
        "count": 100,
        "sort_by": None,
        "sort_order": "ascending",
        "attributes": None,
        "excluded": None,
    }
    assert search() == expected
    assert search(**dict.fromkeys(SEARCH_MEMBERS[1:])) == expected
    assert list_query({}, max_results=200) == expected
    assert list_query({"startIndex": "", "count": " "}, max_results=200) == expected


def integer_of(params: ListParams, name: str) -> int:
    return params["start_index"] if name == "startIndex" else params["count"]


@pytest.mark.parametrize(
    ("name", "at_largest", "at_smallest"), [("startIndex", INT64_MAX, 1), ("count", 200, 0)]
)
def test_integers_must_fit_a_bigint(name: str, at_largest: int, at_smallest: int) -> None:
    """The ends of bigint are read (startIndex below 1 as 1, a negative count as 0, a count
    capped at maxResults, RFC 7644 §3.4.2.4); one past them is invalidValue."""
    for fits, expected in ((INT64_MAX, at_largest), (INT64_MIN, at_smallest)):
        assert integer_of(search(**{name: fits}), name) == expected
        assert integer_of(list_query({name: str(fits)}, max_results=200), name) == expected
    for beyond in (INT64_MAX + 1, INT64_MIN - 1, 2**64, 10**30):
        assert refusal(search, **{name: beyond}).scim_type == "invalidValue"
        refused = refusal(list_query, {name: str(beyond)}, max_results=200)
        assert (refused.scim_type, refused.status) == ("invalidValue", 400)
        assert name in refused.detail
    for not_an_integer in ("12", 1.0, True, [1], {"a": 1}):
        assert name in refusal(search, **{name: not_an_integer}).detail
    for text in ("1e3", "0x10", "\u0661", "1_000", "--1", "9" * 41):
        assert name in refusal(list_query, {name: text}, max_results=200).detail


@pytest.mark.parametrize("member", SEARCH_MEMBERS[1:])
@given(value=JSON)
def test_any_json_in_any_search_member_is_read_or_refused(member: str, value: Any) -> None:
    params, refused = attempt(search, **{member: value})
    if refused is not None:
        assert (refused.status, refused.scim_type) == (400, "invalidValue")
        return
    assert 1 <= params["start_index"] <= INT64_MAX
    assert 0 <= params["count"] <= 200
    for text in (params["filter"], params["sort_by"], params["cursor"], params["sort_order"]):
        assert text is None or isinstance(text, str)
    for names in (params["attributes"], params["excluded"]):
        assert names is None or all(isinstance(n, str) and "\x00" not in n for n in names)


@given(schemas=JSON)
def test_schemas_must_be_a_list_of_strings_holding_the_urn(schemas: Any) -> None:
    holds = isinstance(schemas, list) and SEARCH in schemas
    _, refused = attempt(check_schemas, {"schemas": schemas}, SEARCH, "a search request")
    if refused is not None:
        assert not holds
        assert (refused.scim_type, refused.status) == ("invalidSyntax", 400)
        assert "schemas" in refused.detail
    else:
        assert isinstance(schemas, list)
        assert all(isinstance(s, str) for s in schemas)


def test_query_strings_with_nul_or_surrogates_are_refused() -> None:
    for name in ("attributes", "excludedAttributes", "sortBy", "sortOrder", "cursor"):
        for text in ("a\x00", "\ud800"):
            refused = refusal(list_query, {name: text}, max_results=200)
            assert (refused.scim_type, name in refused.detail) == ("invalidValue", True)


def bulk(*operations: Any, **members: Any) -> BulkRequest:
    return bulk_request(
        {"schemas": [BULK], "Operations": list(operations), **members}, BULK, max_operations=3
    )


def test_a_bulk_request_reads_every_operation() -> None:
    checked = bulk(
        {"method": "post", "path": "/Users", "bulkId": "u", "data": {"userName": "a"}},
        {"METHOD": "DELETE", "Path": "/Groups/x", "version": 'W/"1"'},
        failOnErrors=1,
    )
    assert checked.fail_on_errors == 1
    assert [(o.method, o.path, o.bulk_id, o.version) for o in checked.operations] == [
        ("POST", "/Users", "u", None),
        ("DELETE", "/Groups/x", None, 'W/"1"'),
    ]
    assert checked.operations[0].data == {"userName": "a"}
    assert checked.operations[1].data is None


@pytest.mark.parametrize(
    ("body", "scim_type", "status"),
    [
        ({"schemas": [BULK], "Operations": "x"}, "invalidSyntax", 400),
        ({"schemas": [BULK]}, "invalidSyntax", 400),
        (
            {"schemas": [BULK], "Operations": [{"method": "DELETE", "path": "/x"}] * 4},
            "tooMany",
            413,
        ),
        ({"schemas": "x", "Operations": []}, "invalidSyntax", 400),
        ([BULK], "invalidSyntax", 400),
        ({"schemas": [BULK], "Operations": [1]}, "invalidSyntax", 400),
        ({"schemas": [BULK], "Operations": [None]}, "invalidSyntax", 400),
        ({"schemas": [BULK], "Operations": [{"method": 5}]}, "invalidValue", 400),
        ({"schemas": [BULK], "Operations": [], "failOnErrors": 1.5}, "invalidValue", 400),
    ],
)
def test_malformed_bulk_requests_are_refused_whole(body: Any, scim_type: str, status: int) -> None:
    refused = refusal(bulk_request, body, BULK, max_operations=3)
    assert (refused.scim_type, refused.status) == (scim_type, status)


BULK_MEMBERS = ["method", "path", "bulkId", "version", "data"]


@pytest.mark.parametrize("member", BULK_MEMBERS)
@given(value=JSON)
def test_any_json_in_any_bulk_member_is_read_or_refused(member: str, value: Any) -> None:
    operation = {"method": "PATCH", "path": "/Groups/x", "data": {}, member: value}
    checked, refused = attempt(bulk, operation)
    if refused is not None:
        assert refused.status == 400
        assert f"Operations[0].{member}" in refused.detail
        return
    (read,) = checked.operations
    assert read.method in ("POST", "PUT", "PATCH", "DELETE")
    assert isinstance(read.path, str)
    assert read.path
    assert read.data is None or isinstance(read.data, dict)
    assert read.data is not None or read.method == "DELETE"


@pytest.mark.parametrize("member", ["op", "path", "value", "Operations", "schemas"])
@given(value=JSON)
def test_any_json_in_a_patch_member_is_applied_or_refused(member: str, value: Any) -> None:
    group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "id": "1"}
    operation = {"op": "replace", "path": "externalId", "value": "x", member: value}
    body: dict[str, Any] = {"schemas": [PATCH_OP], "Operations": [operation]}
    if member in ("Operations", "schemas"):
        body[member] = value
    result, refused = attempt(apply_patch, {**group, "displayName": "G"}, body, schema=GROUP_SCHEMA)
    if refused is not None:
        assert refused.status == 400
        assert "_Missing" not in refused.detail
        return
    _, refused = attempt(group_columns, result)
    assert refused is None or refused.status == 400


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ({"path": "displayName", "value": "x"}, "Operations[0]: op is missing"),
        ({"op": None, "value": {}}, "Operations[0]: op is missing"),
        ({"op": 5, "value": {}}, "Operations[0]: op must be a string"),
        ({"op": "move", "value": {}}, "unknown op 'move'"),
        ({"op": "add", "path": 5, "value": 1}, "path must be a string, not a number"),
    ],
)
def test_patch_operations_say_which_member_is_wrong(
    operation: dict[str, Any], expected: str
) -> None:
    with pytest.raises(PatchError) as caught:
        apply_patch(
            {"displayName": "G"},
            {"schemas": [PATCH_OP], "Operations": [operation]},
            schema=GROUP_SCHEMA,
        )
    assert expected in caught.value.detail
    assert "_Missing" not in caught.value.detail


@pytest.mark.parametrize("schemas", [5, "x", [5], {"a": 1}, True])
def test_resources_refuse_schemas_that_are_not_a_list_of_strings(schemas: Any) -> None:
    for read, body in (
        (user_columns, {"schemas": schemas, "userName": "a"}),
        (group_columns, {"schemas": schemas, "displayName": "G"}),
    ):
        with pytest.raises(ResourceError) as caught:
            read(body)
        assert caught.value.scim_type == "invalidSyntax"


@pytest.mark.parametrize("value", [5, True, ["x"], {"a": "b"}])
def test_resource_strings_must_be_strings(value: Any) -> None:
    with pytest.raises(ResourceError, match="externalId"):
        group_columns({"displayName": "G", "externalId": value})
    with pytest.raises(ResourceError, match=r"name\.givenName"):
        user_columns({"userName": "a", "name": {"givenName": value}})
    with pytest.raises(ResourceError, match="member"):
        group_columns({"displayName": "G", "members": [{"value": value}]})


def test_schemas_and_attribute_lists_are_bounded() -> None:
    assert schema_list([SEARCH] * MAX_SCHEMAS, "x") == [SEARCH] * MAX_SCHEMAS
    for too_many in ([SEARCH] * (MAX_SCHEMAS + 1), ["u" * (MAX_URN_CHARS + 1)]):
        assert refusal(schema_list, too_many, "x").scim_type == "invalidValue"
    names = ",".join(["userName"] * (MAX_NAMES + 1))
    assert "attributes" in refusal(list_query, {"attributes": names}, max_results=200).detail
    assert len(search(attributes=["a"] * MAX_NAMES)["attributes"] or []) == MAX_NAMES


def test_strings_kept_in_text_columns_are_bounded() -> None:
    fits, over = "x" * TEXT_MAX_CHARS, "x" * (TEXT_MAX_CHARS + 1)
    columns, members = group_columns(
        {"displayName": fits, "externalId": fits, "members": [{"value": str(uuid4())}]}
    )
    assert (columns["display_name"], len(members)) == (fits, 1)
    for body, name in (
        ({"displayName": over}, "displayName"),
        ({"displayName": "G", "externalId": over}, "externalId"),
        ({"displayName": "G", "members": [{"value": str(uuid4()), "display": over}]}, "display"),
    ):
        with pytest.raises(ResourceError, match=name):
            group_columns(body)
    with pytest.raises(ResourceError, match="title"):
        user_columns({"userName": "a", "title": over})
    assert user_columns({"userName": "u" * (TEXT_MAX_CHARS + 1)})["user_name"], (
        "userName's own limit is users.py's"
    )


@pytest.mark.parametrize("member", ["path", "bulkId", "version"])
def test_bulk_strings_are_bounded(member: str) -> None:
    fits = "/Users/" + "x" * (MAX_BULK_TEXT_CHARS - 7)
    operation = {"method": "DELETE", "path": "/Users/x", member: fits}
    assert len(bulk(operation).operations) == 1
    operation[member] = fits + "x"
    refused = refusal(
        bulk_request, {"schemas": [BULK], "Operations": [operation]}, BULK, max_operations=3
    )
    assert f"Operations[0].{member} is longer than {MAX_BULK_TEXT_CHARS}" in refused.detail


@pytest.mark.parametrize("key", ["password", "Password", "PASSWORD"])
def test_a_password_in_any_casing_is_never_kept(key: str) -> None:
    # Attribute names are case-insensitive (RFC 7643 §2.1): a "Password" is the writeOnly
    # password, not an unknown attribute to keep in `extra` and return.
    columns = user_columns({"schemas": [USER_URN], "userName": "ada", key: "s3cret"})
    assert "s3cret" not in str(columns)


def test_core_attributes_without_a_column_keep_the_schema_casing() -> None:
    columns = user_columns({"userName": "ada", "IMS": [{"value": "ada@chat"}]})
    assert columns["extra"] == {"ims": [{"value": "ada@chat"}]}
