"""Schema compatibility: does the current catalog break a published JSON Schema?

A consumer written against the published schema must still read everything we publish
now: every message valid under the new schema must be valid under the old one. Breaking:
removing a property (readers may rely on it), widening or changing its type, allowing
enum values the old schema did not know. Fine: adding a property (readers ignore unknown
fields), making a property required, narrowing an enum. A breaking change needs a new
event type version (a new schema file) instead.
"""

from __future__ import annotations

from typing import Any


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = root.get("$defs", {}).get(name, {})
    return schema


def _types(schema: dict[str, Any], root: dict[str, Any]) -> set[str]:
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        out: set[str] = set()
        for s in schema["anyOf"]:
            out |= _types(s, root)
        return out
    t = schema.get("type")
    if isinstance(t, list):
        return set(t)
    if t:
        return {t}
    if "enum" in schema or "const" in schema:
        return {"enum"}
    return {"any"}


def breaking_changes(
    old: dict[str, Any],
    new: dict[str, Any],
    path: str = "$",
    *,
    old_root: dict[str, Any] | None = None,
    new_root: dict[str, Any] | None = None,
) -> list[str]:
    old_root = old_root or old
    new_root = new_root or new
    o, n = _resolve(old, old_root), _resolve(new, new_root)
    problems: list[str] = []
    old_types, new_types = _types(o, old_root), _types(n, new_root)
    if "any" not in old_types and not new_types <= old_types:
        problems.append(f"{path}: type {sorted(old_types)} became {sorted(new_types)}")
    old_enum = set(map(str, o.get("enum", []))) | ({str(o["const"])} if "const" in o else set())
    new_enum = set(map(str, n.get("enum", []))) | ({str(n["const"])} if "const" in n else set())
    if old_enum and not new_enum <= old_enum:
        problems.append(f"{path}: new values {sorted(new_enum - old_enum)} unknown to readers")
    old_props, new_props = o.get("properties", {}), n.get("properties", {})
    for name in old_props:
        if name not in new_props:
            problems.append(f"{path}.{name}: removed")
        else:
            problems += breaking_changes(
                old_props[name],
                new_props[name],
                f"{path}.{name}",
                old_root=old_root,
                new_root=new_root,
            )
    if "items" in o and "items" in n:
        problems += breaking_changes(
            o["items"], n["items"], f"{path}[]", old_root=old_root, new_root=new_root
        )
    return problems
