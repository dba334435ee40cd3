"""The chart's regions (issue 18): each region's release knows every region and the global
directory, and nothing in one region's manifests points at another region's data stores.

Rendered with `helm template`, as tests/test_helm.py does (its helpers, its tool lookup):
the region list and the directory's settings in every process, the directory's database
only in the hosting region's tenancy, values that name an unknown region or misplace the
directory's database refused at render time.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tenantry_regions.regions import RegionMap

from .test_helm import (
    HELM_DIR,
    SERVICES,
    VARIANTS,
    Obj,
    env_of,
    fullname,
    objects,
    pod_specs,
    process_settings,
    render_notes,
    run_helm,
    template_args,
)

REGION_FILES = {"us": HELM_DIR / "values-us.yaml", "eu": HELM_DIR / "values-eu.yaml"}
# Which region's values hosts the directory, per rendered variant (default: its only region).
HOSTS_DIRECTORY = {"default": True, "keda": True, "us": True, "eu": False}
DIRECTORY_DATABASE = (
    "TENANTRY_DIRECTORY_DATABASE_URL",
    "TENANTRY_DIRECTORY_MIGRATION_DATABASE_URL",
)


def region_values(region: str) -> Obj:
    values: Obj = yaml.safe_load(REGION_FILES[region].read_text())
    return values


def render_with(variant: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_helm(*template_args(variant), *extra)


def service_containers(variant: str) -> list[tuple[str, str, Obj]]:
    """(kind/name, service, container) of every api, worker and migration container."""
    found = []
    for name, pod in pod_specs(variant):
        for container in pod["containers"]:
            if container["name"] == "topics":
                continue  # the topic tool: a Kafka admin client, not a service process
            service = name.split("/", 1)[1].removeprefix(f"{fullname(variant)}-").split("-")[0]
            assert service in SERVICES, name
            found.append((name, service, container))
    return found


def value_of(container: Obj, name: str) -> str:
    entry = env_of(container)[name]
    assert "value" in entry, f"{name} must be a plain value"
    value: str = entry["value"]
    return value


# ---------------------------------------------------------------------------- the region list


def expected_regions(region: str) -> list[Obj]:
    return [
        {"id": r["id"], "jurisdiction": r["jurisdiction"], "urls": r["urls"]}
        for r in region_values(region)["regions"]
    ]


def test_both_region_files_list_the_same_regions_and_directory() -> None:
    us, eu = region_values("us"), region_values("eu")
    assert us["regions"] == eu["regions"]
    assert {r["id"] for r in us["regions"]} == {"us", "eu"}
    assert us["directory"]["region"] == eu["directory"]["region"] == "us"
    assert us["directory"]["secret"] == eu["directory"]["secret"], "one value for all regions"


@pytest.mark.parametrize("variant", ["us", "eu"])
def test_every_process_gets_the_region_list_and_the_directory(variant: str) -> None:
    regions = expected_regions(variant)
    namespace = VARIANTS[variant][1]
    services = {o["metadata"]["name"] for o in objects(variant, "Service")}
    for name, _service, container in service_containers(variant):
        assert value_of(container, "TENANTRY_REGION") == variant, name
        assert json.loads(value_of(container, "TENANTRY_REGIONS")) == regions, name
        assert value_of(container, "TENANTRY_DIRECTORY_REGION") == "us", name
        directory = value_of(container, "TENANTRY_DIRECTORY_URL")
        if variant == "us":
            # The hosting region reaches its own tenancy inside the cluster.
            tenancy = f"{fullname(variant)}-tenancy"
            assert tenancy in services
            assert directory == f"http://{tenancy}.{namespace}.svc.cluster.local", name
        else:
            assert directory == "https://tenancy.us.example.com", name
        env = env_of(container)
        if name.endswith("-migrate"):
            assert "TENANTRY_DIRECTORY_SECRET" not in env, f"{name}: a migration calls nobody"
        else:
            secret = env["TENANTRY_DIRECTORY_SECRET"]["valueFrom"]["secretKeyRef"]
            assert secret == {"name": "tenantry-directory", "key": "secret"}, name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_process_makes_a_region_map_of_its_environment(variant: str) -> None:
    """What tenantry_regions makes of each container's environment (Secret values replaced
    by placeholders): the chart's values are ones the processes accept."""
    for name, _service, container in service_containers(variant):
        regions = RegionMap.from_settings(process_settings(container))
        assert regions.hosts_directory is HOSTS_DIRECTORY[variant], name
        if variant in REGION_FILES:
            assert regions.ids == ["eu", "us"], name
            assert regions.own.id == variant, name
            assert regions.own.jurisdiction == variant.upper(), name
        else:
            assert regions.ids == ["local"], name


def test_identity_issues_tokens_under_its_region_url() -> None:
    for region in ("us", "eu"):
        (identity,) = [
            c for n, s, c in service_containers(region)
            if s == "identity" and n.endswith("-api")
        ]  # fmt: skip
        urls = {r["id"]: r["urls"] for r in expected_regions(region)}
        assert value_of(identity, "TENANTRY_SSO_PUBLIC_URL") == urls[region]["identity"]


