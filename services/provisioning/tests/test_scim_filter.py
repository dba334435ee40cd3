"""SCIM filters (RFC 7644 §3.4.2.2) and sorting (§3.4.2.3): the parser, the SQL it becomes,
and, on a scratch database, that the SQL selects exactly what a plain-Python reference
evaluator of the same semantics (tenantry_provisioning.scim.filter_sql's docstring) selects."""

from __future__ import annotations

import string
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantry_events.pg import Database
from tenantry_provisioning.scim.filter_match import bind
from tenantry_provisioning.scim.filter_sql import sort_sql, to_sql
from tenantry_provisioning.scim.grammar import (
    MAX_FILTER_DEPTH,
    MAX_FILTER_LENGTH,
    And,
    AttrPath,
    Compare,
    Filter,
    FilterError,
    Not,
    Or,
    Present,
    ValuePath,
    parse_filter,
)
from tenantry_provisioning.scim.schema import USER_SCHEMA

CORE = "urn:ietf:params:scim:schemas:core:2.0:User"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
TENANT = UUID("7e000000-0000-4000-8000-000000000001")

# The filter examples of RFC 7644 §3.4.2.2, all of them.
RFC_EXAMPLES = [
    'userName eq "bjensen"',
    'name.familyName co "O\'Malley"',
    'userName sw "J"',
    'urn:ietf:params:scim:schemas:core:2.0:User:userName sw "J"',
    "title pr",
    'meta.lastModified gt "2011-05-13T04:42:34Z"',
    'meta.lastModified ge "2011-05-13T04:42:34Z"',
    'meta.lastModified lt "2011-05-13T04:42:34Z"',
    'meta.lastModified le "2011-05-13T04:42:34Z"',
    'title pr and userType eq "Employee"',
    'title pr or userType eq "Intern"',
    'schemas eq "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"',
    'userType eq "Employee" and (emails co "example.com" or emails.value co "example.org")',
    'userType ne "Employee" and not (emails co "example.com" or emails.value co "example.org")',
    'userType eq "Employee" and (emails.type eq "work")',
    'userType eq "Employee" and emails[type eq "work" and value co "@example.com"]',
    'emails[type eq "work" and value co "@example.com"] '
    'or ims[type eq "xmpp" and value co "@foo.com"]',
]


def p(attr: str, sub: str | None = None, uri: str | None = None) -> AttrPath:
    return AttrPath(attr, sub, uri)


# ---------------------------------------------------------------- parser


@pytest.mark.parametrize("op", ["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"])
@pytest.mark.parametrize("spelling", [str.lower, str.upper, str.capitalize])
def test_every_comparison_operator_in_any_case(op: str, spelling: Callable[[str], str]) -> None:
    assert parse_filter(f'title {spelling(op)} "x"') == Compare(p("title"), op, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["title pr", "title PR", "title Pr"])
def test_present(text: str) -> None:
    assert parse_filter(text) == Present(p("title"))


def test_precedence_not_over_and_over_or() -> None:
    a, b, c = Present(p("a")), Present(p("b")), Present(p("c"))
    assert parse_filter("a pr or b pr and c pr") == Or((a, And((b, c))))
    assert parse_filter("a pr and b pr or c pr") == Or((And((a, b)), c))
    assert parse_filter("not (a pr) and b pr") == And((Not(a), b))
    assert parse_filter("a pr or not (b pr) and c pr") == Or((a, And((Not(b), c))))
    assert parse_filter("a pr and b pr and c pr") == And((a, b, c))
    assert parse_filter("a pr or b pr or c pr") == Or((a, b, c))


def test_parentheses_group() -> None:
    a, b, c = Present(p("a")), Present(p("b")), Present(p("c"))
    assert parse_filter("(a pr or b pr) and c pr") == And((Or((a, b)), c))
    assert parse_filter("a pr and (b pr or c pr)") == And((a, Or((b, c))))
    assert parse_filter("((a pr))") == a
    assert parse_filter("not(a pr)") == Not(a)
    assert parse_filter("NOT ((a pr) OR b pr) AND c pr") == And((Not(Or((a, b))), c))


def test_value_paths_with_logic_inside() -> None:
    assert parse_filter('emails[type eq "work" and value co "@x"]') == ValuePath(
        p("emails"), And((Compare(p("type"), "eq", "work"), Compare(p("value"), "co", "@x")))
    )
    nested = parse_filter('emails[not (type eq "work") or (primary eq true and value pr)]')
    assert nested == ValuePath(
        p("emails"),
        Or(
            (
                Not(Compare(p("type"), "eq", "work")),
                And((Compare(p("primary"), "eq", True), Present(p("value")))),
            )
        ),
    )
    assert parse_filter('emails.value eq "x"') == Compare(p("emails", "value"), "eq", "x")


def test_schema_qualified_names() -> None:
    assert parse_filter(f'{CORE}:userName sw "J"') == Compare(p("userName", uri=CORE), "sw", "J")
    assert parse_filter(f'{ENTERPRISE}:employeeNumber eq "7"') == Compare(
        p("employeeNumber", uri=ENTERPRISE), "eq", "7"
    )
    assert parse_filter(f'{ENTERPRISE}:manager.value eq "m"') == Compare(
        p("manager", "value", ENTERPRISE), "eq", "m"
    )
    assert parse_filter(f'{ENTERPRISE}:manager[value eq "m"]') == ValuePath(
        p("manager", uri=ENTERPRISE), Compare(p("value"), "eq", "m")
    )


