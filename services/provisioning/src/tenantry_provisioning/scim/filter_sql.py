"""SCIM 2.0 filters (RFC 7644 §3.4.2.2) and sorting (§3.4.2.3) over the SCIM tables.

`parse_filter` turns the whole filter grammar into a small AST; `to_sql` turns the AST
into a parameterised SQL predicate over `scim_users` or `scim_groups`; `sort_sql` turns
sortBy/sortOrder into an ORDER BY key. Values only ever travel as `$n` parameters: the
SQL text is assembled from constant fragments of this module.

Semantics (the property tests in tests/test_scim_filter.py hold SQL to them):

* Two-valued logic. An unassigned attribute (SQL NULL, JSON null, missing key, empty
  array: RFC 7643 §2.5 treats these alike) matches no `eq`, `co`, `sw`, `ew`, `gt`,
  `ge`, `lt`, `le` and no `pr`; `not (...)` is the plain complement: `not (title eq
  "x")` includes the users without a title. In SQL a comparison with an unassigned
  attribute is NULL, which AND, OR, EXISTS and WHERE all treat as false; negations are
  written `(...) IS NOT TRUE`, which turns NULL into true.
* `pr` wants a non-empty value: "" is not present (and sorts with the unassigned), but
  `title eq ""` still matches it.
* `ne` is exactly `not eq`: `title ne "x"` includes users without a title ("an unassigned
  attribute does not equal anything"). On a multi-valued attribute it means "no value
  equals": `emails.type ne "work"` is `not (emails.type eq "work")`. To ask for "some
  value differs" use a value filter: `emails[type ne "work"]`.
* `x eq null` is `not (x pr)` and `x ne null` is `x pr`; other operators reject null.
* Multi-valued attributes match when any value matches (§3.4.2.2); `emails eq "a"` means
  `emails.value eq "a"`; `emails pr` means "at least one email". Separate conditions on
  `emails.type` and `emails.value` may be met by different emails; a value filter
  `emails[type eq "work" and value co "@x"]` asks for one email meeting both.
* Strings compare case-insensitively (lower() on both sides) unless the attribute is
  caseExact (externalId); gt/ge/lt/le and sorting are by code point (COLLATE "C"), the
  "no specific locale" order of §3.4.2.3. `id` and member/group ids compare
  case-insensitively: their canonical text is lower-case and RFC 4122 UUIDs are
  case-insensitive on input.
* Booleans (`active`, `emails.primary`, ...) take `eq`/`ne` with true/false, or the
  strings "true"/"false" in any case (Entra sends "True"); other operators are
  invalidFilter. dateTimes (`meta.created`, `meta.lastModified`) compare
  chronologically; a value without an offset is taken as UTC.
* Attribute names, operators and the schema URN prefix are case-insensitive. Extension
  attributes may be written with or without their URN (`employeeNumber` is unambiguous).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, TypeAlias, cast

from tenantry_provisioning.scim.schema import (
    ENTERPRISE_USER_URN,
    GROUP_SCHEMA,
    GROUP_URN,
    USER_SCHEMA,
    USER_URN,
    Attribute,
    JoinedRows,
    ResourceSchema,
)

__all__ = [
    "MAX_FILTER_DEPTH",
    "MAX_FILTER_LENGTH",
    "And",
    "AttrPath",
    "Compare",
    "CompareOp",
    "Filter",
    "FilterError",
    "Not",
    "Or",
    "Present",
    "SqlParam",
    "Value",
    "ValuePath",
    "parse_filter",
    "sort_sql",
    "to_sql",
]

MAX_FILTER_LENGTH: Final = 4096  # characters; IdPs send short filters, this bounds the work
MAX_FILTER_DEPTH: Final = 32  # nested parentheses, `not` and value filters

Value: TypeAlias = str | int | float | bool | None  # a JSON compValue
SqlParam: TypeAlias = str | bool | datetime  # what to_sql hands to asyncpg
CompareOp: TypeAlias = Literal["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"]
_COMPARE_OPS: Final[frozenset[str]] = frozenset(
    {"eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"}
)


class FilterError(ValueError):
    """A filter (or sortBy/sortOrder) the server cannot evaluate.

    `scim_type` is the RFC 7644 §3.12 scimType to answer with (status 400):
    "invalidFilter" for filters (syntax, unknown attribute, operator not defined for the
    attribute's type), "invalidValue" for sortBy/sortOrder.
    """

    def __init__(self, message: str, scim_type: str = "invalidFilter") -> None:
        super().__init__(message)
        self.message = message
        self.scim_type = scim_type


# ---------------------------------------------------------------- AST


@dataclass(frozen=True, slots=True)
class AttrPath:
    """`[uri:]attr[.sub]`, names as written (resolution is case-insensitive)."""

    attr: str
    sub: str | None = None
    uri: str | None = None

    def __str__(self) -> str:
        prefix = f"{self.uri}:" if self.uri else ""
        suffix = f".{self.sub}" if self.sub else ""
        return f"{prefix}{self.attr}{suffix}"


@dataclass(frozen=True, slots=True)
class Compare:
    """`path op value`; `op` is lower-case."""

    path: AttrPath
    op: CompareOp
    value: Value

    def __str__(self) -> str:
        return f"{self.path} {self.op} {_render_value(self.value)}"


@dataclass(frozen=True, slots=True)
class Present:
    """`path pr`."""

    path: AttrPath

    def __str__(self) -> str:
        return f"{self.path} pr"


@dataclass(frozen=True, slots=True)
class ValuePath:
    """`attr[filter]`: one value of a multi-valued (or the complex) attribute meets `filter`,
    whose attribute paths name sub-attributes of `path`."""

    path: AttrPath
    filter: Filter

    def __str__(self) -> str:
        return f"{self.path}[{self.filter}]"


@dataclass(frozen=True, slots=True)
class Not:
    """`not (operand)`."""

    operand: Filter

    def __str__(self) -> str:
        return f"not ({self.operand})"


@dataclass(frozen=True, slots=True)
class And:
    """A chain `a and b and ...` (two or more operands)."""

    operands: tuple[Filter, ...]

    def __str__(self) -> str:
        # Parenthesise nested chains, so that str() parses back to the same tree.
        return " and ".join(f"({o})" if isinstance(o, And | Or) else str(o) for o in self.operands)


@dataclass(frozen=True, slots=True)
class Or:
    """A chain `a or b or ...` (two or more operands)."""

    operands: tuple[Filter, ...]

    def __str__(self) -> str:
        return " or ".join(f"({o})" if isinstance(o, Or) else str(o) for o in self.operands)


Filter: TypeAlias = Compare | Present | ValuePath | Not | And | Or


def _render_value(value: Value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


# ---------------------------------------------------------------- lexer


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["word", "string", "number", "punct"]
    text: str  # source text (for words: as written; for punctuation: the character)
    pos: int
    value: Value = None  # decoded literal (strings, numbers)


_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# A word is an attribute path (with an optional schema URN prefix), an operator, a
# logical operator or a JSON literal; the parser tells them apart by position.
_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$:.\-]*")
_WORD_CHAR = re.compile(r"[A-Za-z0-9_$:.\-]")
_ATTR_NAME = re.compile(r"(?:[A-Za-z][A-Za-z0-9_\-]*|\$ref)\Z")
_WHITESPACE = " \t\r\n"


def _describe(token: _Token | None) -> str:
    return "the end of the filter" if token is None else f"{token.text!r} at position {token.pos}"


def _string_end(text: str, start: int) -> int:
    """Index of the quote closing the string that opens at `start`."""
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i
        i += 1
    raise FilterError(f"unterminated string starting at position {start}")


def _decode_string(literal: str, pos: int) -> str:
    # A compValue string MUST be a valid JSON string (RFC 7644 §3.4.2.2): let the JSON
    # decoder judge escapes and raw control characters.
    try:
        value = json.loads(literal)
    except json.JSONDecodeError as exc:
        raise FilterError(f"invalid string at position {pos}: {exc.msg}") from None
    assert isinstance(value, str)
    # Postgres text holds neither NUL nor lone surrogates (asyncpg would fail to encode).
    if "\x00" in value:
        raise FilterError(f"string at position {pos} contains a NUL character")
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise FilterError(f"string at position {pos} contains an unpaired surrogate")
    return value


def _tokens(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in _WHITESPACE:
            i += 1
        elif c in "()[]":
            tokens.append(_Token("punct", c, i))
            i += 1
        elif c == '"':
            end = _string_end(text, i)
            literal = text[i : end + 1]
            tokens.append(_Token("string", literal, i, _decode_string(literal, i)))
            i = end + 1
        elif c == "-" or c.isdigit():
            m = _NUMBER.match(text, i)
            if m is None or (m.end() < len(text) and _WORD_CHAR.match(text, m.end())):
                raise FilterError(f"invalid number at position {i}")
            literal = m.group()
            number: int | float = (
                float(literal) if any(ch in literal for ch in ".eE") else int(literal)
            )
            tokens.append(_Token("number", literal, i, number))
            i = m.end()
        elif (m := _WORD.match(text, i)) is not None:
            tokens.append(_Token("word", m.group(), i))
            i = m.end()
        elif c == "." and tokens and tokens[-1].text == "]":
            raise FilterError(
                f"'].' at position {i - 1}: selecting a sub-attribute after a value filter "
                "is only valid in PATCH paths; put the condition inside the brackets"
            )
        else:
            raise FilterError(f"unexpected character {c!r} at position {i}")
    return tokens


# ---------------------------------------------------------------- parser


def parse_filter(text: str) -> Filter:
    """Parse a SCIM filter (RFC 7644 §3.4.2.2, the whole grammar) into an AST.

    Precedence: `not` binds tighter than `and`, which binds tighter than `or`; parentheses
    group; `attr[...]` filters the values of a multi-valued (or complex) attribute.
    Raises FilterError (scimType invalidFilter) for malformed input, input longer than
    MAX_FILTER_LENGTH and nesting deeper than MAX_FILTER_DEPTH. Attribute names are
    checked against the schema by `to_sql`, not here.
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"filter is longer than {MAX_FILTER_LENGTH} characters")
    tokens = _tokens(text)
    if not tokens:
        raise FilterError("empty filter")
    return _Parser(tokens).parse()


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._i = 0

    def parse(self) -> Filter:
        result = self._or(depth=0, in_value_filter=False)
        extra = self._peek()
        if extra is not None:
            raise FilterError(f"unexpected {_describe(extra)}")
        return result

    def _peek(self, ahead: int = 0) -> _Token | None:
        j = self._i + ahead
        return self._tokens[j] if j < len(self._tokens) else None

    def _next(self) -> _Token | None:
        token = self._peek()
        if token is not None:
            self._i += 1
        return token

    def _at_keyword(self, keyword: str) -> bool:
        token = self._peek()
        return token is not None and token.kind == "word" and token.text.lower() == keyword

    def _expect(self, punct: str, opened: _Token) -> None:
        token = self._next()
        if token is None or token.text != punct or token.kind != "punct":
            raise FilterError(
                f"expected {punct!r} to close {opened.text!r} at position {opened.pos}, "
                f"found {_describe(token)}"
            )

    def _or(self, depth: int, in_value_filter: bool) -> Filter:
        operands = [self._and(depth, in_value_filter)]
        while self._at_keyword("or"):
            self._i += 1
            operands.append(self._and(depth, in_value_filter))
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def _and(self, depth: int, in_value_filter: bool) -> Filter:
        operands = [self._unary(depth, in_value_filter)]
        while self._at_keyword("and"):
            self._i += 1
            operands.append(self._unary(depth, in_value_filter))
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def _group(self, depth: int, in_value_filter: bool) -> Filter:
        opened = self._next()
        assert opened is not None
        if depth + 1 > MAX_FILTER_DEPTH:
            raise FilterError(f"filter is nested deeper than {MAX_FILTER_DEPTH} levels")
        inner = self._or(depth + 1, in_value_filter)
        self._expect(")", opened)
        return inner

    def _unary(self, depth: int, in_value_filter: bool) -> Filter:
        token = self._peek()
        if token is None:
            raise FilterError("expected an expression, found the end of the filter")
        if token.kind == "punct" and token.text == "(":
            return self._group(depth, in_value_filter)
        if token.kind == "word" and token.text.lower() == "not":
            following = self._peek(1)
            if following is None or following.text != "(" or following.kind != "punct":
                # The grammar only has `not "(" FILTER ")"`.
                raise FilterError(
                    f"'not' at position {token.pos} must be followed by a parenthesised filter"
                )
            self._i += 1
            return Not(self._group(depth, in_value_filter))
        if token.kind == "word":
            return self._attribute_expression(depth, in_value_filter)
        raise FilterError(f"expected an attribute, 'not' or '(', found {_describe(token)}")

    def _attribute_expression(self, depth: int, in_value_filter: bool) -> Filter:
        name = self._next()
        assert name is not None
        path = _parse_path(name.text, name.pos)
        following = self._peek()
        if following is not None and following.kind == "punct" and following.text == "[":
            if in_value_filter:
                raise FilterError(f"value filters cannot be nested (position {following.pos})")
            if path.sub is not None:
                raise FilterError(
                    f"a value filter applies to an attribute, not to the sub-attribute {path}"
                )
            if depth + 1 > MAX_FILTER_DEPTH:
                raise FilterError(f"filter is nested deeper than {MAX_FILTER_DEPTH} levels")
            self._i += 1
            inner = self._or(depth + 1, in_value_filter=True)
            self._expect("]", following)
            return ValuePath(path, inner)
        op_token = self._next()
        if op_token is None:
            raise FilterError(f"expected an operator after {name.text!r}")
        op = op_token.text.lower()
        if op_token.kind != "word" or (op != "pr" and op not in _COMPARE_OPS):
            raise FilterError(
                f"unknown operator {_describe(op_token)}; expected one of "
                "eq, ne, co, sw, ew, gt, ge, lt, le, pr"
            )
        if op == "pr":
            return Present(path)
        return Compare(path, cast(CompareOp, op), self._value(op_token))

    def _value(self, op_token: _Token) -> Value:
        token = self._next()
        if token is None:
            raise FilterError(f"missing value after {op_token.text!r}")
        if token.kind in ("string", "number"):
            return token.value
        if token.kind == "word":
            # ABNF literals are case-insensitive; be as lenient with true/false/null.
            literal = token.text.lower()
            if literal == "true":
                return True
            if literal == "false":
                return False
            if literal == "null":
                return None
            raise FilterError(
                f"expected a value after {op_token.text!r}, found {_describe(token)} "
                "(strings must be in double quotes)"
            )
        raise FilterError(f"expected a value after {op_token.text!r}, found {_describe(token)}")


