"""OpenTelemetry and JSON logs, configured once per process.

Traces: the ASGI middleware opens a server span per request (continuing an incoming W3C
`traceparent`), the envelope carries it into Kafka, and consumers continue it. The
exporter is a setting: none, console, or memory (tests read spans back).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime

from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
memory_exporter = InMemorySpanExporter()
_configured = False


def setup_telemetry(service: str, exporter: str, region: str) -> None:
    global _configured
    if _configured:
        return
    _configured = True
    resource = Resource.create(
        {
            "service.name": f"tenantry-{service}",
            "service.namespace": "tenantry",
            "cloud.region": region,
        }
    )
    provider = TracerProvider(resource=resource)
    chosen: SpanExporter | None = {
        "console": ConsoleSpanExporter(out=sys.stderr),
        "memory": memory_exporter,
    }.get(exporter)
    if chosen is not None:
        provider.add_span_processor(SimpleSpanProcessor(chosen))
    trace.set_tracer_provider(provider)
    # Metrics leave through /metrics in the Prometheus text format (app.py), which is what
    # a Kubernetes cluster scrapes; the reader bridges OpenTelemetry instruments to it.
    # No exemplars: the Prometheus text format carries none, and sampling them is a
    # measurable part of every instrument call on hot paths.
    metrics.set_meter_provider(
        MeterProvider(
            resource=resource,
            metric_readers=[PrometheusMetricReader()],
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
    )


class Tally:
    """A monotonic counter kept in plain integers per attribute set and reported through
    an observable counter when metrics are read. For per-request hot paths: the SDK's
    `Counter.add` (attribute hashing, a lock, aggregation) costs a few microseconds per
    call, several of which were a tenth of a rate-limit decision's CPU. Reads the same
    as a Counter (`<name>_total` in /metrics)."""

    def __init__(self, meter: Meter, name: str, description: str, unit: str = "1") -> None:
        self._counts: dict[tuple[tuple[str, str], ...], int] = {}
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, amount: int, attributes: Mapping[str, str]) -> None:
        key = tuple(attributes.items())
        self._counts[key] = self._counts.get(key, 0) + amount

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(count, dict(key)) for key, count in list(self._counts.items())]


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never pass secrets to a logger."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = f"{span.trace_id:032x}"
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(service: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx and httpcore log every request's full URL at INFO: webhook targets (customer
    # data, sometimes with a token in the query), directory lookups naming other regions'
    # tenants. Our own log lines say what was called, without the URL's secrets.
    for noisy in ("aiokafka", "faststream", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