def test_names_operators_and_literals_are_case_insensitive() -> None:
    reference = to_sql(parse_filter('userName eq "john" and active eq true'))
    for text in [
        'USERNAME Eq "john" AND Active EQ TRUE',
        'username eQ "john" and ACTIVE eq True',
        'urn:ietf:params:scim:schemas:core:2.0:user:USERNAME eq "john" and active eq true',
    ]:
        assert to_sql(parse_filter(text)) == reference
    assert to_sql(parse_filter('EMAILS[TYPE eq "w"]')) == to_sql(
        parse_filter('emails[type eq "w"]')
    )
    assert parse_filter("title eq NULL") == Compare(p("title"), "eq", None)
    assert parse_filter("active eq FALSE") == Compare(p("active"), "eq", False)


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r'"a\"b"', 'a"b'),
        (r'"back\\slash"', "back\\slash"),
        (r'"\/\b\f\n\r\t"', "/\b\f\n\r\t"),
        (r'"caf\u00e9"', "café"),
        (r'"\ud83d\ude00"', "\U0001f600"),
        ('"O\'Malley"', "O'Malley"),
        ('"ünïcødé"', "ünïcødé"),
        ('"()[] and or not"', "()[] and or not"),
        ('""', ""),
        ("true", True),
        ("false", False),
        ("null", None),
        ("0", 0),
        ("-12", -12),
        ("3.25", 3.25),
        ("1e3", 1000.0),
        ("-2.5E-2", -0.025),
    ],
)
def test_json_values(literal: str, value: object) -> None:
    parsed = parse_filter(f"x eq {literal}")
    assert isinstance(parsed, Compare)
    assert parsed.value == value
    assert type(parsed.value) is type(value)


@pytest.mark.parametrize("text", RFC_EXAMPLES)
def test_rfc_examples_parse_and_print_back(text: str) -> None:
    ast = parse_filter(text)
    # Printing drops redundant parentheses only.
    assert str(ast) == text.replace('and (emails.type eq "work")', 'and emails.type eq "work"')
    assert parse_filter(str(ast)) == ast
    to_sql(ast, "User")  # every example names attributes we serve


def test_rfc_example_trees() -> None:
    assert parse_filter(RFC_EXAMPLES[13]) == And(
        (
            Compare(p("userType"), "ne", "Employee"),
            Not(
                Or(
                    (
                        Compare(p("emails"), "co", "example.com"),
                        Compare(p("emails", "value"), "co", "example.org"),
                    )
                )
            ),
        )
    )
    assert parse_filter(RFC_EXAMPLES[16]) == Or(
        (
            ValuePath(
                p("emails"),
                And((Compare(p("type"), "eq", "work"), Compare(p("value"), "co", "@example.com"))),
            ),
            ValuePath(
                p("ims"),
                And((Compare(p("type"), "eq", "xmpp"), Compare(p("value"), "co", "@foo.com"))),
            ),
        )
    )


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty filter"),
        ("   ", "empty filter"),
        ('(userName eq "a"', "expected ')'"),
        ('userName eq "a")', "unexpected ')'"),
        ('((userName eq "a")', "expected ')'"),
        ('emails[type eq "a"', "expected ']'"),
        ('emails[type eq "a"))', "expected ']'"),
        ('userName like "a"', "unknown operator 'like'"),
        ('userName == "a"', "unexpected character '='"),
        ("userName eq", "missing value after 'eq'"),
        ("userName", "expected an operator after 'userName'"),
        ("userName eq bjensen", "strings must be in double quotes"),
        ('userName eq "a" and', "expected an expression"),
        ('and userName eq "a"', "unknown operator"),
        ('userName eq "a" userName eq "b"', "unexpected 'userName'"),
        ('userName eq "bad \\q escape"', "invalid string"),
        ('userName eq "\\u12"', "invalid string"),
        ('userName eq "open', "unterminated string"),
        ('userName eq "tab\there"', "invalid string"),
        ('userName eq "\\u0000"', "NUL"),
        ('userName eq "\\ud800"', "unpaired surrogate"),
        ("userName eq 12abc", "invalid number"),
        ("userName eq 01", "invalid number"),
        ('not userName eq "a"', "must be followed by a parenthesised filter"),
        ('emails[type eq "w"].value eq "x"', "only valid in PATCH paths"),
        ('emails[value eq "x" and ims[value eq "y"]]', "cannot be nested"),
        ('emails.value[type eq "w"]', "not to the sub-attribute"),
        ('user.name.first eq "x"', "invalid attribute path"),
        ('user:name eq "x"', "invalid attribute path"),
        ('userName eq "a" ; drop', "unexpected character ';'"),
        ("title pr pr", "unexpected 'pr'"),
    ],
)
def test_malformed_filters(text: str, message: str) -> None:
    with pytest.raises(FilterError) as raised:
        parse_filter(text)
    assert message in raised.value.message
    assert raised.value.scim_type == "invalidFilter"
    assert str(raised.value) == raised.value.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('nosuch eq "x"', "unknown attribute 'nosuch' for User"),
        ('name.nosuch eq "x"', "unknown sub-attribute 'name.nosuch'"),
        ('emails.nosuch eq "x"', "unknown sub-attribute"),
        ('emails[nosuch eq "x"]', "unknown sub-attribute 'nosuch'"),
        ('emails[emails.value eq "x"]', "name a sub-attribute alone"),
        ('urn:example:custom:Thing:x eq "y"', "unknown schema 'urn:example:custom:Thing'"),
        (f'{GROUP}:displayName eq "x"', "unknown schema"),
        ('userName.value eq "x"', "has no sub-attributes"),
        ('name eq "x"', "complex attribute"),
        ('addresses eq "x"', "no value sub-attribute"),
        ('userName[value eq "x"]', "takes no value filter"),
        ("active gt true", "not defined for the boolean attribute 'active'"),
        ("emails.primary co true", "not defined for the boolean attribute"),
        ('active eq "yes"', "compare it with true or false"),
        ("active eq 1", "compare it with true or false"),
        ('meta.created co "2020"', "not defined for the dateTime"),
        ('meta.created gt "yesterday"', "is not a dateTime"),
        ("meta.created gt 5", "quoted timestamp"),
        ("userName eq 5", "compare it with a quoted string"),
        ("userName eq true", "compare it with a quoted string"),
        ("userName gt null", "cannot compare 'userName' with null"),
        ("emails co null", "cannot compare"),
        ('schemas.value eq "x"', "has no sub-attributes"),
    ],
)
def test_filters_the_schema_rejects(text: str, message: str) -> None:
    ast = parse_filter(text)
    with pytest.raises(FilterError) as raised:
        to_sql(ast, "User")
    assert message in raised.value.message
    assert raised.value.scim_type == "invalidFilter"


