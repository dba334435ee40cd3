"""SCIM request messages read into typed values before a route acts on them: list and
search parameters (RFC 7644 §3.4.2, §3.4.3, cursors of RFC 9865), the BulkRequest (§3.7)
and the envelope of every body (`schemas`).

One reading for every route, so that a wrong type is a 400 SCIM Error and never reaches
Python or Postgres as a surprise: a message that is not an object, or whose `schemas` is
not a list of strings naming the message's URN, is `invalidSyntax`; a member of the wrong
type, an integer outside Postgres' bigint, or a string holding NUL or an unpaired surrogate
(Postgres text keeps neither) is `invalidValue`. Member names are case-insensitive (RFC 7643
§2.1); unknown members are ignored; null means absent. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypedDict

__all__ = [
    "BULK_METHODS",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_BULK_TEXT_CHARS",
    "BulkOperation",
    "BulkRequest",
    "ListParams",
    "MessageError",
    "bulk_request",
    "check_schemas",
    "json_kind",
    "list_query",
    "schema_list",
    "search_request",
]

INT64_MAX: Final = 2**63 - 1
INT64_MIN: Final = -(2**63)
BULK_METHODS: Final = ("POST", "PUT", "PATCH", "DELETE")
DEFAULT_COUNT: Final = 100
MAX_SCHEMAS: Final = 16  # URNs in one `schemas` (clients send one to four)
MAX_URN_CHARS: Final = 256
MAX_NAMES: Final = 100  # attribute names in `attributes` / `excludedAttributes`
MAX_BULK_TEXT_CHARS: Final = 1024  # a Bulk operation's path, bulkId, version
_DECIMAL = re.compile(r"[+-]?[0-9]{1,40}")


class MessageError(ValueError):
    """A request body or parameter the server refuses before acting: HTTP `status` (400,
    or 413 for too many bulk operations) and the RFC 7644 §3.12 `scim_type`."""

    def __init__(self, detail: str, scim_type: str = "invalidValue", status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.scim_type = scim_type
        self.status = status


class ListParams(TypedDict):
    """A list or search request as the routes use it (count already capped)."""

    cursor: str | None
    filter: str | None
    start_index: int
    count: int
    sort_by: str | None
    sort_order: str
    attributes: list[str] | None
    excluded: list[str] | None


@dataclass(frozen=True, slots=True)
class BulkOperation:
    """One checked operation of a BulkRequest; `path` and `data` may still hold bulkId
    references, resolved as the operations run."""

    method: str  # one of BULK_METHODS
    path: str
    bulk_id: str | None
    version: str | None
    data: dict[str, Any] | None  # an object for POST, PUT and PATCH; None for DELETE


@dataclass(frozen=True, slots=True)
class BulkRequest:
    fail_on_errors: int | None  # stop after this many errors; None or < 1: never
    operations: list[BulkOperation]


# ---------------------------------------------------------------- members


def json_kind(value: Any) -> str:
    """A client value's JSON kind, for an error detail (never the value itself)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string" if value else "an empty string"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return "an object"


def _clean(text: str, name: str) -> str:
    if "\x00" in text:
        raise MessageError(f"{name} contains a NUL character")
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise MessageError(f"{name} contains an unpaired surrogate")
    return text


