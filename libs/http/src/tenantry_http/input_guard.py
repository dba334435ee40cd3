"""Hostile input stops at the edge, once for every service and every route.

Each service's routes decode JSON with msgspec and hand strings and numbers to Postgres.
Some inputs break a layer below the route instead of being refused by it:

- a body that is not UTF-8, or JSON nested thousands deep (the decoder's recursion);
- a NUL (``\\u0000``) anywhere in a string or a key: Postgres text and jsonb refuse it;
- a lone UTF-16 surrogate (``\\ud800``): a Python string that cannot be encoded back;
- an integer past 64 bits (asyncpg cannot bind it), or a float that overflows to infinity
  (jsonb refuses it);
- duplicate keys in one object: two parsers of one body (ours, a signature check, a
  customer's) could read different values, so the body is refused rather than guessed;
- the same NULs, bad encodings and oversized integers in the URL's path and query.

`InputGuardMiddleware` runs inside Litestar after authentication, the tenant guard and the
rate limit (so an anonymous caller cannot make us parse anything), and before
Idempotency-Key handling and the route. It checks the URL, then buffers the body (bounded
by the same limit as the route), refuses one of a type the route does not take (415),
checks it with `check_json_body` (or `check_form_body`), and replays it. A refusal is a
`Problem` (400, 413, 414 or 415), so each mount renders it in its own words: problem+json
on /v1, a SCIM Error on /scim/v2.

The route still decodes the body itself (typed, with msgspec): this layer only proves that
whatever the route decodes is safe to store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp as LitestarASGIApp
from litestar.types import Receive as LitestarReceive
from litestar.types import Scope as LitestarScope
from litestar.types import Send as LitestarSend

from tenantry_http.asgi import read_body, replay
from tenantry_http.problems import Problem

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Deep enough for any resource we take (SCIM's deepest is 4), shallow enough that no
# recursive walk below us ever nears Python's recursion limit.
MAX_JSON_DEPTH = 32
# Above every URL a real client sends. The HTTP server (http_server.py) shortens a longer
# target and records its length under URL_BYTES_KEY, so it is refused here in our words.
MAX_URL_BYTES = 8192
URL_BYTES_KEY = "tenantry.url_bytes"
_BODYLESS = frozenset({"GET", "HEAD", "OPTIONS"})


def invalid(slug: str, title: str, detail: str) -> Problem:
    return Problem(400, slug, title, detail)


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_text(value: str, where: str) -> None:
    """A string fit to store: no NUL, and encodable (no lone surrogates)."""
    if "\x00" in value:
        raise invalid(
            "nul-character", "The request contains a NUL character", f"{where} contains U+0000"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise invalid(
                "invalid-encoding",
                "The request is not valid UTF-8",
                f"{where} contains an unpaired UTF-16 surrogate",
            ) from exc


def check_integer(value: int, where: str) -> None:
    if not INT64_MIN <= value <= INT64_MAX:
        raise invalid(
            "number-out-of-range",
            "A number in the request is out of range",
            f"{where} does not fit in a 64-bit integer",
        )


def _check_tree(root: Any) -> None:
    """Depth, strings, keys and numbers of a decoded JSON value, without recursion."""
    stack: list[tuple[Any, int, str]] = [(root, 1, "$")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, str):
            check_text(value, path)
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            check_integer(value, path)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise invalid(
                    "number-out-of-range",
                    "A number in the request is out of range",
                    f"{path} is too large for a double",
                )
        else:
            if depth > MAX_JSON_DEPTH:
                raise invalid(
                    "json-too-deep",
                    "The request body is nested too deeply",
                    f"JSON may nest at most {MAX_JSON_DEPTH} levels",
                )
            if isinstance(value, dict):
                for key, item in value.items():
                    check_text(key, f"a key in {path}")
                    stack.append((item, depth + 1, f"{path}.{key[:64]}"))
            else:
                stack.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(value))


def check_json_body(raw: bytes) -> None:
    """Refuse (a 400 `Problem`) a JSON body that could not be stored as it reads."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(
            "invalid-encoding",
            "The request is not valid UTF-8",
            f"the body is not UTF-8 (byte {exc.start})",
        ) from exc
    try:
        decoded = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except _DuplicateKey as exc:
        raise invalid(
            "duplicate-json-key",
            "The request body repeats a key",
            f"the key {str(exc)[:64]!r} appears twice in one object",
        ) from exc
    except RecursionError as exc:
        raise invalid(
            "json-too-deep",
            "The request body is nested too deeply",
            f"JSON may nest at most {MAX_JSON_DEPTH} levels",
        ) from exc
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity
        # The type every unreadable body has had since the first release (a stable `type`).
        raise invalid("malformed-request", "The request could not be read", str(exc)) from exc
    _check_tree(decoded)