def _parse_path(text: str, pos: int) -> AttrPath:
    uri: str | None = None
    rest = text
    if text.lower().startswith("urn:"):
        # `urn:...:User:name.givenName`: the schema URN ends at the last colon.
        uri, _, rest = text.rpartition(":")
    parts = rest.split(".")
    if len(parts) > 2 or not all(_ATTR_NAME.match(p) for p in parts):
        raise FilterError(f"invalid attribute path {text!r} at position {pos}")
    return AttrPath(parts[0], parts[1] if len(parts) == 2 else None, uri)


# ---------------------------------------------------------------- schema
#
# SQL templates: "{t}" is the qualifier of the resource table ("u." or ""), "{e}" the alias
# of the element in a multi-valued attribute's sub-select. Elements of jsonb arrays are
# `{e}.v` (with ordinality `{e}.n`).

_ELEMENT: Final = "scim_e"


@dataclass(frozen=True, slots=True)
class _Scalar:
    """A single-valued simple attribute (or sub-attribute) and how SQL reads it."""

    kind: Literal["string", "boolean", "datetime"]
    sql: str
    case_exact: bool = False


@dataclass(frozen=True, slots=True)
class _Complex:
    """A single-valued complex attribute (name, meta, manager): its sub-attributes."""

    subs: Mapping[str, _Scalar]


