"""What the SCIM routes (api.py) and /Bulk do with a request: read it (tenant, body,
If-Match, list parameters), list and search, read one, write users and groups, run a
BulkRequest, answer in SCIM JSON.

Every request is authenticated by the pipeline with a tenant API key carrying scim:write;
the tenant is the key's. Every error is a SCIM Error (scim/errors.py is the mount's
renderer). User writes reach identity (the account, the seat, access) and the directory on
both sides or neither (scim/users.py, scim/intents.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from litestar import Request, Response
from uuid_utils.compat import uuid7

from tenantry_events.payloads.provisioning import (
    GroupCreated,
    GroupDeleted,
    GroupMembersChanged,
    GroupUpdated,
)
from tenantry_guardrails.plan_limits import guard_feature
from tenantry_http.auth import principal_of
from tenantry_http.pagination import decode_cursor, encode_cursor
from tenantry_http.problems import Problem
from tenantry_provisioning import store
from tenantry_provisioning.domain import ScimError
from tenantry_provisioning.scim import discovery, messages, users
from tenantry_provisioning.scim.accounts import IdentityAccounts
from tenantry_provisioning.scim.errors import (
    SCIM_JSON,
    scim_error_body,
)
from tenantry_provisioning.scim.events import directory_group, emit
from tenantry_provisioning.scim.filter_sql import sort_sql, to_sql
from tenantry_provisioning.scim.grammar import Filter, FilterError, parse_filter
from tenantry_provisioning.scim.patch import PatchError, apply_patch
from tenantry_provisioning.scim.resources import (
    Member,
    ResourceError,
    etag,
    group_columns,
    group_resource,
    project,
    user_resource,
)
from tenantry_provisioning.scim.schema import (
    BULK_REQUEST_URN,
    BULK_RESPONSE_URN,
    GROUP_SCHEMA,
    LIST_RESPONSE_URN,
    PATCH_OP_URN,
    SEARCH_URN,
    USER_SCHEMA,
)
from tenantry_service.runtime import Runtime

MAX_BODY = discovery.BULK_MAX_PAYLOAD


# ---------------------------------------------------------------- request plumbing


def tenant_of(request: Request[Any, Any, Any]) -> UUID:
    principal = principal_of(request)
    if principal.kind != "api_key" or principal.tenant_id is None:
        raise ScimError(403, "SCIM takes a tenant API key with the scim:write scope")
    return principal.tenant_id


def base_url(request: Request[Any, Any, Any]) -> str:
    return str(request.base_url).rstrip("/")


async def body_of(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """application/scim+json or application/json alike (or no content type); another
    media type is 415, so that no body escapes the shared input guard, which checks JSON
    bodies only; a body that is not a JSON object is invalidSyntax."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in ("", "application/json") and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ScimError(415, f"the body must be application/scim+json, not {media[:64]}")
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise ScimError(413, f"the body is larger than {MAX_BODY} bytes", "tooLarge")
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ScimError(400, f"the body is not JSON: {exc}", "invalidSyntax") from None
    if not isinstance(body, dict):
        raise ScimError(400, "the body must be a JSON object", "invalidSyntax")
    return body


