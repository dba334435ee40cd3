"""Hypothesis strategies the property tests share."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_values(
    *,
    integers: st.SearchStrategy[int] | None = None,
    text: st.SearchStrategy[str] | None = None,
    keys: st.SearchStrategy[str] | None = None,
    allow_infinity: bool = False,
    max_items: int = 3,
    max_leaves: int = 8,
) -> st.SearchStrategy[Any]:
    """Any JSON value: null, booleans, numbers (by default integers past 64 bits too),
    strings, and lists and objects of those, nested."""
    text = text if text is not None else st.text(max_size=20)
    keys = keys if keys is not None else st.text(max_size=8)
    scalars = (
        st.none()
        | st.booleans()
        | (integers if integers is not None else st.integers(-(2**80), 2**80))
        | st.floats(allow_nan=False, allow_infinity=allow_infinity)
        | text
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=max_items) | st.dictionaries(keys, inner, max_size=max_items)
        ),
        max_leaves=max_leaves,
    )
