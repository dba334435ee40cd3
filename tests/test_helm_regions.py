"""The chart's regions (issue 18): each region's release knows every region and the global
directory, and nothing in one region's manifests points at another region's data stores.

Rendered with `helm template`, as tests/test_helm.py does (its helpers, its tool lookup):
the region list and the directory's settings in every process (for any region list, by
property), the directory's database only in the hosting region's tenancy, each region's
Ingress hosts its own, values that name an unknown region or misplace the directory's
database refused at render time; then the residency check: every host, bucket and network
of one region's manifests against the other's data stores, and renders with one value
switched to the other region's proving that the check catches it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    render,
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


REGION_IDS = st.from_regex(r"[a-z][a-z0-9]{0,5}(-[a-z0-9]{1,4}){0,2}", fullmatch=True)
LABELS = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
# Whatever a jurisdiction may be (quotes, backslashes, any script), but no control characters.
JURISDICTIONS = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=20
).filter(str.strip)


@st.composite
def deployments(draw: st.DrawFn) -> tuple[list[Obj], str, str]:
    """(regions, own region, directory region) of a deployment of one to four regions."""
    ids = draw(st.lists(REGION_IDS, min_size=1, max_size=4, unique=True))
    regions = []
    for region in ids:
        domain = draw(LABELS)
        path = draw(st.sampled_from(["", "/api", "/t/v1"]))
        urls = {s: f"https://{s}.{region}.{domain}.test{path}" for s in SERVICES}
        regions.append({"id": region, "jurisdiction": draw(JURISDICTIONS), "urls": urls})
    return regions, draw(st.sampled_from(ids)), draw(st.sampled_from(ids))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(deployment=deployments())
def test_any_region_list_reaches_the_processes_as_given(
    tmp_path: Path, deployment: tuple[list[Obj], str, str]
) -> None:
    """The chart's JSON of the region list is the list, whatever its ids, jurisdictions and
    URLs; the directory's database follows the hosting region."""
    regions, own, directory = deployment
    hosting = own == directory
    values = {
        "region": own,
        "regions": regions,
        "directory": {
            "region": directory,
            "url": "",
            "database": {"existingSecret": "tenantry-directory-database" if hosting else ""},
        },
    }
    result = run_helm(
        *template_args("default"), "-f", write_values(tmp_path, values),
        "--show-only", "templates/deployment-api.yaml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    apis = {d["metadata"]["name"]: d for d in yaml.safe_load_all(result.stdout) if d}
    by_id = {r["id"]: r for r in regions}
    for service in SERVICES:
        (container,) = apis[f"tenantry-{service}-api"]["spec"]["template"]["spec"]["containers"]
        assert json.loads(value_of(container, "TENANTRY_REGIONS")) == regions
        assert value_of(container, "TENANTRY_DIRECTORY_REGION") == directory
        url = value_of(container, "TENANTRY_DIRECTORY_URL")
        if hosting:
            assert url == "http://tenantry-tenancy.tenantry.svc.cluster.local"
        else:
            assert url == by_id[directory]["urls"]["tenancy"]
        env = env_of(container)
        assert ("TENANTRY_DIRECTORY_DATABASE_URL" in env) is (hosting and service == "tenancy")
        mapped = RegionMap.from_settings(process_settings(container))
        assert mapped.hosts_directory is hosting
        assert mapped.own.jurisdiction == by_id[own]["jurisdiction"]
        if service == "identity":
            assert value_of(container, "TENANTRY_SSO_PUBLIC_URL") == by_id[own]["urls"]["identity"]


def test_identity_issues_tokens_under_its_region_url() -> None:
    for region in ("us", "eu"):
        (identity,) = [
            c for n, s, c in service_containers(region)
            if s == "identity" and n.endswith("-api")
        ]  # fmt: skip
        urls = {r["id"]: r["urls"] for r in expected_regions(region)}
        assert value_of(identity, "TENANTRY_SSO_PUBLIC_URL") == urls[region]["identity"]


def test_tenancy_fills_the_dpa_with_its_regions_legal_values() -> None:
    for region in ("us", "eu"):
        legal = region_values(region)["legal"]
        tenancy = [c for n, s, c in service_containers(region) if s == "tenancy"]
        assert tenancy
        for container in tenancy:
            assert (
                value_of(container, "TENANTRY_LEGAL_PROCESSOR_NAME")
                == (legal["processor"]["legalName"])
            )
            assert value_of(container, "TENANTRY_LEGAL_NOTICE_DAYS") == "30"
        others = [c for n, s, c in service_containers(region) if s != "tenancy"]
        assert all("TENANTRY_LEGAL_PROCESSOR_NAME" not in env_of(c) for c in others)


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


def test_each_region_serves_its_own_hostnames() -> None:
    for region in ("us", "eu"):
        urls = {r["id"]: r["urls"] for r in expected_regions(region)}[region]
        ingresses = {i["metadata"]["name"]: i for i in objects(region, "Ingress")}
        services = {o["metadata"]["name"] for o in objects(region, "Service")}
        hosts = set()
        for service in SERVICES:
            spec = ingresses[f"{fullname(region)}-{service}"]["spec"]
            (rule,) = spec["rules"]
            assert f"https://{rule['host']}" == urls[service]
            paths = {p["path"]: p for p in rule["http"]["paths"]}
            published = {"/v1", "/.well-known", "/schema"}
            published |= {"identity": {"/sso"}, "provisioning": {"/scim"}}.get(service, set())
            if service == "tenancy":  # moves are handed over between regions
                published.add("/internal/v1/moves")
            if service == "tenancy" and region == "us":  # us hosts the directory
                published.add("/internal/v1/directory")
            # Never the key API (/internal/v1/tenants), nor "/" (which would include it).
            assert set(paths) == published, (region, service, sorted(paths))
            for path in paths.values():
                assert path["pathType"] == "Prefix"
                backend = path["backend"]["service"]
                assert backend["name"] in services
                assert backend["port"] == {"name": "http"}
            assert spec["tls"] == [
                {"hosts": [rule["host"]], "secretName": f"tenantry-{region}-tls"}
            ]
            hosts.add(rule["host"])
        assert all(f".{region}.example.com" in h for h in hosts), hosts
    assert not objects("default", "Ingress"), "off unless asked"


# ---------------------------------------------------------------------------- bad values


def write_values(tmp_path: Path, values: Obj) -> str:
    """A values file. JSON (which YAML reads) quotes every string: YAML 1.1, which helm
    reads, takes a bare y, n, no or on for a boolean (a region "no" would be false)."""
    path = tmp_path / "override.yaml"
    path.write_text(json.dumps(values, ensure_ascii=False), encoding="utf-8")
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
        "default",
        ["--set", "ingress.enabled=true"],
        'ingress.enabled needs this region\'s public URLs: list region "local" under regions',
        id="ingress-without-regions",
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


# ---------------------------------------------------------------------------- residency


# Settings that locate a region's data stores. The DSNs come from Secrets of the release's
# own namespace (a secretKeyRef cannot name another namespace's), so their hosts are not in
# the manifest: PostgreSQL shows as the private network the policies let the pods reach.
DATA_STORE_SETTINGS = (
    "TENANTRY_KAFKA_BOOTSTRAP",
    "TENANTRY_REDIS_URL",
    "TENANTRY_S3_ENDPOINT",
    "TENANTRY_S3_BUCKET",
    "TENANTRY_DATABASE_URL",
    "TENANTRY_MIGRATION_DATABASE_URL",
    "TENANTRY_DIRECTORY_DATABASE_URL",
    "TENANTRY_DIRECTORY_MIGRATION_DATABASE_URL",
)
# The only values that name another region: the region list and the directory's URL.
CROSS_REGION_SETTINGS = {"TENANTRY_REGIONS", "TENANTRY_DIRECTORY_URL"}
PRIVATE_NETWORKS = [
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
]
URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.-]*://[^\s,\"'<>]+", re.IGNORECASE)
HOST_PORT_LIST = re.compile(r"[A-Za-z0-9.-]+:[0-9]+(,[A-Za-z0-9.-]+:[0-9]+)*")