def test_group_attributes_are_not_user_attributes() -> None:
    with pytest.raises(FilterError, match="unknown attribute 'userName' for Group"):
        to_sql(parse_filter('userName eq "x"'), "Group")
    with pytest.raises(FilterError, match="unknown attribute 'members' for User"):
        to_sql(parse_filter('members eq "x"'), "User")


def test_too_long() -> None:
    value = "x" * (MAX_FILTER_LENGTH - len('userName eq ""'))
    parse_filter(f'userName eq "{value}"')
    with pytest.raises(FilterError, match="longer than 4096"):
        parse_filter(f'userName eq "{value}x"')


def test_too_deep() -> None:
    deep = "(" * MAX_FILTER_DEPTH + "title pr" + ")" * MAX_FILTER_DEPTH
    assert parse_filter(deep) == Present(p("title"))
    with pytest.raises(FilterError, match="nested deeper than 32"):
        parse_filter("(" + deep + ")")
    nots = "not (" * MAX_FILTER_DEPTH + "title pr" + ")" * MAX_FILTER_DEPTH
    parse_filter(nots)
    with pytest.raises(FilterError, match="nested deeper"):
        parse_filter("not (" + nots + ")")
    # A long flat chain is not deep: it stays a single n-ary node.
    chain = " and ".join(["title pr"] * 300)
    assert isinstance(parse_filter(chain), And)
    to_sql(parse_filter(chain))


# ---------------------------------------------------------------- SQL text


def test_values_travel_as_parameters_only() -> None:
    evil = "x'); DROP TABLE scim_users; --"
    sql, params = to_sql(parse_filter(f'userName eq "{evil}" or title co "{evil}"'), first_param=3)
    assert "DROP" not in sql
    assert "x'" not in sql
    assert params == [evil, "%x'); DROP TABLE scim\\_users; --%"]
    assert "$3::text" in sql
    assert "$4::text" in sql
    assert "$5" not in sql


def test_like_metacharacters_are_escaped() -> None:
    _, params = to_sql(parse_filter(r'title co "50%_off\\"'))
    assert params == ["%50\\%\\_off\\\\%"]
    _, params = to_sql(parse_filter('title sw "a_"'))
    assert params == ["a\\_%"]
    _, params = to_sql(parse_filter('title ew "%"'))
    assert params == ["%\\%"]


def test_case_exact_attributes_are_not_lowered() -> None:
    sql, _ = to_sql(parse_filter('externalId eq "AbC"'))
    assert "lower" not in sql
    sql, _ = to_sql(parse_filter('userName eq "AbC"'))
    # The stored lower(user_name) column (an index condition under row-level security).
    assert "user_name_lower = lower($1::text)" in sql


def test_positive_comparisons_stay_indexable() -> None:
    # No COALESCE or IS TRUE around a comparison: the planner could not use
    # scim_users_external_id for it. Negations carry the NULL handling instead.
    assert to_sql(parse_filter('externalId eq "x"')) == ("(external_id = $1::text)", ["x"])
    assert to_sql(parse_filter('not (externalId eq "x")'))[0] == (
        "(((external_id = $1::text)) IS NOT TRUE)"
    )


def test_typed_parameters() -> None:
    _, params = to_sql(parse_filter('active eq "True" and emails[primary eq "false"]'))
    assert params == [True, False]
    _, params = to_sql(parse_filter('meta.created ge "2020-01-02T03:04:05+02:00"'))
    assert params == [datetime(2020, 1, 2, 1, 4, 5, tzinfo=UTC)]
    _, params = to_sql(parse_filter('meta.created ge "2020-01-02T03:04:05"'))
    assert params == [datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)]  # no offset: UTC


def test_alias_qualifies_columns() -> None:
    sql, _ = to_sql(parse_filter('userName eq "a" and emails pr'), alias="u")
    assert "u.user_name_lower" in sql
    assert "u.emails" in sql
    assert sort_sql("userName", None, "User", alias="u").startswith("NULLIF(lower(u.user_name)")
    with pytest.raises(ValueError, match="alias"):
        to_sql(parse_filter("title pr"), alias="u; drop")
    with pytest.raises(ValueError, match="resource"):
        to_sql(parse_filter("title pr"), "Robot")


def test_sort_keys() -> None:
    assert sort_sql("userName", "ascending", "User") == (
        "NULLIF(lower(user_name), '') COLLATE \"C\" ASC NULLS LAST"
    )
    assert sort_sql("externalId", "DESCENDING", "User") == (
        "NULLIF(external_id, '') COLLATE \"C\" DESC NULLS FIRST"
    )
    assert sort_sql("meta.created", None, "Group") == "created_at ASC NULLS LAST"
    assert sort_sql(f"{CORE}:name.familyName", None, "User").startswith("NULLIF(lower(name_family)")
    assert "ORDER BY" in sort_sql("emails", None, "User")  # primary, else first


@pytest.mark.parametrize(
    ("sort_by", "sort_order", "message"),
    [
        ("nosuch", None, "unknown attribute"),
        ("name", None, "complex attribute"),
        ("addresses", None, "name a sub-attribute"),
        ("userName", "up", "sortOrder must be"),
        ("userName eq", None, "invalid sortBy"),
        ("", None, "invalid sortBy"),
        ("members", None, "unknown attribute"),
        ("urn:x:y:userName", None, "unknown schema"),
    ],
)
def test_sort_errors(sort_by: str, sort_order: str | None, message: str) -> None:
    with pytest.raises(FilterError) as raised:
        sort_sql(sort_by, sort_order, "User")
    assert message in raised.value.message
    assert raised.value.scim_type == "invalidValue"