@dataclass(frozen=True, slots=True)
class _MultiValued:
    """A multi-valued attribute: a FROM item yielding its values as `{e}`, an optional
    correlation condition, the sub-attributes, and how to pick the value to sort by."""

    source: str
    subs: Mapping[str, _Scalar]
    default: str | None = "value"  # what `emails eq "x"` compares
    link: str | None = None
    sort_pick: str = "{e}.n"  # ORDER BY of the sub-select choosing the sort value
    simple: bool = False  # values are not objects: no sub-attribute names


_Attribute: TypeAlias = _Scalar | _Complex | _MultiValued


def _string(sql: str, *, case_exact: bool = False) -> _Scalar:
    return _Scalar("string", sql, case_exact)


def _json_boolean(sql: str) -> _Scalar:
    # jsonb true/false, and the strings "True"/"False" an IdP may have sent; anything else
    # is unassigned.
    return _Scalar(
        "boolean", f"(CASE lower({sql}) WHEN 'true' THEN true WHEN 'false' THEN false END)"
    )


def _scalar(attribute: Attribute, sql: str) -> _Scalar:
    """How SQL reads a simple attribute whose value is the expression `sql`."""
    if attribute.type == "boolean":
        return _Scalar("boolean", sql)
    if attribute.type == "dateTime":
        return _Scalar("datetime", sql)
    # A UUID's text is canonical lower-case: compare it case-insensitively (docstring).
    return _string(sql, case_exact=attribute.case_exact and not attribute.uuid)


