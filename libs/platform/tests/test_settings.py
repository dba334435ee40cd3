from __future__ import annotations

import pytest

from tenantry_platform.settings import ServiceSettings, SettingsError, load_settings

BASE = {
    "TENANTRY_DATABASE_URL": "postgresql://u:p@127.0.0.1:5433/db",
    "TENANTRY_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
}


def test_settings_load_and_coerce_from_strings() -> None:
    settings = load_settings(ServiceSettings, {**BASE, "TENANTRY_HTTP_PORT": "8123"})
    assert settings.http_port == 8123
    assert settings.kafka_bootstrap == "127.0.0.1:9092"


def test_a_missing_setting_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(ServiceSettings, {"TENANTRY_KAFKA_BOOTSTRAP": "x"})
    assert "TENANTRY_DATABASE_URL is required" in str(info.value)


def test_a_malformed_setting_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(ServiceSettings, {**BASE, "TENANTRY_HTTP_PORT": "eighty"})
    assert "TENANTRY_HTTP_PORT" in str(info.value)


def test_service_urls_are_looked_up_by_name() -> None:
    settings = load_settings(
        ServiceSettings,
        {**BASE, "TENANTRY_SERVICE_URLS": "tenancy=http://127.0.0.1:1,identity=http://127.0.0.1:2"},
    )
    assert settings.service_url("identity") == "http://127.0.0.1:2"
    with pytest.raises(KeyError):
        settings.service_url("webhooks")


def test_a_concurrency_conflict_is_a_409_problem() -> None:
    from tenantry_events.storage import ConcurrencyConflict
    from tenantry_http.problems import problem_from_exception

    problem = problem_from_exception(ConcurrencyConflict("tenant-1", 3, 4))
    assert problem.status == 409
    assert problem.slug == "concurrency-conflict"
    assert problem.extensions["current_version"] == 4
