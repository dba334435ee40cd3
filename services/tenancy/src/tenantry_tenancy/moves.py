"""Moving a tenant to another region: the rules (pure, no I/O). Issue 18 §7, DESIGN.md
"Regions", docs/residency.md "Moving a tenant".

A move is an operator's action in the tenant's home region, and each region keeps its own
row of it, driven by its tenancy worker (move_driver.py) one step at a time, every step
safe to repeat:

    old region (out)                                 new region (in)
    exporting      suspended, the export saga
                   writes every service's rows
    handing_over   tells the new region     ---->   importing    fetches the archive, and
                                                                 each service imports its
                                                                 share (tenancy first)
    moving         asks how it goes         <----   switching    the directory routes the
                                                                 tenant here from now on
                                                    restoring    the tenant's state before
                                                                 the move (active again)
    purging        offboarding (moved_to)           completed
                   and the purge saga: the
                   old copy is erased, with
                   a deletion certificate
    completed

A step that fails for a reason retrying cannot cure ends the move `failed` with the reason;
the tenant then stays suspended where it lives (the directory was not switched) until an
operator reactivates it or tries again. Transient failures (the other region, a service
or the directory unreachable) are retried with backoff, without limit: no data is lost by
waiting, and the operator sees the last error in the move.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from tenantry_tenancy.domain import DomainError

Direction = Literal["out", "in"]
MoveState = Literal[
    "exporting",
    "handing_over",
    "moving",
    "purging",
    "importing",
    "switching",
    "restoring",
    "completed",
    "failed",
]
FIRST_STATE: dict[Direction, MoveState] = {"out": "exporting", "in": "importing"}
# Tenancy imports first: the tenant's data keys are there before any service needs them.
IMPORT_ORDER = ("tenancy", "identity", "provisioning", "ratelimit", "webhooks")
MAX_BACKOFF = timedelta(minutes=5)


class MoveRefused(DomainError):
    """A move's rule said no (the domain's error: `slug` and `status` for the edge)."""


def check_move(*, own_region: str, to_region: str, regions: list[str], status: str) -> None:
    """Whether a tenant in `status`, living here, may start moving to `to_region`."""
    if to_region not in regions:
        raise MoveRefused(
            "unknown-region", f"no region {to_region!r}; regions: {', '.join(regions)}", 422
        )
    if to_region == own_region:
        raise MoveRefused("same-region", f"the tenant lives in {own_region} already", 422)
    if status not in ("active", "suspended"):
        raise MoveRefused("illegal-transition", f"a tenant that is {status} cannot move")


@dataclass(frozen=True)
class Move:
    move_id: UUID
    tenant_id: UUID
    direction: Direction
    from_region: str
    to_region: str
    state: MoveState
    previous_status: str
    reason: str
    requested_by: str
    export_id: UUID | None = None
    imported: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None
    attempts: int = 0

    @property
    def other_region(self) -> str:
        return self.to_region if self.direction == "out" else self.from_region

    @property
    def prefix(self) -> str:
        """Where the new region keeps the move's files in its object store."""
        return f"imports/{self.tenant_id}/{self.move_id}/"

    def advanced(self, state: MoveState) -> Move:
        return replace(self, state=state, failure=None, attempts=0)

    def failed(self, reason: str) -> Move:
        return replace(self, state="failed", failure=reason)

    def waiting(self, error: str | None = None) -> Move:
        """The same step, later: at the next scan when there is nothing to do yet (the
        export runs, the other region imports), backing off after a transient error."""
        if error is None:
            return replace(self, failure=None)
        return replace(self, failure=error, attempts=self.attempts + 1)

    def with_import(self, service: str, tables: Any) -> Move:
        return replace(self, imported={**self.imported, service: tables})

    def next_service(self) -> str | None:
        return next((s for s in IMPORT_ORDER if s not in self.imported), None)


def next_attempt(move: Move, now: datetime, every: timedelta) -> datetime:
    """When the driver looks at the move again: at its next scan, but after transient
    errors, backing off (doubling from `every`, at most MAX_BACKOFF)."""
    if move.attempts == 0:
        return now
    delay: timedelta = min(every * (2 ** min(move.attempts - 1, 10)), MAX_BACKOFF)
    return now + delay
