from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantry_platform.settings import ServiceSettings, SettingsError
from tenantry_regions.regions import (
    SERVICES,
    Region,
    RegionMap,
    UnknownRegion,
    region_of_token,
    routable_token,
)


def urls(host: str) -> dict[str, str]:
    return {service: f"https://{service}.{host}/" for service in SERVICES}


US = Region(id="us", jurisdiction="US", urls=urls("us.example.com"))
EU = Region(id="eu", jurisdiction="EU", urls=urls("eu.example.com"))


def settings(
    region: str, regions: str = "", directory_region: str = "", service_urls: str = ""
) -> ServiceSettings:
    return ServiceSettings(
        database_url="postgresql://x/y",
        kafka_bootstrap="k:9092",
        region=region,
        regions=regions,
        directory_region=directory_region,
        service_urls=service_urls,
    )


def test_one_region_needs_no_list_and_hosts_its_own_directory() -> None:
    regions = RegionMap.from_settings(
        settings(
            region="local",
            service_urls="tenancy=http://127.0.0.1:8101,identity=http://127.0.0.1:8102",
        )
    )
    assert regions.ids == ["local"]
    assert regions.hosts_directory
    assert not regions.is_multi_region
    assert regions.own.url("tenancy") == "http://127.0.0.1:8101"
    assert regions.own.issuer == "http://127.0.0.1:8102"


def test_the_list_comes_from_json_and_names_the_directory_region() -> None:
    listed = json.dumps(
        [{"id": r.id, "jurisdiction": r.jurisdiction, "urls": r.urls} for r in (US, EU)]
    )
    regions = RegionMap.from_settings(settings(region="eu", regions=listed, directory_region="us"))
    assert regions.ids == ["eu", "us"]
    assert regions.own.id == "eu"
    assert not regions.hosts_directory
    assert regions.require("us").jurisdiction == "US"
    # Trailing slashes are dropped once, so redirects and issuers compare exactly.
    assert regions.redirect_url("us", "identity", "/v1/tenants/x", "a=1") == (
        "https://identity.us.example.com/v1/tenants/x?a=1"
    )
    assert regions.region_of_issuer("https://identity.us.example.com") == "us"
    assert regions.region_of_issuer("https://identity.us.example.com/") == "us"
    assert regions.region_of_issuer("https://identity.elsewhere") is None


@pytest.mark.parametrize(
    ("own", "listed", "directory", "message"),
    [
        ("ap", [US, EU], "", "unknown region 'ap'"),
        ("us", [US, EU], "ap", "unknown region 'ap'"),
        ("us", [US, US], "", "listed twice"),
        ("us", [US, Region(id="EU", urls=urls("x"))], "", "not lower-case"),
        ("us", [US, Region(id="eu", urls={"tenancy": "https://t"})], "", "no URL for identity"),
        ("us", [US, Region(id="eu", urls=US.urls)], "", "share an identity URL"),
    ],
)
def test_a_bad_region_list_stops_the_process_naming_the_problem(
    own: str, listed: list[Region], directory: str, message: str
) -> None:
    raw = json.dumps([{"id": r.id, "urls": r.urls} for r in listed])
    with pytest.raises(SettingsError, match=message):
        RegionMap.from_settings(settings(region=own, regions=raw, directory_region=directory))


def test_malformed_json_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="TENANTRY_REGIONS"):
        RegionMap.from_settings(settings(region="us", regions="[{"))


@given(st.text(max_size=20))
def test_only_listed_regions_are_real(region_id: str) -> None:
    regions = RegionMap("us", [US, EU])
    if region_id in ("us", "eu"):
        assert regions.require(region_id).id == region_id
    else:
        with pytest.raises(UnknownRegion) as raised:
            regions.require(region_id)
        assert raised.value.known == ["eu", "us"]


@given(st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True))
def test_a_routable_token_names_its_region_and_nothing_else_parses_as_one(region: str) -> None:
    token = routable_token("rt", region)
    assert region_of_token("rt", token) == region
    assert region_of_token("code", token) is None  # another kind's token
    assert region_of_token("rt", token.replace(".", "", 1)) is None
    assert len(token.partition(".")[2]) >= 43  # 256 random bits, base64url


@given(st.text(max_size=80))
def test_arbitrary_text_names_no_region_or_a_valid_one(text: str) -> None:
    found = region_of_token("rt", text)
    assert found is None or (text.startswith(f"rt_{found}.") and bool(found))
