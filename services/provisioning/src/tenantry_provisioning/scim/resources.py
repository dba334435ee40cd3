"""SCIM resources as clients see them (RFC 7643) and as the tables keep them.

Attribute names in requests are case-insensitive: `canonical_keys` maps whatever casing
a client sends to the schema's names before anything else looks at a resource.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

from tenantry_provisioning.scim.messages import MessageError, schema_list
from tenantry_provisioning.scim.schema import (
    ENTERPRISE_USER_URN,
    GROUP_SCHEMA,
    GROUP_URN,
    USER_SCHEMA,
    USER_URN,
)

# Every string attribute kept in a text column (userName has its own, shorter limit).
TEXT_MAX_CHARS = 1024

# Simple attributes kept in columns: SCIM name -> column (schema.py says which).
USER_COLUMNS = {
    a.name: a.column
    for a in USER_SCHEMA.attributes
    if a.column is not None and a.type in ("string", "reference") and not a.uuid
}
_NAME = USER_SCHEMA.attribute("name")
assert _NAME is not None
NAME_COLUMNS = {s.name: s.column for s in _NAME.sub_attributes if s.column is not None}
# Multi-valued attributes with a jsonb column of their own (the others go to `extra`).
MULTI_VALUED = {
    a.name: a.column for a in USER_SCHEMA.attributes if a.multi_valued and a.column is not None
}
ENTERPRISE_ATTRIBUTES = tuple(a.name for a in USER_SCHEMA.extensions[0].attributes)
# Canonical casing of the sub-attributes of multi-valued values (and the manager's
# displayName, which has always been among them).
_PLURAL_SUBS = (
    sub.name
    for a in (*USER_SCHEMA.attributes, *GROUP_SCHEMA.attributes)
    if a.multi_valued and a.advertised
    for sub in a.sub_attributes
    if sub.advertised
)
SUB_ATTRIBUTES = (*dict.fromkeys(_PLURAL_SUBS), "displayName")
# Never stored, never returned (RFC 7643: password is writeOnly; we do not take one).
_ATTRIBUTES = (*USER_SCHEMA.attributes, *GROUP_SCHEMA.attributes)
WRITE_ONLY = frozenset(a.name for a in _ATTRIBUTES if a.mutability == "writeOnly")
READ_ONLY = frozenset({*(a.name for a in _ATTRIBUTES if a.mutability == "readOnly"), "schemas"})
# The schema's casing of every core attribute name (and `schemas`), by lower-case name: a
# "Password" or "IMS" is read as the attribute it names.
_USER_NAMES = {n.lower(): n for n in (*(a.name for a in USER_SCHEMA.attributes), "schemas")}
_GROUP_NAMES = {n.lower(): n for n in (*(a.name for a in GROUP_SCHEMA.attributes), "schemas")}


class ResourceError(MessageError):
    """A resource body that cannot be stored; `scim_type` per RFC 7644 §3.12."""

    def __init__(self, detail: str, scim_type: str = "invalidValue") -> None:
        super().__init__(detail, scim_type)


def _check_schemas(body: Mapping[str, Any]) -> None:
    """`schemas` is read-only for us (we write it), but a value that is not a list of
    strings is a malformed resource, not one to store."""
    if body.get("schemas") is not None:
        try:
            schema_list(body["schemas"], "the resource")
        except MessageError as exc:
            raise ResourceError(exc.detail, exc.scim_type) from None


def _optional_string(value: Any, name: str) -> str | None:
    """A string attribute kept in a text column: at most TEXT_MAX_CHARS characters."""
    if value is not None and not isinstance(value, str):
        raise ResourceError(f"{name} must be a string")
    if value is not None and len(value) > TEXT_MAX_CHARS:
        raise ResourceError(f"{name} is longer than {TEXT_MAX_CHARS} characters")
    return value


def as_bool(value: Any) -> bool:
    """Booleans, and the strings "True"/"False" Entra sends for them."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ResourceError(f"{value!r} is not a boolean")


