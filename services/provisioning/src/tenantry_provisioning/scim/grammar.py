"""The RFC 7644 filter grammar (§3.4.2.2) and PATCH path grammar (§3.5.2), one syntax tree
for both.

`parse_filter` reads a filter (the `filter` query parameter, or the filter of a PATCH
path's value selection) into the AST below; `parse_patch_path` reads a PATCH path
(`attrPath / valuePath [subAttr]`, e.g. `emails[type eq "work"].value`) into a
`PatchPath` whose value filter is the same AST. Nothing here knows the schema: names are
kept as written and resolved by the back ends (filter_sql.py translates a filter to SQL,
filter_match.py evaluates one on a JSON value).

Two dialects of the same grammar. `QUERY` is the RFC's, strictly. `PATCH_FILTER` is what
clients send in PATCH paths and what the PATCH engine has always read: single-quoted
strings and `not` without parentheses (`not type eq "x"`), and a shallower nesting bound.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, cast

__all__ = [
    "MAX_FILTER_DEPTH",
    "MAX_FILTER_LENGTH",
    "PATCH_FILTER",
    "QUERY",
    "And",
    "AttrPath",
    "Compare",
    "CompareOp",
    "Dialect",
    "Filter",
    "FilterError",
    "Not",
    "Or",
    "PatchPath",
    "Present",
    "Value",
    "ValuePath",
    "parse_attr_path",
    "parse_filter",
    "parse_patch_path",
]

MAX_FILTER_LENGTH: Final = 4096  # characters; IdPs send short filters, this bounds the work
MAX_FILTER_DEPTH: Final = 32  # nested parentheses, `not` and value filters


@dataclass(frozen=True, slots=True)
class Dialect:
    """What a parser accepts beyond the RFC's grammar (module docstring)."""

    max_depth: int = MAX_FILTER_DEPTH
    single_quotes: bool = False  # 'strings' as well as "strings"
    bare_not: bool = False  # `not x eq 1` as well as `not (x eq 1)`
    # Refuse strings Postgres text cannot hold (NUL, lone surrogates): a query binds them.
    postgres_text: bool = True


QUERY: Final = Dialect()

