"""/ServiceProviderConfig, /ResourceTypes and /Schemas: exactly what this server supports
(RFC 7643 §5-7), so a client that reads them is never told a lie."""

from __future__ import annotations

from typing import Any

from tenantry_provisioning.scim.schema import (
    ENTERPRISE_USER_URN,
    GROUP_SCHEMA,
    GROUP_URN,
    RESOURCE_TYPE_URN,
    SCHEMA_URN,
    SERVICE_PROVIDER_CONFIG_URN,
    USER_SCHEMA,
    USER_URN,
    Attribute,
    Extension,
)

MAX_RESULTS = 200
BULK_MAX_OPERATIONS = 100
BULK_MAX_PAYLOAD = 1_048_576


def service_provider_config(base_url: str) -> dict[str, Any]:
    return {
        "schemas": [SERVICE_PROVIDER_CONFIG_URN],
        "documentationUri": "https://tenantry.dev/docs/scim",
        "patch": {"supported": True},
        "bulk": {
            "supported": True,
            "maxOperations": BULK_MAX_OPERATIONS,
            "maxPayloadSize": BULK_MAX_PAYLOAD,
        },
        "filter": {"supported": True, "maxResults": MAX_RESULTS},
        # RFC 9865: index paging (startIndex) by default, cursor paging on request.
        "pagination": {
            "cursor": True,
            "index": True,
            "defaultPaginationMethod": "index",
            "defaultPageSize": 100,
            "maxPageSize": MAX_RESULTS,
            "cursorTimeout": 3600,
        },
        "changePassword": {"supported": False},
        "sort": {"supported": True},
        "etag": {"supported": True},
        "authenticationSchemes": [
            {
                "type": "oauthbearertoken",
                "name": "Tenant API key",
                "description": "Authorization: Bearer <a tenant API key with the scim:write scope>",
                "primary": True,
            }
        ],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": f"{base_url}/scim/v2/ServiceProviderConfig",
        },
    }


def resource_types(base_url: str) -> list[dict[str, Any]]:
    return [
        {
            "schemas": [RESOURCE_TYPE_URN],
            "id": "User",
            "name": "User",
            "endpoint": "/Users",
            "schema": USER_URN,
            "schemaExtensions": [{"schema": ENTERPRISE_USER_URN, "required": False}],
            "meta": {
                "resourceType": "ResourceType",
                "location": f"{base_url}/scim/v2/ResourceTypes/User",
            },
        },
        {
            "schemas": [RESOURCE_TYPE_URN],
            "id": "Group",
            "name": "Group",
            "endpoint": "/Groups",
            "schema": GROUP_URN,
            "meta": {
                "resourceType": "ResourceType",
                "location": f"{base_url}/scim/v2/ResourceTypes/Group",
            },
        },
    ]


def _described(attribute: Attribute) -> dict[str, Any]:
    """An attribute as /Schemas lists it (RFC 7643 §7)."""
    described: dict[str, Any] = {
        "name": attribute.name,
        "type": attribute.type,
        "multiValued": attribute.multi_valued,
        "required": attribute.required,
        "caseExact": attribute.case_exact,
        "mutability": attribute.mutability,
        "returned": "default",
        "uniqueness": attribute.uniqueness,
    }
    if attribute.is_complex:
        described["subAttributes"] = [
            _described(sub) for sub in attribute.sub_attributes if sub.advertised
        ]
    if attribute.reference_types:
        described["referenceTypes"] = list(attribute.reference_types)
    described.update(attribute.advertised_as)
    return described


def _described_all(scope: Extension) -> list[dict[str, Any]]:
    return [_described(a) for a in scope.attributes if a.advertised]


def schemas(base_url: str) -> list[dict[str, Any]]:
    def schema(urn: str, name: str, attributes: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "schemas": [SCHEMA_URN],
            "id": urn,
            "name": name,
            "attributes": attributes,
            "meta": {"resourceType": "Schema", "location": f"{base_url}/scim/v2/Schemas/{urn}"},
        }

    scopes = (USER_SCHEMA.core, *USER_SCHEMA.extensions, GROUP_SCHEMA.core)
    return [schema(s.urn, s.name, _described_all(s)) for s in scopes]
