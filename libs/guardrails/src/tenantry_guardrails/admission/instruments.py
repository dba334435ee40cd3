"""Admission's OpenTelemetry instruments: counters of admitted and refused requests, and
gauges of every live controller's limit, in-flight and queued requests."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from tenantry_guardrails.admission.priorities import PRIORITIES, Priority, RejectReason
from tenantry_platform.telemetry import Tally

if TYPE_CHECKING:
    from tenantry_guardrails.admission.controller import AdmissionController


class AdmissionInstruments:
    def __init__(self) -> None:
        meter = metrics.get_meter("tenantry.admission")
        # Counted once per request: a Tally (plain ints, read when metrics are).
        self.admitted = Tally(
            meter,
            "tenantry.admission.admitted",
            unit="{request}",
            description="Requests given a concurrency slot",
        )
        self.rejected = meter.create_counter(
            "tenantry.admission.rejected",
            unit="{request}",
            description="Requests refused by admission control, by reason",
        )
        meter.create_observable_gauge(
            "tenantry.admission.limit",
            callbacks=[_observe_limit],
            unit="{request}",
            description="Current concurrency limit",
        )
        meter.create_observable_gauge(
            "tenantry.admission.inflight",
            callbacks=[_observe_inflight],
            unit="{request}",
            description="Requests holding a slot",
        )
        meter.create_observable_gauge(
            "tenantry.admission.queued",
            callbacks=[_observe_queued],
            unit="{request}",
            description="Requests waiting for a slot, by priority",
        )


# Instruments are created once per process (a second registration under the same name
# would be ignored by the SDK); the gauges read every live controller.
live_controllers: weakref.WeakSet[AdmissionController] = weakref.WeakSet()


@functools.cache
def instruments() -> AdmissionInstruments:
    return AdmissionInstruments()


@functools.cache
def attributes(priority: Priority, reason: RejectReason | None = None) -> Mapping[str, str]:
    if reason is None:
        return {"priority": priority.value}
    return {"priority": priority.value, "reason": reason.value}


def _observe_limit(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(c.limit, {"pool": c.name}) for c in list(live_controllers)]


def _observe_inflight(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(c.inflight, {"pool": c.name}) for c in list(live_controllers)]


def _observe_queued(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(c.queued(p), {"pool": c.name, "priority": p.value})
        for c in list(live_controllers)
        for p in PRIORITIES
    ]
