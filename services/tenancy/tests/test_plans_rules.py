"""Effective limits: plan plus typed overrides (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantry_events.payloads.tenancy import Limits
from tenantry_tenancy.domain import KINDS, InvalidOverride, allows, effective_limits

FREE = Limits(
    sso=False,
    scim=False,
    data_export=False,
    seats=3,
    webhook_endpoints=1,
    api_keys=2,
    requests_per_second=5,
    burst=10,
)


def test_overrides_replace_only_what_they_name() -> None:
    limits = effective_limits(FREE, {"seats": 10, "sso": True, "api_keys": None})
    assert (limits.seats, limits.sso, limits.api_keys) == (10, True, None)
    assert limits.webhook_endpoints == 1
    assert allows(limits, "api_keys", 10_000)
    assert allows(limits, "seats", 9)
    assert not allows(limits, "seats", 10)
    assert not allows(FREE, "scim", 0)


@pytest.mark.parametrize(
    "bad",
    [
        {"seats": -1},
        {"seats": "3"},
        {"seats": True},
        {"sso": 1},
        {"burst": 0},
        {"requests_per_second": False},
        {"offboarding_grace_days": -1},
        {"offboarding_grace_days": 3651},
        {"offboarding_grace_days": None},
        {"offboarding_grace_days": 1.5},
        {"unknown": 1},
    ],
)
def test_overrides_of_the_wrong_kind_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidOverride):
        effective_limits(FREE, bad)


values = {
    "feature": st.booleans(),
    "quantity": st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)),
    "rate": st.integers(min_value=1, max_value=10**4),
    "days": st.integers(min_value=0, max_value=3650),
}


@given(
    st.dictionaries(st.sampled_from(sorted(KINDS)), st.none(), max_size=8).flatmap(
        lambda names: st.fixed_dictionaries({n: values[KINDS[n]] for n in names})
    )
)
def test_any_well_typed_override_set_applies_exactly(overrides: dict[str, Any]) -> None:
    limits = effective_limits(FREE, overrides)
    for name in KINDS:
        assert getattr(limits, name) == overrides.get(name, getattr(FREE, name))