# ---------------------------------------------------------------- the reference evaluator
#
# Written from the semantics in the filter module's docstring, on SCIM JSON (dicts), with
# its own little schema table: what is boolean, what is a dateTime, what is caseExact.


def get(obj: Any, key: str) -> Any:
    if not isinstance(obj, dict):
        return None
    return next((v for k, v in obj.items() if k.lower() == key.lower()), None)


def present(value: Any) -> bool:
    return value is not None and value != ""


def fold(value: str, case_exact: bool) -> str:
    return value if case_exact else value.lower()


def as_datetime(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def matches(actual: Any, op: str, value: Any, kind: str, case_exact: bool) -> bool:
    """One assigned-or-not value against a positive operator (not ne, not null)."""
    if actual is None:
        return False
    if kind == "boolean":
        flag = value if isinstance(value, bool) else value.lower() == "true"
        return bool(actual is flag)
    if kind == "datetime":
        moment = as_datetime(value)
        ordered: dict[str, bool] = {
            "eq": actual == moment,
            "gt": actual > moment,
            "ge": actual >= moment,
            "lt": actual < moment,
            "le": actual <= moment,
        }
        return ordered[op]
    a, v = fold(actual, case_exact), fold(value, case_exact)
    outcome: dict[str, bool] = {
        "eq": a == v,
        "co": v in a,
        "sw": a.startswith(v),
        "ew": a.endswith(v),
        "gt": a > v,
        "ge": a >= v,
        "lt": a < v,
        "le": a <= v,
    }
    return outcome[op]


def kind_of(attr: str, sub: str | None) -> tuple[str, bool]:
    name = (sub or attr).lower()
    if name in ("active", "primary"):
        return "boolean", False
    if attr.lower() == "meta":
        return "datetime", False
    return "string", attr.lower() == "externalid"


def values_of(user: dict[str, Any], path: AttrPath) -> tuple[list[Any], bool]:
    """The values a path designates, and whether the attribute is multi-valued."""
    attr = path.attr.lower()
    enterprise = get(user, ENTERPRISE) or {}
    if attr == "schemas":
        return [CORE, *([ENTERPRISE] if enterprise else [])], True
    if attr == "emails":
        emails = get(user, "emails") or []
        return [get(e, path.sub or "value") for e in emails], True
    if attr in ("employeenumber", "manager"):
        if attr == "manager":
            manager = get(enterprise, "manager")
            return [manager if isinstance(manager, str) else get(manager, "value")], False
        return [get(enterprise, attr)], False
    container = get(user, attr) if path.sub else user
    return [get(container, path.sub or attr)], False


def reference(f: Filter, user: dict[str, Any], element: dict[str, Any] | None = None) -> bool:
    if isinstance(f, And):
        return all(reference(o, user, element) for o in f.operands)
    if isinstance(f, Or):
        return any(reference(o, user, element) for o in f.operands)
    if isinstance(f, Not):
        return not reference(f.operand, user, element)
    if isinstance(f, ValuePath):  # emails[...]
        return any(reference(f.filter, user, e) for e in get(user, f.path.attr) or [])
    path = f.path
    if element is not None:
        values, multi = [get(element, path.attr)], False
        kind, case_exact = kind_of(path.attr, None)
    else:
        values, multi = values_of(user, path)
        kind, case_exact = kind_of(path.attr, path.sub)
    if isinstance(f, Present):
        attr = path.attr.lower()
        if element is None and path.sub is None and attr == "emails":
            return bool(get(user, "emails"))
        if element is None and path.sub is None and attr == "name":
            return any(present(v) for v in (get(user, "name") or {}).values())
        return any(present(v) for v in values)
    if f.value is None:
        return (not any(present(v) for v in values)) if f.op == "eq" else any(map(present, values))
    if f.op == "ne":
        return not any(matches(v, "eq", f.value, kind, case_exact) for v in values)
    assert multi or len(values) == 1
    return any(matches(v, f.op, f.value, kind, case_exact) for v in values)


# ---------------------------------------------------------------- the database


@asynccontextmanager
async def rolled_back(db: Database) -> AsyncIterator[asyncpg.Connection]:
    """A tenant-scoped transaction that leaves nothing behind (ids can repeat)."""
    async with db.pool.acquire() as proxy:
        conn: asyncpg.Connection = proxy  # type: ignore[assignment]  # the proxy forwards
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(TENANT))
            yield conn
        finally:
            await transaction.rollback()


async def insert_users(conn: asyncpg.Connection, users: list[dict[str, Any]]) -> None:
    def name(user: dict[str, Any]) -> dict[str, Any]:
        return get(user, "name") or {}

    rows = [
        (
            UUID(u["id"]),
            TENANT,
            u["userName"],
            u.get("externalId"),
            u.get("displayName"),
            u.get("title"),
            u.get("userType"),
            u.get("active", True),
            name(u).get("givenName"),
            name(u).get("familyName"),
            u.get("emails", []),
            u.get(ENTERPRISE, {}),
            {k: u[k] for k in ("ims",) if k in u},
            u["meta"]["created"],
            u["meta"]["lastModified"],
        )
        for u in users
    ]
    await conn.executemany(
        """INSERT INTO scim_users (id, tenant_id, user_name, external_id, display_name, title,
               user_type, active, name_given, name_family, emails, enterprise, extra,
               created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)""",
        rows,
    )


