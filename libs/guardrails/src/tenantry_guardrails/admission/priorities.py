"""Who a request is to admission control: its priority class, and why it was refused."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

Clock = Callable[[], float]
"""Seconds on a monotonic scale; `time.monotonic` in production, a fake in tests."""


class Priority(StrEnum):
    """Criticality of a request (Google SRE): who keeps running when capacity runs out."""

    CRITICAL = "critical"  # token issuing, SSO callbacks, suspension, SCIM
    DEFAULT = "default"
    SHEDDABLE = "sheddable"  # exports, large lists, test traffic

    @property
    def rank(self) -> int:
        """0 for the most important class; higher ranks are shed first."""
        return PRIORITIES.index(self)

    @classmethod
    def parse(cls, value: object) -> Priority | None:
        """The class named by `value` (case-insensitive), or None for anything else."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                return None
        return None


PRIORITIES: tuple[Priority, ...] = (Priority.CRITICAL, Priority.DEFAULT, Priority.SHEDDABLE)
"""Most important first: the order waiters are served in."""


class RejectReason(StrEnum):
    QUEUE_FULL = "queue-full"  # arrived to a full queue with nothing less important to evict
    SHED = "shed"  # pushed out for more important or fairer work, or its class may not queue
    DEADLINE_EXCEEDED = "deadline-exceeded"  # waited past its deadline; never started
    OVERLOADED = "overloaded"  # the process's event loop lags: its CPU is spent


class Rejected(Exception):
    """`acquire` refused the request; nothing ran and no slot is held."""

    def __init__(self, reason: RejectReason, retry_after: int, priority: Priority) -> None:
        super().__init__(f"{priority} request rejected: {reason} (retry after {retry_after}s)")
        self.reason = reason
        self.retry_after = retry_after
        self.priority = priority