def render_objects(variant: str, *extra: str) -> list[Obj]:
    result = render_with(variant, *extra)
    assert result.returncode == 0, f"helm template ({variant} {extra}) failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def locations_in(text: str) -> set[str]:
    """The hosts a value names: in URLs and DSNs (any scheme) and host:port lists."""
    found = set()
    for match in URL_IN_TEXT.finditer(text):
        host = urlsplit(match.group()).hostname
        if host:
            found.add(host.lower())
    if HOST_PORT_LIST.fullmatch(text):
        found |= {item.rsplit(":", 1)[0].lower() for item in text.split(",")}
    return found


def env_location(entry: Obj) -> set[str]:
    value = entry.get("value")
    if not isinstance(value, str):
        return set()  # from a Secret (valueFrom)
    if entry["name"].endswith("_BUCKET"):
        return {f"bucket:{value}"}
    return locations_in(value)


def locations(objs: Sequence[Obj]) -> Iterator[tuple[str, str]]:
    """(where, location) for every host, bucket and network the manifests name, anywhere
    (env values, args, ConfigMaps' data, Secrets' stringData, KEDA triggers, NetworkPolicy
    peers), except the values allowed to name another region."""

    def walk(node: Any, where: str) -> Iterator[tuple[str, str]]:
        if isinstance(node, dict):
            name = node.get("name")
            if isinstance(name, str) and name.startswith("TENANTRY_") and "value" in node:
                if name not in CROSS_REGION_SETTINGS:
                    yield from ((f"{where}.{name}", loc) for loc in env_location(node))
                return
            if isinstance(node.get("cidr"), str):
                yield f"{where}.cidr", node["cidr"]  # its `except` are networks it may not reach
                return
            for key, value in node.items():
                yield from walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                yield from walk(item, f"{where}[{index}]")
        elif isinstance(node, str):
            yield from ((where, loc) for loc in locations_in(node))

    for obj in objs:
        yield from walk(obj, f"{obj['kind']}/{obj['metadata']['name']}")