def _json_scalar(attribute: Attribute, json_sql: str) -> _Scalar:
    """A simple attribute kept as the key `attribute.name` of the jsonb `json_sql`."""
    text = f"{json_sql}->>'{attribute.name}'"
    return _json_boolean(text) if attribute.type == "boolean" else _scalar(attribute, f"({text})")


def _jsonb_array(sql: str, attribute: Attribute) -> _MultiValued:
    subs = {sub.name.lower(): _json_scalar(sub, "{e}.v") for sub in attribute.sub_attributes}
    # jsonb_array_elements fails on anything but an array: guard what clients wrote into
    # `extra` (the typed columns are arrays by construction).
    guarded = f"(CASE WHEN jsonb_typeof({sql}) = 'array' THEN {sql} ELSE '[]'::jsonb END)"
    return _MultiValued(
        source=f"jsonb_array_elements({guarded}) WITH ORDINALITY AS {{e}}(v, n)",
        subs=subs,
        # RFC 7643 §4.1.2: addresses have no value (the one kept for clients is not what
        # `addresses eq "x"` would mean).
        default=None if attribute.name == "addresses" else "value",
        # RFC 7644 §3.4.2.3: the primary value if any, else the first.
        sort_pick="(CASE lower({e}.v->>'primary') WHEN 'true' THEN 0 ELSE 1 END), {e}.n",
    )


