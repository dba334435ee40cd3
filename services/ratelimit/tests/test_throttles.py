"""The pure part of sampled ratelimit.throttled reports."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from tenantry_guardrails.rate_limits import throttle_key
from tenantry_ratelimit.throttles import report, tenant_of


def test_the_tenant_is_read_back_from_its_counters_key_and_nothing_else_matches() -> None:
    tenant = uuid4()
    assert tenant_of(throttle_key(tenant)) == tenant
    assert tenant_of(f"rl:{{{tenant}}}:inflight") is None
    assert tenant_of("rl:{not-a-uuid}:throttled") is None
    assert tenant_of("other:{x}:throttled") is None


def test_a_report_counts_refusals_by_policy_and_skips_quiet_windows() -> None:
    end = datetime.now(UTC)
    start = end - timedelta(seconds=60)
    made = report({"requests": 3, "in-flight": 2, "hourly": 0}, start, end)
    assert made is not None
    assert made.refusals == {"requests": 3, "in-flight": 2}
    assert made.total == 5
    assert (made.window_start, made.window_end) == (start, end)
    assert report({}, start, end) is None
    assert report({"requests": 0}, start, end) is None
