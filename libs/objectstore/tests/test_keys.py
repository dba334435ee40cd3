"""The key rules (tenantry_objectstore.store): a key can never leave the store's root."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantry_objectstore import InvalidKey, check_key, check_prefix

ROOT = "/srv/objects"
_SAFE = "abcXYZ019._-="
segments = st.text(alphabet=_SAFE, min_size=1, max_size=40).filter(lambda s: not s.startswith("."))
valid_keys = st.lists(segments, min_size=1, max_size=8).map("/".join)


@given(
    st.text(max_size=60)
    | st.lists(st.sampled_from(["..", ".", "", "a", "/", "\\", "\x00"])).map("".join)
)
def test_an_accepted_key_stays_inside_the_root(key: str) -> None:
    try:
        check_key(key)
    except InvalidKey:
        return
    joined = posixpath.join(ROOT, key)
    # Nothing to normalise away (no "..", ".", "//"), and under the root.
    assert posixpath.normpath(joined) == joined
    assert joined.startswith(ROOT + "/")
    assert key.isascii()
    assert "\\" not in key


@given(valid_keys)
def test_keys_of_the_documented_charset_are_accepted(key: str) -> None:
    assert check_key(key) == key


@given(valid_keys, st.data())
def test_every_start_of_a_key_is_a_valid_prefix(key: str, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(key)))
    assert check_prefix(key[:cut], allow_empty=True) == key[:cut]


@pytest.mark.parametrize("prefix", ["../", "a/../", "/a", "a//", ".tmp", "a/.x", "a\x00"])
def test_hostile_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(InvalidKey):
        check_prefix(prefix, allow_empty=True)


def test_the_empty_prefix_is_refused_where_it_would_mean_everything() -> None:
    assert check_prefix("", allow_empty=True) == ""
    with pytest.raises(InvalidKey):
        check_prefix("", allow_empty=False)


def test_length_limits() -> None:
    assert check_key("a" * 255)
    with pytest.raises(InvalidKey):
        check_key("a" * 256)
    long_key = "/".join(["abcdefghi"] * 102) + "/abcd"
    assert len(long_key) == 1024
    assert check_key(long_key) == long_key
    with pytest.raises(InvalidKey):
        check_key(long_key + "d")
