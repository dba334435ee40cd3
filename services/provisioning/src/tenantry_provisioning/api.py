"""The SCIM 2.0 HTTP edge, mounted at /scim/v2 (RFC 7644): thin routes over directory.py.

Users and Groups each have the same reading routes (list, .search, one by id); their
writes differ (a user write crosses into identity, a group write carries its members).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler

from tenantry_http.auth import requires
from tenantry_provisioning.directory import (
    base_url,
    body_of,
    create_user,
    list_params,
    list_resources,
    list_response,
    one_of,
    parse_id,
    patched,
    read_one,
    remove_group,
    remove_user,
    run_bulk,
    save_group,
    scim_response,
    search_body,
    write_user,
)
from tenantry_provisioning.domain import ScimError
from tenantry_provisioning.scim import discovery
from tenantry_provisioning.scim.errors import scim_error_response
from tenantry_provisioning.scim.schema import GROUP_SCHEMA, USER_SCHEMA
from tenantry_service.runtime import Runtime

SCIM_OPT: dict[str, Any] = {**requires(scopes=("scim:write",)), "priority": "critical"}
# Every route of the mount is SCIM, not part of the service's OpenAPI document.
_ROUTE: dict[str, Any] = {"opt": SCIM_OPT, "include_in_schema": False}


def reading_routes(kind: str, collection: str) -> list[HTTPRouteHandler]:
    """GET /{collection}, POST /{collection}/.search and GET /{collection}/{id}."""

    async def list_all(
        request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
    ) -> Response[bytes]:
        return await list_resources(request, runtime, (kind,), list_params(request))

    async def search(
        request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
    ) -> Response[bytes]:
        body = await search_body(request)
        return await list_resources(request, runtime, (kind,), list_params(request, body))

    async def read(
        request: Request[Any, Any, Any], resource_id: str, runtime: NamedDependency[Runtime]
    ) -> Response[bytes]:
        return await read_one(request, runtime, kind, resource_id)

    return [
        get(f"/{collection}", name=f"list_{collection}", **_ROUTE)(list_all),
        post(f"/{collection}/.search", name=f"search_{collection}", status_code=200, **_ROUTE)(
            search
        ),
        get(f"/{collection}/{{resource_id:str}}", name=f"get_{collection}", **_ROUTE)(read),
    ]


# ---------------------------------------------------------------- Users


@post("/Users", status_code=201, **_ROUTE)
async def post_user(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    status, resource, headers = await create_user(request, runtime, await body_of(request))
    return scim_response(resource, status, headers)


@put("/Users/{resource_id:str}", **_ROUTE)
async def put_user(
    request: Request[Any, Any, Any], resource_id: str, runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    body = await body_of(request)
    uid = parse_id(resource_id, "User")
    if "id" in body and str(body["id"]) != str(uid):
        raise ScimError(400, "id cannot change", "mutability")
    resource, headers = await write_user(request, runtime, uid, lambda current: body)
    return scim_response(resource, headers=headers)


@patch("/Users/{resource_id:str}", **_ROUTE)
async def patch_user(
    request: Request[Any, Any, Any], resource_id: str, runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    change = patched(await body_of(request), USER_SCHEMA)
    resource, headers = await write_user(request, runtime, parse_id(resource_id, "User"), change)
    return scim_response(resource, headers=headers)


@delete("/Users/{resource_id:str}", status_code=204, **_ROUTE)
async def delete_user(
    request: Request[Any, Any, Any], resource_id: str, runtime: NamedDependency[Runtime]
) -> None:
    await remove_user(request, runtime, parse_id(resource_id, "User"))


# ---------------------------------------------------------------- Groups


@post("/Groups", status_code=201, **_ROUTE)
async def post_group(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    body = await body_of(request)
    status, resource, headers = await save_group(request, runtime, None, lambda _: body)
    return scim_response(resource, status, headers)


@put("/Groups/{resource_id:str}", **_ROUTE)
async def put_group(
    request: Request[Any, Any, Any], resource_id: str, runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    body = await body_of(request)
    _, resource, headers = await save_group(
        request, runtime, parse_id(resource_id, "Group"), lambda _: body
    )
    return scim_response(resource, headers=headers)


@patch("/Groups/{resource_id:str}", **_ROUTE)
async def patch_group(
    request: Request[Any, Any, Any], resource_id: str, runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    change = patched(await body_of(request), GROUP_SCHEMA)
    _, resource, headers = await save_group(
        request, runtime, parse_id(resource_id, "Group"), change
    )
    return scim_response(resource, headers=headers)


@delete("/Groups/{resource_id:str}", status_code=204, **_ROUTE)
async def delete_group(
    request: Request[Any, Any, Any], resource_id: str, runtime: NamedDependency[Runtime]
) -> None:
    await remove_group(request, runtime, parse_id(resource_id, "Group"))


# ---------------------------------------------------------------- discovery, search, Bulk


@get("/ServiceProviderConfig", **_ROUTE)
async def service_provider_config(request: Request[Any, Any, Any]) -> Response[bytes]:
    return scim_response(discovery.service_provider_config(base_url(request)))


@get("/ResourceTypes", **_ROUTE)
async def resource_types(request: Request[Any, Any, Any]) -> Response[bytes]:
    return list_response(discovery.resource_types(base_url(request)))


@get("/ResourceTypes/{name:str}", **_ROUTE)
async def resource_type(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    return one_of(discovery.resource_types(base_url(request)), name, "ResourceType")


@get("/Schemas", **_ROUTE)
async def all_schemas(request: Request[Any, Any, Any]) -> Response[bytes]:
    return list_response(discovery.schemas(base_url(request)))


@get("/Schemas/{urn:str}", **_ROUTE)
async def one_schema(request: Request[Any, Any, Any], urn: str) -> Response[bytes]:
    return one_of(discovery.schemas(base_url(request)), urn, "Schema")


@post("/.search", status_code=200, **_ROUTE)
async def search_all(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    """Root search: users and groups in one list (RFC 7644 §3.4.3)."""
    body = await search_body(request)
    return await list_resources(request, runtime, ("User", "Group"), list_params(request, body))


@post("/Bulk", status_code=200, **_ROUTE)
async def bulk(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    """RFC 7644 §3.7 (directory.run_bulk)."""
    return await run_bulk(request, runtime)


SCIM_ROUTER = Router(
    path="/scim/v2",
    route_handlers=[
        post_user,
        *reading_routes("User", "Users"),
        put_user,
        patch_user,
        delete_user,
        post_group,
        *reading_routes("Group", "Groups"),
        put_group,
        patch_group,
        delete_group,
        service_provider_config,
        resource_types,
        resource_type,
        all_schemas,
        one_schema,
        search_all,
        bulk,
    ],
    exception_handlers={Exception: scim_error_response},
    tags=["scim"],
)
