"""Opaque cursors for list endpoints.

A cursor is the sort key of the last item served, msgspec-encoded and base64url'd. It is
opaque to clients; a tampered or foreign cursor is a 400 invalid-cursor, never a crash.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import msgspec

from tenantry_http.problems import Problem

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Page(msgspec.Struct, Generic[T], kw_only=True):
    data: list[T]
    next_cursor: str | None = None


def encode_cursor(key: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(msgspec.msgpack.encode(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> list[Any] | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = msgspec.msgpack.decode(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise Problem(400, "invalid-cursor", "The cursor is not valid") from None
    if not isinstance(key, list):
        raise Problem(400, "invalid-cursor", "The cursor is not valid")
    return key


def clamp_limit(limit: int | None) -> int:
    if limit is None:
        return DEFAULT_LIMIT
    if limit < 1 or limit > MAX_LIMIT:
        raise Problem(400, "invalid-limit", f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def page_of(rows: Sequence[T], limit: int, key: Any) -> Page[T]:
    """`rows` was fetched with LIMIT limit+1; `key(row)` gives the sort key of a row."""
    more = len(rows) > limit
    data = list(rows[:limit])
    return Page(data=data, next_cursor=encode_cursor(key(data[-1])) if more and data else None)
