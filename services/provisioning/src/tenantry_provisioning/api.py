"""The SCIM 2.0 HTTP edge, mounted at /scim/v2 (RFC 7644): thin routes over directory.py.

The only module of the service that sees Litestar's requests and responses: each route
reads the request (the caller, the body, the query and the If-Match / If-None-Match
headers), calls the directory with plain values and renders its answer as SCIM JSON
(status, ETag, Location, application/scim+json).

Users and Groups have the same reading routes (list, .search, one by id) and the same
PATCH and DELETE; their POST and PUT differ (a user write crosses into identity and keeps
its id, a group write carries its members).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, Router, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler

from tenantry_http.auth import principal_of, requires
from tenantry_provisioning.directory import (
    Caller,
    Directory,
    Versioned,
    parse_id,
    patched,
    replaced_by,
)
from tenantry_provisioning.domain import ScimError
from tenantry_provisioning.scim import discovery, messages
from tenantry_provisioning.scim.errors import SCIM_JSON, scim_error_response
from tenantry_provisioning.scim.resources import project
from tenantry_provisioning.scim.schema import (
    GROUP_SCHEMA,
    LIST_RESPONSE_URN,
    SEARCH_URN,
    USER_SCHEMA,
)

SCIM_OPT: dict[str, Any] = {**requires(scopes=("scim:write",)), "priority": "critical"}
# Every route of the mount is SCIM, not part of the service's OpenAPI document.
_ROUTE: dict[str, Any] = {"opt": SCIM_OPT, "include_in_schema": False}
# While the tenant is offboarding its IdP may still read the directory (to reconcile, or
# to see what it held before the purge); every write is refused with a SCIM Error 403 that
# says why (the tenant guard's tenant-offboarding, rendered by scim/errors.py).
_READING_ROUTE: dict[str, Any] = {
    **_ROUTE,
    "opt": {**SCIM_OPT, "tenant_states": ("active", "offboarding")},
}

MAX_BODY = discovery.BULK_MAX_PAYLOAD

# ---------------------------------------------------------------- reading the request


def base_url(request: Request[Any, Any, Any]) -> str:
    return str(request.base_url).rstrip("/")


def caller_of(request: Request[Any, Any, Any]) -> Caller:
    """The caller as the directory takes it. Only an API key has a tenant here; any other
    principal is refused by the directory (403) when an operation needs the tenant."""
    principal = principal_of(request)
    return Caller(
        tenant=principal.tenant_id if principal.kind == "api_key" else None,
        authorization=request.headers.get("authorization", ""),
        base_url=base_url(request),
        if_match=request.headers.get("if-match"),
    )


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


def list_params(request: Request[Any, Any, Any], body: Any = None) -> messages.ListParams:
    """Query parameters, or the body of a POST .search (a SearchRequest: same names,
    case-insensitive), each member type-checked (messages.py)."""
    if body is None:
        return messages.list_query(request.query_params, max_results=discovery.MAX_RESULTS)
    return messages.search_request(body, SEARCH_URN, max_results=discovery.MAX_RESULTS)


# ---------------------------------------------------------------- rendering the answer


def scim_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(content),
        status_code=status,
        media_type=SCIM_JSON,
        headers=headers or {},
    )


def written(result: Versioned) -> Response[bytes]:
    """A written User or Group: 201 with its Location if this request created it."""
    if result.created:
        return scim_response(
            result.resource, 201, {"Location": result.location, "ETag": result.etag}
        )
    return scim_response(result.resource, headers={"ETag": result.etag})


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


# ---------------------------------------------------------------- Users and Groups: reading


def reading_routes(kind: str, collection: str) -> list[HTTPRouteHandler]:
    """GET /{collection}, POST /{collection}/.search and GET /{collection}/{id}."""

    async def list_all(
        request: Request[Any, Any, Any], directory: NamedDependency[Directory]
    ) -> Response[bytes]:
        params = list_params(request)
        return scim_response(await directory.list_resources(caller_of(request), (kind,), params))

    async def search(
        request: Request[Any, Any, Any], directory: NamedDependency[Directory]
    ) -> Response[bytes]:
        params = list_params(request, await body_of(request))
        return scim_response(await directory.list_resources(caller_of(request), (kind,), params))

    async def read(
        request: Request[Any, Any, Any], resource_id: str, directory: NamedDependency[Directory]
    ) -> Response[bytes]:
        """304 for a matching If-None-Match; attributes and excludedAttributes honoured."""
        found = await directory.read(caller_of(request), kind, resource_id)
        if request.headers.get("if-none-match", "").strip() == found.etag:
            return Response(content=b"", status_code=304, headers={"ETag": found.etag})
        params = list_params(request)
        resource = project(found.resource, params["attributes"], params["excluded"])
        return scim_response(resource, headers={"ETag": found.etag})

    return [
        get(f"/{collection}", name=f"list_{collection}", **_READING_ROUTE)(list_all),
        post(
            f"/{collection}/.search",
            name=f"search_{collection}",
            status_code=200,
            **_READING_ROUTE,
        )(search),
        get(f"/{collection}/{{resource_id:str}}", name=f"get_{collection}", **_READING_ROUTE)(read),
    ]


def changing_routes(kind: str, collection: str, schema: Any) -> list[HTTPRouteHandler]:
    """PATCH and DELETE /{collection}/{id}: alike for users and groups."""

    async def patch_one(
        request: Request[Any, Any, Any], resource_id: str, directory: NamedDependency[Directory]
    ) -> Response[bytes]:
        change = patched(await body_of(request), schema)
        target = parse_id(resource_id, kind)
        write = directory.write_user if kind == "User" else directory.save_group
        return written(await write(caller_of(request), target, change))

    async def delete_one(
        request: Request[Any, Any, Any], resource_id: str, directory: NamedDependency[Directory]
    ) -> None:
        remove = directory.remove_user if kind == "User" else directory.remove_group
        await remove(caller_of(request), parse_id(resource_id, kind))

    path = f"/{collection}/{{resource_id:str}}"
    return [
        patch(path, name=f"patch_{collection}", **_ROUTE)(patch_one),
        delete(path, name=f"delete_{collection}", status_code=204, **_ROUTE)(delete_one),
    ]


# ---------------------------------------------------------------- Users


@post("/Users", status_code=201, **_ROUTE)
async def post_user(
    request: Request[Any, Any, Any], directory: NamedDependency[Directory]
) -> Response[bytes]:
    body = await body_of(request)
    return written(await directory.create_user(caller_of(request), body))


@put("/Users/{resource_id:str}", **_ROUTE)
async def put_user(
    request: Request[Any, Any, Any], resource_id: str, directory: NamedDependency[Directory]
) -> Response[bytes]:
    body = await body_of(request)
    user_id = parse_id(resource_id, "User")
    return written(await directory.replace_user(caller_of(request), user_id, body))


# ---------------------------------------------------------------- Groups


@post("/Groups", status_code=201, **_ROUTE)
async def post_group(
    request: Request[Any, Any, Any], directory: NamedDependency[Directory]
) -> Response[bytes]:
    body = await body_of(request)
    return written(await directory.save_group(caller_of(request), None, replaced_by(body)))


@put("/Groups/{resource_id:str}", **_ROUTE)
async def put_group(
    request: Request[Any, Any, Any], resource_id: str, directory: NamedDependency[Directory]
) -> Response[bytes]:
    change = replaced_by(await body_of(request))
    group_id = parse_id(resource_id, "Group")
    return written(await directory.save_group(caller_of(request), group_id, change))


# ---------------------------------------------------------------- discovery, search, Bulk


@get("/ServiceProviderConfig", **_READING_ROUTE)
async def service_provider_config(request: Request[Any, Any, Any]) -> Response[bytes]:
    return scim_response(discovery.service_provider_config(base_url(request)))


@get("/ResourceTypes", **_READING_ROUTE)
async def resource_types(request: Request[Any, Any, Any]) -> Response[bytes]:
    return list_response(discovery.resource_types(base_url(request)))


@get("/ResourceTypes/{name:str}", **_READING_ROUTE)
async def resource_type(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    return one_of(discovery.resource_types(base_url(request)), name, "ResourceType")


@get("/Schemas", **_READING_ROUTE)
async def all_schemas(request: Request[Any, Any, Any]) -> Response[bytes]:
    return list_response(discovery.schemas(base_url(request)))


@get("/Schemas/{urn:str}", **_READING_ROUTE)
async def one_schema(request: Request[Any, Any, Any], urn: str) -> Response[bytes]:
    return one_of(discovery.schemas(base_url(request)), urn, "Schema")


@post("/.search", status_code=200, **_READING_ROUTE)
async def search_all(
    request: Request[Any, Any, Any], directory: NamedDependency[Directory]
) -> Response[bytes]:
    """Root search: users and groups in one list (RFC 7644 §3.4.3)."""
    params = list_params(request, await body_of(request))
    caller = caller_of(request)
    return scim_response(await directory.list_resources(caller, ("User", "Group"), params))


@post("/Bulk", status_code=200, **_ROUTE)
async def bulk(
    request: Request[Any, Any, Any], directory: NamedDependency[Directory]
) -> Response[bytes]:
    """RFC 7644 §3.7 (Directory.bulk)."""
    body = await body_of(request)
    return scim_response(await directory.bulk(caller_of(request), body))


SCIM_ROUTER = Router(
    path="/scim/v2",
    route_handlers=[
        post_user,
        *reading_routes("User", "Users"),
        put_user,
        *changing_routes("User", "Users", USER_SCHEMA),
        post_group,
        *reading_routes("Group", "Groups"),
        put_group,
        *changing_routes("Group", "Groups", GROUP_SCHEMA),
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
