"""The values of a SCIM PATCH (RFC 7644 §3.5.2): client values checked against the schema,
the case-insensitive dict operations every operation uses, and the rules for the elements
of multi-valued attributes (identity, duplicates, primary). patch.py applies operations
with them; the numbered decisions are patch.py's.

Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final, Literal, TypeAlias

from tenantry_provisioning.scim.json_values import as_bool, get, is_absent, same_value
from tenantry_provisioning.scim.schema import ERROR_URN, Attribute

MAX_VALUE_ITEMS: Final = 10_000
MAX_STRING_LENGTH: Final = 65_536

ScimType: TypeAlias = Literal[
    "invalidPath", "noTarget", "invalidValue", "mutability", "invalidSyntax", "invalidFilter"
]


class PatchError(Exception):
    """A PATCH the server refuses: HTTP `status` with a SCIM `scimType` and a `detail`."""

    def __init__(self, scim_type: ScimType, detail: str, status: int = 400) -> None:
        super().__init__(f"{scim_type}: {detail}")
        self.status = status
        self.scim_type: ScimType = scim_type
        self.detail = detail

    def to_scim(self) -> dict[str, Any]:
        """The RFC 7644 §3.12 error body."""
        return {
            "schemas": [ERROR_URN],
            "status": str(self.status),
            "scimType": self.scim_type,
            "detail": self.detail,
        }


# --------------------------------------------------------------------------- dict helpers


def find_key(d: Mapping[str, Any], name: str) -> str | None:
    if name in d:
        return name
    low = name.lower()
    return next((k for k in d if isinstance(k, str) and k.lower() == low), None)


def put(d: dict[str, Any], name: str, value: Any) -> None:
    """Set `name` (canonical casing), replacing a differently cased key in its place."""
    key = find_key(d, name)
    if key is None or key == name:
        d[name] = value
        return
    items = [(name, value) if k == key else (k, v) for k, v in d.items()]
    d.clear()
    d.update(items)


def pop(d: dict[str, Any], name: str) -> None:
    low = name.lower()
    for key in [k for k in d if isinstance(k, str) and k.lower() == low]:
        del d[key]


def clip(value: Any) -> str:
    """A client value short enough for an error detail (containers only by their kind)."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- values


def coerce_scalar(attr: Attribute, raw: Any) -> Any:
    """A client value for a simple attribute, checked against its type (never None)."""
    kind = attr.type
    if kind == "boolean":
        flag = as_bool(raw)
        if flag is None:
            raise PatchError("invalidValue", f"{attr.name} takes a boolean, not {clip(raw)}")
        return flag
    if kind == "integer":
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise PatchError("invalidValue", f"{attr.name} takes an integer, not {clip(raw)}")
    if kind == "decimal":
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return raw
        raise PatchError("invalidValue", f"{attr.name} takes a number, not {clip(raw)}")
    if kind == "complex":
        raise PatchError("invalidValue", f"{attr.name} takes an object")
    if not isinstance(raw, str):
        raise PatchError("invalidValue", f"{attr.name} takes a string, not {clip(raw)}")
    if len(raw) > MAX_STRING_LENGTH:
        raise PatchError("invalidValue", f"{attr.name} is longer than {MAX_STRING_LENGTH}")
    if kind == "dateTime":
        try:
            datetime.fromisoformat(raw)
        except ValueError:
            raise PatchError("invalidValue", f"{attr.name} takes a dateTime") from None
    return raw


def coerce_single(attr: Attribute, raw: Any) -> Any:
    """A value for a simple single-valued (sub-)attribute; None means unassign."""
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], Mapping):
        keys = {k.lower() for k in raw[0] if isinstance(k, str)}
        if keys == {"value"}:  # [{"value": x}] for a scalar: unwrap (decision 11)
            raw = get(raw[0], "value")
    if raw is None:
        return None
    return coerce_scalar(attr, raw)


def coerce_complex(attr: Attribute, raw: Any) -> dict[str, Any]:
    """Sub-attribute values by canonical name; None marks an explicit null (unassign)."""
    if not isinstance(raw, Mapping):
        value_sub = attr.sub("value")
        if value_sub is not None and isinstance(raw, str | int | float | bool):
            return {value_sub.name: coerce_scalar(value_sub, raw)}  # decision 11
        raise PatchError("invalidValue", f"{attr.name} takes an object, not {clip(raw)}")
    if len(raw) > MAX_VALUE_ITEMS:
        raise PatchError("invalidValue", f"{attr.name}: more than {MAX_VALUE_ITEMS} keys")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        sub = attr.sub(key) if isinstance(key, str) else None
        if sub is None or sub.mutability == "readOnly":
            continue  # decision 15
        out[sub.name] = coerce_single(sub, value)
    return out


def coerce_element(attr: Attribute, raw: Any, *, for_match: bool = False) -> Any:
    """One element of a multi-valued attribute; {} or None when it carries nothing."""
    if not attr.is_complex:
        return coerce_single(attr, raw)
    element = {k: v for k, v in coerce_complex(attr, raw).items() if v is not None}
    if element and not for_match:
        for sub in attr.sub_attributes:
            if sub.required and sub.name not in element:
                raise PatchError("invalidValue", f"each of {attr.name} needs a {sub.name}")
    return element