async def select_users(
    conn: asyncpg.Connection, text: str, *, alias: str | None = None
) -> set[str]:
    sql, params = to_sql(parse_filter(text), "User", first_param=2, alias=alias)
    query = (
        f"SELECT id FROM scim_users WHERE tenant_id = $1 AND ({sql})"
        if alias is None
        else f"SELECT {alias}.id FROM scim_users {alias} WHERE {alias}.tenant_id = $1 AND ({sql})"
    )
    return {str(r["id"]) for r in await conn.fetch(query, TENANT, *params)}


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012x}"


STAMP = datetime(2011, 5, 13, 4, 42, 34, tzinfo=UTC)
BJENSEN: dict[str, Any] = {
    "id": uid(1),
    "userName": "bjensen",
    "name": {"familyName": "Jensen", "givenName": "Barbara"},
    "title": "Tour Guide",
    "userType": "Employee",
    "emails": [{"value": "bjensen@example.com", "type": "work", "primary": True}],
    ENTERPRISE: {"employeeNumber": "701984", "manager": {"value": uid(4)}},
    "meta": {"created": STAMP, "lastModified": STAMP},
}
JSMITH: dict[str, Any] = {
    "id": uid(2),
    "userName": "jsmith",
    "name": {"familyName": "O'Malley"},
    "userType": "Intern",
    "emails": [{"value": "js@example.org", "type": "home"}],
    "ims": [{"value": "js@foo.com", "type": "xmpp"}],
    "active": False,
    ENTERPRISE: {"manager": uid(1)},  # Entra PATCHes the manager as a bare id
    "meta": {"created": STAMP, "lastModified": datetime(2012, 1, 1, tzinfo=UTC)},
}
JDOE: dict[str, Any] = {
    "id": uid(3),
    "userName": "Jdoe",
    "title": "",
    "userType": "Employee",
    "emails": [
        {"value": "jd@EXAMPLE.com", "type": "home"},
        {"value": "jd@corp.org", "type": "work", "primary": True},
    ],
    "meta": {"created": STAMP, "lastModified": datetime(2010, 1, 1, tzinfo=UTC)},
}
ALICE: dict[str, Any] = {
    "id": uid(4),
    "userName": "alice",
    "externalId": "Ext-1",
    "emails": [],
    "meta": {"created": STAMP, "lastModified": STAMP + timedelta(microseconds=1)},
}
FIXED_USERS = [BJENSEN, JSMITH, JDOE, ALICE]

RFC_EXPECTED = [
    {uid(1)},
    {uid(2)},
    {uid(2), uid(3)},
    {uid(2), uid(3)},
    {uid(1)},  # Jdoe's title is "", which is not present
    {uid(2), uid(4)},
    {uid(1), uid(2), uid(4)},
    {uid(3)},
    {uid(1), uid(3)},
    {uid(1)},
    {uid(1), uid(2)},
    {uid(1), uid(2)},  # both have enterprise attributes
    {uid(1), uid(3)},
    {uid(4)},
    {uid(1), uid(3)},
    {uid(1)},  # Jdoe's work email is not @example.com: one email must meet both
    {uid(1), uid(2)},
]


async def test_rfc_examples_select_what_they_should(directory: Database) -> None:
    async with rolled_back(directory) as conn:
        await insert_users(conn, FIXED_USERS)
        for text, expected in zip(RFC_EXAMPLES, RFC_EXPECTED, strict=True):
            assert await select_users(conn, text) == expected, text
            assert await select_users(conn, text, alias="u") == expected, text
            assert {u["id"] for u in FIXED_USERS if reference(parse_filter(text), u)} == expected
            # The API's shape: the table aliased in FROM, the filter's columns unqualified.
            sql, params = to_sql(parse_filter(text), "User", first_param=2)
            rows = await conn.fetch(
                f"SELECT u.id FROM scim_users u WHERE u.tenant_id = $1 AND ({sql})",
                TENANT,
                *params,
            )
            assert {str(r["id"]) for r in rows} == expected, text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('emails.value ew "EXAMPLE.COM"', {1, 3}),
        ('emails[primary eq true and value sw "jd"]', {3}),
        ("emails[primary eq false]", set()),  # unassigned is not false
        ("emails[not (primary eq true)]", {2, 3}),
        ('emails.type ne "work"', {2, 4}),
        ('emails[type ne "work"]', {2, 3}),
        ("emails pr", {1, 2, 3}),
        ("not (emails pr)", {4}),
        ("emails eq null", {4}),
        ("title eq null", {2, 3, 4}),
        ("title ne null", {1}),
        ('title ne "Tour Guide"', {2, 3, 4}),
        ('title eq ""', {3}),
        ('externalId eq "ext-1"', set()),
        ('externalId eq "Ext-1"', {4}),
        ('externalId sw "Ext"', {4}),
        ('externalId ne "Ext-1"', {1, 2, 3}),
        ('active eq "False"', {2}),
        ("active ne true", {2}),
        ('employeeNumber eq "701984"', {1}),
        (f'{ENTERPRISE}:manager.value eq "{uid(1).upper()}"', {2}),
        (f'{ENTERPRISE}:manager[value eq "{uid(4)}"]', {1}),
        (f"{ENTERPRISE}:manager pr", {1, 2}),
        ("name pr", {1, 2}),
        ('name[givenName eq "barbara" or familyName co "\'"]', {1, 2}),
        (f'id eq "{uid(3).upper()}"', {3}),
        ('schemas eq "urn:ietf:params:scim:schemas:core:2.0:User"', {1, 2, 3, 4}),
        ('meta.resourceType eq "User"', {1, 2, 3, 4}),
        ('meta.created eq "2011-05-13T06:42:34+02:00"', {1, 2, 3, 4}),
        ('meta.lastModified gt "2011-05-13T04:42:34.000000Z"', {2, 4}),
        ('ims.value co "@foo"', {2}),
        ("phoneNumbers pr or addresses pr or roles pr", set()),
        ('addresses[locality eq "x"] or photos.value eq "x" or x509Certificates pr', set()),
        ('userName gt "alice" and userName lt "jsmith"', {1, 3}),
        ('userName ge "JDOE"', {2, 3}),
        ('title co "%" or title co "_" or userName sw "\\\\"', set()),
    ],
)
async def test_user_filters_on_fixed_data(
    directory: Database, text: str, expected: set[int]
) -> None:
    async with rolled_back(directory) as conn:
        await insert_users(conn, FIXED_USERS)
        want = {uid(n) for n in expected}
        assert await select_users(conn, text) == want
        assert await select_users(conn, text, alias="u") == want