def data_stores(objs: Sequence[Obj]) -> set[str]:
    """A region's data stores as its manifests show them: the hosts and buckets of its
    data-store settings, and the private networks its pods may reach (its PostgreSQL,
    Kafka, Redis and S3 endpoint; the directory and the internet are public)."""
    found = set()
    for obj in objs:
        if obj["kind"] in ("Deployment", "Job"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                for name, entry in env_of(container).items():
                    if name in DATA_STORE_SETTINGS:
                        found |= env_location(entry)
        if obj["kind"] == "NetworkPolicy":
            for rule in obj["spec"].get("egress", []):
                for peer in rule.get("to", []):
                    if "ipBlock" in peer:
                        network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                        private = [p for p in PRIVATE_NETWORKS if p.version == network.version]
                        if any(network.subnet_of(p) for p in private):  # type: ignore[arg-type]
                            found.add(str(network))
    return found


def foreign_data_stores(objs: Sequence[Obj], foreign: Sequence[Obj]) -> dict[str, str]:
    """where -> location, for every value of `objs` naming one of `foreign`'s data stores."""
    theirs = data_stores(foreign)
    return {where: loc for where, loc in locations(objs) if loc in theirs}


def test_each_regions_data_stores_are_seen_in_its_own_manifests() -> None:
    """The collection is not vacuous: every data store a region file declares is found."""
    for region in ("us", "eu"):
        values = region_values(region)
        mine = data_stores(render(region))
        policy = values["networkPolicy"]
        expected = {
            *locations_in(values["kafka"]["bootstrapServers"]),
            *locations_in(values["redis"]["url"]),
            *locations_in(values["objectStore"]["endpoint"]),
            f"bucket:{values['objectStore']['bucket']}",
            *(policy[d]["to"][0]["ipBlock"]["cidr"] for d in ("postgres", "kafka", "redis")),
            policy["objectStore"]["to"][0]["ipBlock"]["cidr"],
        }
        assert len(expected) == 10, expected  # 3 brokers, Redis, S3, bucket, 4 networks
        assert expected <= mine, expected - mine
        found = {loc for _, loc in locations(render(region))}
        assert mine <= found, mine - found


def test_no_value_of_one_region_points_at_the_others_data_stores() -> None:
    us, eu = render("us"), render("eu")
    assert not foreign_data_stores(eu, us), foreign_data_stores(eu, us)
    assert not foreign_data_stores(us, eu), foreign_data_stores(us, eu)


def test_another_regions_public_urls_appear_only_in_the_region_list_and_directory() -> None:
    for region, other in (("us", "eu"), ("eu", "us")):
        (entry,) = [r for r in region_values(region)["regions"] if r["id"] == other]
        public = {host for url in entry["urls"].values() for host in locations_in(url)}
        leaks = {where: loc for where, loc in locations(render(region)) if loc in public}
        assert not leaks, f"{region} names {other}'s public hosts outside the region list: {leaks}"


US_REDIS = "rediss://redis.us.internal:6380/0"
# (override, the us location it names, where in eu's manifests the check must find it)
CROSSED = [
    pytest.param(
        ["--set", f"redis.url={US_REDIS}"],
        "redis.us.internal",
        "Deployment/tenantry-eu-ratelimit-api.spec.template.spec.containers[0].env[",
        id="redis",
    ),
    pytest.param(
        ["--set", "kafka.bootstrapServers=kafka-0.kafka.us.internal:9092"],
        "kafka-0.kafka.us.internal",
        "ScaledObject/tenantry-eu-tenancy-worker.spec.triggers[0].metadata.bootstrapServers",
        id="kafka",
    ),
    pytest.param(
        ["--set", "objectStore.endpoint=https://s3.us-east-1.amazonaws.com"],
        "s3.us-east-1.amazonaws.com",
        "Deployment/tenantry-eu-tenancy-worker.spec.template.spec.containers[0].env[",
        id="object-store",
    ),
    pytest.param(
        ["--set", "objectStore.bucket=tenantry-us-exports"],
        "bucket:tenantry-us-exports",
        "Deployment/tenantry-eu-tenancy-api.spec.template.spec.containers[0].env[",
        id="bucket",
    ),
    pytest.param(
        ["--set", "networkPolicy.postgres.to[0].ipBlock.cidr=10.10.8.0/24"],
        "10.10.8.0/24",
        "NetworkPolicy/tenantry-eu-identity-api.spec.egress[",
        id="postgres-network",
    ),
    pytest.param(
        ["--set", f"services.webhooks.worker.extraEnv.TENANTRY_CACHE_URL={US_REDIS}"],
        "redis.us.internal",
        "Deployment/tenantry-eu-webhooks-worker.spec.template.spec.containers[0].env[",
        id="extra-env",
    ),
]


@pytest.mark.parametrize(("override", "location", "where"), CROSSED)
def test_the_check_catches_an_eu_value_pointing_at_a_us_data_store(
    override: list[str], location: str, where: str
) -> None:
    """The same check on eu rendered with one value changed to us's: it must say where."""
    crossed = foreign_data_stores(render_objects("eu", *override), render("us"))
    assert any(w.startswith(where) and loc == location for w, loc in crossed.items()), crossed
    assert not foreign_data_stores(render("eu"), render("us")), "the unchanged render is clean"
