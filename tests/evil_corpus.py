"""Hostile request forms (issue 14), built per route: bodies from the route's own request
schema (a minimal valid body, then one thing wrong in it), path values and query values.

Every form here is wrong whatever the route: a server must refuse each with a clean 4xx.
Pure: builds bytes, sends nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

JSON = "application/json"
DEEP = 5_000
HUGE_ARRAY = 10_000  # items in one array value (and 10x that as a whole body)
OVERLONG = 10_000  # characters in one string value: beyond every documented limit
LONG_URL = 100_000  # bytes of query string
BEYOND_64_BITS = ("18446744073709551616", "-9223372036854775809", "9" * 400, "1e400")
# Marks a value to be replaced by raw JSON text after json.dumps (numbers json cannot write).
_RAW = "\u0001raw\u0001"

SCIM_USER = "urn:ietf:params:scim:schemas:core:2.0:User"
SCIM_GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
SCIM_PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
SCIM_SEARCH = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
SCIM_BULK = "urn:ietf:params:scim:api:messages:2.0:BulkRequest"


@dataclass(frozen=True)
class Form:
    name: str
    body: bytes
    content_type: str


# --------------------------------------------------------------------- valid skeletons


def _resolve(schema: Mapping[str, Any], document: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        node: Any = document
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def skeleton(
    schema: Mapping[str, Any], document: Mapping[str, Any], values: Mapping[str, str]
) -> Any:
    """A small body the schema accepts: required properties only, each the simplest value
    of its type (ids of the tenant's own rows where a property names one)."""
    schema = _resolve(schema, document)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            options = [_resolve(s, document) for s in schema[key]]
            chosen = next((s for s in options if s.get("type") != "null"), options[0])
            return skeleton(chosen, document, values)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(skeleton(part, document, values) or {})
        return merged
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {
            name: _property(name, props[name], document, values)
            for name in schema.get("required", [])
            if name in props
        }
    if kind == "array":
        return [skeleton(schema.get("items", {}), document, values)] * schema.get("minItems", 0)
    if kind == "integer":
        return int(schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1))
    if kind == "number":
        return float(schema.get("minimum", 1))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema)


def _property(
    name: str, schema: Mapping[str, Any], document: Mapping[str, Any], values: Mapping[str, str]
) -> Any:
    if name in values:
        return values[name]
    if name == "email":
        return "fuzz-evil@example.com"
    if name in ("url", "metadata_url", "issuer", "redirect_uri"):
        return "http://127.0.0.1:9/x"
    return skeleton(schema, document, values)


def _string(schema: Mapping[str, Any]) -> str:
    fmt = schema.get("format")
    if fmt == "uuid":
        return "00000000-0000-4000-8000-000000000000"
    if fmt == "date-time":
        return "2026-01-01T00:00:00Z"
    if fmt in ("uri", "url"):
        return "http://127.0.0.1:9/x"
    if fmt == "email":
        return "fuzz-evil@example.com"
    return "x" * max(1, int(schema.get("minLength", 8)))


def scim_skeleton(method: str, path: str, user_name: str) -> Any:
    """The valid body of each SCIM route that takes one."""
    if path.endswith("/.search"):
        return {"schemas": [SCIM_SEARCH], "filter": f'userName eq "{user_name}"', "count": 5}
    if path.endswith("/Bulk"):
        user = {"schemas": [SCIM_USER], "userName": user_name}
        return {
            "schemas": [SCIM_BULK],
            "Operations": [{"method": "POST", "path": "/Users", "bulkId": "b1", "data": user}],
        }
    if method == "PATCH":
        return {
            "schemas": [SCIM_PATCH],
            "Operations": [{"op": "replace", "path": "active", "value": True}],
        }
    if "/Groups" in path:
        return {"schemas": [SCIM_GROUP], "displayName": user_name}
    return {"schemas": [SCIM_USER], "userName": user_name, "active": True}


def _policies(values: Mapping[str, str]) -> Any:
    return {"policies": [{"name": "evil", "limit": 10, "period_seconds": 60, "burst": 10}]}