async def test_group_filters(directory: Database) -> None:
    engineering, sales, empty = UUID(uid(101)), UUID(uid(102)), UUID(uid(103))
    async with rolled_back(directory) as conn:
        await insert_users(conn, FIXED_USERS)
        await conn.executemany(
            """INSERT INTO scim_groups (id, tenant_id, display_name, external_id)
               VALUES ($1, $2, $3, $4)""",
            [
                (engineering, TENANT, "Engineering", "E-1"),
                (sales, TENANT, "Sales_Team", None),
                (empty, TENANT, "Empty", None),
            ],
        )
        await conn.executemany(
            "INSERT INTO scim_group_members (group_id, member_id, tenant_id) VALUES ($1, $2, $3)",
            [
                (engineering, UUID(uid(1)), TENANT),
                (engineering, UUID(uid(3)), TENANT),
                (sales, UUID(uid(2)), TENANT),
            ],
        )

        async def groups(text: str, alias: str | None = None) -> set[UUID]:
            sql, params = to_sql(parse_filter(text), "Group", first_param=2, alias=alias)
            table = f"scim_groups {alias}" if alias else "scim_groups"
            rows = await conn.fetch(
                f"SELECT id FROM {table} WHERE ({sql}) AND $1::uuid IS NOT NULL", TENANT, *params
            )
            return {r["id"] for r in rows}

        assert await groups(f'members eq "{uid(1)}"') == {engineering}
        assert await groups(f'members[value eq "{uid(2).upper()}"]', alias="g") == {sales}
        assert await groups("members pr") == {engineering, sales}
        assert await groups("not (members pr)", alias="g") == {empty}
        assert await groups(f'members.value ne "{uid(1)}"') == {sales, empty}
        assert await groups('members.display eq "jdoe"') == {
            engineering
        }  # no displayName: userName
        assert await groups('members.type eq "user"') == {engineering, sales}
        assert await groups('displayName sw "sales_"') == {sales}
        assert await groups('displayName sw "sales%"') == set()
        assert await groups('externalId eq "E-1" or externalId eq "e-1"') == {engineering}
        assert await groups(f'schemas eq "{GROUP}" and meta.resourceType eq "Group"') == {
            engineering,
            sales,
            empty,
        }
        assert await groups('meta.created gt "2000-01-01T00:00:00Z"') == {engineering, sales, empty}
        assert await groups(f'id eq "{engineering}"') == {engineering}
        assert await select_users(conn, f'groups eq "{engineering}"') == {uid(1), uid(3)}
        assert await select_users(conn, 'groups.display eq "sales_team"', alias="u") == {uid(2)}
        assert await select_users(conn, "not (groups pr)") == {uid(4)}

        order = sort_sql("displayName", "descending", "Group", alias="g")
        rows = await conn.fetch(f"SELECT g.id FROM scim_groups g ORDER BY {order}, g.id")
        assert [r["id"] for r in rows] == [sales, engineering, empty]
        order = sort_sql("members", None, "Group")
        rows = await conn.fetch(f"SELECT id FROM scim_groups ORDER BY {order}, id")
        assert [r["id"] for r in rows] == [engineering, sales, empty]


async def test_sorting_fixed_data(directory: Database) -> None:
    async with rolled_back(directory) as conn:
        await insert_users(conn, FIXED_USERS)

        async def ids(sort_by: str, order: str | None = None) -> list[int]:
            key = sort_sql(sort_by, order, "User")
            rows = await conn.fetch(
                f"SELECT id FROM scim_users WHERE tenant_id = $1 ORDER BY {key}, id", TENANT
            )
            return [int(str(r["id"])[-12:], 16) for r in rows]

        assert await ids("userName") == [4, 1, 3, 2]  # alice, bjensen, Jdoe, jsmith
        assert await ids("USERNAME", "descending") == [2, 3, 1, 4]
        assert await ids("title") == [1, 2, 3, 4]  # "" sorts as unassigned: last
        assert await ids("title", "descending") == [2, 3, 4, 1]  # unassigned first
        # primary email, else the first: bjensen@, js@, jd@corp (primary), none
        assert await ids("emails") == [1, 3, 2, 4]
        assert await ids("emails.type", "descending") == [4, 1, 3, 2]
        assert await ids("meta.lastModified") == [3, 1, 4, 2]
        assert await ids(f"{ENTERPRISE}:employeeNumber") == [1, 2, 3, 4]
        assert await ids("active") == [2, 1, 3, 4]


# ---------------------------------------------------------------- property: SQL == reference

USER_IDS = [uid(n) for n in range(1, 7)]
STAMPS = [
    datetime(2024, 1, 1, tzinfo=UTC),
    datetime(2024, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2024, 6, 1, 12, 30, tzinfo=UTC),
]
# Few distinct strings, so that filters hit; LIKE metacharacters, quotes, case pairs.
WORDS = st.one_of(
    st.sampled_from(
        ["", "a", "A", "ab", "aB", "axb", "a%b", "a_b", "A\\b", "%", "_", "\\", "é", "É", "o'm"]
    ),
    st.text(alphabet="aAbB%_\\'é. @", max_size=4),
)
# LIKE wildcards and the escape character, where an unescaped pattern would over-match.
META_WORDS = st.sampled_from(["%", "_", "\\", "a%", "%b", "a_b", "a%b", "_b", "A\\", "\\b", "é_"])
MAYBE_WORD = st.one_of(st.none(), WORDS)
TYPES = st.sampled_from([None, "work", "Work", "home", ""])