def coerce_multi(attr: Attribute, raw: Any) -> list[Any]:
    if raw is None:
        return []
    items = raw if isinstance(raw, list) else [raw]  # decision 12
    if len(items) > MAX_VALUE_ITEMS:
        raise PatchError("invalidValue", f"{attr.name}: more than {MAX_VALUE_ITEMS} values")
    elements = (coerce_element(attr, item) for item in items)
    return [e for e in elements if e is not None and e != {}]


def assign(container: dict[str, Any], attr: Attribute, new: Any) -> None:
    """Set one single-valued (sub-)attribute, or unassign it when `new` is None."""
    current = get(container, attr.name)
    if (
        attr.mutability == "immutable"
        and not is_absent(current)
        and (new is None or not same_value(attr, current, new))
    ):
        raise PatchError("mutability", f"{attr.name} is immutable")
    if new is None:
        pop(container, attr.name)
    else:
        put(container, attr.name, new)


# --------------------------------------------------------------------------- elements


def _norm(attr: Attribute | None, value: Any) -> Any:
    """A hashable form of a scalar under the attribute's caseExact rule."""
    if isinstance(value, str):
        return ("s", value if attr is None or attr.case_exact else value.casefold())
    if isinstance(value, bool | int | float) or value is None:
        return (type(value).__name__, value)
    return ("j", json.dumps(value, sort_keys=True, default=str))


def _identity(attr: Attribute, element: Any) -> Any:
    """Elements with equal identities are the same value (decision 8)."""
    if attr.unique_by is not None and isinstance(element, Mapping):
        key = attr.sub(attr.unique_by)
        assert key is not None
        wanted = get(element, key.name)
        if not is_absent(wanted):
            return ("key", _norm(key, wanted))
    if not attr.is_complex or not isinstance(element, Mapping):
        return ("value", _norm(attr, element))
    items = sorted(
        (str(k).lower(), _norm(attr.sub(k) if isinstance(k, str) else None, v))
        for k, v in element.items()
        if v is not None
    )
    return ("complex", tuple(items))


class ValueIndex:
    """The values of a multi-valued attribute by identity, for appending without duplicates."""

    def __init__(self, attr: Attribute, elements: list[Any]) -> None:
        self._attr = attr
        self._elements = elements
        self._by_identity: dict[Any, Any] = {}
        for element in elements:
            self._by_identity.setdefault(_identity(attr, element), element)

    def add(self, element: Any) -> Any:
        """Append `element` unless present; return the element now holding it."""
        identity = _identity(self._attr, element)
        existing = self._by_identity.get(identity)
        if existing is None:
            self._elements.append(element)
            self._by_identity[identity] = element
            return element
        if self._attr.unique_by is not None and isinstance(existing, dict):
            for name, sub_value in element.items():  # a re-added member refreshes its display
                sub = self._attr.sub(name)
                if sub is not None and sub.mutability == "readWrite":
                    put(existing, sub.name, sub_value)
        return existing


def without_positions(elements: list[Any], positions: list[int]) -> list[Any]:
    if len(positions) <= 16:
        for position in reversed(positions):
            del elements[position]
        return elements
    dropped = set(positions)
    return [e for i, e in enumerate(elements) if i not in dropped]


def without_listed(attr: Attribute, elements: list[Any], value: Any) -> list[Any]:
    """Decision 6: remove only the elements a remove's `value` lists."""
    if isinstance(value, Mapping) and len(value) == 1:
        only = next(iter(value))
        if isinstance(only, str) and only.lower() == attr.name.lower():
            value = value[only]
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_VALUE_ITEMS:
        raise PatchError("invalidValue", f"{attr.name}: more than {MAX_VALUE_ITEMS} values")
    listed = [coerce_element(attr, item, for_match=True) for item in items if item is not None]
    key = attr.sub(attr.unique_by) if attr.unique_by is not None else None
    if key is not None:
        keys = {_norm(key, w[key.name]) for w in listed if isinstance(w, dict) and key.name in w}
        listed = [w for w in listed if not (isinstance(w, dict) and key.name in w)]

        def by_key(element: Any) -> bool:
            if not isinstance(element, Mapping):
                return False
            current = get(element, key.name)
            return not is_absent(current) and _norm(key, current) in keys

        elements = [e for e in elements if not by_key(e)]
        if not listed:
            return elements

    def listed_match(element: Any) -> bool:
        for wanted in listed:
            if is_absent(wanted):
                continue
            if not attr.is_complex:
                if same_value(attr, element, wanted):
                    return True
                continue
            if not isinstance(element, Mapping):
                continue
            subs = (attr.sub(name) for name in wanted)
            if all(
                s is not None and same_value(s, get(element, s.name), wanted[s.name]) for s in subs
            ):
                return True
        return False

    return [e for e in elements if not listed_match(e)]


def one_primary(attr: Attribute, elements: Iterable[Any], written: list[Any]) -> None:
    """Decision 9: a primary written by this operation demotes every other one."""
    primary = attr.sub("primary")
    if primary is None:
        return
    winners = [w for w in written if isinstance(w, Mapping) and get(w, "primary") is True]
    if len({id(w) for w in winners}) > 1:
        raise PatchError("invalidValue", f"more than one primary {attr.name} value")
    if not winners:
        return
    for element in elements:
        demote = element is not winners[0] and isinstance(element, dict)
        if demote and as_bool(get(element, "primary")) is True:
            put(element, primary.name, False)