def check_form_body(raw: bytes) -> None:
    """An `application/x-www-form-urlencoded` body: UTF-8 values without NULs."""
    for key, value in _query_pairs(raw, "the body"):
        check_text(key, "a form field name")
        check_text(value, f"the form field {key[:64]!r}")


def _query_pairs(raw: bytes, where: str) -> Iterable[tuple[str, str]]:
    try:
        return parse_qsl(
            raw.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except UnicodeDecodeError as exc:
        raise invalid(
            "invalid-encoding", "The request is not valid UTF-8", f"{where} is not UTF-8"
        ) from exc


def check_url(path: str, raw_path: bytes, query: bytes, url_bytes: int = 0) -> None:
    """The path and query: bounded, UTF-8, no NULs, integers that fit in 64 bits."""
    if max(url_bytes, len(raw_path) + len(query)) > MAX_URL_BYTES:
        raise Problem(
            414,
            "uri-too-long",
            "The URL is too long",
            f"URLs may be at most {MAX_URL_BYTES} bytes",
        )
    check_text(path, "the path")
    for key, value in _query_pairs(query, "the query string"):
        check_text(key, "a query parameter name")
        check_text(value, f"the query parameter {key[:64]!r}")
        digits = value[1:] if value[:1] in "+-" else value
        if len(digits) > 18 and digits.isascii() and digits.isdigit():
            check_integer(int(value), f"the query parameter {key[:64]!r}")


FORM = "application/x-www-form-urlencoded"


def check_body(body: bytes, content_type: str, accepts: str) -> None:
    """A route takes JSON unless it declares `opt={"body": "form"}` (the SAML ACS). A body of
    another type is refused with 415 before anything reads it: a JSON route must not read
    `text/plain` (a type browsers send cross-site without a preflight) as JSON."""
    if accepts == "form" and content_type == FORM:
        check_form_body(body)
    elif accepts == "json" and _is_json(content_type):
        check_json_body(body)
    else:
        wanted = FORM if accepts == "form" else "application/json"
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"this route takes {wanted}, not {content_type or 'an untyped body'}",
        )


def _content_type(scope: LitestarScope) -> str:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1").split(";", 1)[0].strip().lower()
    return ""


def _is_json(content_type: str) -> bool:
    # No content type: clients that send JSON without saying so (curl -d) are common.
    return content_type in ("", "application/json") or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


class InputGuardMiddleware(ASGIMiddleware):
    """Checks the URL and buffers, checks and replays a JSON or form body (see the module)."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body

    async def handle(
        self,
        scope: LitestarScope,
        receive: LitestarReceive,
        send: LitestarSend,
        next_app: LitestarASGIApp,
    ) -> None:
        check_url(
            scope["path"],
            scope.get("raw_path") or b"",
            scope.get("query_string", b""),
            int(scope.get(URL_BYTES_KEY, 0)),  # type: ignore[call-overload]
        )
        if scope.get("method", "GET") in _BODYLESS:
            await next_app(scope, receive, send)
            return
        body = await read_body(receive, self.max_body)  # type: ignore[arg-type]  # loose ASGI
        if body is None:
            return  # the client went away before it had sent its body
        if body:
            check_body(body, _content_type(scope), scope["route_handler"].opt.get("body", "json"))
        await next_app(scope, replay(body, receive), send)  # type: ignore[arg-type]  # loose ASGI