@st.composite
def emails(draw: st.DrawFn) -> dict[str, Any]:
    email: dict[str, Any] = {}
    for key, values in (
        ("value", MAYBE_WORD),
        ("type", TYPES),
        ("primary", st.sampled_from([None, True, False])),
    ):
        if draw(st.booleans()):  # missing and JSON null must behave alike
            email[key] = draw(values)
    return email


@st.composite
def users(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(min_value=1, max_value=len(USER_IDS)))
    names = draw(st.lists(WORDS, min_size=count, max_size=count, unique_by=str.lower))
    result = []
    for user_id, user_name in zip(USER_IDS, names, strict=False):
        user: dict[str, Any] = {"id": user_id, "userName": user_name}
        for key in ("externalId", "displayName", "title", "userType"):
            if (value := draw(MAYBE_WORD)) is not None:
                user[key] = value
        user["active"] = draw(st.booleans())
        user["name"] = {
            k: v for k in ("givenName", "familyName") if (v := draw(MAYBE_WORD)) is not None
        }
        user["emails"] = draw(st.lists(emails(), max_size=4))
        enterprise: dict[str, Any] = {}
        if (number := draw(MAYBE_WORD)) is not None:
            enterprise["employeeNumber"] = number
        manager = draw(st.sampled_from([None, "object", "bare"]))
        if manager is not None:
            target = draw(st.sampled_from(USER_IDS))
            enterprise["manager"] = {"value": target} if manager == "object" else target
        user[ENTERPRISE] = enterprise
        user["meta"] = {
            "created": draw(st.sampled_from(STAMPS)),
            "lastModified": draw(st.sampled_from(STAMPS)),
        }
        result.append(user)
    return result


def any_case(name: str) -> st.SearchStrategy[str]:
    return st.sampled_from([name, name.lower(), name.upper(), name.swapcase()])


@st.composite
def paths(draw: st.DrawFn, attr: str, sub: str | None = None, uri: str | None = None) -> AttrPath:
    return AttrPath(
        draw(any_case(attr)),
        draw(any_case(sub)) if sub else None,
        draw(any_case(uri)) if uri else None,
    )


STRING_PATHS = st.one_of(
    paths("userName"),
    paths("userName", uri=CORE),
    paths("displayName"),
    paths("title"),
    paths("userType"),
    paths("externalId"),
    paths("name", "givenName"),
    paths("name", "familyName"),
    paths("emails"),
    paths("emails", "value"),
    paths("emails", "type"),
    paths("employeeNumber"),
    paths("employeeNumber", uri=ENTERPRISE),
)
ID_PATHS = st.one_of(paths("id"), paths("manager", "value", ENTERPRISE))
ID_VALUES = st.sampled_from(USER_IDS).flatmap(lambda i: st.sampled_from([i, i.upper(), i[:8]]))
DATE_PATHS = st.one_of(paths("meta", "created"), paths("meta", "lastModified"))


def date_strings(moment: datetime) -> st.SearchStrategy[str]:
    plus_two = timezone(timedelta(hours=2))
    return st.sampled_from(
        [
            moment.isoformat(),
            moment.isoformat().replace("+00:00", "Z"),
            moment.astimezone(plus_two).isoformat(),
            moment.replace(tzinfo=None).isoformat(),  # no offset: UTC
        ]
    )


DATE_VALUES = st.sampled_from([*STAMPS, datetime(2023, 12, 31, 23, 59, tzinfo=UTC)]).flatmap(
    date_strings
)
ALL_OPS = st.sampled_from(["eq", "ne", "co", "sw", "ew", "gt", "ge", "lt", "le"])
BOOLEANS = st.sampled_from([True, False, "True", "false", "TRUE"])


def compare(
    path: st.SearchStrategy[AttrPath], ops: st.SearchStrategy[str], values: st.SearchStrategy[Any]
) -> st.SearchStrategy[Filter]:
    return st.builds(Compare, path, ops, values)


NULL_TESTS = st.builds(
    Compare, st.one_of(STRING_PATHS, DATE_PATHS), st.sampled_from(["eq", "ne"]), st.none()
)
LIKE_OPS = st.sampled_from(["co", "sw", "ew"])
LEAVES: st.SearchStrategy[Filter] = st.one_of(
    compare(STRING_PATHS, ALL_OPS, WORDS),
    compare(STRING_PATHS, LIKE_OPS, META_WORDS),
    compare(ID_PATHS, ALL_OPS, ID_VALUES),
    compare(
        paths("schemas"), ALL_OPS, st.sampled_from([CORE, ENTERPRISE.upper(), "urn:ietf", "User"])
    ),
    compare(
        st.one_of(paths("active"), paths("emails", "primary")),
        st.sampled_from(["eq", "ne"]),
        BOOLEANS,
    ),
    compare(DATE_PATHS, st.sampled_from(["eq", "ne", "gt", "ge", "lt", "le"]), DATE_VALUES),
    NULL_TESTS,
    st.builds(
        Present,
        st.one_of(
            STRING_PATHS,
            DATE_PATHS,
            paths("name"),
            paths("manager", uri=ENTERPRISE),
            paths("manager", "value", ENTERPRISE),
            paths("emails", "primary"),
        ),
    ),
)


def logic(children: st.SearchStrategy[Filter]) -> st.SearchStrategy[Filter]:
    return st.one_of(
        st.builds(Not, children),
        st.lists(children, min_size=2, max_size=3).map(lambda items: And(tuple(items))),
        st.lists(children, min_size=2, max_size=3).map(lambda items: Or(tuple(items))),
    )


