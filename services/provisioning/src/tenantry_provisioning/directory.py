"""The SCIM directory: the service layer under the SCIM routes (api.py) and /Bulk. It lists
and searches, reads one resource, writes users and groups and runs a BulkRequest, on plain
values (the `Caller`, JSON bodies, resource ids) and answers with plain ones (a `Versioned`
resource, the JSON of a ListResponse or a BulkResponse); api.py reads the HTTP request and
renders these answers.

Every request is authenticated by the pipeline with a tenant API key carrying scim:write;
the tenant is the key's. Every refusal is a ScimError (scim/errors.py is the mount's
renderer). User writes reach identity (the account, the seat, access) and the directory on
both sides or neither (scim/users.py, scim/intents.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from uuid_utils.compat import uuid7

from tenantry_events.payloads.provisioning import (
    GroupCreated,
    GroupDeleted,
    GroupMembersChanged,
    GroupUpdated,
)
from tenantry_events.pg import Database
from tenantry_guardrails.plan_limits import guard_feature
from tenantry_http.pagination import decode_cursor, encode_cursor
from tenantry_http.problems import Problem
from tenantry_provisioning import store
from tenantry_provisioning.domain import ScimError
from tenantry_provisioning.scim import discovery, messages, users
from tenantry_provisioning.scim.accounts import IdentityAccounts
from tenantry_provisioning.scim.errors import scim_error_body
from tenantry_provisioning.scim.events import DirectoryEvents, directory_group
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
    USER_SCHEMA,
)

# A write's new full resource from the current one (None for a group being created).
Change = Callable[[Any], dict[str, Any]]


@dataclass(frozen=True)
class Caller:
    """Who asks, and where: what api.py reads off the request, as plain values."""

    tenant: UUID | None  # the API key's tenant; None for any other principal (refused)
    authorization: str  # the request's own credential, forwarded to identity
    base_url: str  # the SCIM mount's, for each resource's meta.location
    # The request's If-Match; a /Bulk request's applies to each of its operations.
    if_match: str | None = None

    @property
    def tenant_id(self) -> UUID:
        if self.tenant is None:
            raise ScimError(403, "SCIM takes a tenant API key with the scim:write scope")
        return self.tenant


@dataclass(frozen=True)
class Versioned:
    """A User or Group as SCIM JSON, with the row version its ETag names."""

    resource: dict[str, Any]
    version: int
    created: bool = False  # by this request: 201 with a Location

    @property
    def etag(self) -> str:
        return etag(self.version)

    @property
    def location(self) -> str:
        location: str = self.resource["meta"]["location"]
        return location


def parse_id(value: str, kind: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ScimError(404, f"{kind} {value} not found") from None


def check_if_match(if_match: str | None, version: int) -> None:
    if (
        if_match
        and if_match.strip() != "*"
        and etag(version) not in [w.strip() for w in if_match.split(",")]
    ):
        raise ScimError(412, "the resource changed since that version (If-Match)", None)


def patched(body: Mapping[str, Any], schema: Any) -> Change:
    """The change a PatchOp `body` makes to the current resource."""
    # The envelope first (messages.py): a `schemas` that is not a list of strings is 400.
    messages.check_schemas(body, PATCH_OP_URN, "a PATCH request")

    def change(current: dict[str, Any]) -> dict[str, Any]:
        try:
            result: dict[str, Any] = apply_patch(current, dict(body), schema=schema)
        except PatchError as exc:
            raise ScimError(exc.status, exc.detail, exc.scim_type) from None
        return result

    return change


def replaced_by(body: dict[str, Any]) -> Change:
    """The change a PUT (or a POST) makes: the body is the new full resource."""
    return lambda _: body


async def scim_allowed(tx: asyncpg.Connection, tenant_id: UUID) -> None:
    try:
        await guard_feature(tx, tenant_id, "scim")
    except Problem as problem:
        raise ScimError(
            problem.status, problem.detail or problem.title, None, problem.headers
        ) from None


SOURCES = {
    "User": (store.USER_SELECT, "scim_users", "u", user_resource),
    "Group": (store.GROUP_SELECT, "scim_groups", "g", group_resource),
}


def listing_sql(
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


@dataclass(frozen=True)
class Directory:
    """The SCIM directory's operations; built once in app.py, injected into the routes."""

    db: Database
    events: DirectoryEvents
    identity: IdentityAccounts  # identity's side of every user write

    # ------------------------------------------------------------ reading

    async def list_resources(
        self, caller: Caller, resources: tuple[str, ...], params: messages.ListParams
    ) -> dict[str, Any]:
        """A ListResponse over one resource type, or several (the root .search: users, then
        groups, paged as one list). At the root, a filter or sortBy naming an attribute one
        type does not have simply matches nothing of that type; one that no type can take,
        or that does not parse, is refused."""
        tenant_id = caller.tenant_id
        try:
            parsed = parse_filter(params["filter"]) if params["filter"] else None
        except FilterError as exc:
            raise ScimError(400, str(exc), exc.scim_type) from None
        queries: list[tuple[str, tuple[str, list[Any], str]]] = []
        refusals: list[FilterError] = []
        for resource in resources:
            try:
                queries.append((resource, listing_sql(resource, params, parsed)))
            except FilterError as exc:
                refusals.append(exc)
        if not queries:
            raise ScimError(400, str(refusals[0]), refusals[0].scim_type)
        after = cursor_position(params, resources)
        skip, wanted = params["start_index"] - 1, params["count"]
        if params["cursor"] is not None:
            skip, wanted = 0, wanted + 1  # one more row says whether there is a next page
        total, out, rows_seen = 0, list[dict[str, Any]](), list[dict[str, Any]]()
        async with self.db.transaction(tenant_id=tenant_id) as tx:
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
                out += [
                    project(render(r, caller.base_url), params["attributes"], params["excluded"])
                    for r in rows
                ]
        body: dict[str, Any] = {"schemas": [LIST_RESPONSE_URN], "totalResults": total}
        if params["cursor"] is None:
            body["startIndex"] = params["start_index"]
        elif len(out) > params["count"]:
            out, rows_seen = out[: params["count"]], rows_seen[: params["count"]]
            last = rows_seen[-1]
            body["nextCursor"] = encode_cursor([last["created_at"].isoformat(), str(last["id"])])
        body["itemsPerPage"] = len(out)
        body["Resources"] = out
        return body

    async def read(self, caller: Caller, resource: str, raw_id: str) -> Versioned:
        """One User or Group, whole (the caller projects attributes, after If-None-Match)."""
        tenant_id = caller.tenant_id
        fetch, render = (
            (store.get_user, user_resource)
            if resource == "User"
            else (store.get_group, group_resource)
        )
        async with self.db.transaction(tenant_id=tenant_id) as tx:
            await scim_allowed(tx, tenant_id)
            row = await fetch(tx, tenant_id, parse_id(raw_id, resource))
        if row is None:
            raise ScimError(404, f"{resource} {raw_id} not found")
        return Versioned(render(row, caller.base_url), row["version"])

    # ------------------------------------------------------------ Users

    async def create_user(self, caller: Caller, body: dict[str, Any]) -> Versioned:
        """The account in identity and the user here, or neither (users.py)."""
        row = await users.create(
            self.db,
            self.events,
            self.identity,
            caller.tenant_id,
            body,
            caller.authorization,
            scim_allowed,
        )
        return Versioned(user_resource(row, caller.base_url), row["version"], created=True)

    async def replace_user(self, caller: Caller, user_id: UUID, body: dict[str, Any]) -> Versioned:
        """PUT /Users/{id}: the body is the new resource, and keeps the user's id."""
        if "id" in body and str(body["id"]) != str(user_id):
            raise ScimError(400, "id cannot change", "mutability")
        return await self.write_user(caller, user_id, replaced_by(body))

    async def write_user(self, caller: Caller, user_id: UUID, change: Change) -> Versioned:
        """PUT and PATCH (and /Bulk's): `change(current_resource) -> new full resource`."""
        url = caller.base_url

        def wanted(current: dict[str, Any]) -> dict[str, Any]:
            check_if_match(caller.if_match, current["version"])
            return change(user_resource(current, url))

        row = await users.replace(
            self.db,
            self.events,
            self.identity,
            caller.tenant_id,
            user_id,
            wanted,
            caller.authorization,
            scim_allowed,
        )
        return Versioned(user_resource(row, url), row["version"])

    async def remove_user(self, caller: Caller, user_id: UUID) -> None:
        await users.remove(
            self.db,
            self.events,
            self.identity,
            caller.tenant_id,
            user_id,
            lambda current: check_if_match(caller.if_match, current["version"]),
            caller.authorization,
            scim_allowed,
        )

    # ------------------------------------------------------------ Groups

    async def save_group(self, caller: Caller, group_id: UUID | None, change: Change) -> Versioned:
        """POST (group_id None), PUT and PATCH of a group, members included."""
        tenant_id = caller.tenant_id
        url = caller.base_url
        async with self.db.transaction(tenant_id=tenant_id) as tx:
            await scim_allowed(tx, tenant_id)
            current = await store.get_group(tx, tenant_id, group_id) if group_id else None
            if group_id is not None and current is None:
                raise ScimError(404, f"Group {group_id} not found")
            if current is not None:
                check_if_match(caller.if_match, current["version"])
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
                await self.events.emit(tx, tenant_id, row, GroupCreated(group=group))
            elif (current["display_name"], current["external_id"]) != (
                row["display_name"],
                row["external_id"],
            ):
                await self.events.emit(tx, tenant_id, row, GroupUpdated(group=group))
            if added or removed:
                await self.events.emit(
                    tx,
                    tenant_id,
                    row,
                    GroupMembersChanged(group=group, added=added, removed=removed),
                )
        return Versioned(group_resource(row, url), row["version"], created=current is None)

    async def remove_group(self, caller: Caller, group_id: UUID) -> None:
        """DELETE of a group, by its route and by /Bulk alike (plan, If-Match, event)."""
        tenant_id = caller.tenant_id
        async with self.db.transaction(tenant_id=tenant_id) as tx:
            await scim_allowed(tx, tenant_id)
            row = await store.get_group(tx, tenant_id, group_id)
            if row is None:
                raise ScimError(404, f"Group {group_id} not found")
            check_if_match(caller.if_match, row["version"])
            await store.delete_group(tx, tenant_id, group_id)
            await self.events.emit(tx, tenant_id, row, GroupDeleted(group=directory_group(row)))

    # ------------------------------------------------------------ Bulk

    async def bulk(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        """RFC 7644 §3.7, the BulkResponse: operations in order, bulkId references resolved
        as created, failOnErrors honoured; limits as advertised. The whole request is checked
        before the first operation runs (messages.py): a malformed one refuses it all,
        changing nothing."""
        checked = messages.bulk_request(
            body, BULK_REQUEST_URN, max_operations=discovery.BULK_MAX_OPERATIONS
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
                status, location, resource_id = await self._bulk_one(
                    caller, operation.method, path, data
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
        return {"schemas": [BULK_RESPONSE_URN], "Operations": results}

    async def _bulk_one(
        self, caller: Caller, method: str, path: str, data: dict[str, Any] | None
    ) -> tuple[int, str | None, str | None]:
        """One checked operation (messages.BulkOperation: `data` is an object unless
        DELETE): its status, location and resource id."""
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] not in ("Users", "Groups") or len(parts) > 2:
            raise ScimError(400, f"unsupported bulk path {path!r}", "invalidPath")
        kind, target = parts[0], (parts[1] if len(parts) == 2 else None)
        if method == "POST" and target is None:
            assert data is not None
            created = (
                await self.create_user(caller, data)
                if kind == "Users"
                else await self.save_group(caller, None, replaced_by(data))
            )
            return 201, created.location, created.resource["id"]
        if target is None:
            raise ScimError(400, f"{method} needs a resource id in the path", "invalidPath")
        resource_id = parse_id(target, kind[:-1])
        if method == "DELETE":
            if kind == "Users":
                await self.remove_user(caller, resource_id)
            else:
                await self.remove_group(caller, resource_id)
            return 204, None, None
        if method == "POST":
            raise ScimError(400, "POST takes the path of a resource type", "invalidPath")
        assert data is not None
        change = (
            patched(data, USER_SCHEMA if kind == "Users" else GROUP_SCHEMA)
            if method == "PATCH"
            else replaced_by(data)
        )
        written = (
            await self.write_user(caller, resource_id, change)
            if kind == "Users"
            else await self.save_group(caller, resource_id, change)
        )
        return 200, written.location, written.resource["id"]
