"""Every admission knob (`AdmissionSettings`), validated at start-up."""

from __future__ import annotations

from typing import Literal

import msgspec

from tenantry_guardrails.admission.priorities import Priority

LimitMode = Literal["adaptive", "aimd", "fixed"]


class AdmissionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Every admission knob, with defaults fit for one small service instance.

    Shares are fractions: `*_capacity_share` of the concurrency limit a class may fill
    (critical always 1.0), `*_queue_share` of `max_queue` a class may occupy.
    """

    enabled: bool = True
    mode: LimitMode = "adaptive"  # adaptive = Gradient2; aimd; fixed = fixed_limit
    fixed_limit: int = 64
    initial_limit: int = 20
    min_limit: int = 4
    max_limit: int = 256
    sample_window: int = 10  # adaptive limits move once per this many completed requests
    gradient_tolerance: float = 1.5  # short-term RTT may reach 1.5x the long-term one
    gradient_smoothing: float = 0.2
    gradient_long_window: int = 600  # samples in the long-term RTT average
    aimd_backoff_ratio: float = 0.9
    aimd_timeout_seconds: float = 5.0  # an AIMD sample slower than this counts as a drop
    max_queue: int = 128
    default_capacity_share: float = 0.85
    sheddable_capacity_share: float = 0.5
    critical_queue_share: float = 1.0
    default_queue_share: float = 0.75
    sheddable_queue_share: float = 0.25
    critical_max_wait_seconds: float = 5.0
    default_max_wait_seconds: float = 1.0
    sheddable_max_wait_seconds: float = 0.25
    large_list_threshold: int = 200  # a GET asking for more items than this is sheddable
    max_retry_after_seconds: int = 30
    # The utilization shedder (Stripe's "worker utilization" limiter, for an event loop):
    # when the loop runs this many ms late, requests of the class are refused at once,
    # before queueing, so the CPU left goes to critical work and to refusing fast. The
    # concurrency limit only sees time spent inside the app; requests piling up unread in
    # the kernel while the loop is saturated show only as loop lag. 0 disables a class's.
    sheddable_loop_lag_ms: float = 25.0
    default_loop_lag_ms: float = 100.0
    loop_lag_sample_ms: float = 10.0

    def __post_init__(self) -> None:
        # msgspec turns a ValueError here into a ValidationError naming the struct, so a bad
        # TENANTRY_ADMISSION_* variable stops the process at start-up.
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError("admission limits need 1 <= min_limit <= initial_limit <= max_limit")
        if self.fixed_limit < 1 or self.sample_window < 1 or self.gradient_long_window < 1:
            raise ValueError("fixed_limit, sample_window and gradient_long_window must be >= 1")
        if not 0 < self.sheddable_capacity_share <= self.default_capacity_share <= 1:
            raise ValueError(
                "admission capacity shares need 0 < sheddable <= default <= 1 (critical is 1)"
            )
        shares = (self.critical_queue_share, self.default_queue_share, self.sheddable_queue_share)
        if not all(0 <= share <= 1 for share in shares):
            raise ValueError("admission queue shares must lie in [0, 1]")
        waits = (
            self.critical_max_wait_seconds,
            self.default_max_wait_seconds,
            self.sheddable_max_wait_seconds,
        )
        if self.max_queue < 0 or any(wait < 0 for wait in waits):
            raise ValueError("max_queue and the max waits must not be negative")
        if self.gradient_tolerance < 1 or not 0 < self.gradient_smoothing <= 1:
            raise ValueError("gradient_tolerance must be >= 1 and gradient_smoothing in (0, 1]")
        if not 0 < self.aimd_backoff_ratio < 1 or self.aimd_timeout_seconds <= 0:
            raise ValueError("aimd_backoff_ratio must lie in (0, 1), aimd_timeout_seconds > 0")
        if self.large_list_threshold < 1 or self.max_retry_after_seconds < 1:
            raise ValueError("large_list_threshold and max_retry_after_seconds must be >= 1")
        if min(self.sheddable_loop_lag_ms, self.default_loop_lag_ms) < 0:
            raise ValueError("loop lag thresholds must not be negative (0 disables)")
        if self.loop_lag_sample_ms <= 0:
            raise ValueError("loop_lag_sample_ms must be > 0")

    def loop_lag_limit(self, priority: Priority) -> float | None:
        """Seconds of loop lag past which `priority` requests are refused (None: never)."""
        ms = {
            Priority.CRITICAL: 0.0,
            Priority.DEFAULT: self.default_loop_lag_ms,
            Priority.SHEDDABLE: self.sheddable_loop_lag_ms,
        }[priority]
        return ms / 1000 if ms > 0 else None

    def capacity_share(self, priority: Priority) -> float:
        """Fraction of the concurrency limit that requests of `priority` may fill."""
        if priority is Priority.CRITICAL:
            return 1.0
        if priority is Priority.DEFAULT:
            return self.default_capacity_share
        return self.sheddable_capacity_share

    def queue_share(self, priority: Priority) -> float:
        """Fraction of `max_queue` that waiters of `priority` may occupy."""
        return {
            Priority.CRITICAL: self.critical_queue_share,
            Priority.DEFAULT: self.default_queue_share,
            Priority.SHEDDABLE: self.sheddable_queue_share,
        }[priority]

    def max_wait(self, priority: Priority) -> float:
        """Longest a request of `priority` may wait for a slot, in seconds."""
        return {
            Priority.CRITICAL: self.critical_max_wait_seconds,
            Priority.DEFAULT: self.default_max_wait_seconds,
            Priority.SHEDDABLE: self.sheddable_max_wait_seconds,
        }[priority]

    @classmethod
    def from_prefixed(cls, source: object, prefix: str = "admission_") -> AdmissionSettings:
        """Build from flat attributes such as `ServiceSettings.admission_max_queue`; fields
        the source lacks keep their defaults. Lets env-loaded settings stay flat."""
        values = {
            name: getattr(source, prefix + name)
            for name in cls.__struct_fields__
            if hasattr(source, prefix + name)
        }
        return msgspec.convert(values, type=cls, strict=False)