# Where the smallest body the schema allows is not one the route accepts (a scope, a
# policy, an IdP), the valid body by hand: a hostile form must be refused for what is
# wrong in it, not for something else first.
VALID_BODIES: dict[tuple[str, str], Callable[[Mapping[str, str]], Any]] = {
    ("POST", "/v1/tenants/{tenant_id}/api-keys"): lambda v: {
        "name": "evil",
        "scopes": ["tenant:read"],
    },
    ("PUT", "/v1/tenants/{tenant_id}/api-keys/{key_id}/rate-policies"): _policies,
    ("PUT", "/v1/tenants/{tenant_id}/rate-policies"): _policies,
    ("PUT", "/v1/rate-plans/{plan_id}"): _policies,
    ("POST", "/v1/tenants/{tenant_id}/limit-overrides"): lambda v: {"seats": 100},
    ("POST", "/v1/tenants/{tenant_id}/plan"): lambda v: {"plan": "business"},
    ("POST", "/v1/tenants/{tenant_id}/accounts"): lambda v: {
        "email": "evil@example.com",
        "role": "member",
    },
    ("POST", "/v1/tenants/{tenant_id}/sso/connections"): lambda v: {
        "kind": "saml",
        "name": "evil",
        "saml": {
            "idp_entity_id": "http://127.0.0.1:9/evil",
            "idp_sso_url": "http://127.0.0.1:9/sso",
            "idp_certs": [v["idp_cert"]],
        },
    },
    ("PATCH", "/v1/tenants/{tenant_id}/sso/connections/{connection_id}"): lambda v: {
        "name": "renamed"
    },
    ("POST", "/v1/tenants/{tenant_id}/sso/domains"): lambda v: {"domain": "evil.example"},
    ("PATCH", "/v1/tenants/{tenant_id}/sso/domains/{domain}"): lambda v: {
        "connection_id": v["connection_id"]
    },
    ("POST", "/v1/tenants/{tenant_id}/webhooks/endpoints"): lambda v: {
        "url": "http://127.0.0.1:9/evil",
        "event_types": ["account.created"],
    },
    ("PATCH", "/v1/tenants/{tenant_id}/webhooks/endpoints/{endpoint_id}"): lambda v: {
        "description": "renamed"
    },
    ("POST", "/v1/sessions"): lambda v: {
        "email": "evil@example.com",
        "password": "correct horse battery staple",
    },
}


# --------------------------------------------------------------------- the forms


