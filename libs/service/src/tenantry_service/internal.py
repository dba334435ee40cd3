"""Routes one deployment's processes call on each other, never tenants or operators:
under /internal/v1, left out of the OpenAPI document, each behind a shared secret.

`shared_secret_guard` is the one check: tenancy's key API and its global directory use
it, and so does every service's share of a tenant's move (`move_api`)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

import msgspec
from litestar import Router, post
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler

from tenantry_events.faults import is_transient_db_error
from tenantry_events.payloads.tenancy import PurgedRows
from tenantry_http.auth import PUBLIC
from tenantry_http.problems import Problem
from tenantry_objectstore import ObjectNotFound, open_object_store
from tenantry_platform.settings import ServiceSettings
from tenantry_regions.routing import REGION_LOCAL
from tenantry_service.data_keys import INTERNAL_AUTH_SCHEME
from tenantry_service.move import MoveRefused, MoveShare, Resealed
from tenantry_service.runtime import Runtime

log = logging.getLogger("tenantry.internal")

# Public to the pipeline's authenticator (it knows user, operator and API key
# credentials, none of which may call these); the guard checks the shared secret instead.
# Critical: another process waits on the answer. Region-local: never sent elsewhere.
INTERNAL_ROUTE_OPT: dict[str, Any] = {"auth": PUBLIC, "priority": "critical", REGION_LOCAL: True}


def shared_secret_guard(
    scheme: str, secret_of: Callable[[ServiceSettings], str], detail: str
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """A guard that admits `Authorization: <scheme> <secret>` with the secret
    `secret_of(settings)`, compared in constant time. 401 for anything else (a missing
    header, a bearer token, a wrong secret), and when no secret is configured (the API is
    then closed)."""

    def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        runtime: Runtime = connection.app.state.runtime
        expected = secret_of(runtime.settings)
        presented_scheme, _space, presented = connection.headers.get("authorization", "").partition(
            " "
        )
        if (
            not expected
            or presented_scheme != scheme
            or not hmac.compare_digest(expected.encode(), presented.strip().encode())
        ):
            raise Problem(
                401,
                "unauthenticated",
                "Authentication required",
                detail,
                headers={"WWW-Authenticate": f'{scheme} realm="tenantry-internal"'},
            )

    return guard


# The deployment's internal API secret: the region's own services.
internal_caller = shared_secret_guard(
    INTERNAL_AUTH_SCHEME,
    lambda settings: settings.internal_api_secret,
    "Internal routes answer the deployment's services only",
)


class ImportShare(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Import a moved tenant's share of this service: each table's file, by object key in
    the region's object store (tenancy put them there from the move's archive)."""

    move_id: UUID
    files: dict[str, str]


class ImportedShare(msgspec.Struct, frozen=True, kw_only=True):
    service: str
    tables: list[PurgedRows]


@post("/tenants/{tenant_id:uuid}/import", status_code=200, opt=INTERNAL_ROUTE_OPT)
async def import_share(tenant_id: UUID, data: ImportShare, share: MoveShare) -> ImportedShare:
    """tenancy of this region, driving a move in: write the service's share, or answer
    what an earlier call wrote (idempotent)."""
    try:
        async with open_object_store(share.settings) as store:
            tables = await share.run(store, tenant_id, data.move_id, data.files)
    except (MoveRefused, ObjectNotFound) as exc:
        log.warning("import of tenant %s refused: %s", tenant_id, exc)
        raise Problem(422, "import-refused", "Import refused", str(exc)) from exc
    except Exception as exc:
        if is_transient_db_error(exc):
            raise Problem(
                503,
                "unavailable",
                "Try again",
                "The database is unavailable",
                headers={"Retry-After": "5"},
            ) from exc
        raise
    return ImportedShare(service=share.service, tables=tables)


def move_api(resealed: Sequence[Resealed]) -> Router:
    """The service's internal move routes, opening and sealing the `resealed` columns."""

    def share(runtime: Runtime) -> MoveShare:
        return MoveShare(
            service=runtime.service, db=runtime.db, settings=runtime.settings, resealed=resealed
        )

    return Router(
        path="/internal/v1",
        route_handlers=[import_share],
        guards=[internal_caller],
        dependencies={"share": Provide(share, use_cache=True, sync_to_thread=False)},
        include_in_schema=False,
    )
