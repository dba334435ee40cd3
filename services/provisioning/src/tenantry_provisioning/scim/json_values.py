"""JSON values as SCIM reads them (RFC 7643 §2): names matched case-insensitively, what
counts as unassigned or present, Entra's boolean strings, equality under caseExact. The
in-memory filter matcher and PATCH read resources through these. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from tenantry_provisioning.scim.schema import Attribute

__all__ = ["MISSING", "as_bool", "get", "is_absent", "is_present", "same_value"]


class _Missing:
    """A key an object does not have (distinct from JSON null)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


def get(obj: Mapping[str, Any], name: str) -> Any:
    """`obj[name]` with the name matched case-insensitively, or MISSING."""
    if name in obj:
        return obj[name]
    low = name.lower()
    key = next((k for k in obj if isinstance(k, str) and k.lower() == low), None)
    return MISSING if key is None else obj[key]


def is_absent(value: Any) -> bool:
    """Unassigned per RFC 7643 §2.5 (missing, null, empty list or object)."""
    return value is MISSING or value is None or value == [] or value == {}


def is_present(value: Any) -> bool:
    """The filter `pr` test: a non-empty value."""
    return not (is_absent(value) or value == "")


def as_bool(raw: Any) -> bool | None:
    """A boolean, or the strings "true"/"false" in any case (Entra); else None."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    return None


def same_value(attr: Attribute, a: Any, b: Any) -> bool:
    """Scalar equality under the attribute's caseExact rule (a boolean equals booleans only)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, str) and isinstance(b, str) and not attr.case_exact:
        return a.casefold() == b.casefold()
    return bool(a == b)
