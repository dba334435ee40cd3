"""SCIM 2.0 filters (RFC 7644 §3.4.2.2) and sorting (§3.4.2.3) over the SCIM tables: the
SQL back end of the filter grammar.

`grammar.parse_filter` turns the whole filter grammar into a small AST; `to_sql` turns
the AST into a parameterised SQL predicate over `scim_users` or `scim_groups`; `sort_sql`
turns sortBy/sortOrder into an ORDER BY key. The columns come from schema.py. Values only
ever travel as `$n` parameters: the SQL text is assembled from constant fragments of this
module.

Semantics (the property tests in tests/test_scim_filter.py hold SQL, and the in-memory
matcher of filter_match.py, to one reference evaluator of them):

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
* Strings compare case-insensitively (lower() on both sides; userName and a group's
  displayName through their stored lower() columns, which an index serves under row-level
  security) unless the attribute is caseExact (externalId); gt/ge/lt/le and sorting are
  by code point (COLLATE "C"), the "no specific locale" order of §3.4.2.3. An `eq` on an
  email's value also names the users scim_derived.user_emails finds for it, implied by
  the exact test, for the index. `id` and member/group ids compare
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

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, TypeAlias

from tenantry_provisioning.scim.grammar import (
    And,
    AttrPath,
    Compare,
    CompareOp,
    Filter,
    FilterError,
    Not,
    Or,
    Present,
    Value,
    ValuePath,
    parse_attr_path,
)
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

__all__ = ["SqlParam", "sort_sql", "to_sql"]

SqlParam: TypeAlias = str | bool | datetime  # what to_sql hands to asyncpg


# ---------------------------------------------------------------- schema
#
# SQL templates: "{t}" is the qualifier of the resource table ("u." or ""), "{e}" the alias
# of the element in a multi-valued attribute's sub-select. Elements of jsonb arrays are
# `{e}.v` (with ordinality `{e}.n`).

_ELEMENT: Final = "scim_e"
_RESERVED: Final = frozenset({_ELEMENT, "scim_em"})  # aliases of this module's sub-selects


@dataclass(frozen=True, slots=True)
class _Scalar:
    """A single-valued simple attribute (or sub-attribute) and how SQL reads it."""

    kind: Literal["string", "boolean", "datetime"]
    sql: str
    case_exact: bool = False
    # A stored column holding lower(sql): compared instead of lower(sql), which row-level
    # security keeps from being an index condition (lower() is not leakproof).
    folded: str | None = None


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
    # An indexed condition implied by "some value equals {p}" (a parameter): ANDed to the
    # exact test so that an index finds the candidates (EXISTS over jsonb cannot).
    lookup: str | None = None


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


# Folded twins of case-insensitive columns (migrations/0005_scim_indexable_filters.sql).
_FOLDED: Final = {
    ("User", "user_name"): "user_name_lower",
    ("Group", "display_name"): "display_name_lower",
}

# The users having an email whose value equals the parameter, case-insensitively
# (scim_derived.user_emails, kept by trigger). Row-level security scopes it to the tenant,
# and as an index condition: no tenant parameter is needed here.
_EMAIL_LOOKUP: Final = (
    "{t}id IN (SELECT scim_em.user_id FROM scim_derived.user_emails AS scim_em "
    "WHERE scim_em.value_key = scim_derived.email_key({p}))"
)


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
        lookup=_EMAIL_LOOKUP if sql == "{t}emails" else None,
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
    scalar = _scalar(attribute, column)
    folded = _FOLDED.get((resource_type, attribute.column))
    if folded is not None and scalar.kind == "string" and not scalar.case_exact:
        return _Scalar("string", column, folded=f"{{t}}{folded}")
    return scalar


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
    if alias is not None and (not re.fullmatch(r"[a-z_][a-z0-9_]*", alias) or alias in _RESERVED):
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
    if node.op == "eq":
        return _exists_equal(attribute, scalar, node.value, label, tr)
    return _exists(attribute, _compare(scalar, node.op, node.value, label, tr))


def _exists_equal(
    attribute: _MultiValued, scalar: _Scalar, value: Value, label: str, tr: _Translation
) -> str:
    """Some value equals `value`: the exact test, with the attribute's lookup if the
    compared sub-attribute is the one the lookup indexes."""
    exact = _exists(attribute, _compare(scalar, "eq", value, label, tr))
    return _with_lookup(
        attribute, exact, value if scalar is attribute.subs.get("value") else None, tr
    )


def _with_lookup(attribute: _MultiValued, exact: str, value: Value, tr: _Translation) -> str:
    # Implied by `exact`, so ANDing it changes no result, negated or not.
    if attribute.lookup is None or not isinstance(value, str):
        return exact
    return f"({exact} AND {attribute.lookup.replace('{p}', tr.param(value, 'text'))})"


def _conjuncts(node: Filter) -> list[Filter]:
    if isinstance(node, And):
        return [c for operand in node.operands for c in _conjuncts(operand)]
    return [node]


def _value_equal(node: Filter) -> Value:
    """The value that a value filter's `value eq` asks for, when the filter's every match
    must meet it (it is the filter, or an operand of its top-level `and`s)."""
    for operand in _conjuncts(node):
        if (
            isinstance(operand, Compare)
            and operand.op == "eq"
            and operand.path.uri is None
            and operand.path.sub is None
            and operand.path.attr.lower() == "value"
            and isinstance(operand.value, str)
        ):
            return operand.value
    return None


def _value_path(node: ValuePath, tr: _Translation) -> str:
    attribute = _lookup(tr.resource, node.path, "invalidFilter")
    if node.path.sub is not None:
        raise FilterError(f"a value filter applies to an attribute, not to {str(node.path)!r}")
    if isinstance(attribute, _Scalar):
        raise FilterError(f"{node.path.attr!r} is not complex: it takes no value filter")
    inner = _translate(node.filter, tr, scope=attribute)
    if isinstance(attribute, _Complex):
        return inner
    return _with_lookup(attribute, _exists(attribute, inner), _value_equal(node.filter), tr)


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

    column = scalar.folded or fold(scalar.sql)
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
    if alias is not None and (not re.fullmatch(r"[a-z_][a-z0-9_]*", alias) or alias in _RESERVED):
        raise ValueError(f"unusable table alias {alias!r}")
    text = sort_by.strip()
    try:
        path = parse_attr_path(text) if text and len(text) <= 512 else None
    except FilterError as exc:
        raise FilterError(exc.message, "invalidValue") from None
    if path is None:
        raise FilterError(f"invalid sortBy {sort_by!r}", "invalidValue")
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
