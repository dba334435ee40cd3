from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tenantry_credentials.apikeys import (
    display_prefix,
    generate,
    is_well_formed,
    key_hash,
    looks_like_api_key,
)


def test_generated_keys_are_well_formed_unique_and_prefixed() -> None:
    keys = {generate("live") for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith("tnty_live_")
        assert looks_like_api_key(key)
        assert is_well_formed(key)
        assert len(key_hash(key)) == 32
        assert key.startswith(display_prefix(key))
        assert len(display_prefix(key)) < len(key) // 2
    assert generate("test").startswith("tnty_test_")


@given(st.integers(min_value=10, max_value=47), st.sampled_from("0123456789ABCDEFabcdefXYZ"))
def test_any_single_character_change_breaks_the_checksum(position: int, char: str) -> None:
    key = generate()
    mutated = key[:position] + char + key[position + 1 :]
    if mutated != key:
        assert not is_well_formed(mutated)


@given(st.text(max_size=60))
def test_arbitrary_text_is_never_well_formed_by_accident(text: str) -> None:
    assert not is_well_formed("tnty_live_" + text) or len(text) == 38