def _canonical_map(value: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    lookup = {n.lower(): n for n in names}
    return {lookup.get(k.lower(), k): v for k, v in value.items()}


def canonical_keys(resource: Mapping[str, Any], *, group: bool = False) -> dict[str, Any]:
    """Schema casing for top-level names, `name` and extension sub-attributes, and the
    sub-attributes of multi-valued ones; unknown names are kept as sent."""
    names = _GROUP_NAMES if group else _USER_NAMES
    out: dict[str, Any] = {}
    for key, value in resource.items():
        if key.lower() == ENTERPRISE_USER_URN.lower() and isinstance(value, Mapping):
            out[ENTERPRISE_USER_URN] = _canonical_map(value, ENTERPRISE_ATTRIBUTES)
            continue
        name = names.get(key.lower(), key)
        if name == "name" and isinstance(value, Mapping):
            value = _canonical_map(value, NAME_COLUMNS)
        elif name in (*MULTI_VALUED, "members") and isinstance(value, list):
            value = [
                _canonical_map(v, SUB_ATTRIBUTES) if isinstance(v, Mapping) else v for v in value
            ]
        out[name] = value
    return out


def _primary_first(values: list[Any]) -> list[dict[str, Any]]:
    """Multi-valued attributes: objects only; "primary" true on at most one (the last one
    marked wins, RFC 7643 §2.4)."""
    items = []
    for value in values:
        if not isinstance(value, Mapping):
            raise ResourceError("a multi-valued attribute holds objects")
        item = dict(value)
        if "primary" in item:
            item["primary"] = as_bool(item["primary"])
        items.append(item)
    primaries = [i for i, item in enumerate(items) if item.get("primary")]
    for i in primaries[:-1]:
        items[i]["primary"] = False
    return items


def user_columns(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The columns of scim_users for a full User representation (POST or PUT body)."""
    body = canonical_keys(resource)
    _check_schemas(body)
    user_name = body.get("userName")
    if not isinstance(user_name, str) or not user_name.strip():
        raise ResourceError("userName is required", "invalidValue")
    columns: dict[str, Any] = {"user_name": user_name}  # its limit is users.py's
    for attribute, column in USER_COLUMNS.items():
        if attribute != "userName":
            columns[column] = _optional_string(body.get(attribute), attribute)
    name = body.get("name") or {}
    if not isinstance(name, Mapping):
        raise ResourceError("name must be an object")
    for attribute, column in NAME_COLUMNS.items():
        columns[column] = _optional_string(name.get(attribute), f"name.{attribute}")
    # Unassigned (absent, or removed by a PATCH) is kept as NULL and counts as active:
    # only an explicit false deprovisions.
    columns["active"] = as_bool(body["active"]) if body.get("active") is not None else None
    for attribute, column in MULTI_VALUED.items():
        value = body.get(attribute) or []
        if not isinstance(value, list):
            raise ResourceError(f"{attribute} must be a list")
        columns[column] = _primary_first(value)
    enterprise = body.get(ENTERPRISE_USER_URN) or {}
    if not isinstance(enterprise, Mapping):
        raise ResourceError("the enterprise extension must be an object")
    columns["enterprise"] = {k: v for k, v in enterprise.items() if v is not None}
    known = {*USER_COLUMNS, "name", "active", *MULTI_VALUED, ENTERPRISE_USER_URN}
    columns["extra"] = {k: v for k, v in body.items() if k not in known | READ_ONLY | WRITE_ONLY}
    return columns


def primary_email(columns: Mapping[str, Any]) -> str | None:
    emails: list[dict[str, Any]] = list(columns.get("emails") or [])
    chosen = next((e for e in emails if e.get("primary")), emails[0] if emails else None)
    value = chosen.get("value") if chosen else None
    return value if isinstance(value, str) else None


def etag(version: int) -> str:
    return f'W/"{version}"'


def _meta(kind: str, row: Mapping[str, Any], base_url: str, plural: str) -> dict[str, Any]:
    created: datetime = row["created_at"]
    updated: datetime = row["updated_at"]
    return {
        "resourceType": kind,
        "created": created.isoformat(),
        "lastModified": updated.isoformat(),
        "location": f"{base_url}/scim/v2/{plural}/{row['id']}",
        "version": etag(row["version"]),
    }


def user_resource(row: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    """A scim_users row (with `groups` aggregated) as the client sees it."""
    resource: dict[str, Any] = {"schemas": [USER_URN], "id": str(row["id"])}
    if row["external_id"] is not None:
        resource["externalId"] = row["external_id"]
    resource["userName"] = row["user_name"]
    name = {a: row[c] for a, c in NAME_COLUMNS.items() if row[c] is not None}
    if name:
        resource["name"] = name
    for attribute, column in USER_COLUMNS.items():
        if attribute not in ("userName", "externalId") and row[column] is not None:
            resource[attribute] = row[column]
    if row["active"] is not None:
        resource["active"] = row["active"]
    for attribute, column in MULTI_VALUED.items():
        if row[column]:
            resource[attribute] = row[column]
    groups = row.get("groups") or []
    if groups:
        resource["groups"] = [
            {
                "value": str(g["value"]),
                "display": g["display"],
                "$ref": f"{base_url}/scim/v2/Groups/{g['value']}",
            }
            for g in groups
        ]
    resource.update(row["extra"] or {})
    if row["enterprise"]:
        resource["schemas"].append(ENTERPRISE_USER_URN)
        resource[ENTERPRISE_USER_URN] = row["enterprise"]
    resource["meta"] = _meta("User", row, base_url, "Users")
    return resource


Member = tuple[UUID, str | None, str | None]  # id, display, type as sent


def group_columns(resource: Mapping[str, Any]) -> tuple[dict[str, Any], list[Member]]:
    """The scim_groups columns and the members of a full Group representation."""
    body = canonical_keys(resource, group=True)
    _check_schemas(body)
    display_name = _optional_string(body.get("displayName"), "displayName")
    if display_name is None or not display_name.strip():
        raise ResourceError("displayName is required")
    external_id = _optional_string(body.get("externalId"), "externalId")
    members = body.get("members") or []
    if not isinstance(members, list):
        raise ResourceError("members must be a list")
    member_ids: dict[UUID, Member] = {}
    for member in members:
        if not isinstance(member, Mapping):
            raise ResourceError("a member is an object with a value")
        value = member.get("value")
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            member_id = UUID(value)
        except ValueError:
            raise ResourceError(f"member {value!r} is not a user id") from None
        display, kind = member.get("display"), member.get("type")
        member_ids[member_id] = (
            member_id,
            _optional_string(display, "members.display") if isinstance(display, str) else None,
            _optional_string(kind, "members.type") if isinstance(kind, str) else None,
        )
    extra = {
        k: v
        for k, v in body.items()
        if k not in {"displayName", "externalId", "members"} | READ_ONLY
        and not k.lower().startswith("urn:")  # Entra's extra group schema: accepted, not kept
    }
    columns = {"display_name": display_name, "external_id": external_id, "extra": extra}
    return columns, list(member_ids.values())


def group_resource(row: Mapping[str, Any], base_url: str) -> dict[str, Any]:
    resource: dict[str, Any] = {"schemas": [GROUP_URN], "id": str(row["id"])}
    if row["external_id"] is not None:
        resource["externalId"] = row["external_id"]
    resource["displayName"] = row["display_name"]
    resource["members"] = [
        {
            "value": str(m["value"]),
            "$ref": f"{base_url}/scim/v2/Users/{m['value']}",
            "display": m.get("display"),
            "type": m.get("type") or "User",
        }
        for m in (row.get("members") or [])
    ]
    resource.update(row["extra"] or {})
    resource["meta"] = _meta("Group", row, base_url, "Groups")
    return resource


def project(
    resource: dict[str, Any], attributes: list[str] | None, excluded: list[str] | None
) -> dict[str, Any]:
    """The `attributes` / `excludedAttributes` query parameters (RFC 7644 §3.4.2.5): id and
    schemas are always returned; names may be dotted (name.givenName) or URN-qualified."""
    if not attributes and not excluded:
        return resource

    def split(path: str) -> tuple[str, str | None]:
        lowered = path.lower()
        for urn in (USER_URN, GROUP_URN):
            if lowered.startswith(urn.lower() + ":"):
                path = path[len(urn) + 1 :]
        if lowered.startswith(ENTERPRISE_USER_URN.lower()):
            rest = path[len(ENTERPRISE_USER_URN) :].lstrip(":")
            return ENTERPRISE_USER_URN.lower(), rest or None
        top, _, sub = path.partition(".")
        return top.lower(), sub or None

    keys = {k.lower(): k for k in resource}
    if attributes:
        out: dict[str, Any] = {"schemas": resource["schemas"], "id": resource["id"]}
        for path in attributes:
            top, sub = split(path)
            if top not in keys:
                continue
            key = keys[top]
            value = resource[key]
            if sub is None or not isinstance(value, Mapping | list):
                out[key] = value
            elif isinstance(value, Mapping):
                picked = {k: v for k, v in value.items() if k.lower() == sub.lower()}
                out.setdefault(key, {}).update(picked)
            else:
                out[key] = [
                    {k: v for k, v in item.items() if k.lower() == sub.lower()}
                    for item in value
                    if isinstance(item, Mapping)
                ]
        return out
    out = dict(resource)
    for path in excluded or []:
        top, sub = split(path)
        if top in ("id", "schemas") or top not in keys:
            continue
        key = keys[top]
        if sub is None:
            out.pop(key, None)
        elif isinstance(out[key], Mapping):
            out[key] = {k: v for k, v in out[key].items() if k.lower() != sub.lower()}
    return out