def _joined(attribute: Attribute, rows: JoinedRows) -> _MultiValued:
    subs = {
        sub.name.lower(): _scalar(sub, sub.column)
        for sub in attribute.sub_attributes
        if sub.column is not None
    }
    return _MultiValued(rows.source, subs, link=rows.link, sort_pick=rows.sort_pick)


def _meta(attribute: Attribute, resource_type: str) -> _Complex:
    subs = {
        sub.name.lower(): _scalar(sub, f"{{t}}{sub.column}")
        for sub in attribute.sub_attributes
        if sub.column is not None
    }
    # Case-insensitive in queries, as it has always been (a constant: nothing is stored).
    subs["resourcetype"] = _string(f"'{resource_type}'::text")
    return _Complex(subs)


def _schemas(urns: str) -> _MultiValued:
    return _MultiValued(
        source=f"unnest({urns}) WITH ORDINALITY AS {{e}}(v, n)",
        subs={"value": _string("{e}.v")},
        simple=True,
    )


def _core_attribute(attribute: Attribute, resource_type: str) -> _Attribute | None:
    """How SQL reads a core attribute (schema.py's storage), or None: not queryable."""
    if attribute.name == "meta":
        return _meta(attribute, resource_type)
    if attribute.joined is not None:
        return _joined(attribute, attribute.joined)
    if attribute.multi_valued:
        # Core attributes without a column of their own are kept in `extra` as sent.
        column = attribute.column or f"extra->'{attribute.name}'"
        sql = f"{{t}}{column}" if attribute.column else f"({{t}}{column})"
        return _jsonb_array(sql, attribute)
    if attribute.is_complex:
        return _Complex(
            {
                sub.name.lower(): _scalar(sub, f"{{t}}{sub.column}")
                for sub in attribute.sub_attributes
                if sub.column is not None
            }
        )
    if attribute.column is None:
        return None
    column = f"{{t}}{attribute.column}" + ("::text" if attribute.uuid else "")
    return _scalar(attribute, column)


def _extension_attribute(attribute: Attribute, column: str) -> _Attribute:
    json_sql = f"{{t}}{column}"
    if not attribute.is_complex:
        return _json_scalar(attribute, json_sql)
    whole = f"{json_sql}->'{attribute.name}'"
    subs = {sub.name.lower(): _json_scalar(sub, whole) for sub in attribute.sub_attributes}
    if "value" in subs:
        # Stored as {"value": id, ...} or, from Entra's PATCH, as the bare id (the manager).
        subs["value"] = _string(
            f"(CASE jsonb_typeof({whole}) WHEN 'object' THEN {whole}->>'value' "
            f"WHEN 'string' THEN {whole}#>>'{{}}' END)"
        )
    return _Complex(subs)


def _queryable(schema: ResourceSchema, schemas_sql: str) -> Mapping[str, Mapping[str, _Attribute]]:
    """Schema URN (lower-case) -> attribute name (lower-case) -> how SQL reads it."""
    core: dict[str, _Attribute] = {}
    for attribute in schema.attributes:
        queryable = _core_attribute(attribute, schema.name)
        if queryable is not None:
            core[attribute.name.lower()] = queryable
    core["schemas"] = _schemas(schemas_sql)
    scopes: dict[str, Mapping[str, _Attribute]] = {schema.core_urn.lower(): core}
    for extension in schema.extensions:
        assert extension.column is not None
        scopes[extension.urn.lower()] = {
            a.name.lower(): _extension_attribute(a, extension.column) for a in extension.attributes
        }
    return scopes


# resource -> schema URN (lower-case) -> attribute name (lower-case) -> attribute
_SCHEMAS: Final[Mapping[str, Mapping[str, Mapping[str, _Attribute]]]] = {
    "User": _queryable(
        USER_SCHEMA,
        f"ARRAY['{USER_URN}'] || CASE WHEN {{t}}enterprise <> '{{}}'::jsonb "
        f"THEN ARRAY['{ENTERPRISE_USER_URN}'] ELSE ARRAY[]::text[] END",
    ),
    "Group": _queryable(GROUP_SCHEMA, f"ARRAY['{GROUP_URN}']"),
}


