"""The rules of legal notices (legal_notices.py): what an announcement must say, when it
takes effect, and when a tenant may object."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantry_events.payloads.tenancy import SubprocessorChange
from tenantry_tenancy.agreements import Version
from tenantry_tenancy.legal_notices import NoticeRefused, check_objection, notice_terms

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
PUBLISHED = [Version(document="dpa", version="2026-12-07", effective="2027-01-01", sha256="a")]
PAGER = SubprocessorChange(name="Pager Inc", change="added", country="US")


def announce(**overrides: object) -> object:
    args: dict[str, object] = {
        "kind": "subprocessors",
        "summary": "Pager Inc joins",
        "changes": [PAGER],
        "document": None,
        "version": None,
        "notice_days": 30,
        "now": NOW,
        "published": PUBLISHED,
        **overrides,
    }
    return notice_terms(**args)  # type: ignore[arg-type]


def test_a_change_takes_effect_after_the_notice_period() -> None:
    terms = announce()
    assert terms.effective_at == NOW + timedelta(days=30)  # type: ignore[attr-defined]
    document = announce(kind="document", changes=[], document="dpa", version="2026-12-07")
    assert document.document == "dpa"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("overrides", "slug"),
    [
        ({"summary": "  "}, "invalid-notice"),
        ({"changes": []}, "invalid-notice"),
        ({"notice_days": 0}, "invalid-notice"),
        ({"notice_days": 366}, "invalid-notice"),
        ({"changes": [SubprocessorChange(name="X", change="moved")]}, "invalid-notice"),
        ({"changes": [SubprocessorChange(name=" ", change="added")]}, "invalid-notice"),
        (
            {"changes": [SubprocessorChange(name="X", change="added", country="usa")]},
            "invalid-notice",
        ),
        ({"document": "dpa"}, "invalid-notice"),
        ({"kind": "document", "document": "dpa", "version": "1999-01-01"}, "unknown-version"),
    ],
)
def test_a_bad_announcement_says_what_is_wrong(overrides: dict[str, object], slug: str) -> None:
    with pytest.raises(NoticeRefused) as refused:
        announce(**overrides)
    assert refused.value.slug == slug
    assert refused.value.status == 422


@given(st.integers(min_value=-10_000, max_value=10_000))
def test_an_objection_is_open_until_the_change_takes_effect(minutes: int) -> None:
    effective = NOW + timedelta(days=30)
    now = effective + timedelta(minutes=minutes)
    if now < effective:
        assert (
            check_objection(effective_at=effective, objected_at=None, reason=" no ", now=now)
            == "no"
        )
    else:
        with pytest.raises(NoticeRefused) as refused:
            check_objection(effective_at=effective, objected_at=None, reason="no", now=now)
        assert refused.value.slug == "notice-period-over"


def test_a_tenant_objects_once_and_says_why() -> None:
    effective = NOW + timedelta(days=1)
    with pytest.raises(NoticeRefused) as twice:
        check_objection(effective_at=effective, objected_at=NOW, reason="no", now=NOW)
    assert twice.value.slug == "already-objected"
    with pytest.raises(NoticeRefused) as empty:
        check_objection(effective_at=effective, objected_at=None, reason="  ", now=NOW)
    assert empty.value.status == 422