Value: TypeAlias = str | int | float | bool | None  # a JSON compValue
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
    """Index of the quote closing the string that opens at `start` (with its quote)."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == quote:
            return i
        i += 1
    raise FilterError(f"unterminated string starting at position {start}")


def _decode_string(literal: str, pos: int, dialect: Dialect) -> str:
    if literal.startswith("'"):
        # PATCH paths only: a backslash escapes the next character, nothing else.
        return re.sub(r"\\(.)", r"\1", literal[1:-1])
    # A compValue string MUST be a valid JSON string (RFC 7644 §3.4.2.2): let the JSON
    # decoder judge escapes and raw control characters.
    try:
        value = json.loads(literal)
    except json.JSONDecodeError as exc:
        raise FilterError(f"invalid string at position {pos}: {exc.msg}") from None
    assert isinstance(value, str)
    if not dialect.postgres_text:
        return value
    # Postgres text holds neither NUL nor lone surrogates (asyncpg would fail to encode).
    if "\x00" in value:
        raise FilterError(f"string at position {pos} contains a NUL character")
    if any("\ud800" <= c <= "\udfff" for c in value):
        raise FilterError(f"string at position {pos} contains an unpaired surrogate")
    return value


def _tokens(text: str, dialect: Dialect) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in _WHITESPACE:
            i += 1
        elif c in "()[]":
            tokens.append(_Token("punct", c, i))
            i += 1
        elif c == '"' or (c == "'" and dialect.single_quotes):
            end = _string_end(text, i)
            literal = text[i : end + 1]
            tokens.append(_Token("string", literal, i, _decode_string(literal, i, dialect)))
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


def parse_filter(text: str, dialect: Dialect = QUERY) -> Filter:
    """Parse a SCIM filter (RFC 7644 §3.4.2.2, the whole grammar) into an AST.

    Precedence: `not` binds tighter than `and`, which binds tighter than `or`; parentheses
    group; `attr[...]` filters the values of a multi-valued (or complex) attribute.
    Raises FilterError (scimType invalidFilter) for malformed input, input longer than
    MAX_FILTER_LENGTH and nesting deeper than MAX_FILTER_DEPTH. Attribute names are
    checked against the schema by `to_sql`, not here.
    """
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"filter is longer than {MAX_FILTER_LENGTH} characters")
    tokens = _tokens(text, dialect)
    if not tokens:
        raise FilterError("empty filter")
    return _Parser(tokens, dialect).parse()


class _Parser:
    def __init__(self, tokens: list[_Token], dialect: Dialect) -> None:
        self._tokens = tokens
        self._i = 0
        self._dialect = dialect

    def _deeper(self, depth: int) -> int:
        if depth + 1 > self._dialect.max_depth:
            raise FilterError(f"filter is nested deeper than {self._dialect.max_depth} levels")
        return depth + 1

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
        inner = self._or(self._deeper(depth), in_value_filter)
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
            parenthesised = (
                following is not None and following.text == "(" and following.kind == "punct"
            )
            if not parenthesised and self._dialect.bare_not:
                self._i += 1
                return Not(self._unary(self._deeper(depth), in_value_filter))
            if not parenthesised:
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
            self._i += 1
            inner = self._or(self._deeper(depth), in_value_filter=True)
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


def parse_attr_path(text: str) -> AttrPath | None:
    """`[uri:]attr[.sub]` alone (sortBy, attributes): None when `text` is not one word of
    the grammar; FilterError when it is one but not an attribute path."""
    if _WORD.fullmatch(text) is None:
        return None
    return _parse_path(text, 0)


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


# ---------------------------------------------------------------- PATCH paths

# PATCH paths (RFC 7644 §3.5.2) carry client quirks the query grammar refuses.
PATCH_FILTER: Final = Dialect(max_depth=16, single_quotes=True, bare_not=True, postgres_text=False)
_PATH_NAME = re.compile(r"[A-Za-z$][A-Za-z0-9_$\-]*")


@dataclass(frozen=True, slots=True)
class PatchPath:
    """`attr[filter].sub` (the filter and the sub-attribute optional), names as written."""

    attr: str
    filter: Filter | None = None
    sub: str | None = None


def _closing_bracket(text: str, start: int) -> int:
    """Index of the `]` closing the `[` at `start`, skipping quoted strings."""
    quote = ""
    i = start + 1
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'":
            quote = char
        elif char == "]":
            return i
        elif char == "[":
            raise FilterError("nested filters are not supported in a path")
        i += 1
    raise FilterError("unclosed '[' in path", "invalidPath")


def parse_patch_path(text: str, dialect: Dialect = PATCH_FILTER) -> PatchPath:
    """Parse `attrPath / valuePath [subAttr]` once its schema URN prefix is removed (the
    PATCH engine knows the schemas; this does not).

    Raises FilterError with scimType "invalidPath" for a malformed path and "invalidFilter"
    for a malformed value filter.
    """
    match = _PATH_NAME.match(text)
    if match is None:
        raise FilterError(f"malformed path {text!r}", "invalidPath")
    name, pos = match.group(), match.end()
    value_filter: Filter | None = None
    if pos < len(text) and text[pos] == "[":
        close = _closing_bracket(text, pos)
        value_filter = parse_filter(text[pos + 1 : close], dialect)
        pos = close + 1
    sub: str | None = None
    if pos < len(text) and text[pos] == ".":
        sub_match = _PATH_NAME.match(text, pos + 1)
        if sub_match is None:
            raise FilterError(f"malformed path {text!r}", "invalidPath")
        sub, pos = sub_match.group(), sub_match.end()
    if pos != len(text):
        raise FilterError(f"malformed path {text!r}", "invalidPath")
    return PatchPath(name, value_filter, sub)
