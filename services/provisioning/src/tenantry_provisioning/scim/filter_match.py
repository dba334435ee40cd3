"""The in-memory back end of the filter grammar: a filter evaluated on the values of one
multi-valued attribute, as a PATCH path selects them (`emails[type eq "work"]`).

`bind` checks a parsed filter against the attribute's sub-attributes once (FilterError,
scimType invalidFilter, for a name or a value the schema does not allow); `matches`
evaluates it on one element. The semantics are filter_sql.py's, which the property tests
hold both back ends to, with one difference PATCH has always had: an empty string is a
value, not null, so `display eq null` does not select `{"display": ""}` (in a query it
does: `x eq null` is `not (x pr)`). `empty_is_null=True` gives the query's reading.

Strings compare case-insensitively (casefold) unless caseExact; ordering is by code point;
numbers compare as numbers; dateTimes chronologically when both carry an offset or neither
does; booleans take true/false or the strings "true"/"false" in any case (Entra).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from tenantry_provisioning.scim.grammar import (
    And,
    AttrPath,
    Compare,
    Filter,
    FilterError,
    Not,
    Or,
    Present,
    ValuePath,
)
from tenantry_provisioning.scim.json_values import (
    MISSING,
    as_bool,
    get,
    is_present,
    same_value,
)
from tenantry_provisioning.scim.schema import Attribute

__all__ = ["ElementFilter", "bind"]

_ORDER_OPS: Final = frozenset({"gt", "ge", "lt", "le"})
_STRING_OPS: Final = frozenset({"co", "sw", "ew"})


@dataclass(frozen=True)
class _Leaf:
    """A comparison resolved against the attribute: which sub-attribute, the checked value."""

    attr: Attribute
    op: str  # a comparison operator or "pr"
    value: Any
    whole_element: bool  # a simple multi-valued attribute: "value" is the element itself


@dataclass(frozen=True)
class ElementFilter:
    """A filter bound to the multi-valued attribute whose elements it selects."""

    ast: Filter
    owner: Attribute
    empty_is_null: bool = False
    _leaves: dict[int, _Leaf] = field(default_factory=dict, repr=False, compare=False)

    def leaf(self, node: Compare | Present) -> _Leaf:
        return self._leaves[id(node)]

    def matches(self, element: Any) -> bool:
        return self._evaluate(self.ast, element)

    def _evaluate(self, node: Filter, element: Any) -> bool:
        if isinstance(node, And):
            return all(self._evaluate(o, element) for o in node.operands)
        if isinstance(node, Or):
            return any(self._evaluate(o, element) for o in node.operands)
        if isinstance(node, Not):
            return not self._evaluate(node.operand, element)
        assert not isinstance(node, ValuePath)  # bind refuses them
        return self._compare(self.leaf(node), element)

    def _compare(self, leaf: _Leaf, element: Any) -> bool:
        if leaf.whole_element:
            actual = element
        elif isinstance(element, Mapping):
            actual = get(element, leaf.attr.name)
        else:
            return False
        op, expected = leaf.op, leaf.value
        if op == "pr":
            return is_present(actual)
        if expected is None and self.empty_is_null:
            return is_present(actual) == (op == "ne")  # the query's `x eq null`: not (x pr)
        if actual is MISSING or actual is None:
            return (op == "eq" and expected is None) or (op == "ne" and expected is not None)
        if expected is None:
            return op == "ne"
        if leaf.attr.type == "boolean":
            same = as_bool(actual) == expected
            return same if op == "eq" else not same
        pair = _ordered(leaf.attr, actual, expected)
        if pair is None:
            return op == "ne"
        left, right = pair
        if op == "eq":
            return bool(left == right)
        if op == "ne":
            return bool(left != right)
        if op in _STRING_OPS:
            if not (isinstance(left, str) and isinstance(right, str)):
                return False
            if op == "co":
                return right in left
            return left.startswith(right) if op == "sw" else left.endswith(right)
        try:
            if op == "gt":
                return bool(left > right)
            if op == "ge":
                return bool(left >= right)
            if op == "lt":
                return bool(left < right)
            return bool(left <= right)
        except TypeError:
            return False

    def equality_terms(self) -> dict[str, Any] | None:
        """{sub-attribute: value} when the filter is `a eq x [and b eq y ...]`, else None:
        the element such a filter describes (PATCH creates it when none matches)."""
        pairs = self._eq_pairs(self.ast)
        if pairs is None:
            return None
        terms: dict[str, Any] = {}
        for attr, value in pairs:
            if attr.name in terms and not same_value(attr, terms[attr.name], value):
                return None  # `type eq "a" and type eq "b"` describes no element to create
            terms[attr.name] = value
        return terms

    def _eq_pairs(self, node: Filter) -> list[tuple[Attribute, Any]] | None:
        if isinstance(node, Compare):
            leaf = self.leaf(node)
            if leaf.op != "eq" or leaf.value is None or leaf.whole_element:
                return None
            return [(leaf.attr, leaf.value)]
        if isinstance(node, And):
            pairs: list[tuple[Attribute, Any]] = []
            for operand in node.operands:
                found = self._eq_pairs(operand)
                if found is None:
                    return None
                pairs += found
            return pairs
        return None


def _ordered(attr: Attribute, a: Any, b: Any) -> tuple[Any, Any] | None:
    """Two values made comparable for ordering and (sub)string tests, or None."""
    if attr.type in ("integer", "decimal"):
        numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
        return (a, b) if numbers else None
    if not (isinstance(a, str) and isinstance(b, str)):
        return None
    if attr.type == "dateTime":
        try:
            left, right = datetime.fromisoformat(a), datetime.fromisoformat(b)
        except ValueError:
            pass
        else:
            if (left.tzinfo is None) == (right.tzinfo is None):
                return left, right
    if attr.case_exact:
        return a, b
    return a.casefold(), b.casefold()


def bind(ast: Filter, owner: Attribute, *, empty_is_null: bool = False) -> ElementFilter:
    """Check `ast` against the sub-attributes of the multi-valued attribute `owner`.

    Inside the brackets a name is a sub-attribute, alone or qualified by the attribute
    (`emails[emails.type eq "work"]`); a simple multi-valued attribute's one name is
    `value`. Raises FilterError (invalidFilter).
    """
    bound = ElementFilter(ast, owner, empty_is_null)
    _bind(ast, owner, bound._leaves)
    return bound


def _bind(node: Filter, owner: Attribute, leaves: dict[int, _Leaf]) -> None:
    if isinstance(node, And | Or):
        for operand in node.operands:
            _bind(operand, owner, leaves)
        return
    if isinstance(node, Not):
        _bind(node.operand, owner, leaves)
        return
    if isinstance(node, ValuePath):
        raise FilterError("nested filters are not supported in a path")
    attr, whole = _resolve(node.path, owner)
    if isinstance(node, Present):
        leaves[id(node)] = _Leaf(attr, "pr", None, whole)
        return
    leaves[id(node)] = _Leaf(attr, node.op, _checked_value(attr, node.op, node.value), whole)


def _resolve(path: AttrPath, owner: Attribute) -> tuple[Attribute, bool]:
    if path.uri is not None:
        raise FilterError(f"{owner.name} has no sub-attribute {path}")
    name = path.attr
    if path.sub is not None:
        if path.attr.lower() != owner.name.lower():
            raise FilterError(f"{owner.name} has no sub-attribute {path}")
        name = path.sub
    if owner.is_complex:
        sub = owner.sub(name)
        if sub is None or sub.is_complex:
            raise FilterError(f"{owner.name} has no sub-attribute {path}")
        return sub, False
    if name.lower() != "value":
        raise FilterError(f"filter on {owner.name} compares 'value'")
    return owner, True


def _checked_value(attr: Attribute, op: str, value: Any) -> Any:
    if value is None:
        if op in ("eq", "ne"):
            return None
        raise FilterError(f"{op} cannot compare with null")
    if attr.type == "boolean":
        flag = as_bool(value)  # Entra's "True"
        if flag is None or op not in ("eq", "ne"):
            raise FilterError(f"{attr.name} is boolean: eq/ne true/false")
        return flag
    if attr.type in ("integer", "decimal"):
        if isinstance(value, bool) or not isinstance(value, int | float) or op in _STRING_OPS:
            raise FilterError(f"{attr.name} is a number")
        return value
    if not isinstance(value, str):
        raise FilterError(f"{attr.name} compares with a string")
    if attr.type == "binary" and op in _ORDER_OPS:
        raise FilterError(f"{attr.name} is binary: no ordering")
    return value