def _string(value: Any, name: str, max_chars: int | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MessageError(f"{name} must be a string, not {json_kind(value)}")
    if max_chars is not None and len(value) > max_chars:
        raise MessageError(f"{name} is longer than {max_chars} characters")
    return _clean(value, name)


def _bigint(number: int, name: str) -> int:
    if not INT64_MIN <= number <= INT64_MAX:
        raise MessageError(f"{name} must be an integer between {INT64_MIN} and {INT64_MAX}")
    return number


def _integer(value: Any, name: str) -> int | None:
    """A JSON integer (not a boolean, not a fraction) that fits a bigint."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise MessageError(f"{name} must be an integer, not {json_kind(value)}")
    return _bigint(value, name)


def _decimal(text: str | None, name: str) -> int | None:
    """A query parameter's integer: decimal digits with an optional sign."""
    if text is None or not text.strip():
        return None
    if _DECIMAL.fullmatch(text.strip()) is None:
        raise MessageError(f"{name} must be an integer")
    return _bigint(int(text), name)


def _names(value: Any, name: str) -> list[str] | None:
    """`attributes` / `excludedAttributes`: a list of strings (the query's comma-separated
    form is accepted in a body too)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise MessageError(f"{name} must be a list of strings")
    if len(items) > MAX_NAMES:
        raise MessageError(f"{name} names at most {MAX_NAMES} attributes")
    return [_clean(i, name).strip() for i in items if i.strip()]


def _folded(message: Mapping[str, Any]) -> dict[str, Any]:
    return {key.lower(): value for key, value in message.items()}


def schema_list(schemas: Any, what: str) -> list[str]:
    """A `schemas` member: a list of at most MAX_SCHEMAS strings of at most MAX_URN_CHARS
    characters."""
    if not isinstance(schemas, list) or not all(isinstance(s, str) for s in schemas):
        raise MessageError(f"{what}: schemas must be a list of strings", "invalidSyntax")
    if len(schemas) > MAX_SCHEMAS or any(len(s) > MAX_URN_CHARS for s in schemas):
        raise MessageError(
            f"{what}: schemas holds at most {MAX_SCHEMAS} URNs of at most {MAX_URN_CHARS} "
            "characters"
        )
    return schemas


def check_schemas(message: Any, urn: str, what: str) -> dict[str, Any]:
    """The message as an object with lower-cased member names, once its `schemas` is known
    to be a list of strings holding `urn`."""
    if not isinstance(message, Mapping):
        raise MessageError(f"{what} must be a JSON object", "invalidSyntax")
    folded = _folded(message)
    schemas = schema_list(folded.get("schemas"), what)
    if urn.lower() not in {s.lower() for s in schemas}:
        raise MessageError(f"{what}: schemas must hold {urn}", "invalidSyntax")
    return folded


# ---------------------------------------------------------------- list and search


def _list_params(
    member: Mapping[str, Any], start_index: int | None, count: int | None, max_results: int
) -> ListParams:
    # Below 1 reads as 1 and a negative count as 0 (RFC 7644 §3.4.2.4); the page is capped.
    filter_text = member.get("filter")
    if filter_text is not None and not isinstance(filter_text, str):
        raise MessageError(f"filter must be a string, not {json_kind(filter_text)}")
    return {
        "cursor": _string(member.get("cursor"), "cursor"),
        # NUL and surrogates in a filter are the filter parser's (invalidFilter)
        "filter": filter_text,
        "start_index": max(1, 1 if start_index is None else start_index),
        "count": min(max(0, DEFAULT_COUNT if count is None else count), max_results),
        "sort_by": _string(member.get("sortby"), "sortBy"),
        "sort_order": _string(member.get("sortorder"), "sortOrder") or "ascending",
        "attributes": _names(member.get("attributes"), "attributes"),
        "excluded": _names(member.get("excludedattributes"), "excludedAttributes"),
    }


def list_query(query: Mapping[str, str], *, max_results: int) -> ListParams:
    """The query parameters of a GET list (or of a GET of one resource)."""
    folded = _folded(query)
    start_index = _decimal(folded.get("startindex"), "startIndex")
    count = _decimal(folded.get("count"), "count")
    return _list_params(folded, start_index, count, max_results)


def search_request(body: Any, urn: str, *, max_results: int) -> ListParams:
    """The body of a POST .search (a SearchRequest)."""
    folded = check_schemas(body, urn, "a search request")
    start_index = _integer(folded.get("startindex"), "startIndex")
    count = _integer(folded.get("count"), "count")
    return _list_params(folded, start_index, count, max_results)


# ---------------------------------------------------------------- Bulk


def _bulk_operation(index: int, raw: Any) -> BulkOperation:
    where = f"Operations[{index}]"
    if not isinstance(raw, Mapping):
        raise MessageError(f"{where} must be an object, not {json_kind(raw)}", "invalidSyntax")
    member = _folded(raw)
    method = _string(member.get("method"), f"{where}.method")
    if method is None or method.upper() not in BULK_METHODS:
        raise MessageError(f"{where}.method must be one of {', '.join(BULK_METHODS)}")
    path = _string(member.get("path"), f"{where}.path", MAX_BULK_TEXT_CHARS)
    if not path:
        raise MessageError(f"{where}.path is required")
    data = member.get("data")
    if method.upper() != "DELETE" and not isinstance(data, Mapping):
        raise MessageError(f"{where}.data must be an object for {method.upper()}")
    if data is not None and not isinstance(data, Mapping):
        raise MessageError(f"{where}.data must be an object, not {json_kind(data)}")
    return BulkOperation(
        method=method.upper(),
        path=path,
        bulk_id=_string(member.get("bulkid"), f"{where}.bulkId", MAX_BULK_TEXT_CHARS),
        version=_string(member.get("version"), f"{where}.version", MAX_BULK_TEXT_CHARS),
        data=None if data is None else dict(data),
    )


def bulk_request(body: Any, urn: str, *, max_operations: int) -> BulkRequest:
    """A BulkRequest, every operation checked before the first one runs: a malformed one
    refuses the whole request and nothing changes."""
    folded = check_schemas(body, urn, "a bulk request")
    operations = folded.get("operations")
    if not isinstance(operations, list):
        raise MessageError(
            f"Operations must be a list of operations, not {json_kind(operations)}",
            "invalidSyntax",
        )
    if len(operations) > max_operations:
        raise MessageError(f"at most {max_operations} operations", "tooMany", 413)
    return BulkRequest(
        fail_on_errors=_integer(folded.get("failonerrors"), "failOnErrors"),
        operations=[_bulk_operation(i, raw) for i, raw in enumerate(operations)],
    )