async def search_body(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """The body of a POST .search; `list_params` reads and checks its members."""
    return await body_of(request)


def scim_response(
    content: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(content),
        status_code=status,
        media_type=SCIM_JSON,
        headers=dict(headers or {}),
    )


def parse_id(value: str, kind: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ScimError(404, f"{kind} {value} not found") from None


def check_if_match(request: Request[Any, Any, Any], version: int) -> None:
    wanted = request.headers.get("if-match")
    if (
        wanted
        and wanted.strip() != "*"
        and etag(version) not in [w.strip() for w in wanted.split(",")]
    ):
        raise ScimError(412, "the resource changed since that version (If-Match)", None)


async def scim_allowed(tx: asyncpg.Connection, tenant_id: UUID) -> None:
    try:
        await guard_feature(tx, tenant_id, "scim")
    except Problem as problem:
        raise ScimError(
            problem.status, problem.detail or problem.title, None, problem.headers
        ) from None


def accounts(runtime: Runtime) -> IdentityAccounts:
    client = runtime.extras.get("identity_accounts")
    if not isinstance(client, IdentityAccounts):
        client = IdentityAccounts(runtime.settings.service_url("identity"))
        runtime.extras["identity_accounts"] = client
    return client


def list_params(request: Request[Any, Any, Any], body: Any = None) -> messages.ListParams:
    """Query parameters, or the body of a POST .search (a SearchRequest: same names,
    case-insensitive), each member type-checked (messages.py)."""
    if body is None:
        return messages.list_query(request.query_params, max_results=discovery.MAX_RESULTS)
    return messages.search_request(body, SEARCH_URN, max_results=discovery.MAX_RESULTS)


SOURCES = {
    "User": (store.USER_SELECT, "scim_users", "u", user_resource),
    "Group": (store.GROUP_SELECT, "scim_groups", "g", group_resource),
}


def _query(
    resource: str, params: messages.ListParams, parsed: Filter | None
) -> tuple[str, list[Any], str]:
    """WHERE fragment, its parameters, and the ORDER BY for one resource type."""
    alias = SOURCES[resource][2]
    where, args = "", list[Any]()
    if parsed is not None:
        where, args = to_sql(parsed, resource=resource, first_param=2, alias=alias)
    order = (
        sort_sql(params["sort_by"], params["sort_order"], resource, alias=alias)
        if params["sort_by"]
        else f"{alias}.created_at"
    )
    return where, args, order


async def list_resources(
    request: Request[Any, Any, Any],
    runtime: Runtime,
    resources: tuple[str, ...],
    params: messages.ListParams,
) -> Response[bytes]:
    """A ListResponse over one resource type, or several (the root .search: users, then
    groups, paged as one list). At the root, a filter or sortBy naming an attribute one
    type does not have simply matches nothing of that type; one that no type can take,
    or that does not parse, is refused."""
    tenant_id = tenant_of(request)
    try:
        parsed = parse_filter(params["filter"]) if params["filter"] else None
    except FilterError as exc:
        raise ScimError(400, str(exc), exc.scim_type) from None
    queries: list[tuple[str, tuple[str, list[Any], str]]] = []
    refusals: list[FilterError] = []
    for resource in resources:
        try:
            queries.append((resource, _query(resource, params, parsed)))
        except FilterError as exc:
            refusals.append(exc)
    if not queries:
        raise ScimError(400, str(refusals[0]), refusals[0].scim_type)
    url = base_url(request)
    after = cursor_position(params, resources)
    skip, wanted = params["start_index"] - 1, params["count"]
    if params["cursor"] is not None:
        skip, wanted = 0, wanted + 1  # one more row says whether there is a next page
    total, out, rows_seen = 0, list[dict[str, Any]](), list[dict[str, Any]]()
    async with runtime.db.transaction(tenant_id=tenant_id) as tx:
        await scim_allowed(tx, tenant_id)
        for resource, (where, args, order) in queries:
            select, table, alias, render = SOURCES[resource]
            count, rows = await store.page(
                tx,
                select,
                table,
                alias,
                tenant_id,
                where,
                args,
                order,
                max(0, skip - total),
                max(0, wanted - len(out)),
                after,
            )
            total += count
            rows_seen += rows
            out += [project(render(r, url), params["attributes"], params["excluded"]) for r in rows]
    body: dict[str, Any] = {"schemas": [LIST_RESPONSE_URN], "totalResults": total}
    if params["cursor"] is None:
        body["startIndex"] = params["start_index"]
    elif len(out) > params["count"]:
        out, rows_seen = out[: params["count"]], rows_seen[: params["count"]]
        last = rows_seen[-1]
        body["nextCursor"] = encode_cursor([last["created_at"].isoformat(), str(last["id"])])
    body["itemsPerPage"] = len(out)
    body["Resources"] = out
    return scim_response(body)


def cursor_position(
    params: messages.ListParams, resources: tuple[str, ...]
) -> tuple[datetime, UUID] | None:
    """RFC 9865 cursors: `cursor=` (empty) starts, a nextCursor continues. They follow the
    default order (creation), so they do not combine with sortBy, nor with the root
    search across two resource types."""
    cursor = params["cursor"]
    if cursor is None:
        return None
    if params["sort_by"] or len(resources) > 1:
        raise ScimError(
            400, "cursor paging works in the default order, without sortBy", "invalidValue"
        )
    if cursor == "":
        return None
    try:
        key = decode_cursor(cursor)
        if key is None or len(key) != 2:
            raise ValueError("not a cursor")
        return datetime.fromisoformat(str(key[0])), UUID(str(key[1]))
    except (Problem, ValueError):
        raise ScimError(400, "the cursor is not valid", "invalidCursor") from None


async def read_one(
    request: Request[Any, Any, Any], runtime: Runtime, resource: str, raw_id: str
) -> Response[bytes]:
    """GET of one User or Group: 304 for a matching If-None-Match, attributes and
    excludedAttributes honoured."""
    tenant_id = tenant_of(request)
    fetch, render = (
        (store.get_user, user_resource) if resource == "User" else (store.get_group, group_resource)
    )
    async with runtime.db.transaction(tenant_id=tenant_id) as tx:
        await scim_allowed(tx, tenant_id)
        row = await fetch(tx, tenant_id, parse_id(raw_id, resource))
    if row is None:
        raise ScimError(404, f"{resource} {raw_id} not found")
    tag = etag(row["version"])
    if request.headers.get("if-none-match", "").strip() == tag:
        return Response(content=b"", status_code=304, headers={"ETag": tag})
    params = list_params(request)
    resource_json = project(
        render(row, base_url(request)), params["attributes"], params["excluded"]
    )
    return scim_response(resource_json, headers={"ETag": tag})


# ---------------------------------------------------------------- Users


async def create_user(
    request: Request[Any, Any, Any], runtime: Runtime, body: dict[str, Any]
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The account in identity and the user here, or neither (users.py)."""
    row = await users.create(
        runtime,
        accounts(runtime),
        tenant_of(request),
        body,
        request.headers["authorization"],
        scim_allowed,
    )
    resource = user_resource(row, base_url(request))
    return 201, resource, {"Location": resource["meta"]["location"], "ETag": etag(row["version"])}


async def write_user(
    request: Request[Any, Any, Any],
    runtime: Runtime,
    user_id: UUID,
    change: Any,
) -> tuple[dict[str, Any], dict[str, str]]:
    """PUT and PATCH: `change(current_resource) -> new full resource`."""
    url = base_url(request)

    def wanted(current: dict[str, Any]) -> dict[str, Any]:
        check_if_match(request, current["version"])
        result: dict[str, Any] = change(user_resource(current, url))
        return result

    row = await users.replace(
        runtime,
        accounts(runtime),
        tenant_of(request),
        user_id,
        wanted,
        request.headers["authorization"],
        scim_allowed,
    )
    return user_resource(row, url), {"ETag": etag(row["version"])}


def patched(body: Mapping[str, Any], schema: Any) -> Any:
    # The envelope first (messages.py): a `schemas` that is not a list of strings is 400.
    messages.check_schemas(body, PATCH_OP_URN, "a PATCH request")

    def change(current: dict[str, Any]) -> dict[str, Any]:
        try:
            result: dict[str, Any] = apply_patch(current, dict(body), schema=schema)
        except PatchError as exc:
            raise ScimError(exc.status, exc.detail, exc.scim_type) from None
        return result

    return change


async def remove_user(request: Request[Any, Any, Any], runtime: Runtime, user_id: UUID) -> None:
    await users.remove(
        runtime,
        accounts(runtime),
        tenant_of(request),
        user_id,
        lambda current: check_if_match(request, current["version"]),
        request.headers["authorization"],
        scim_allowed,
    )


# ---------------------------------------------------------------- Groups


async def save_group(
    request: Request[Any, Any, Any],
    runtime: Runtime,
    group_id: UUID | None,
    change: Any,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """POST (group_id None), PUT and PATCH of a group, members included."""
    tenant_id = tenant_of(request)
    url = base_url(request)
    async with runtime.db.transaction(tenant_id=tenant_id) as tx:
        await scim_allowed(tx, tenant_id)
        current = await store.get_group(tx, tenant_id, group_id) if group_id else None
        if group_id is not None and current is None:
            raise ScimError(404, f"Group {group_id} not found")
        if current is not None:
            check_if_match(request, current["version"])
        wanted = change(group_resource(current, url) if current is not None else None)
        try:
            columns, members = group_columns(wanted)
        except ResourceError as exc:
            raise ScimError(400, str(exc), exc.scim_type) from None
        new_id = group_id or uuid7()
        await _check_members(tx, tenant_id, new_id, members)
        if current is None:
            await store.insert_group(tx, tenant_id, new_id, columns)
        else:
            await tx.execute("SELECT 1 FROM scim_groups WHERE id = $1 FOR UPDATE", new_id)
            await store.update_group(tx, tenant_id, new_id, columns)
        added, removed = await store.set_members(tx, tenant_id, new_id, members)
        row = await store.get_group(tx, tenant_id, new_id)
        assert row is not None
        group = directory_group(row)
        if current is None:
            await emit(runtime, tx, tenant_id, row, GroupCreated(group=group))
        elif (current["display_name"], current["external_id"]) != (
            row["display_name"],
            row["external_id"],
        ):
            await emit(runtime, tx, tenant_id, row, GroupUpdated(group=group))
        if added or removed:
            await emit(
                runtime,
                tx,
                tenant_id,
                row,
                GroupMembersChanged(group=group, added=added, removed=removed),
            )
    resource = group_resource(row, url)
    headers = {"ETag": etag(row["version"])}
    if current is None:
        headers["Location"] = resource["meta"]["location"]
    return (201 if current is None else 200), resource, headers


async def _check_members(
    tx: asyncpg.Connection, tenant_id: UUID, group_id: UUID, members: list[Member]
) -> None:
    """Members are users of this tenant's directory (groups of groups are not supported).
    Checked in the writing transaction, which row-level security scopes to the tenant:
    another tenant's user and an id nobody holds get the same answer."""
    unknown = await store.unknown_members(tx, tenant_id, group_id, [m[0] for m in members])
    if unknown:
        raise ScimError(
            400, f"members: {unknown[0]} is not a User of this directory", "invalidValue"
        )


async def remove_group(request: Request[Any, Any, Any], runtime: Runtime, group_id: UUID) -> None:
    """DELETE of a group, by its route and by /Bulk alike (plan, If-Match, event)."""
    tenant_id = tenant_of(request)
    async with runtime.db.transaction(tenant_id=tenant_id) as tx:
        await scim_allowed(tx, tenant_id)
        row = await store.get_group(tx, tenant_id, group_id)
        if row is None:
            raise ScimError(404, f"Group {group_id} not found")
        check_if_match(request, row["version"])
        await store.delete_group(tx, tenant_id, group_id)
        await emit(runtime, tx, tenant_id, row, GroupDeleted(group=directory_group(row)))


# ---------------------------------------------------------------- discovery


def list_response(items: list[dict[str, Any]]) -> Response[bytes]:
    """A ListResponse of every item at once (/ResourceTypes, /Schemas)."""
    return scim_response(
        {
            "schemas": [LIST_RESPONSE_URN],
            "totalResults": len(items),
            "startIndex": 1,
            "itemsPerPage": len(items),
            "Resources": items,
        }
    )


def one_of(items: list[dict[str, Any]], wanted: str, kind: str) -> Response[bytes]:
    """The item whose id is `wanted` (/ResourceTypes/{name}, /Schemas/{urn}), else 404."""
    for item in items:
        if item["id"] == wanted:
            return scim_response(item)
    raise ScimError(404, f"{kind} {wanted} not found")


# ---------------------------------------------------------------- Bulk


async def run_bulk(request: Request[Any, Any, Any], runtime: Runtime) -> Response[bytes]:
    """RFC 7644 §3.7: operations in order, bulkId references resolved as created,
    failOnErrors honoured; limits as advertised. The whole request is checked before the
    first operation runs (messages.py): a malformed one refuses it all, changing nothing."""
    checked = messages.bulk_request(
        await body_of(request), BULK_REQUEST_URN, max_operations=discovery.BULK_MAX_OPERATIONS
    )
    ids: dict[str, str] = {}
    results: list[dict[str, Any]] = []
    errors = 0
    for operation in checked.operations:
        result: dict[str, Any] = {"method": operation.method}
        if operation.bulk_id:
            result["bulkId"] = operation.bulk_id
        try:
            path = _resolve_bulk_ids(operation.path, ids)
            data = _resolve_bulk_ids(operation.data, ids)
            status, location, resource_id = await _bulk_one(
                request, runtime, operation.method, path, data
            )
            result["status"] = str(status)
            if location:
                result["location"] = location
            if operation.bulk_id and resource_id:
                ids[operation.bulk_id] = resource_id
        except (ScimError, messages.MessageError) as exc:
            errors += 1
            result["status"] = str(exc.status)
            result["response"] = scim_error_body(exc.status, exc.detail, exc.scim_type)
        results.append(result)
        if checked.fail_on_errors is not None and 0 < checked.fail_on_errors <= errors:
            break
    return scim_response({"schemas": [BULK_RESPONSE_URN], "Operations": results})


def _resolve_bulk_ids(value: Any, ids: Mapping[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("bulkId:"):
        key = value.removeprefix("bulkId:")
        if key not in ids:
            raise ScimError(409, f"bulkId {key} is not known (yet)", "invalidValue")
        return ids[key]
    if isinstance(value, str) and "/bulkId:" in value:
        head, _, key = value.partition("bulkId:")
        if key not in ids:
            raise ScimError(409, f"bulkId {key} is not known (yet)", "invalidValue")
        return head + ids[key]
    if isinstance(value, dict):
        return {k: _resolve_bulk_ids(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_bulk_ids(v, ids) for v in value]
    return value


async def _bulk_one(
    request: Request[Any, Any, Any],
    runtime: Runtime,
    method: str,
    path: str,
    data: dict[str, Any] | None,
) -> tuple[int, str | None, str | None]:
    """One checked operation (messages.BulkOperation: `data` is an object unless DELETE)."""
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in ("Users", "Groups") or len(parts) > 2:
        raise ScimError(400, f"unsupported bulk path {path!r}", "invalidPath")
    kind, target = parts[0], (parts[1] if len(parts) == 2 else None)
    if method == "POST" and target is None:
        assert data is not None
        body = data
        if kind == "Users":
            status, resource, headers = await create_user(request, runtime, body)
        else:
            status, resource, headers = await save_group(request, runtime, None, lambda _: body)
        return status, headers.get("Location"), resource["id"]
    if target is None:
        raise ScimError(400, f"{method} needs a resource id in the path", "invalidPath")
    resource_id = parse_id(target, kind[:-1])
    if method == "DELETE":
        if kind == "Users":
            await remove_user(request, runtime, resource_id)
        else:
            await remove_group(request, runtime, resource_id)
        return 204, None, None
    if method == "POST":
        raise ScimError(400, "POST takes the path of a resource type", "invalidPath")
    assert data is not None
    replacement = data
    change = (
        patched(data, USER_SCHEMA if kind == "Users" else GROUP_SCHEMA)
        if method == "PATCH"
        else (lambda _: replacement)
    )
    if kind == "Users":
        resource, headers = await write_user(request, runtime, resource_id, change)
    else:
        _, resource, headers = await save_group(request, runtime, resource_id, change)
    return 200, resource["meta"]["location"], resource["id"]
