"""SCIM 2.0 PATCH (RFC 7644 §3.5.2) applied to a resource's JSON representation.

Pure: no I/O, no clock. `apply_patch` takes the resource as a client would read it (a plain
dict) and the whole PatchOp request body, and returns a new dict, or raises `PatchError`
carrying the RFC 7644 §3.12 `scimType`. The input is never mutated: the operations run on a
deep copy, in order, and any failure discards the copy, so a request applies whole or not at
all (RFC 7644 §3.5.2: "the entire PATCH request ... SHALL NOT be applied" on an error).

What the RFC leaves open, or what real clients do against it, is decided here without any
per-client switch. Each decision, with the client that needs it:

1. `op` is matched case-insensitively: Entra ID sends "Add", "Replace", "Remove".
2. A boolean attribute accepts the strings "true"/"false" in any case: Entra ID sends
   `"active": "False"` and `"primary": "True"`. Filters accept them too (`primary eq "true"`).
3. A path-less `add`/`replace` value may hold dotted keys ("name.givenName") and fully
   qualified keys ("urn:...:enterprise:2.0:User:employeeNumber") as well as an extension
   URN whose value is an object: each key is read as a path (Entra ID, SCIM-compliant mode).
4. In a path-less value, keys that name no attribute of the schema are ignored: Entra's extra
   group schema, provider profile attributes we do not keep, `schemas`. Server-maintained
   read-only attributes (`meta`, `groups`) are ignored there too (RFC 7644 §3.5.1 ignores
   them on PUT). `id` is the exception: an `id` equal to the resource's id is ignored (Okta
   sends it with every group rename); a different id is a `mutability` error, because the
   client is confused about which resource it is changing.
   An explicit `path` naming an unknown attribute is `invalidPath`: a targeted change the
   server cannot keep must not be answered with a silent success.
5. `replace` (and `add`) on `attr[filter].sub` with no matching element, where the filter
   is one `eq` comparison or an `and` of them, creates the element from those comparisons
   plus the sub-attribute: Entra ID relies on it to set a work email that does not exist
   yet, and sends it as `add` too (RFC 7644 erratum 8097). `add` on `attr[filter]` without
   a sub-attribute does the same with the object value. Any other filter, or `replace` on
   `attr[filter]` without a sub-attribute, follows the RFC: `noTarget`.
6. `remove` of a multi-valued attribute with a `value` (Entra ID's
   `{"op":"Remove","path":"members","value":[{"value":"id"}]}`) removes only the listed
   elements: by `value` for members, by the given sub-attributes otherwise. The value may
   also be wrapped as `{"members": [...]}`. Without a value the whole attribute goes.
7. `remove` of something absent is a no-op, also with a filter matching nothing.
8. `add` to a multi-valued attribute appends, skipping values already present; group
   members are identified by `value` (a re-added member updates its `display`).
9. Setting `primary: true` on one element sets it to false on the others (RFC 7643 §2.4,
   RFC 7644 §3.5.2); two new primaries in one operation are `invalidValue`.
10. `null`, `[]` and `{}` mean "unassigned" (RFC 7643 §2.5): replacing with them removes;
    adding them changes nothing.
11. A scalar given for a complex attribute that has a `value` sub-attribute becomes
    `{"value": scalar}` (Entra ID sends the enterprise `manager` as a bare id); a scalar
    given as `[{"value": x}]` is unwrapped.
12. A single object given for a multi-valued attribute is taken as a one-element list.
13. Paths accept single-quoted strings in filters and the legacy `urn...:User.attr` form.
14. Read-only attributes targeted by a path (`id`, `meta`, `groups`, `manager.displayName`)
    are a `mutability` error unless the operation would leave them unchanged; immutable ones
    (a member's `value`) can be set once, never changed. Removing a required attribute
    (`userName`, `displayName`) is a `mutability` error (RFC 7644 §3.5.2.2).
15. Sub-attributes a value object does not define (for example `members[].$ref: null` or an
    unknown key) are dropped; read-only sub-attributes in values are dropped.

Limits: `MAX_OPERATIONS` operations a request, `MAX_PATH_LENGTH` characters a path,
`MAX_VALUE_ITEMS` items in one value (list elements or object keys), `MAX_STRING_LENGTH`
characters a string, `MAX_FILTER_DEPTH` nesting levels in a path filter.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from tenantry_provisioning.scim.filter_match import ElementFilter, bind
from tenantry_provisioning.scim.grammar import (
    PATCH_FILTER,
    Compare,
    FilterError,
    parse_patch_path,
)
from tenantry_provisioning.scim.json_values import (
    MISSING,
    get,
    is_absent,
    is_present,
    same_value,
)
from tenantry_provisioning.scim.messages import json_kind
from tenantry_provisioning.scim.patch_values import (
    MAX_STRING_LENGTH,
    MAX_VALUE_ITEMS,
    PatchError,
    ValueIndex,
    assign,
    clip,
    coerce_complex,
    coerce_element,
    coerce_multi,
    coerce_single,
    one_primary,
    pop,
    put,
    without_listed,
    without_positions,
)
from tenantry_provisioning.scim.schema import (
    PATCH_OP_URN,
    Attribute,
    Extension,
    ResourceSchema,
)

__all__ = [
    "MAX_FILTER_DEPTH",
    "MAX_OPERATIONS",
    "MAX_PATH_LENGTH",
    "MAX_STRING_LENGTH",
    "MAX_VALUE_ITEMS",
    "PatchError",
    "apply_patch",
]

MAX_OPERATIONS: Final = 1000
MAX_PATH_LENGTH: Final = 1024
MAX_FILTER_DEPTH: Final = PATCH_FILTER.max_depth

Op: TypeAlias = Literal["add", "remove", "replace"]


class _UnknownAttribute(PatchError):
    """invalidPath because the path names no attribute (ignored inside path-less values)."""

    def __init__(self, detail: str) -> None:
        super().__init__("invalidPath", detail)


# --------------------------------------------------------------------------- paths


@dataclass(frozen=True)
class _Target:
    scope: Extension
    attr: Attribute | None = None  # None: the whole extension object
    filter: ElementFilter | None = None
    sub: Attribute | None = None
    ignored: bool = False  # under a schema we accept and drop (Entra's group schema)


def _resolve(schema: ResourceSchema, path: str, scope: Extension | None = None) -> _Target:
    """Parse `PATH = attrPath / valuePath [subAttr]` (RFC 7644 §3.5.2) against `schema`."""
    text = path.strip()
    if not text:
        raise PatchError("invalidPath", "empty path")
    if len(text) > MAX_PATH_LENGTH:
        raise PatchError("invalidPath", f"path longer than {MAX_PATH_LENGTH}")
    low = text.lower()
    for ignored in schema.ignored_schemas:
        if low == ignored.lower() or low.startswith(ignored.lower() + ":"):
            return _Target(schema.core, ignored=True)
    for candidate in schema.scopes:
        urn = candidate.urn.lower()
        if low == urn:
            if candidate is schema.core:
                raise PatchError("invalidPath", "a path names an attribute, not the core schema")
            return _Target(candidate)
        if low.startswith(urn + ":") or low.startswith(urn + "."):  # decision 13: legacy "."
            scope, text = candidate, text[len(urn) + 1 :]
            break
    else:
        if low.startswith("urn:"):
            raise _UnknownAttribute(f"unknown schema in path {clip(path)}")
        scope = scope or schema.core
    try:
        parsed = parse_patch_path(text)
    except FilterError as error:
        if error.scim_type == "invalidPath":
            raise _UnknownAttribute(error.message) from None
        raise PatchError("invalidFilter", error.message) from None
    attr = scope.attribute(parsed.attr)
    if attr is None:
        raise _UnknownAttribute(f"{schema.name} has no attribute {clip(parsed.attr)}")
    if parsed.filter is not None and not attr.multi_valued:
        raise PatchError("invalidPath", f"{attr.name} is single-valued: no filter")
    sub: Attribute | None = None
    if parsed.sub is not None:
        sub = attr.sub(parsed.sub)
        if sub is None:
            raise _UnknownAttribute(f"{attr.name} has no sub-attribute {clip(parsed.sub)}")
    node: ElementFilter | None = None
    if parsed.filter is not None:
        try:
            node = bind(parsed.filter, attr)
        except FilterError as error:
            raise PatchError("invalidFilter", error.message) from None
    return _Target(scope, attr, node, sub)


# --------------------------------------------------------------------------- operations


_OPS: Final = "add, remove or replace"


@dataclass(frozen=True)
class _Operation:
    op: Op
    path: str | None
    value: Any
    has_value: bool


def _operations(body: Any) -> list[_Operation]:
    if not isinstance(body, Mapping):
        raise PatchError("invalidSyntax", "the body must be a PatchOp object")
    schemas = get(body, "schemas")
    if not isinstance(schemas, list) or not any(
        isinstance(s, str) and s.lower() == PATCH_OP_URN.lower() for s in schemas
    ):
        raise PatchError("invalidSyntax", f"schemas must hold {PATCH_OP_URN}")
    raw_ops = get(body, "Operations")
    if raw_ops is MISSING:
        raise PatchError("invalidSyntax", "Operations is missing (a non-empty list)")
    if not isinstance(raw_ops, list) or not raw_ops:
        raise PatchError(
            "invalidSyntax", f"Operations must be a non-empty list, not {json_kind(raw_ops)}"
        )
    if len(raw_ops) > MAX_OPERATIONS:
        raise PatchError("invalidSyntax", f"more than {MAX_OPERATIONS} operations")
    out: list[_Operation] = []
    for index, raw in enumerate(raw_ops):
        if not isinstance(raw, Mapping):
            raise PatchError(
                "invalidSyntax", f"Operations[{index}] must be an object, not {json_kind(raw)}"
            )
        op = get(raw, "op")
        if op is MISSING or op is None:
            raise PatchError("invalidSyntax", f"Operations[{index}]: op is missing ({_OPS})")
        if not isinstance(op, str):
            raise PatchError("invalidSyntax", f"Operations[{index}]: op must be a string ({_OPS})")
        name = op.strip().lower()
        if name not in ("add", "remove", "replace"):
            raise PatchError(
                "invalidSyntax", f"Operations[{index}]: unknown op {clip(op)!r} ({_OPS})"
            )
        path = get(raw, "path")
        if path is MISSING or path is None or (isinstance(path, str) and not path.strip()):
            path = None
        elif not isinstance(path, str):
            raise PatchError(
                "invalidPath", f"Operations[{index}]: path must be a string, not {json_kind(path)}"
            )
        value = get(raw, "value")
        has_value = value is not MISSING
        if name != "remove" and not has_value:
            raise PatchError("invalidValue", f"Operations[{index}]: {name} needs a value")
        checked: Op = "add" if name == "add" else "remove" if name == "remove" else "replace"
        out.append(_Operation(checked, path, None if value is MISSING else value, has_value))
    return out


def _extensions_present(resource: Mapping[str, Any], schema: ResourceSchema) -> set[str]:
    return {e.urn for e in schema.extensions if not is_absent(get(resource, e.urn))}


def apply_patch(
    resource: Mapping[str, Any], patch_body: Mapping[str, Any], *, schema: ResourceSchema
) -> dict[str, Any]:
    """Apply a SCIM PatchOp request to `resource`; return the patched copy.

    Raises PatchError (status 400) with scimType invalidSyntax, invalidPath, invalidFilter,
    noTarget, invalidValue or mutability. The operations apply in order and atomically.
    """
    if not isinstance(resource, Mapping):
        raise TypeError("resource must be a mapping")
    operations = _operations(patch_body)
    result: dict[str, Any] = copy.deepcopy(dict(resource))
    before = _extensions_present(result, schema)
    for index, operation in enumerate(operations):
        try:
            _apply(result, schema, operation)
        except PatchError as error:
            raise PatchError(
                error.scim_type, f"Operations[{index}]: {error.detail}", error.status
            ) from None
    for extension in schema.extensions:
        if get(result, extension.urn) == {}:
            pop(result, extension.urn)
    _sync_schemas(result, schema, before, _extensions_present(result, schema))
    _check_required(resource, result, schema)
    return result


def _apply(root: dict[str, Any], schema: ResourceSchema, operation: _Operation) -> None:
    if operation.path is None:
        if operation.op == "remove":
            raise PatchError("noTarget", "remove needs a path")
        if not isinstance(operation.value, Mapping):
            raise PatchError("invalidValue", f"{operation.op} without a path takes an object")
        _apply_map(root, schema, operation.op, operation.value, schema.core)
        return
    target = _resolve(schema, operation.path)
    _apply_target(root, schema, operation.op, target, operation, in_value=False)


def _apply_map(
    root: dict[str, Any],
    schema: ResourceSchema,
    op: Op,
    values: Mapping[str, Any],
    scope: Extension,
) -> None:
    """A path-less add/replace: each key read as a path (decisions 3 and 4)."""
    if len(values) > MAX_VALUE_ITEMS:
        raise PatchError("invalidValue", f"more than {MAX_VALUE_ITEMS} attributes in a value")
    for key, value in values.items():
        if not isinstance(key, str) or key.lower() == "schemas":
            continue
        try:
            target = _resolve(schema, key, scope)
        except PatchError as error:
            if error.scim_type == "invalidPath":
                continue  # not an attribute we keep
            raise
        if target.ignored or (target.attr is None and scope is not schema.core):
            continue  # an extension object inside an extension object: nothing we keep
        attr = target.attr
        if attr is not None and attr.mutability == "readOnly":
            if attr.name == "id" and target.sub is None:
                current = get(root, "id")
                if not (isinstance(value, str) and current == value):
                    raise PatchError("mutability", "id is readOnly and differs from the resource")
            continue
        if target.sub is not None and target.sub.mutability == "readOnly":
            continue
        _apply_target(root, schema, op, target, _Operation(op, key, value, True), in_value=True)


def _container(root: dict[str, Any], scope: Extension, schema: ResourceSchema) -> Any:
    return root if scope is schema.core else get(root, scope.urn)


def _apply_target(
    root: dict[str, Any],
    schema: ResourceSchema,
    op: Op,
    target: _Target,
    operation: _Operation,
    *,
    in_value: bool,
) -> None:
    value = operation.value
    if target.ignored or (op == "add" and is_absent(value)):
        return  # adding nothing changes nothing (decision 10)
    attr = target.attr
    if attr is None:  # the extension object itself
        if op == "remove" or value is None:
            pop(root, target.scope.urn)
            return
        if not isinstance(value, Mapping):
            raise PatchError("invalidValue", f"{target.scope.urn} takes an object")
        _apply_map(root, schema, op, value, target.scope)
        return
    container = _container(root, target.scope, schema)
    if not in_value and _read_only_noop(container, op, target, value):
        return
    if not isinstance(container, dict):
        if op == "remove":
            return
        container = {}
        put(root, target.scope.urn, container)
    if attr.multi_valued:
        _apply_multi(container, op, attr, target, operation)
    elif target.sub is not None:
        _apply_sub(container, op, attr, target.sub, value)
    elif attr.is_complex:
        if op == "remove" or is_absent(value):
            pop(container, attr.name)
            return
        current = get(container, attr.name)
        merged = dict(current) if isinstance(current, dict) else {}
        for name, sub_value in coerce_complex(attr, value).items():
            sub = attr.sub(name)
            assert sub is not None
            assign(merged, sub, sub_value)
        if merged:
            put(container, attr.name, merged)
        else:
            pop(container, attr.name)
    else:
        assign(container, attr, None if op == "remove" else coerce_single(attr, value))


def _read_only_noop(container: Any, op: Op, target: _Target, value: Any) -> bool:
    """Decision 14: a path at a readOnly attribute is allowed only when it changes nothing."""
    attr = target.attr
    assert attr is not None
    sub = target.sub
    if attr.mutability != "readOnly" and (sub is None or sub.mutability != "readOnly"):
        return False
    leaf = sub or attr
    scalar = not attr.multi_valued and target.filter is None and not leaf.is_complex
    if op != "remove" and scalar and isinstance(container, Mapping):
        current = get(container, attr.name)
        if sub is not None:
            current = get(current, sub.name) if isinstance(current, Mapping) else MISSING
        new = coerce_single(leaf, value)
        if not is_absent(current) and new is not None and same_value(leaf, current, new):
            return True
    raise PatchError("mutability", f"{leaf.name} is readOnly")


def _apply_sub(
    container: dict[str, Any], op: Op, attr: Attribute, sub: Attribute, value: Any
) -> None:
    """`name.givenName`: one sub-attribute of a single-valued complex attribute."""
    current = get(container, attr.name)
    obj = dict(current) if isinstance(current, dict) else {}
    assign(obj, sub, None if op == "remove" else coerce_single(sub, value))
    if obj:
        put(container, attr.name, obj)
    else:
        pop(container, attr.name)


def _apply_multi(
    container: dict[str, Any], op: Op, attr: Attribute, target: _Target, operation: _Operation
) -> None:
    current = get(container, attr.name)
    elements: list[Any] = (
        list(current) if isinstance(current, list) else [] if is_absent(current) else [current]
    )
    value, sub, node = operation.value, target.sub, target.filter
    written: list[Any] = []
    if node is None and sub is None:
        if op == "remove":
            listed = operation.has_value and value is not None
            elements = without_listed(attr, elements, value) if listed else []
        else:
            if op == "replace":
                elements = []
            index = ValueIndex(attr, elements)
            for element in coerce_multi(attr, value):
                written.append(index.add(element))
    elif node is None:
        assert sub is not None
        _sub_of_all(attr, sub, elements, op, value, written)
    else:
        positions = _matching(attr, node, elements)
        matches = [elements[i] for i in positions]
        if op == "remove":
            if sub is None:
                elements = without_positions(elements, positions)
            else:
                for match in matches:
                    assign(match, sub, None)
        elif sub is None:
            _filtered_element(attr, node, elements, matches, op, value, written)
        else:
            new = coerce_single(sub, value)
            if matches:
                for match in matches:
                    assign(match, sub, new)
                    written.append(match)
            elif new is not None:
                terms = node.equality_terms()
                if terms is None:
                    raise PatchError("noTarget", f"no {attr.name} value matches the filter")
                element = coerce_element(attr, terms | {sub.name: new})  # decision 5
                elements.append(element)
                written.append(element)
    if sub is not None or (node is not None and op != "remove"):  # values may now be empty
        elements = [e for e in elements if not is_absent(e)]
    one_primary(attr, elements, written)
    if elements:
        put(container, attr.name, elements)
    else:
        pop(container, attr.name)


def _sub_of_all(
    attr: Attribute, sub: Attribute, elements: list[Any], op: Op, value: Any, written: list[Any]
) -> None:
    """`emails.value` without a filter: the sub-attribute of every element (one if none)."""
    new = None if op == "remove" else coerce_single(sub, value)
    dicts = [e for e in elements if isinstance(e, dict)]
    if not dicts:
        if new is not None:
            element = coerce_element(attr, {sub.name: new})
            elements.append(element)
            written.append(element)
        return
    for element in dicts:
        assign(element, sub, new)
        written.append(element)


def _filtered_element(
    attr: Attribute,
    node: ElementFilter,
    elements: list[Any],
    matches: list[Any],
    op: Op,
    value: Any,
    written: list[Any],
) -> None:
    """add/replace on `attr[filter]`: merge into (add) or replace the matching elements."""
    if not attr.is_complex:
        raise PatchError("invalidPath", f"{attr.name}[filter] needs a complex attribute")
    if not matches:
        terms = node.equality_terms()
        if op != "add" or terms is None:
            raise PatchError("noTarget", f"no {attr.name} value matches the filter")
        patch = {k: v for k, v in coerce_complex(attr, value).items() if v is not None}
        element = coerce_element(attr, terms | patch)  # decision 5
        elements.append(element)
        written.append(element)
        return
    patch = coerce_complex(attr, value)
    for match in matches:
        if op == "add":
            for name, sub_value in patch.items():
                sub = attr.sub(name)
                assert sub is not None
                assign(match, sub, sub_value)
        else:  # RFC 7644 §3.5.2.3: "all matching record values SHALL be replaced"
            replacement = coerce_element(attr, {k: v for k, v in patch.items() if v is not None})
            for sub in attr.sub_attributes:
                if sub.mutability == "immutable":
                    kept = get(replacement, sub.name) if replacement else None
                    assign(dict(match), sub, None if kept is MISSING else kept)
            match.clear()
            match.update(replacement)
        written.append(match)


def _matching(attr: Attribute, node: ElementFilter, elements: list[Any]) -> list[int]:
    """Positions of the elements the filter selects (`key eq "x"` on a unique key is fast)."""
    key = attr.sub(attr.unique_by) if attr.unique_by is not None else None
    leaf = node.leaf(node.ast) if isinstance(node.ast, Compare) else None
    if (
        key is not None
        and key.case_exact
        and leaf is not None
        and leaf.op == "eq"
        and leaf.attr is key
        and isinstance(leaf.value, str)
    ):
        name, wanted = key.name, leaf.value
        return [
            i
            for i, e in enumerate(elements)
            if isinstance(e, dict)
            and (e.get(name) == wanted or (name not in e and node.matches(e)))
        ]
    return [i for i, e in enumerate(elements) if node.matches(e)]


def _sync_schemas(
    root: dict[str, Any], schema: ResourceSchema, before: set[str], after: set[str]
) -> None:
    """Keep `schemas` listing exactly the extensions this patch added or emptied."""
    if before == after:
        return
    schemas = get(root, "schemas")
    listed = list(schemas) if isinstance(schemas, list) else [schema.core_urn]
    lowered = {s.lower() for s in listed if isinstance(s, str)}
    for urn in sorted(after - before):
        if urn.lower() not in lowered:
            listed.append(urn)
    gone = {urn.lower() for urn in before - after}
    put(root, "schemas", [s for s in listed if not (isinstance(s, str) and s.lower() in gone)])


def _check_required(
    original: Mapping[str, Any], result: Mapping[str, Any], schema: ResourceSchema
) -> None:
    """RFC 7644 §3.5.2.2: a required attribute may not become unassigned."""
    for scope in (schema.core, *schema.extensions):
        before = original if scope is schema.core else get(original, scope.urn)
        after = result if scope is schema.core else get(result, scope.urn)
        for attr in scope.attributes:
            if not attr.required or not isinstance(before, Mapping):
                continue
            was = get(before, attr.name)
            now = get(after, attr.name) if isinstance(after, Mapping) else MISSING
            if is_present(was) and not is_present(now):
                raise PatchError("mutability", f"{attr.name} is required and cannot be removed")