def _schemas_of(resource: str) -> Mapping[str, Mapping[str, _Attribute]]:
    try:
        return _SCHEMAS[resource]
    except KeyError:
        raise ValueError(f"resource must be 'User' or 'Group', not {resource!r}") from None


def _lookup(resource: str, path: AttrPath, scim_type: str) -> _Attribute:
    schemas = _schemas_of(resource)
    name = path.attr.lower()
    if path.uri is not None:
        attributes = schemas.get(path.uri.lower())
        if attributes is None:
            raise FilterError(f"unknown schema {path.uri!r} for {resource}", scim_type)
        found = attributes.get(name)
    else:
        # The core schema first; extension names are unique, so a bare one is unambiguous.
        found = next((a[name] for a in schemas.values() if name in a), None)
    if found is None:
        raise FilterError(f"unknown attribute {str(path)!r} for {resource}", scim_type)
    return found


def _sub_of(attribute: _Complex | _MultiValued, path: AttrPath, scim_type: str) -> _Scalar:
    assert path.sub is not None
    if isinstance(attribute, _MultiValued) and attribute.simple:
        raise FilterError(f"{path.attr!r} has no sub-attributes", scim_type)
    found = attribute.subs.get(path.sub.lower())
    if found is None:
        raise FilterError(f"unknown sub-attribute {str(path)!r}", scim_type)
    return found


# ---------------------------------------------------------------- translation


@dataclass(slots=True)
class _Translation:
    resource: str
    next_param: int
    params: list[SqlParam] = field(default_factory=list)

    def param(self, value: SqlParam, cast: str) -> str:
        self.params.append(value)
        self.next_param += 1
        return f"${self.next_param - 1}::{cast}"


def to_sql(
    ast: Filter, resource: str = "User", first_param: int = 1, *, alias: str | None = None
) -> tuple[str, list[SqlParam]]:
    """Translate a parsed filter into a SQL boolean expression over `scim_users`
    (resource "User") or `scim_groups` ("Group").

    Placeholders are numbered from `first_param` (`$n`, each with an explicit cast) and
    their values returned in order; nothing from the filter is written into the SQL.
    Columns are qualified with `alias` ("u" gives `u.user_name`) or, by default, left
    unqualified, for a query whose FROM names only the resource table.

    NULL stands for false in the result (module docstring): use it as a WHERE condition or
    AND it with others, and negate it with `IS NOT TRUE`, never NOT. Raises FilterError
    (invalidFilter) for unknown attributes and for operators or values the attribute's
    type does not allow.
    """
    if first_param < 1:
        raise ValueError("first_param starts at 1")
    if alias is not None and (not re.fullmatch(r"[a-z_][a-z0-9_]*", alias) or alias == _ELEMENT):
        raise ValueError(f"unusable table alias {alias!r}")
    _schemas_of(resource)
    translation = _Translation(resource, first_param)
    sql = _translate(ast, translation, scope=None)
    return _qualify(sql, alias), translation.params


def _qualify(sql: str, alias: str | None) -> str:
    # Only constant templates carry the markers; values are all in parameters.
    return sql.replace("{t}", f"{alias}." if alias else "").replace("{e}", _ELEMENT)


