"""/ServiceProviderConfig, /ResourceTypes and /Schemas: exactly what this server supports
(RFC 7643 §5-7), so a client that reads them is never told a lie."""

from __future__ import annotations

from typing import Any

from tenantry_provisioning.scim.resources import ENTERPRISE_URN, GROUP_URN, USER_URN

MAX_RESULTS = 200
BULK_MAX_OPERATIONS = 100
BULK_MAX_PAYLOAD = 1_048_576


def service_provider_config(base_url: str) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
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
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User",
            "name": "User",
            "endpoint": "/Users",
            "schema": USER_URN,
            "schemaExtensions": [{"schema": ENTERPRISE_URN, "required": False}],
            "meta": {
                "resourceType": "ResourceType",
                "location": f"{base_url}/scim/v2/ResourceTypes/User",
            },
        },
        {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
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


def _attr(
    name: str,
    kind: str = "string",
    *,
    multi: bool = False,
    required: bool = False,
    case_exact: bool = False,
    mutability: str = "readWrite",
    returned: str = "default",
    uniqueness: str = "none",
    sub: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    attribute: dict[str, Any] = {
        "name": name,
        "type": kind,
        "multiValued": multi,
        "required": required,
        "caseExact": case_exact,
        "mutability": mutability,
        "returned": returned,
        "uniqueness": uniqueness,
    }
    if sub is not None:
        attribute["subAttributes"] = sub
    return attribute


def _multi(
    name: str, extra: list[dict[str, Any]] | None = None, *, valued: bool = True
) -> dict[str, Any]:
    """A multi-valued complex attribute: value and display (addresses have neither, RFC
    7643 §4.1.2), type, primary, and its own sub-attributes."""
    base = [_attr("value"), _attr("display")] if valued else []
    return _attr(
        name,
        "complex",
        multi=True,
        sub=[*base, _attr("type"), _attr("primary", "boolean"), *(extra or [])],
    )


def _reference(
    types: list[str], name: str = "$ref", mutability: str = "readOnly"
) -> dict[str, Any]:
    attribute = _attr(name, "reference", mutability=mutability, case_exact=True)
    attribute["referenceTypes"] = types
    return attribute


USER_ATTRIBUTES = [
    _attr("userName", required=True, uniqueness="server"),
    _attr("externalId", case_exact=True),
    _attr(
        "name",
        "complex",
        sub=[
            _attr(n)
            for n in (
                "formatted",
                "familyName",
                "givenName",
                "middleName",
                "honorificPrefix",
                "honorificSuffix",
            )
        ],
    ),
    *(
        _attr(n)
        for n in (
            "displayName",
            "nickName",
            "profileUrl",
            "title",
            "userType",
            "preferredLanguage",
            "locale",
            "timezone",
        )
    ),
    _attr("active", "boolean"),
    _multi("emails"),
    _multi("phoneNumbers"),
    _multi(
        "addresses",
        [
            _attr(n)
            for n in ("formatted", "streetAddress", "locality", "region", "postalCode", "country")
        ],
    ),
    _multi("roles"),
    _attr(
        "groups",
        "complex",
        multi=True,
        mutability="readOnly",
        sub=[
            _attr("value", mutability="readOnly"),
            _attr("display", mutability="readOnly"),
            _reference(["Group"]),
        ],
    ),
]
ENTERPRISE_ATTRIBUTES = [
    *(_attr(n) for n in ("employeeNumber", "costCenter", "organization", "division", "department")),
    _attr("manager", "complex", sub=[_attr("value"), _attr("displayName", mutability="readOnly")]),
]
GROUP_ATTRIBUTES = [
    _attr("displayName", required=True),
    _attr("externalId", case_exact=True),
    _attr(
        "members",
        "complex",
        multi=True,
        # Members are users of the tenant's directory (no groups of groups).
        sub=[
            _attr("value", mutability="immutable"),
            _reference(["User"], mutability="immutable"),
            _attr("display"),
            _attr("type"),
        ],
    ),
]


def schemas(base_url: str) -> list[dict[str, Any]]:
    def schema(urn: str, name: str, attributes: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": urn,
            "name": name,
            "attributes": attributes,
            "meta": {"resourceType": "Schema", "location": f"{base_url}/scim/v2/Schemas/{urn}"},
        }

    return [
        schema(USER_URN, "User", USER_ATTRIBUTES),
        schema(ENTERPRISE_URN, "EnterpriseUser", ENTERPRISE_ATTRIBUTES),
        schema(GROUP_URN, "Group", GROUP_ATTRIBUTES),
    ]
