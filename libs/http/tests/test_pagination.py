from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantry_http.pagination import clamp_limit, decode_cursor, encode_cursor, page_of
from tenantry_http.problems import Problem

keys = st.lists(
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1), st.text(max_size=40), st.booleans()
    ),
    min_size=1,
    max_size=4,
)


@given(keys)
def test_cursor_round_trips(key: list[object]) -> None:
    assert decode_cursor(encode_cursor(key)) == key


@given(st.text(max_size=60))
def test_any_garbage_cursor_is_a_400_never_a_crash(garbage: str) -> None:
    outcome: object
    try:
        outcome = decode_cursor(garbage)
    except Problem as problem:
        outcome = (problem.status, problem.slug)
    assert outcome is None or isinstance(outcome, list) or outcome == (400, "invalid-cursor")


def test_page_of_sets_next_cursor_only_when_more_rows_exist() -> None:
    rows = list(range(11))
    page = page_of(rows, 10, lambda r: [r])
    assert page.data == list(range(10))
    assert page.next_cursor is not None
    assert decode_cursor(page.next_cursor) == [9]
    assert page_of(rows[:5], 10, lambda r: [r]).next_cursor is None


@pytest.mark.parametrize("bad", [0, -1, 201])
def test_limits_outside_the_range_are_refused(bad: int) -> None:
    with pytest.raises(Problem):
        clamp_limit(bad)
    assert clamp_limit(None) == 50
