"""Resend spacing and daily cap (pure rule, any clock)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tenantry_identity.domain import (
    RESEND_MAX_PER_DAY,
    RESEND_MIN_INTERVAL_SECONDS,
    resend_wait,
)

NOW = 1_800_000_000.0


def test_first_send_is_free_and_a_second_must_wait() -> None:
    assert resend_wait([], NOW) == 0
    assert resend_wait([NOW - 10], NOW) == RESEND_MIN_INTERVAL_SECONDS - 10
    assert resend_wait([NOW - RESEND_MIN_INTERVAL_SECONDS], NOW) == 0


def test_the_daily_cap_holds_even_when_spaced() -> None:
    sends = [NOW - 3600 * (i + 1) for i in range(RESEND_MAX_PER_DAY)]
    wait = resend_wait(sends, NOW)
    assert wait > 0
    assert resend_wait(sends, NOW + wait) == 0


@given(st.lists(st.floats(min_value=0, max_value=3 * 86400), max_size=12))
def test_after_waiting_as_told_a_send_is_allowed_and_within_rules(offsets: list[float]) -> None:
    sends = [NOW - o for o in offsets]
    wait = resend_wait(sends, NOW)
    later = NOW + wait
    assert resend_wait(sends, later) <= 1e-6
    recent = [t for t in sends if later - t < 86400]
    assert len(recent) < RESEND_MAX_PER_DAY or not recent
    if recent:
        assert later - max(recent) >= RESEND_MIN_INTERVAL_SECONDS - 1e-6
