"""W3C trace context carried from an HTTP request, through the event store and Kafka,
into the consumer that handles the event."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
tracer = trace.get_tracer("tenantry.events")


def current_trace_headers() -> tuple[str | None, str | None]:
    """The current span as (traceparent, tracestate), or (None, None) outside any span."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent"), carrier.get("tracestate")


@contextmanager
def continued_span(
    name: str, traceparent: str | None, tracestate: str | None, **attributes: str
) -> Iterator[trace.Span]:
    """A consumer span whose parent is the producer's span named in the event."""
    carrier = {k: v for k, v in (("traceparent", traceparent), ("tracestate", tracestate)) if v}
    parent = _PROPAGATOR.extract(carrier)
    token = otel_context.attach(parent)
    try:
        with tracer.start_as_current_span(
            name, kind=trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:
            yield span
    finally:
        otel_context.detach(token)
