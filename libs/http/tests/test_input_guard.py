"""The input guard's checks, pure: every refusal is a 400/414 `Problem` of a stable type, and
it refuses exactly what a plain reference says cannot be stored."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenantry_http.input_guard import (
    INT64_MAX,
    INT64_MIN,
    MAX_JSON_DEPTH,
    MAX_URL_BYTES,
    check_body,
    check_form_body,
    check_json_body,
    check_url,
)
from tenantry_http.problems import Problem
from tenantry_testkit.strategies import json_values


def slug_of(check: Any, *args: Any) -> str | None:
    try:
        check(*args)
    except Problem as problem:
        refused = problem
    else:
        return None
    assert refused.status in (400, 414, 415)
    return refused.slug


@pytest.mark.parametrize(
    ("body", "slug"),
    [
        (b'{"name": "\xff"}', "invalid-encoding"),
        (b"[" * 5000 + b"]" * 5000, "json-too-deep"),
        (b'{"a":' * (MAX_JSON_DEPTH + 1) + b"1" + b"}" * (MAX_JSON_DEPTH + 1), "json-too-deep"),
        (b'{"name": "a\\u0000b"}', "nul-character"),
        (b'{"a\\u0000": 1}', "nul-character"),
        (b'{"n": 99999999999999999999}', "number-out-of-range"),
        (b'{"n": -9223372036854775809}', "number-out-of-range"),
        (b'{"n": 1e400}', "number-out-of-range"),
        (b'{"name": "a", "name": "b"}', "duplicate-json-key"),
        (b'{"x": {"k": 1, "k": 1}}', "duplicate-json-key"),
        (b'{"s": "\\ud800"}', "invalid-encoding"),
        (b'{"n": NaN}', "malformed-request"),
        (b"{not json", "malformed-request"),
        (b"\xef\xbb\xbf{}", "malformed-request"),  # a byte-order mark: not JSON (RFC 8259)
    ],
)
def test_hostile_json_is_refused_with_its_type(body: bytes, slug: str) -> None:
    assert slug_of(check_json_body, body) == slug


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 9223372036854775807, "m": -9223372036854775808}',
        b'{"s": "\\\\u0000"}',  # an escaped backslash, then the text u0000: no NUL
        b'{"s": "\\ud83d\\ude00 \xc3\xbc"}',  # a surrogate pair and UTF-8: one emoji, one u
        b'{"a":' * (MAX_JSON_DEPTH - 1) + b"1" + b"}" * (MAX_JSON_DEPTH - 1),
        b"[]",
        b'"just a string"',
    ],
)
def test_ordinary_json_passes(body: bytes) -> None:
    assert slug_of(check_json_body, body) is None


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def storable(value: Any) -> bool:
    """The reference: what Postgres and asyncpg take, within our nesting bound."""
    if isinstance(value, str):
        return "\x00" not in value
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    keys_ok = all("\x00" not in k for k, _ in items if isinstance(k, str))
    return keys_ok and all(storable(v) for _, v in items)


utf8_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)
any_json = json_values(
    integers=st.integers(min_value=-(2**70), max_value=2**70),
    text=utf8_text,
    keys=st.text(alphabet=st.characters(codec="utf-8"), max_size=4),
    max_items=4,
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(any_json)
def test_refuses_exactly_what_cannot_be_stored(value: Any) -> None:
    body = json.dumps(value).encode()
    expected_ok = storable(value) and depth(value) <= MAX_JSON_DEPTH
    assert (slug_of(check_json_body, body) is None) == expected_ok


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_are_either_accepted_or_a_problem(body: bytes) -> None:
    slug_of(check_json_body, body)  # anything but a Problem escapes and fails the test


@pytest.mark.parametrize(
    ("query", "slug"),
    [
        (b"limit=99999999999999999999", "number-out-of-range"),
        (b"limit=-99999999999999999999", "number-out-of-range"),
        (b"filter=a%00b", "nul-character"),
        (b"a%00=1", "nul-character"),
        (b"filter=%ff", "invalid-encoding"),
        (b"x=" + b"a" * MAX_URL_BYTES, "uri-too-long"),
    ],
)
def test_hostile_query_strings_are_refused(query: bytes, slug: str) -> None:
    assert slug_of(check_url, "/v1/tenants", b"/v1/tenants", query) == slug


def test_the_url_checks_cover_the_path_and_the_servers_mark() -> None:
    assert slug_of(check_url, "/v1/plans/a\x00", b"/v1/plans/a%00", b"") == "nul-character"
    assert slug_of(check_url, "/v1/plans", b"/v1/plans", b"", 100_000) == "uri-too-long"
    assert slug_of(check_url, "/v1/plans", b"/v1/plans", b"limit=9223372036854775807") is None
    assert slug_of(check_url, "/v1/plans", b"/v1/plans", b"q=%C3%BC&empty=") is None


def test_form_bodies_are_checked_for_nuls_and_encoding() -> None:
    assert slug_of(check_form_body, b"SAMLResponse=abc%00") == "nul-character"
    assert slug_of(check_form_body, b"RelayState=%ff") == "invalid-encoding"
    assert slug_of(check_form_body, b"SAMLResponse=PHNhbWw%2B&RelayState=x") is None


@pytest.mark.parametrize(
    ("content_type", "accepts", "slug"),
    [
        ("text/plain", "json", "unsupported-media-type"),  # no preflight cross-site: never JSON
        ("application/x-www-form-urlencoded", "json", "unsupported-media-type"),
        ("application/xml", "json", "unsupported-media-type"),
        ("application/json", "form", "unsupported-media-type"),
        ("application/json", "json", None),
        ("application/scim+json", "json", None),
        ("", "json", None),
        ("application/x-www-form-urlencoded", "form", None),
    ],
)
def test_a_body_of_a_type_the_route_does_not_take_is_415(
    content_type: str, accepts: str, slug: str | None
) -> None:
    body = b"a=1" if content_type.endswith("urlencoded") else b'{"a": 1}'
    assert slug_of(check_body, body, content_type, accepts) == slug
