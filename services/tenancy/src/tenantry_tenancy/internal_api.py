"""Tenancy's internal key API: where the other services of the deployment get the
crypto-shredding keys (docs/data-keys.md). Not part of the public /v1 API: mounted under
/internal/v1, left out of the OpenAPI document, and answering only a caller that presents
the deployment's internal API secret (`Authorization: Tenantry-Internal <secret>`), never
a tenant's or an operator's token.

    GET /internal/v1/tenants/{tenant_id}/data-key                       the key, to open
    PUT /internal/v1/tenants/{tenant_id}/data-key                       made if missing, to seal
    GET|PUT /internal/v1/tenants/{tenant_id}/subjects/{subject_id}/data-key   a person's key

200 answers the key wrapped for the trip (tenantry_service.data_keys.transport_box, bound
to the tenant and subject), so a body that ends up in a log or a proxy opens nothing; 404
key-not-found when GET finds none; 410 key-destroyed when it was destroyed (the caller's
only signal that the data is gone). Nothing here logs a key.
"""

from __future__ import annotations

import base64
import logging
from typing import Any
from uuid import UUID

from litestar import Request, Router, get, put
from litestar.di import NamedDependency, Provide

from tenantry_credentials.crypto import SecretBox
from tenantry_http.problems import Problem
from tenantry_service.data_keys import (
    CALLER_HEADER,
    KEY_API_PREFIX,
    KeyDestroyed,
    transport_box,
    transport_context,
)
from tenantry_service.internal import INTERNAL_ROUTE_OPT, internal_caller
from tenantry_service.runtime import Runtime
from tenantry_tenancy.data_keys import DataKeyStore

log = logging.getLogger("tenantry.tenancy.key_api")

_ROUTE_OPT = INTERNAL_ROUTE_OPT


def data_key_store(runtime: NamedDependency[Runtime]) -> DataKeyStore:
    if not runtime.settings.master_key:
        raise Problem(503, "keys-unavailable", "Keys unavailable", "No master key configured")
    return DataKeyStore(runtime.db, SecretBox.from_base64(runtime.settings.master_key))


def key_transport(runtime: NamedDependency[Runtime]) -> SecretBox:
    return transport_box(runtime.settings.internal_api_secret)


async def _answer(
    request: Request[Any, Any, Any],
    store: DataKeyStore,
    transport: SecretBox,
    tenant_id: UUID,
    subject_id: UUID | None,
    *,
    create: bool,
) -> dict[str, str | None]:
    try:
        if create:
            key: bytes | None = await store.get_or_create(tenant_id, subject_id)
        else:
            async with request.app.state.runtime.db.transaction() as conn:
                key = await store.read(conn, tenant_id, subject_id)
    except KeyDestroyed:
        raise Problem(
            410, "key-destroyed", "Key destroyed", "This key was destroyed; it is gone for good"
        ) from None
    if key is None:
        raise Problem(404, "key-not-found", "Key not found", "No such key was ever made")
    # The JSON log keeps the message only: what was served, to whom (never the key).
    log.info(
        "data key served: tenant %s, subject %s, to %s%s",
        tenant_id,
        subject_id or "-",
        request.headers.get(CALLER_HEADER, "an unnamed caller"),
        " (made if missing)" if create else "",
    )
    sealed = transport.encrypt(key, transport_context(tenant_id, subject_id))
    return {
        "tenant_id": str(tenant_id),
        "subject_id": str(subject_id) if subject_id else None,
        "key": base64.b64encode(sealed).decode(),
    }


# The tenant's data key, and (same handler, subject_id given) one person's subject key.
KEY_PATHS = [
    "/tenants/{tenant_id:uuid}/data-key",
    "/tenants/{tenant_id:uuid}/subjects/{subject_id:uuid}/data-key",
]


@get(KEY_PATHS, opt=_ROUTE_OPT, include_in_schema=False)
async def key_for_opening(
    request: Request[Any, Any, Any],
    tenant_id: UUID,
    data_key_store: DataKeyStore,
    key_transport: SecretBox,
    subject_id: UUID | None = None,
) -> dict[str, str | None]:
    return await _answer(
        request, data_key_store, key_transport, tenant_id, subject_id, create=False
    )


@put(KEY_PATHS, opt=_ROUTE_OPT, include_in_schema=False)
async def key_for_sealing(
    request: Request[Any, Any, Any],
    tenant_id: UUID,
    data_key_store: DataKeyStore,
    key_transport: SecretBox,
    subject_id: UUID | None = None,
) -> dict[str, str | None]:
    return await _answer(request, data_key_store, key_transport, tenant_id, subject_id, create=True)


INTERNAL_KEY_API = Router(
    path=KEY_API_PREFIX.removesuffix("/tenants"),
    route_handlers=[key_for_opening, key_for_sealing],
    guards=[internal_caller],
    dependencies={
        "data_key_store": Provide(data_key_store, sync_to_thread=False),
        "key_transport": Provide(key_transport, sync_to_thread=False),
    },
    # Keys are never cached by anything between tenancy and the caller.
    response_headers={"Cache-Control": "no-store"},
)