def _translate(node: Filter, tr: _Translation, scope: _Complex | _MultiValued | None) -> str:
    if isinstance(node, And):
        return "(" + " AND ".join(_translate(o, tr, scope) for o in node.operands) + ")"
    if isinstance(node, Or):
        return "(" + " OR ".join(_translate(o, tr, scope) for o in node.operands) + ")"
    if isinstance(node, Not):
        return _negate(_translate(node.operand, tr, scope))
    if isinstance(node, ValuePath):
        if scope is not None:
            raise FilterError("value filters cannot be nested")
        return _value_path(node, tr)
    if scope is not None:
        # Inside brackets names are sub-attributes of the bracketed attribute.
        if node.path.uri is not None or node.path.sub is not None:
            raise FilterError(
                f"inside a value filter, name a sub-attribute alone, not {str(node.path)!r}"
            )
        scalar = scope.subs.get(node.path.attr.lower())
        if scalar is None:
            raise FilterError(f"unknown sub-attribute {node.path.attr!r} in a value filter")
        if isinstance(node, Present):
            return _present(scalar)
        return _compare(scalar, node.op, node.value, str(node.path), tr)

    attribute = _lookup(tr.resource, node.path, "invalidFilter")
    path = node.path
    if isinstance(attribute, _Scalar):
        if path.sub is not None:
            raise FilterError(f"{path.attr!r} has no sub-attributes")
        if isinstance(node, Present):
            return _present(attribute)
        return _compare(attribute, node.op, node.value, str(path), tr)

    if isinstance(attribute, _Complex):
        if path.sub is not None:
            scalar = _sub_of(attribute, path, "invalidFilter")
            if isinstance(node, Present):
                return _present(scalar)
            return _compare(scalar, node.op, node.value, str(path), tr)
        if isinstance(node, Present):
            # A complex attribute is present when any of its sub-attributes is.
            return "(" + " OR ".join(_present(s) for s in attribute.subs.values()) + ")"
        raise FilterError(
            f"{path.attr!r} is a complex attribute: compare one of its sub-attributes"
        )

    # multi-valued
    if isinstance(node, Present):
        if path.sub is None:
            return _exists(attribute, None)
        return _exists(attribute, _present(_sub_of(attribute, path, "invalidFilter")))
    if path.sub is not None:
        scalar = _sub_of(attribute, path, "invalidFilter")
    elif attribute.default is not None:
        scalar = attribute.subs[attribute.default]
    else:
        raise FilterError(
            f"{path.attr!r} has no value sub-attribute: compare one of its sub-attributes"
        )
    label = str(path)
    if node.value is None:
        if node.op == "eq":
            return _negate(_exists(attribute, _present(scalar)))
        if node.op == "ne":
            return _exists(attribute, _present(scalar))
    if node.op == "ne":
        # "No value equals" keeps `ne` the complement of `eq` (module docstring).
        return _negate(_exists(attribute, _compare(scalar, "eq", node.value, label, tr)))
    return _exists(attribute, _compare(scalar, node.op, node.value, label, tr))


def _value_path(node: ValuePath, tr: _Translation) -> str:
    attribute = _lookup(tr.resource, node.path, "invalidFilter")
    if node.path.sub is not None:
        raise FilterError(f"a value filter applies to an attribute, not to {str(node.path)!r}")
    if isinstance(attribute, _Scalar):
        raise FilterError(f"{node.path.attr!r} is not complex: it takes no value filter")
    inner = _translate(node.filter, tr, scope=attribute)
    if isinstance(attribute, _Complex):
        return inner
    return _exists(attribute, inner)


def _negate(sql: str) -> str:
    # Predicates are NULL where an attribute is unassigned, and NULL acts as false through
    # AND, OR, EXISTS and WHERE; only negation must map it to true. `IS NOT TRUE` does, where
    # NOT would keep NULL (and drop the row). Positive comparisons stay bare, so that an
    # index can serve them (a COALESCE around `external_id = $n` hides the index).
    return f"(({sql}) IS NOT TRUE)"


def _exists(attribute: _MultiValued, condition: str | None) -> str:
    conditions = [c for c in (attribute.link, condition) if c]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return f"(EXISTS (SELECT 1 FROM {attribute.source}{where}))"


def _present(scalar: _Scalar) -> str:
    if scalar.kind == "string":
        # An empty string is as unassigned as null (RFC 7643 §2.5).
        return f"({scalar.sql} <> '')"
    return f"({scalar.sql} IS NOT NULL)"


_SQL_ORDERING: Final = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _compare(scalar: _Scalar, op: CompareOp, value: Value, label: str, tr: _Translation) -> str:
    if value is None:
        if op == "eq":
            return _negate(_present(scalar))
        if op == "ne":
            return _present(scalar)
        raise FilterError(f"{op!r} cannot compare {label!r} with null")
    if op == "ne":
        return _negate(_compare(scalar, "eq", value, label, tr))
    if scalar.kind == "boolean":
        return _compare_boolean(scalar, op, value, label, tr)
    if scalar.kind == "datetime":
        return _compare_datetime(scalar, op, value, label, tr)
    return _compare_string(scalar, op, value, label, tr)


def _compare_boolean(
    scalar: _Scalar, op: CompareOp, value: Value, label: str, tr: _Translation
) -> str:
    if op != "eq":
        raise FilterError(f"{op!r} is not defined for the boolean attribute {label!r}")
    if isinstance(value, bool):
        flag = value
    elif isinstance(value, str) and value.lower() in ("true", "false"):
        flag = value.lower() == "true"  # Entra's "True"/"False"
    else:
        raise FilterError(f"{label!r} is boolean: compare it with true or false")
    return f"({scalar.sql} = {tr.param(flag, 'boolean')})"


