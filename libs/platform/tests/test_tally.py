"""Tally: a counter of plain integers, read as an OpenTelemetry monotonic sum."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum

from tenantry_platform.telemetry import Tally


def test_a_tally_reads_as_a_monotonic_counter_per_attribute_set() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    tally = Tally(meter, "tenantry.test.things", "things counted")
    for _ in range(3):
        tally.add(1, {"path": "redis", "outcome": "allowed"})
    tally.add(5, {"path": "local", "outcome": "limited"})

    def points() -> dict[tuple[tuple[str, str], ...], int]:
        data = reader.get_metrics_data()
        assert data is not None
        (metric,) = [
            m
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == "tenantry.test.things"
        ]
        assert isinstance(metric.data, Sum)
        assert metric.data.is_monotonic
        return {
            tuple(sorted((k, str(v)) for k, v in (p.attributes or {}).items())): int(p.value)
            for p in metric.data.data_points
        }

    assert points() == {
        (("outcome", "allowed"), ("path", "redis")): 3,
        (("outcome", "limited"), ("path", "local")): 5,
    }
    tally.add(1, {"path": "redis", "outcome": "allowed"})
    assert points()[(("outcome", "allowed"), ("path", "redis"))] == 4
