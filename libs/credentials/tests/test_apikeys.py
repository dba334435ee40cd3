from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tenantry_credentials.apikeys import (
    display_prefix,
    generate,
    is_well_formed,
    key_hash,
    looks_like_api_key,
    region_of,
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


REGION_IDS = st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)


@given(REGION_IDS)
def test_a_key_names_the_region_that_issued_it(region: str) -> None:
    key = generate("live", region=region)
    assert key.startswith(f"tnty_live_{region}_")
    assert is_well_formed(key)
    assert region_of(key) == region
    # The prefix a list shows still says where the key lives, and no more of the secret.
    assert display_prefix(key) == key[: len(f"tnty_live_{region}_") + 6]


@given(REGION_IDS, REGION_IDS)
def test_a_key_whose_region_is_edited_fails_its_checksum(issued: str, forged: str) -> None:
    key = generate("live", region=issued)
    if forged != issued:
        edited = f"tnty_live_{forged}_" + key[len(f"tnty_live_{issued}_") :]
        assert region_of(edited) == forged  # it parses as the other region's key...
        assert not is_well_formed(edited)  # ...and the checksum refuses it there


def test_keys_issued_before_regions_name_none() -> None:
    key = generate("live")
    assert is_well_formed(key)
    assert region_of(key) is None


@given(st.text(min_size=1, max_size=20))
def test_only_region_ids_are_accepted_in_a_key(text: str) -> None:
    import re

    if re.fullmatch(r"[a-z][a-z0-9-]{0,15}", text):
        assert region_of(generate(region=text)) == text
    else:
        try:
            generate(region=text)
        except ValueError:
            return
        raise AssertionError(f"{text!r} made a key")