ELEMENT_LEAVES: st.SearchStrategy[Filter] = st.one_of(
    compare(st.one_of(paths("value"), paths("type")), LIKE_OPS, META_WORDS),
    compare(
        st.one_of(paths("value"), paths("type")), ALL_OPS, st.one_of(WORDS, TYPES.filter(bool))
    ),
    compare(paths("primary"), st.sampled_from(["eq", "ne"]), BOOLEANS),
    st.builds(
        Compare,
        st.one_of(paths("value"), paths("type"), paths("primary")),
        st.sampled_from(["eq", "ne"]),
        st.none(),
    ),
    st.builds(Present, st.one_of(paths("value"), paths("type"), paths("primary"))),
)
VALUE_PATHS = st.builds(
    ValuePath, paths("emails"), st.recursive(ELEMENT_LEAVES, logic, max_leaves=4)
)
FILTERS = st.recursive(st.one_of(LEAVES, VALUE_PATHS), logic, max_leaves=6)
# Value filters on their own too: inside random trees, and/or/not often mask them.
TEST_FILTERS = st.lists(st.one_of(FILTERS, VALUE_PATHS), min_size=1, max_size=5)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=users(),
    filters=TEST_FILTERS,
    alias=st.sampled_from([None, "u"]),
)
async def test_sql_selects_what_the_reference_evaluator_selects(
    directory: Database, data: list[dict[str, Any]], filters: list[Filter], alias: str | None
) -> None:
    async with rolled_back(directory) as conn:
        await insert_users(conn, data)
        for f in filters:
            text = str(f)
            assert parse_filter(text) == f  # the text a client would send
            expected = {u["id"] for u in data if reference(f, u)}
            assert await select_users(conn, text, alias=alias) == expected, text


# ---------------------------------------------------------------- property: matcher == reference
#
# The in-memory back end (PATCH's `emails[...]`) against the same reference evaluator, on
# the same users: per email, the value filter selects what the reference selects. PATCH
# reads `x eq null` on "" differently (a value, not null); without null comparisons its
# reading is the reference's too.

EMAILS = USER_SCHEMA.attribute("emails")


def compares_with_null(f: Filter) -> bool:
    if isinstance(f, And | Or):
        return any(compares_with_null(o) for o in f.operands)
    if isinstance(f, Not):
        return compares_with_null(f.operand)
    return isinstance(f, Compare) and f.value is None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=users(), value_path=VALUE_PATHS)
def test_the_in_memory_matcher_selects_what_the_reference_evaluator_selects(
    data: list[dict[str, Any]], value_path: ValuePath
) -> None:
    assert EMAILS is not None
    assert parse_filter(str(value_path)) == value_path
    as_queried = bind(value_path.filter, EMAILS, empty_is_null=True)
    as_patched = bind(value_path.filter, EMAILS)
    for user in data:
        for email in user["emails"]:
            expected = reference(value_path.filter, user, email)
            assert as_queried.matches(email) == expected, (value_path, email)
            if not compares_with_null(value_path.filter):
                assert as_patched.matches(email) == expected, (value_path, email)
        matched = any(as_queried.matches(e) for e in user["emails"])
        assert matched == reference(value_path, user), value_path


SORT_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "userName": lambda u: u["userName"].lower(),
    "title": lambda u: (u.get("title") or "").lower(),
    "externalId": lambda u: u.get("externalId") or "",
    "name.givenName": lambda u: (u["name"].get("givenName") or "").lower(),
    "emails": lambda u: _primary_email(u),
    "meta.lastModified": lambda u: u["meta"]["lastModified"],
    f"{ENTERPRISE}:employeeNumber": lambda u: (u[ENTERPRISE].get("employeeNumber") or "").lower(),
}


def _primary_email(user: dict[str, Any]) -> str:
    emails = user["emails"]
    chosen = next((e for e in emails if e.get("primary") is True), emails[0] if emails else {})
    return (chosen.get("value") or "").lower()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=users(),
    sort_by=st.sampled_from(sorted(SORT_KEYS)),
    order=st.sampled_from([None, "ascending", "descending", "Descending"]),
)
async def test_sort_order_matches_the_reference(
    directory: Database, data: list[dict[str, Any]], sort_by: str, order: str | None
) -> None:
    key = SORT_KEYS[sort_by]
    descending = (order or "").lower() == "descending"
    # Ties by id ascending (the caller's tie-breaker); then by the key, "" and null being
    # unassigned: last ascending, first descending (RFC 7644 §3.4.2.3).
    by_id = sorted(data, key=lambda u: u["id"])
    assigned = [u for u in by_id if key(u) not in ("", None)]
    unassigned = [u for u in by_id if key(u) in ("", None)]
    ordered = sorted(assigned, key=key, reverse=descending)
    expected = [u["id"] for u in (unassigned + ordered if descending else ordered + unassigned)]
    async with rolled_back(directory) as conn:
        await insert_users(conn, data)
        sql = sort_sql(sort_by, order, "User", alias="u")
        rows = await conn.fetch(
            f"SELECT u.id FROM scim_users u WHERE u.tenant_id = $1 ORDER BY {sql}, u.id", TENANT
        )
    assert [str(r["id"]) for r in rows] == expected


# ---------------------------------------------------------------- property: the parser

ANY_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00")  # what Postgres text holds
)


@given(
    st.recursive(
        st.one_of(LEAVES, VALUE_PATHS, compare(STRING_PATHS, ALL_OPS, ANY_TEXT)),
        logic,
        max_leaves=10,
    )
)
def test_printed_filters_parse_back(f: Filter) -> None:
    assert parse_filter(str(f)) == f


@given(st.text(alphabet=string.printable + 'éü[]()"', max_size=80))
def test_arbitrary_input_parses_or_fails_cleanly(text: str) -> None:
    # Anything else than SQL or a FilterError with a message (an IndexError, a
    # RecursionError, ...) would be a 500 for a malformed query string.
    def outcome() -> str:
        try:
            sql, _ = to_sql(parse_filter(text), "User")
        except FilterError as exc:
            return exc.message
        return sql

    assert outcome()