def _leaves(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(node, list):
        if not node:
            yield path, node
        for i, value in enumerate(node):
            yield from _leaves(value, (*path, i))
    else:
        yield path, node


def _replaced(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        return {**node, head: _replaced(node[head], rest, value)}
    copy = list(node)
    copy[head] = _replaced(copy[head], rest, value)
    return copy


def _text(node: Any, raw: str | bytes = b"") -> bytes:
    """`node` as JSON, with the marked value (if any) replaced by `raw` as it is."""
    raw_bytes = raw.encode() if isinstance(raw, str) else raw
    return (
        json.dumps(node, ensure_ascii=False).encode().replace(json.dumps(_RAW).encode(), raw_bytes)
    )


def _where(path: tuple[Any, ...]) -> str:
    return ".".join(map(str, path)) or "(body)"


def body_forms(valid: Any, content_type: str = JSON) -> list[Form]:
    """Bodies no route should accept, around `valid` (a body the route would accept)."""
    good = _text(valid)
    forms = [
        Form("empty body", b"", content_type),
        Form(
            "invalid UTF-8", _text(_with_marked_string(valid), b'"\xff\xfe\xc3\x28"'), content_type
        ),
        Form("invalid UTF-8 (lone byte)", b"\x80", content_type),
        Form("truncated JSON", good[: max(1, len(good) // 2)], content_type),
        Form("NaN literal", b'{"x": NaN}', content_type),
        Form(f"arrays nested {DEEP} deep", b"[" * DEEP + b"]" * DEEP, content_type),
        Form(
            f"objects nested {DEEP} deep",
            b'{"a":' * DEEP + b"1" + b"}" * DEEP,
            content_type,
        ),
        Form("NUL in a key", _text({**_object(valid), "x\u0000y": "v"}), content_type),
        Form("lone surrogate", b'{"x": "\\ud800"}', content_type),
        Form(
            f"top-level array of {HUGE_ARRAY}",
            b"[" + b"0," * (HUGE_ARRAY - 1) + b"0]",
            content_type,
        ),
        Form("wrong content type text/plain", good, "text/plain"),
        Form("wrong content type form", b"a=b&c=d", "application/x-www-form-urlencoded"),
        Form("wrong content type xml", b"<a>b</a>", "application/xml"),
    ]
    forms += [
        Form(f"non-object JSON {literal.decode()}", literal, content_type)
        for literal in (b"null", b"1", b'"x"', b"true", b"[]")
        if literal != good
    ]
    if isinstance(valid, dict) and valid:
        first = next(iter(valid))
        duplicated = (
            good[:-1]
            + b","
            + json.dumps(first).encode()
            + b": "
            + _text(_other(valid[first]))
            + b"}"
        )
        forms.append(Form(f"duplicate key {first}", duplicated, content_type))
    for path, leaf in _leaves(valid):
        where = _where(path)
        if isinstance(leaf, str):
            forms.append(
                Form(
                    f"NUL in {where}", _text(_replaced(valid, path, leaf + "\u0000")), content_type
                )
            )
            forms.append(
                Form(
                    f"{OVERLONG}-char {where}",
                    _text(_replaced(valid, path, "a" * OVERLONG)),
                    content_type,
                )
            )
        if isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
            for big in BEYOND_64_BITS:
                forms.append(
                    Form(
                        f"{big[:24]} in {where}",
                        _text(_replaced(valid, path, _RAW), big),
                        content_type,
                    )
                )
        if isinstance(leaf, list):
            forms.append(
                Form(
                    f"{HUGE_ARRAY} items in {where}",
                    _text(_replaced(valid, path, ["x"] * HUGE_ARRAY)),
                    content_type,
                )
            )
    for path, parent in _arrays(valid):
        item = parent[0]
        forms.append(
            Form(
                f"{HUGE_ARRAY} items in {_where(path)}",
                _text(_replaced(valid, path, [item] * HUGE_ARRAY)),
                content_type,
            )
        )
    if not any(isinstance(v, (int, float)) and not isinstance(v, bool) for _, v in _leaves(valid)):
        # No number in the body: a number beyond 64 bits where a property is expected.
        for big in BEYOND_64_BITS[:1]:
            forms.append(
                Form(
                    f"{big} as a property", _text({**_object(valid), "n": _RAW}, big), content_type
                )
            )
    return forms


def _with_marked_string(valid: Any) -> Any:
    """`valid` with its first string value marked (or a property added, if it has none)."""
    for path, leaf in _leaves(valid):
        if isinstance(leaf, str):
            return _replaced(valid, path, _RAW)
    return {**_object(valid), "x": _RAW}


def _object(valid: Any) -> dict[str, Any]:
    return dict(valid) if isinstance(valid, dict) else {}


def _other(value: Any) -> Any:
    """A different value of the same kind (the second of a duplicated key)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, (int, float)):
        return value + 1
    return value


def _arrays(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], list[Any]]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _arrays(value, (*path, key))
    elif isinstance(node, list) and node:
        yield path, node


PATH_VALUES: tuple[tuple[str, str], ...] = (
    ("%00 in a path value", "%00"),
    ("%00 inside a path value", "a%00b"),
    ("invalid UTF-8 in a path value", "%ff%fe"),
    ("overlong UTF-8 in a path value", "%c0%ae%c0%ae"),
    ("10,000-char path value", "a" * 10_000),
    ("a number beyond 64 bits as a path value", "18446744073709551616"),
)
QUERY_VALUES: tuple[tuple[str, str], ...] = (
    ("%00 in a query value", "%00"),
    ("invalid UTF-8 in a query value", "%ff%fe"),
)
INTEGER_QUERY_VALUES: tuple[tuple[str, str], ...] = (
    ("a number beyond 64 bits as a query value", "99999999999999999999"),
    ("a negative number beyond 64 bits as a query value", "-99999999999999999999"),
)