def _compare_datetime(
    scalar: _Scalar, op: CompareOp, value: Value, label: str, tr: _Translation
) -> str:
    if op in ("co", "sw", "ew"):
        raise FilterError(f"{op!r} is not defined for the dateTime attribute {label!r}")
    if not isinstance(value, str):
        raise FilterError(f"{label!r} is a dateTime: compare it with a quoted timestamp")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(
            f"{value!r} is not a dateTime (xsd:dateTime, e.g. 2011-05-13T04:42:34Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    sql_op = "=" if op == "eq" else _SQL_ORDERING[op]
    return f"({scalar.sql} {sql_op} {tr.param(moment, 'timestamptz')})"


def _like_escape(value: str) -> str:
    # The value is a literal: its %, _ and \ must not act as LIKE wildcards.
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _compare_string(
    scalar: _Scalar, op: CompareOp, value: Value, label: str, tr: _Translation
) -> str:
    if not isinstance(value, str):
        raise FilterError(f"{label!r} is a string: compare it with a quoted string")

    def fold(sql: str) -> str:
        return sql if scalar.case_exact else f"lower({sql})"

    column = fold(scalar.sql)
    if op == "eq":
        return f"({column} = {fold(tr.param(value, 'text'))})"
    if op in ("co", "sw", "ew"):
        escaped = _like_escape(value)
        pattern = {"co": f"%{escaped}%", "sw": f"{escaped}%", "ew": f"%{escaped}"}[op]
        return f"({column} LIKE {fold(tr.param(pattern, 'text'))} ESCAPE '\\')"
    # Code-point order whatever the database's collation: "no specific locale implied".
    parameter = fold(tr.param(value, "text"))
    return f'({column} COLLATE "C" {_SQL_ORDERING[op]} {parameter})'


# ---------------------------------------------------------------- sorting


def sort_sql(
    sort_by: str, sort_order: str | None = None, resource: str = "User", *, alias: str | None = None
) -> str:
    """The ORDER BY key for sortBy/sortOrder (RFC 7644 §3.4.2.3), e.g.
    `lower(user_name) COLLATE "C" ASC NULLS LAST`.

    Strings that are not caseExact sort by lower(); all strings by code point. A
    multi-valued attribute (`emails`, `emails.value`, `emails.type`) sorts by its primary
    value, else its first. Unassigned values (null, "") sort last ascending and first
    descending. The key has no tie-breaker: append the id for stable pages. `alias`
    qualifies columns as in `to_sql`. Raises FilterError with scimType "invalidValue" for
    unknown or complex attributes and for a sortOrder other than ascending/descending
    (any case; None means ascending).
    """
    order = (sort_order or "ascending").strip().lower()
    if order not in ("ascending", "descending"):
        raise FilterError(
            f"sortOrder must be 'ascending' or 'descending', not {sort_order!r}", "invalidValue"
        )
    if alias is not None and (not re.fullmatch(r"[a-z_][a-z0-9_]*", alias) or alias == _ELEMENT):
        raise ValueError(f"unusable table alias {alias!r}")
    text = sort_by.strip()
    if not text or len(text) > 512 or _WORD.fullmatch(text) is None:
        raise FilterError(f"invalid sortBy {sort_by!r}", "invalidValue")
    try:
        path = _parse_path(text, 0)
    except FilterError as exc:
        raise FilterError(exc.message, "invalidValue") from None
    attribute = _lookup(resource, path, "invalidValue")

    if isinstance(attribute, _Scalar):
        if path.sub is not None:
            raise FilterError(f"{path.attr!r} has no sub-attributes", "invalidValue")
        key = _sort_key(attribute)
    elif isinstance(attribute, _Complex):
        if path.sub is None:
            raise FilterError(
                f"cannot sort by the complex attribute {path.attr!r}; name a sub-attribute",
                "invalidValue",
            )
        key = _sort_key(_sub_of(attribute, path, "invalidValue"))
    else:
        if path.sub is not None:
            scalar = _sub_of(attribute, path, "invalidValue")
        elif attribute.default is not None:
            scalar = attribute.subs[attribute.default]
        else:
            raise FilterError(f"cannot sort by {path.attr!r}; name a sub-attribute", "invalidValue")
        link = f" WHERE {attribute.link}" if attribute.link else ""
        key = (
            f"(SELECT {_sort_key(scalar)} FROM {attribute.source}{link} "
            f"ORDER BY {attribute.sort_pick} LIMIT 1)"
        )
    # Postgres puts NULLs last ascending and first descending, as RFC 7644 asks; say so.
    direction = "ASC NULLS LAST" if order == "ascending" else "DESC NULLS FIRST"
    return _qualify(f"{key} {direction}", alias)


def _sort_key(scalar: _Scalar) -> str:
    if scalar.kind != "string":
        return scalar.sql
    folded = scalar.sql if scalar.case_exact else f"lower({scalar.sql})"
    return f"NULLIF({folded}, '') COLLATE \"C\""
