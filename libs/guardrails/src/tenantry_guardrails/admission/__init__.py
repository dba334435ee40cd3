"""Per-instance admission control: a concurrency limit, a bounded fair queue in front of it,
and priority classes that decide who waits and who is shed first under overload.

Anchors: Netflix concurrency-limits (Gradient2 and AIMD limits), Stripe's fleet load
shedder (capacity reserved for critical traffic), Google SRE "Handling overload"
(criticality classes, drop work that has outlived its deadline before doing any).

The pieces, from the inside out, one module each (this package re-exports their public
names, so callers import from `tenantry_guardrails.admission`):

- `priorities`: `Priority` (critical, default, sheddable) and `Rejected` with its reason.
- `settings`: `AdmissionSettings`, every knob, validated at start-up.
- `limits`: `ConcurrencyLimit`, how many requests may run at once (`FixedLimit`, or
  adaptive `Gradient2Limit` / `AimdLimit` fed one aggregate per `WindowedLimit` window).
  Pure.
- `controller`: `AdmissionController`, the slots and the queue. A class may start work
  only while the in-flight count is under its share of the limit (sheddable 50 %, default
  85 %, critical 100 % by default), so the top of the limit is always free for critical
  work. Waiters are served highest class first, round-robin across fairness keys (tenants)
  within a class, FIFO within a key. Every waiter has a deadline and is dropped, never
  run, once past it.
- `loop_lag`: `LoopLagMonitor`, how late the event loop runs (the utilization shedder).
- `instruments`: the OpenTelemetry counters and gauges.
- `gate`: the HTTP edge. `AdmissionGate` is the outermost ASGI layer of every service
  (before tracing, request ids and Litestar's routing): it classifies a request by the
  route it will reach (`RouteTable`), waits for a slot, answers a fast 503 problem+json
  with Retry-After when refused, and feeds the handler's latency back into the limit.
"""

from tenantry_guardrails.admission.controller import AdmissionController, AdmissionSnapshot, Ticket
from tenantry_guardrails.admission.gate import (
    PRIORITY_HEADER,
    TIMEOUT_HEADER,
    AdmissionGate,
    RouteTable,
    admit,
    client_deadline,
    fairness_key,
    rejection_problem,
    request_priority,
)
from tenantry_guardrails.admission.limits import (
    AimdLimit,
    ConcurrencyLimit,
    FixedLimit,
    Gradient2Limit,
    WindowedLimit,
    build_limit,
)
from tenantry_guardrails.admission.loop_lag import LoopLagMonitor
from tenantry_guardrails.admission.priorities import (
    PRIORITIES,
    Clock,
    Priority,
    Rejected,
    RejectReason,
)
from tenantry_guardrails.admission.settings import AdmissionSettings, LimitMode

__all__ = [
    "PRIORITIES",
    "PRIORITY_HEADER",
    "TIMEOUT_HEADER",
    "AdmissionController",
    "AdmissionGate",
    "AdmissionSettings",
    "AdmissionSnapshot",
    "AimdLimit",
    "Clock",
    "ConcurrencyLimit",
    "FixedLimit",
    "Gradient2Limit",
    "LimitMode",
    "LoopLagMonitor",
    "Priority",
    "RejectReason",
    "Rejected",
    "RouteTable",
    "Ticket",
    "WindowedLimit",
    "admit",
    "build_limit",
    "client_deadline",
    "fairness_key",
    "rejection_problem",
    "request_priority",
]