def test_a_single_region_release_hosts_its_own_directory() -> None:
    for name, _service, container in service_containers("default"):
        assert value_of(container, "TENANTRY_REGIONS") == "", name
        assert value_of(container, "TENANTRY_DIRECTORY_REGION") == "local", name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_directory_database_is_only_in_the_hosting_regions_tenancy(variant: str) -> None:
    seen = set()
    for name, service, container in service_containers(variant):
        env = env_of(container)
        present = {v for v in DIRECTORY_DATABASE if v in env}
        if service != "tenancy" or not HOSTS_DIRECTORY[variant]:
            assert not present, f"{name}: {present}"
            continue
        migration = name.endswith("-migrate")
        assert present == ({*DIRECTORY_DATABASE} if migration else {DIRECTORY_DATABASE[0]}), name
        refs = {v: env[v]["valueFrom"]["secretKeyRef"] for v in present}
        assert {r["name"] for r in refs.values()} == {"tenantry-directory-database"}, name
        own = env["TENANTRY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"]
        assert own != "tenantry-directory-database", "the directory has its own database"
        seen.add(name.split("/")[0] + ("-migrate" if migration else ""))
    if HOSTS_DIRECTORY[variant]:
        assert seen == {"Deployment", "Job-migrate"}, seen


def egress_cidrs(variant: str, policy: str) -> set[str]:
    (found,) = [p for p in objects(variant, "NetworkPolicy") if p["metadata"]["name"] == policy]
    return {
        peer["ipBlock"]["cidr"]
        for rule in found["spec"]["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    }


def test_only_the_replica_region_may_reach_the_directory_across_regions() -> None:
    directory = region_values("eu")["networkPolicy"]["directory"]["to"][0]["ipBlock"]["cidr"]
    for service in SERVICES:
        for role in ("api", "worker"):
            assert directory in egress_cidrs("eu", f"tenantry-eu-{service}-{role}")
            assert directory not in egress_cidrs("us", f"tenantry-us-{service}-{role}")


# ---------------------------------------------------------------------------- bad values


def write_values(tmp_path: Path, values: Obj) -> str:
    path = tmp_path / "override.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_a_values_file_naming_an_unknown_directory_region_fails(tmp_path: Path) -> None:
    result = render_with("eu", "-f", write_values(tmp_path, {"directory": {"region": "apac"}}))
    assert result.returncode != 0, "an unknown directory region was accepted"
    assert 'directory.region "apac" is not one of regions (us, eu)' in result.stderr


BAD_REGION_VALUES = [
    pytest.param(
        "us",
        ["--set", "directory.database.existingSecret="],
        'region "us" hosts the global directory (directory.region), so its tenancy needs the '
        "directory's database: set directory.database.existingSecret",
        id="hosting-without-directory-database",
    ),
    pytest.param(
        "eu",
        ["--set", "directory.database.existingSecret=tenantry-directory-database"],
        'directory.database.existingSecret is set, but region "us" hosts the directory, not "eu"',
        id="replica-with-directory-database",
    ),
    pytest.param(
        "eu",
        ["--set", "region=apac"],
        'regions (us, eu) does not list this release\'s region "apac"',
        id="own-region-not-listed",
    ),
    pytest.param(
        "us",
        ["--set", "regions[1].id=us"],
        'regions: "us" is listed twice',
        id="region-listed-twice",
    ),
    pytest.param(
        "default",
        ["--set", "directory.region=us"],
        'directory.region "us": regions is empty, so region "local" is the deployment\'s only',
        id="single-region-elsewhere",
    ),
    pytest.param(
        "eu",
        ["--set", "services.identity.sso.publicUrl=https://auth.example.com"],
        "services.identity.sso.publicUrl (https://auth.example.com) differs from identity's "
        "URL in regions (https://auth.eu.example.com)",
        id="issuer-differs",
    ),
    pytest.param(
        "us",
        ["--set", "regions[1].urls.identity=https://auth.us.example.com"],
        "regions us and eu share identity's URL https://auth.us.example.com: each region's "
        "access tokens name their region by it",
        id="shared-issuer",
    ),
    pytest.param(
        "us",
        ["--set", "regions[0].urls.tenancy=tenancy.us.example.com"],
        "at '/regions/0/urls/tenancy': 'tenancy.us.example.com' does not match pattern",
        id="url-without-scheme",
    ),
    pytest.param(
        "us",
        ["--set", "regions[0].urls.webhooks=null"],
        "at '/regions/0/urls/webhooks': got null, want string",
        id="region-without-a-service-url",
    ),
    pytest.param(
        "eu",
        ["--set", "directory.region=EU"],
        "at '/directory/region'",
        id="directory-region-format",
    ),
]


@pytest.mark.parametrize(("variant", "args", "message"), BAD_REGION_VALUES)
def test_bad_region_values_are_refused_with_a_clear_message(
    variant: str, args: list[str], message: str
) -> None:
    result = render_with(variant, *args)
    assert result.returncode != 0, f"helm template accepted {args}"
    assert message in result.stderr, result.stderr


def test_notes_say_which_region_hosts_the_directory(tmp_path: Path) -> None:
    us = render_notes(tmp_path / "us", "us")
    assert "This region hosts the global directory of regions us, eu" in us
    eu = render_notes(tmp_path / "eu", "eu")
    assert 'The global directory is region "us"\'s' in eu
    assert "from https://tenancy.us.example.com" in eu
    assert "WARNINGS" not in eu, eu
