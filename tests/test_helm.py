"""The Helm chart (deploy/helm) and the images (deploy/docker), checked without a cluster or
a container engine.

`helm lint --strict`; `helm template` for the default values, each region's values file
and a KEDA variant; every rendered object validated offline against the Kubernetes 1.30
schemas (kubernetes-validate, strict: unknown fields fail) and ScaledObjects against
KEDA's CRD schema; then the rules the chart promises (probes, resources, one autoscaler
and a PDB per workload, nothing as root, the region everywhere, NetworkPolicies, migration
hooks), values.schema.json refusing bad values with a clear message, NOTES.txt, and a
static read of the Dockerfile.

helm and the KEDA schema come from `bash deploy/helm/install-tools.sh`; without them these
tests fail (never skip).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tenantry_events.topics import CONSUMER_GROUPS
from tenantry_platform.settings import ServiceSettings, load_settings

REPO = Path(__file__).resolve().parents[1]
HELM_DIR = REPO / "deploy" / "helm"
CHART = HELM_DIR / "tenantry"
INSTALL_TOOLS = HELM_DIR / "install-tools.sh"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
KUBE_VERSION = "1.30.0"
SERVICES = ("tenancy", "identity", "provisioning", "webhooks", "ratelimit")
ROLES = ("api", "worker")
UID = 10001
KEDA_API = "keda.sh/v1alpha1/ScaledObject"
COMPONENT = "app.kubernetes.io/component"
# Settings that are secrets: always from a Secret, never a plain value in the manifest.
SECRET_SETTINGS = {
    "TENANTRY_DATABASE_URL",
    "TENANTRY_MIGRATION_DATABASE_URL",
    "TENANTRY_MASTER_KEY",
    "TENANTRY_INTERNAL_API_SECRET",
    "TENANTRY_BOOTSTRAP_SECRET",
    "TENANTRY_SSO_CLIENT_SECRET",
    "TENANTRY_SMTP_PASSWORD",
    "TENANTRY_DIRECTORY_SECRET",
    "TENANTRY_REDIS_PASSWORD",
    "TENANTRY_S3_ACCESS_KEY",
    "TENANTRY_S3_SECRET_KEY",
    "TENANTRY_DIRECTORY_DATABASE_URL",
    "TENANTRY_DIRECTORY_MIGRATION_DATABASE_URL",
}
INSTALL_HINT = "run `bash deploy/helm/install-tools.sh` (it installs helm into .local/bin)"

Obj = dict[str, Any]

# name -> (release, namespace, extra helm arguments)
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    "default": ("tenantry", "tenantry", []),
    "us": ("tenantry-us", "tenantry-us", ["-f", str(HELM_DIR / "values-us.yaml")]),
    "eu": ("tenantry-eu", "tenantry-eu", ["-f", str(HELM_DIR / "values-eu.yaml")]),
    # KEDA for every worker but webhooks' (an override to false must win over the global on).
    "keda": (
        "tenantry",
        "tenantry",
        ["--set", "keda.enabled=true", "--set", "services.webhooks.worker.keda.enabled=false"],
    ),
}
KEDA_WORKERS = {
    "default": set(),
    "us": set(SERVICES),
    "eu": set(SERVICES),
    "keda": set(SERVICES) - {"webhooks"},
}


# ---------------------------------------------------------------------------- tools


@functools.cache
def helm() -> str:
    local = REPO / ".local" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("helm")
    if found:
        return found
    pytest.fail(f"helm is not installed: {INSTALL_HINT}", pytrace=False)


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), *args], capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def keda_schema() -> Obj:
    """The ScaledObject schema install-tools.sh converted from KEDA's CRD (its version is
    the one the script pins)."""
    match = re.search(
        r'KEDA_VERSION="\$\{TENANTRY_KEDA_VERSION:-(v[0-9.]+)\}"', INSTALL_TOOLS.read_text()
    )
    assert match, "deploy/helm/install-tools.sh no longer pins KEDA_VERSION"
    path = REPO / ".local" / "helm-tools" / f"keda-{match.group(1)}" / "scaledobject.json"
    if not path.is_file():
        pytest.fail(f"no KEDA ScaledObject schema at {path}: {INSTALL_HINT}", pytrace=False)
    schema: Obj = json.loads(path.read_text())["versions"]["keda.sh/v1alpha1"]
    return schema


def template_args(variant: str) -> list[str]:
    release, namespace, extra = VARIANTS[variant]
    return [
        "template", release, str(CHART), "--namespace", namespace,
        "--kube-version", KUBE_VERSION, "--api-versions", KEDA_API, *extra,
    ]  # fmt: skip


@functools.cache
def render(variant: str) -> tuple[Obj, ...]:
    result = run_helm(*template_args(variant))
    assert result.returncode == 0, f"helm template ({variant}) failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(variant: str, kind: str) -> list[Obj]:
    return [o for o in render(variant) if o["kind"] == kind]


def by_name(variant: str, kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects(variant, kind)}


def fullname(variant: str) -> str:
    return VARIANTS[variant][0]


def workload(variant: str, service: str, role: str) -> str:
    return f"{fullname(variant)}-{service}-{role}"


def pod_specs(variant: str) -> Iterator[tuple[str, Obj]]:
    """(kind/name, pod spec) of every Deployment and Job."""
    for obj in render(variant):
        if obj["kind"] in ("Deployment", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]["spec"]


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


variants = pytest.mark.parametrize("variant", list(VARIANTS))


# ---------------------------------------------------------------------------- lint, schemas


def test_helm_lint_strict() -> None:
    # Region files with KEDA off: lint cannot declare KEDA's API, and the chart refuses
    # KEDA on a cluster that lacks it (tested below), which lint would only report.
    for extra in (
        [],
        ["-f", str(HELM_DIR / "values-us.yaml"), "--set", "keda.enabled=false"],
        ["-f", str(HELM_DIR / "values-eu.yaml"), "--set", "keda.enabled=false"],
    ):
        result = run_helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *extra)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "0 chart(s) failed" in output, output
        assert not re.search(r"\[(WARNING|ERROR)\]|Fail:", output), output


@variants
def test_every_object_matches_the_kubernetes_and_keda_schemas(variant: str) -> None:
    kinds = {o["kind"] for o in render(variant)}
    assert {
        "Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler",
        "PodDisruptionBudget", "NetworkPolicy", "Job",
    } <= kinds  # fmt: skip
    identities = [(o["kind"], o["metadata"]["name"]) for o in render(variant)]
    assert len(identities) == len(set(identities)), "two objects of one kind share a name"
    keda = jsonschema.Draft7Validator(keda_schema())
    for obj in render(variant):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["apiVersion"] == "keda.sh/v1alpha1":
            problems = [f"{list(e.absolute_path)}: {e.message}" for e in keda.iter_errors(obj)]
            assert not problems, f"{name} breaks KEDA's CRD schema: {problems}"
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {list(exc.path)}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{name}: {exc.message}")


def test_the_keda_schema_catches_mistakes() -> None:
    """The converted CRD schema refuses unknown fields and wrong types (it is not vacuous)."""
    scaled = objects("keda", "ScaledObject")[0]
    validator = jsonschema.Draft7Validator(keda_schema())
    typo = json.loads(json.dumps(scaled))
    typo["spec"]["maxReplicas"] = 3
    assert any("maxReplicas" in e.message for e in validator.iter_errors(typo))
    wrong = json.loads(json.dumps(scaled))
    wrong["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 100  # must be a string
    assert list(validator.iter_errors(wrong))


# ---------------------------------------------------------------------------- workloads


@variants
def test_two_deployments_per_service_running_its_own_command(variant: str) -> None:
    deployments = by_name(variant, "Deployment")
    expected = {workload(variant, s, r) for s in SERVICES for r in ROLES}
    assert set(deployments) == expected
    for service in SERVICES:
        for role in ROLES:
            spec = deployments[workload(variant, service, role)]["spec"]
            assert "replicas" not in spec, "replicas belong to the autoscaler"
            (container,) = spec["template"]["spec"]["containers"]
            image = container["image"].rsplit("/", 1)[-1]
            assert re.fullmatch(rf"tenantry-{service}[:@].+", image), container["image"]
            assert container["args"] == [role]
            assert "command" not in container, "the image's ENTRYPOINT is the service's command"


@variants
def test_every_container_is_hardened_and_sized(variant: str) -> None:
    for name, pod in pod_specs(variant):
        pod_security = pod["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] == UID, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        writable = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        assert writable == {"tmp"}, name
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{name} container {container['name']}"
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True, where
            assert security.get("runAsUser", UID) != 0, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security.get("privileged", False) is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, where
            resources = container["resources"]
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert mounts == {"/tmp"}, where


def probe_port(container: Obj, probe: Obj) -> int:
    """The container port an httpGet probe calls: a name must be one the container declares."""
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert len(named) == 1, f"{container['name']}: the probe's port {port!r} is not declared"
    return int(named[0])


def process_settings(container: Obj) -> ServiceSettings:
    """What the process makes of its environment: servicekit's own loader (Secret values
    replaced by placeholders)."""
    environ = {
        name: entry.get("value", "secret-from-a-Secret")
        for name, entry in env_of(container).items()
    }
    environ["TENANTRY_DATABASE_URL"] = "postgresql://app@postgres/placeholder"
    return load_settings(ServiceSettings, environ)


# The port each role serves its /healthz and /readyz on, by its setting.
HEALTH_SETTING = {"api": "TENANTRY_HTTP_PORT", "worker": "TENANTRY_WORKER_HEALTH_PORT"}


def check_probes(container: Obj, role: str, where: str) -> int:
    """Every Deployment (api and worker) has HTTP startup, liveness and readiness probes on
    the port its process serves (the setting, as servicekit reads it) on the pod's address.
    Returns that port."""
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert kind in container, f"{where}: no {kind}"
        assert set(container[kind]) & {"httpGet", "exec", "tcpSocket", "grpc"} == {"httpGet"}, (
            f"{where}: {kind} is not an HTTP probe"
        )
    # Liveness never depends on Postgres or Kafka: an outage must not restart every pod.
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz", where
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
    ports = {
        probe_port(container, container[kind])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert len(ports) == 1, f"{where}: the probes call different ports {ports}"
    (port,) = ports
    env = env_of(container)
    assert env[HEALTH_SETTING[role]]["value"] == str(port), f"{where}: {HEALTH_SETTING[role]}"
    settings = process_settings(container)
    served = settings.http_port if role == "api" else settings.worker_health_port
    assert served == port, f"{where}: the process serves {served}, the probes call {port}"
    # The kubelet probes the pod's address, so the process must not listen on loopback only.
    assert settings.http_host == "0.0.0.0", where  # noqa: S104 (inside the pod)
    return port


@variants
def test_every_deployment_has_http_probes_on_the_port_it_serves(variant: str) -> None:
    """api: uvicorn on 8000 (/healthz; /readyz = Postgres answers; Kafka is reported). worker: its
    health endpoint on healthPort (/healthz = the event loop answers; /readyz = consumers and
    relay started, Postgres answers), a port no Service exposes."""
    deployments = by_name(variant, "Deployment")
    services = objects(variant, "Service")
    for service in SERVICES:
        api_name = workload(variant, service, "api")
        (api,) = deployments[api_name]["spec"]["template"]["spec"]["containers"]
        assert api["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
        assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert check_probes(api, "api", api_name) == 8000

        worker_name = workload(variant, service, "worker")
        pod = deployments[worker_name]["spec"]["template"]
        (worker,) = pod["spec"]["containers"]
        assert worker["ports"] == [{"name": "health", "containerPort": 8081, "protocol": "TCP"}]
        assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        assert check_probes(worker, "worker", worker_name) == 8081
        # Generous start-up: the liveness probe is held off for minutes, not seconds.
        startup = worker["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, worker_name
        # The health port is for the kubelet only: no Service selects a worker.
        labels = pod["metadata"]["labels"]
        for svc in services:
            selector = svc["spec"].get("selector", {})
            assert not selector.items() <= labels.items(), f"{svc['metadata']['name']}"


def test_worker_health_port_and_probe_timings_are_values() -> None:
    """healthPort moves the container port, the setting and the probes together, per service
    too; probe timings merge key by key; the chart keeps the path and the port."""
    result = run_helm(
        *template_args("default"),
        "--set", "defaults.worker.healthPort=9090",
        "--set", "services.webhooks.worker.healthPort=9191",
        "--set", "services.identity.worker.probes.startup.failureThreshold=120",
        "--show-only", "templates/deployment-worker.yaml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deployments = {d["metadata"]["name"]: d for d in yaml.safe_load_all(result.stdout) if d}
    for service in SERVICES:
        name = workload("default", service, "worker")
        (worker,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        expected = 9191 if service == "webhooks" else 9090
        assert check_probes(worker, "worker", name) == expected
        startup = worker["startupProbe"]
        assert startup["failureThreshold"] == (120 if service == "identity" else 60), name
        assert startup["periodSeconds"] == 5, name  # the rest of the default kept
        kubernetes_validate.validate(deployments[name], KUBE_VERSION, strict=True)


@variants
def test_each_workload_has_exactly_one_autoscaler_and_a_pdb(variant: str) -> None:
    hpas = by_name(variant, "HorizontalPodAutoscaler")
    scaled = by_name(variant, "ScaledObject")
    pdbs = by_name(variant, "PodDisruptionBudget")
    deployments = by_name(variant, "Deployment")
    for name, deployment in deployments.items():
        target = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        targets = [
            o for o in [*hpas.values(), *scaled.values()] if o["spec"]["scaleTargetRef"] == target
        ]
        assert len(targets) == 1, f"{name}: {len(targets)} autoscalers (HPA or ScaledObject)"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [
            p for p in pdbs.values()
            if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]  # fmt: skip
        assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets"
        assert (
            deployment["spec"]["selector"]["matchLabels"]
            == covering[0]["spec"]["selector"]["matchLabels"]
        )
    for hpa in hpas.values():
        spec = hpa["spec"]
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        assert spec["metrics"][0]["resource"]["name"] == "cpu"
    keda_workers = {workload(variant, s, "worker") for s in KEDA_WORKERS[variant]}
    assert set(scaled) == keda_workers


@pytest.mark.parametrize("variant", ["us", "keda"])
def test_keda_scales_workers_on_their_consumer_groups_within_the_partitions(
    variant: str,
) -> None:
    partitions = 3  # kafka.partitions in values.yaml and both region files
    for service in KEDA_WORKERS[variant]:
        scaled = by_name(variant, "ScaledObject")[workload(variant, service, "worker")]
        spec = scaled["spec"]
        assert spec["minReplicaCount"] >= 1, "the worker runs the outbox relay: never zero"
        assert spec["maxReplicaCount"] == partitions
        triggers = spec["triggers"]
        assert {t["type"] for t in triggers} == {"kafka"}
        groups = {t["metadata"]["consumerGroup"] for t in triggers}
        expected = {g for g in CONSUMER_GROUPS if g.split(".")[0] == f"tenantry-{service}"}
        assert groups == expected, f"{service}: the chart's groups differ from the code's"
        for trigger in triggers:
            metadata = trigger["metadata"]
            assert metadata["allowIdleConsumers"] == "false"
            assert "topic" not in metadata, "lag over every topic the group consumes"
            assert metadata["offsetResetPolicy"] == "earliest"
            container = by_name(variant, "Deployment")[workload(variant, service, "worker")]
            env = env_of(container["spec"]["template"]["spec"]["containers"][0])
            assert metadata["bootstrapServers"] == env["TENANTRY_KAFKA_BOOTSTRAP"]["value"]


# ---------------------------------------------------------------------------- configuration


@variants
def test_every_container_gets_the_region_and_its_settings(variant: str) -> None:
    region = {"default": "local", "us": "us", "eu": "eu", "keda": "local"}[variant]
    services = {o["metadata"]["name"] for o in objects(variant, "Service")}
    for name, pod in pod_specs(variant):
        for container in pod["containers"]:
            env = env_of(container)
            assert len(env) == len(container["env"]), f"{name}: a variable is set twice"
            assert env["TENANTRY_REGION"] == {"name": "TENANTRY_REGION", "value": region}, name
            assert all(n.startswith("TENANTRY_") for n in env), name
            if container["name"] == "topics":
                continue
            database = env["TENANTRY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert database["name"], name
            assert database["key"], name
            assert env["TENANTRY_KAFKA_BOOTSTRAP"]["value"], name
            assert "TENANTRY_REDIS_URL" in env, name
            urls = dict(
                item.split("=", 1) for item in env["TENANTRY_SERVICE_URLS"]["value"].split(",")
            )
            assert set(urls) == set(SERVICES), name
            for url in urls.values():
                host = re.fullmatch(r"http://([^./:]+)\.[^/]+", url)
                assert host, f"{name}: {url}"
                assert host.group(1) in services, f"{name}: {url} names no Service"
            for secret in SECRET_SETTINGS & set(env):
                assert "valueFrom" in env[secret], f"{name}: {secret} must come from a Secret"
            service = name.split(f"{fullname(variant)}-", 1)[1].split("-")[0]
            # Every service wraps keys with its own master key (docs/data-keys.md), and
            # every process but the migration calls tenancy's key API.
            assert "secretKeyRef" in env["TENANTRY_MASTER_KEY"]["valueFrom"], name
            if not name.endswith("-migrate"):
                assert "secretKeyRef" in env["TENANTRY_INTERNAL_API_SECRET"]["valueFrom"], name
            if service == "identity":
                assert env["TENANTRY_SMTP_HOST"]["value"], name
            else:
                assert not any(n.startswith("TENANTRY_SMTP_") for n in env), name


def egress_pairs(policy: Obj) -> set[tuple[str, int]]:
    """(CIDR, port) of every ipBlock a NetworkPolicy lets its pods reach."""
    return {
        (peer["ipBlock"]["cidr"], port["port"])
        for rule in policy["spec"]["egress"]
        for peer in rule["to"]
        for port in rule["ports"]
        if "ipBlock" in peer
    }


@variants
def test_only_tenancy_opens_the_object_store(variant: str) -> None:
    """TENANTRY_OBJECT_STORE=s3 and the region's bucket in tenancy's api and worker (export
    archives), credentials from a Secret; no other process gets them, nor the egress."""
    policies = by_name(variant, "NetworkPolicy")
    deployments = by_name(variant, "Deployment")
    for role in ROLES:
        tenancy = egress_pairs(policies[workload(variant, "tenancy", role)])
        store = tenancy - egress_pairs(policies[workload(variant, "ratelimit", role)])
        assert store, f"tenancy's {role} reaches nothing more than ratelimit's"
        for service in SERVICES:
            name = workload(variant, service, role)
            container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
            env = env_of(container)
            s3 = {n for n in env if n.startswith(("TENANTRY_S3_", "TENANTRY_OBJECT_STORE"))}
            if service != "tenancy":
                assert not s3, f"{name}: {s3}"
                assert not egress_pairs(policies[name]) & store, name
                continue
            assert env["TENANTRY_OBJECT_STORE"]["value"] == "s3", name
            assert env["TENANTRY_S3_BUCKET"]["value"], name
            for key in ("TENANTRY_S3_ACCESS_KEY", "TENANTRY_S3_SECRET_KEY"):
                assert "secretKeyRef" in env[key]["valueFrom"], f"{name}: {key}"
            assert process_settings(container).object_store == "s3", name


def test_a_redis_password_is_put_into_the_url_at_pod_start() -> None:
    """The region files keep Redis's host in the manifest and its password in a Secret:
    Kubernetes expands $(TENANTRY_REDIS_PASSWORD) only from a variable defined before."""
    for variant in ("us", "eu"):
        for name, pod in pod_specs(variant):
            for container in pod["containers"]:
                if container["name"] == "topics":
                    continue
                names = [e["name"] for e in container["env"]]
                env = env_of(container)
                assert "secretKeyRef" in env["TENANTRY_REDIS_PASSWORD"]["valueFrom"], name
                assert names.index("TENANTRY_REDIS_PASSWORD") < names.index("TENANTRY_REDIS_URL")
                url = env["TENANTRY_REDIS_URL"]["value"]
                assert (
                    url == f"rediss://:$(TENANTRY_REDIS_PASSWORD)@redis.{variant}.internal:6380/0"
                )


def test_regions_are_separate_releases_with_their_own_servers() -> None:
    def settings(variant: str) -> dict[str, str]:
        deployment = by_name(variant, "Deployment")[workload(variant, "identity", "api")]
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        policy = by_name(variant, "NetworkPolicy")[workload(variant, "identity", "api")]
        cidrs = sorted(
            peer["ipBlock"]["cidr"]
            for rule in policy["spec"]["egress"]
            for peer in rule["to"]
            if "ipBlock" in peer and peer["ipBlock"]["cidr"].startswith("10.")
        )
        return {
            "kafka": env["TENANTRY_KAFKA_BOOTSTRAP"]["value"],
            "sso": env["TENANTRY_SSO_PUBLIC_URL"]["value"],
            "smtp": env["TENANTRY_SMTP_HOST"]["value"],
            "cidrs": ",".join(cidrs),
        }

    us, eu = settings("us"), settings("eu")
    for key in us:
        assert us[key] != eu[key], f"us and eu share {key}: {us[key]}"
    assert ".us." in us["kafka"]
    assert ".eu." in eu["kafka"]
    names_us = {o["metadata"]["name"] for o in render("us")}
    names_eu = {o["metadata"]["name"] for o in render("eu")}
    assert not names_us & names_eu, "two regions' releases would collide in one namespace"


# ---------------------------------------------------------------------------- network


def peers(rule: Obj, key: str) -> list[Obj]:
    found: list[Obj] = rule.get(key, [])
    return found


def reaches_internet(policy: Obj) -> bool:
    return any(
        p.get("ipBlock", {}).get("cidr") in ("0.0.0.0/0", "::/0")
        for rule in policy["spec"].get("egress", [])
        for p in peers(rule, "to")
        if {port["port"] for port in rule["ports"]} == {443}
    )


@variants
def test_network_policies_let_each_service_reach_only_what_it_needs(variant: str) -> None:
    policies = by_name(variant, "NetworkPolicy")
    deny = policies[f"{fullname(variant)}-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny
    assert "egress" not in deny
    assert set(deny["podSelector"]["matchLabels"]) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
    }
    deployments = by_name(variant, "Deployment")
    for service in SERVICES:
        for role in ROLES:
            name = workload(variant, service, role)
            spec = policies[name]["spec"]
            labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
            assert spec["podSelector"]["matchLabels"].items() <= labels.items(), name
            assert spec["policyTypes"] == ["Ingress", "Egress"], name
            ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
            assert 53 in ports, f"{name}: no DNS"
            assert {5432, 9092} <= ports, f"{name}: {ports}"
            assert ports & {6379, 6380}, f"{name}: no Redis"
            # The internet on 443 only for identity (IdPs) and webhooks' worker (endpoints).
            internet = service == "identity" or (service == "webhooks" and role == "worker")
            assert reaches_internet(policies[name]) is internet, name
            if internet:
                (rule,) = [
                    r for r in spec["egress"]
                    if {p["port"] for p in r["ports"]} == {443}
                    and any(p.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for p in r["to"])
                ]  # fmt: skip
                ipv4 = next(p["ipBlock"] for p in rule["to"] if p["ipBlock"]["cidr"] == "0.0.0.0/0")
                private = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                           "127.0.0.0/8", "100.64.0.0/10"}  # fmt: skip
                assert private <= set(ipv4["except"]), name
            if role == "worker":
                # Not even on its health port: the kubelet probes from the pod's own node,
                # which NetworkPolicy always allows; no other pod needs it.
                assert spec["ingress"] == [], f"{name}: a worker takes no connections"
    # identity's api takes calls from the other apis (JWKS, accounts); nobody else's does.
    identity = policies[workload(variant, "identity", "api")]["spec"]
    from_apis = [
        p
        for rule in identity["ingress"]
        for p in peers(rule, "from")
        if p.get("podSelector", {}).get("matchLabels", {}).get(COMPONENT) == "api"
    ]
    assert from_apis, "identity's api must admit the other apis"
    # tenancy's api takes calls from every api and worker (its internal key API), and every
    # process may reach it there.
    tenancy = policies[workload(variant, "tenancy", "api")]["spec"]
    callers = {
        p.get("podSelector", {}).get("matchLabels", {}).get(COMPONENT)
        for rule in tenancy["ingress"]
        for p in peers(rule, "from")
        if "namespaceSelector" not in p
    }
    assert callers == {"api", "worker"}, callers
    for service in SERVICES:
        for role in ROLES:
            spec = policies[workload(variant, service, role)]["spec"]
            to_tenancy = [
                labels
                for rule in spec["egress"]
                for p in peers(rule, "to")
                for labels in (p.get("podSelector", {}).get("matchLabels", {}),)
                if labels.get(COMPONENT) == "api" and labels.get("tenantry/service") == "tenancy"
            ]
            assert to_tenancy, f"{service} {role} must reach tenancy's key API"
    for service in set(SERVICES) - {"identity", "tenancy"}:
        spec = policies[workload(variant, service, "api")]["spec"]
        for rule in spec["ingress"]:
            for peer in peers(rule, "from"):
                assert "podSelector" not in peer or "namespaceSelector" in peer, service


# ---------------------------------------------------------------------------- hooks


@variants
def test_migrations_run_as_hooks_one_job_per_database(variant: str) -> None:
    jobs = by_name(variant, "Job")
    migrations = {n: j for n, j in jobs.items() if n.endswith("-migrate")}
    assert set(migrations) == {f"{fullname(variant)}-{s}-migrate" for s in SERVICES}
    secrets = set()
    for name, job in migrations.items():
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade", name
        assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"], name
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never", name
        (container,) = pod["containers"]
        assert container["args"] == ["migrate"], name
        env = env_of(container)
        owner = env["TENANTRY_MIGRATION_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        app = env["TENANTRY_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert owner["name"] == app["name"], name
        assert owner["key"] != app["key"], name
        secrets.add(owner["name"])
        # What the Job needs exists before it: hooks of a lower weight.
        account = pod["serviceAccountName"]
        hook_account = by_name(variant, "ServiceAccount")[account]["metadata"]["annotations"]
        assert int(hook_account["helm.sh/hook-weight"]) < int(annotations["helm.sh/hook-weight"])
    assert len(secrets) == len(SERVICES), "each service has its own database"
    hook_policies = [
        p for p in objects(variant, "NetworkPolicy")
        if "helm.sh/hook" in p["metadata"].get("annotations", {})
    ]  # fmt: skip
    migrate_policy = next(p for p in hook_policies if p["metadata"]["name"].endswith("-migrate"))
    selector = migrate_policy["spec"]["podSelector"]["matchLabels"]
    for job in migrations.values():
        assert selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()


def test_topics_job_only_when_asked() -> None:
    (topics,) = [j for j in objects("default", "Job") if j["metadata"]["name"].endswith("-topics")]
    container = topics["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "tenantry_events.topics"]
    assert container["args"] == ["--bootstrap", "kafka:9092", "--partitions", "3"]
    assert topics["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert not [j for j in objects("us", "Job") if j["metadata"]["name"].endswith("-topics")]


# ---------------------------------------------------------------------------- bad values


BAD_VALUES = [
    pytest.param(
        ["--set", "services.tenancy.api.autoscaling.minReplicas=-1"],
        "at '/services/tenancy/api/autoscaling/minReplicas': minimum: got -1, want 1",
        id="negative-replicas",
    ),
    pytest.param(
        ["--set", "services.tenancy.worker.keda.minReplicaCount=0"],
        "at '/services/tenancy/worker/keda/minReplicaCount': minimum: got 0, want 1",
        id="keda-to-zero",
    ),
    pytest.param(
        ["--set", "region=US East"],
        "at '/region': 'US East' does not match pattern",
        id="region-format",
    ),
    pytest.param(
        ["--set", "services.identity.database.existingSecret=null"],
        "at '/services/identity/database': missing property 'existingSecret'",
        id="missing-database-secret",
    ),
    pytest.param(
        ["--set", "services.webhooks.database.existingSecret="],
        "at '/services/webhooks/database/existingSecret'",
        id="empty-database-secret",
    ),
    pytest.param(
        ["--set", "services.identity.masterKey=null"],
        "at '/services/identity': missing property 'masterKey'",
        id="missing-master-key",
    ),
    pytest.param(
        ["--set", "services.tenancy.api.replicas=3"],
        "at '/services/tenancy/api': additional properties 'replicas' not allowed",
        id="unknown-key",
    ),
    pytest.param(
        ["--set", "kafka.bootstrapServers=kafka"],
        "at '/kafka/bootstrapServers': 'kafka' does not match pattern",
        id="bootstrap-without-port",
    ),
    pytest.param(
        ["--set", "defaults.api.resources.limits=null"],
        "at '/defaults/api/resources': missing property 'limits'",
        id="no-limits",
    ),
    pytest.param(
        ["--set", "services.tenancy.api.autoscaling.minReplicas=9"],
        "services.tenancy.api.autoscaling: minReplicas (9) is greater than maxReplicas (6)",
        id="min-above-max",
    ),
    pytest.param(
        ["--set", "keda.enabled=true", "--set", "services.identity.worker.keda.maxReplicaCount=4"],
        "services.identity.worker.keda.maxReplicaCount (4) is above kafka.partitions (3)",
        id="keda-above-partitions",
    ),
    pytest.param(
        ["--set", "services.tenancy.worker.extraEnv.TENANTRY_REGION=eu"],
        "TENANTRY_REGION is set by the chart from its own values",
        id="extra-env-overrides-region",
    ),
    pytest.param(
        ["--set", "smtp.username=tenantry"],
        "at '/smtp/existingSecret': minLength: got 0, want 1",
        id="smtp-user-without-password",
    ),
    pytest.param(
        ["--set", "defaults.worker.healthPort=0"],
        "at '/defaults/worker/healthPort': minimum: got 0, want 1,024",
        id="worker-health-off",
    ),
    pytest.param(
        ["--set", "services.tenancy.worker.healthPort=80"],
        "at '/services/tenancy/worker/healthPort': minimum: got 80, want 1,024",
        id="worker-health-privileged-port",
    ),
    pytest.param(
        ["--set", "services.tenancy.worker.probes.liveness.exec.command={true}"],
        "at '/services/tenancy/worker/probes/liveness': additional properties 'exec' not allowed",
        id="worker-probe-handler",
    ),
    pytest.param(
        ["--set", "services.tenancy.worker.livenessProbe.periodSeconds=10"],
        "at '/services/tenancy/worker': additional properties 'livenessProbe' not allowed",
        id="old-worker-liveness-override",
    ),
    pytest.param(
        ["--set-string", "services.tenancy.worker.extraEnv.TENANTRY_WORKER_HEALTH_PORT=0"],
        "TENANTRY_WORKER_HEALTH_PORT is set by the chart from its own values",
        id="extra-env-overrides-health-port",
    ),
    pytest.param(
        [
            "--set",
            "redis.passwordSecret.existingSecret=tenantry-redis",
            "--set",
            "redis.url=redis://tenantry:hunter2@redis:6379/0",
        ],
        "redis.url carries credentials (redis://***@redis:6379/0)",
        id="redis-password-twice",
    ),
    pytest.param(
        ["--set", "objectStore.bucket=Exports_Bucket"],
        "at '/objectStore/bucket': 'Exports_Bucket' does not match pattern",
        id="object-store-bucket-name",
    ),
    pytest.param(
        ["--set", "services.tenancy.api.extraEnv.TENANTRY_S3_BUCKET=other"],
        "TENANTRY_S3_BUCKET is set by the chart from its own values",
        id="extra-env-overrides-bucket",
    ),
    pytest.param(
        ["--set", "networkPolicy.kafka.to=null"],
        "at '/networkPolicy/kafka': missing property 'to'",
        id="network-policy-without-kafka",
    ),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES)
def test_bad_values_are_refused_with_a_clear_message(args: list[str], message: str) -> None:
    result = run_helm(*template_args("default"), *args)
    assert result.returncode != 0, f"helm template accepted {args}"
    assert message in result.stderr, result.stderr


def test_keda_on_a_cluster_without_keda_is_refused() -> None:
    release, namespace, _ = VARIANTS["default"]
    result = run_helm(
        "template", release, str(CHART), "--namespace", namespace,
        "--kube-version", KUBE_VERSION, "--set", "keda.enabled=true",
    )  # fmt: skip
    assert result.returncode != 0
    assert "this cluster has no KEDA" in result.stderr, result.stderr


# ---------------------------------------------------------------------------- NOTES.txt


def render_notes(tmp_path: Path, variant: str) -> str:
    """helm template does not render NOTES.txt: render it through a ConfigMap in a copy of
    the chart."""
    chart = tmp_path / "tenantry"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.src")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.src") . | toJson }}\n'
    )
    args = template_args(variant)
    args[2] = str(chart)
    result = run_helm(*args, "--show-only", "templates/zz-notes.yaml")
    assert result.returncode == 0, result.stderr
    notes: str = yaml.safe_load(result.stdout)["data"]["notes"]
    return notes


def test_notes_tell_the_operator_what_to_do_next(tmp_path: Path) -> None:
    default = render_notes(tmp_path / "default", "default")
    for step in ("rollout status", "/readyz", "/v1/operators/bootstrap", "ingressFrom"):
        assert step in default, step
    assert "WARNINGS" in default
    for warning in ('region is "local"', "replication factor 1", "sso.publicUrl is empty",
                    "networkPolicy.postgres allows all of 10.0.0.0/8"):  # fmt: skip
        assert warning in default, warning
    us = render_notes(tmp_path / "us", "us")
    assert 'region "us"' in us
    assert "KEDA scales the workers" in us
    assert "WARNINGS" not in us, us


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> dict[str, dict[str, Any]]:
    """name -> {"base": FROM, "instructions": [(INSTRUCTION, arguments)]}, statically."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and current is None:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
        elif instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
            current = {"base": base, "instructions": []}
            stages[match.group(2)] = current
        elif current is not None:
            current["instructions"].append((instruction, rest.strip()))
    return stages


def stage_chain(stages: dict[str, dict[str, Any]], name: str) -> list[str]:
    chain = [name]
    while stages[chain[-1]]["base"] in stages:
        chain.append(stages[chain[-1]]["base"])
    return chain


BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|apt-get|apt|apk|pip install|uv|cargo|rustc)\b"
)


# Shared libraries a service loads at run time, from Debian (never a compiler or headers):
# tenancy's PDF renderer (WeasyPrint) needs Pango and a font.
RUNTIME_LIBRARIES = {"tenancy": {"libpango-1.0-0", "libpangoft2-1.0-0", "fonts-dejavu-core"}}
APT_INSTALL = re.compile(
    r"^apt-get update\s+&& apt-get install --yes --no-install-recommends (?P<packages>[\w.+\- ]+?)"
    r"\s+&& rm -rf /var/lib/apt/lists/\*$"
)


def without_runtime_libraries(service: str, run: str) -> str:
    """A RUN that only installs the service's allowed runtime libraries (and drops apt's
    lists) is no build tooling: "" for it; any other RUN as it is."""
    found = APT_INSTALL.match(run.strip())
    if found is None:
        return run
    packages = set(found.group("packages").split())
    assert packages <= RUNTIME_LIBRARIES.get(service, set()), (service, packages)
    return ""


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_final_stage_is_slim_non_root_and_runs_the_service(service: str) -> None:
    stages = dockerfile_stages()
    assert service in stages, f"no `--target {service}` in {DOCKERFILE}"
    chain = stage_chain(stages, service)
    root = stages[chain[-1]]["base"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?(@sha256:[0-9a-f]{64})?", root), root
    instructions = [i for stage in reversed(chain) for i in stages[stage]["instructions"]]
    users = [rest for instruction, rest in instructions if instruction == "USER"]
    assert users, f"{service}: no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    assert user == str(UID), users[-1]
    for instruction, rest in instructions:
        if instruction == "RUN":
            rest = without_runtime_libraries(service, rest)
            assert not BUILD_TOOLS.search(rest.replace("pip uninstall", "")), (
                f"{service}: build tooling in a final stage: RUN {rest}"
            )
        if instruction == "COPY" and "--from=" in rest:
            source = re.search(r"--from=(\S+)", rest)
            assert source, rest
            assert source.group(1) == f"venv-{service}", rest
    entrypoints = [rest for instruction, rest in instructions if instruction == "ENTRYPOINT"]
    assert entrypoints, f"{service}: no ENTRYPOINT"
    entrypoint = json.loads(entrypoints[-1])  # exec form: the process is PID 1, gets SIGTERM
    assert entrypoint == [f"/opt/venv/bin/tenantry-{service}"]
    scripts = tomllib.loads((REPO / "services" / service / "pyproject.toml").read_text())
    assert f"tenantry-{service}" in scripts["project"]["scripts"]
    cmds = [rest for instruction, rest in instructions if instruction == "CMD"]
    assert json.loads(cmds[-1]) == ["api"]


def test_dockerignore_sends_only_sources() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "deny by default: .venv, .local, .git never reach the context"
    included = {line[1:] for line in lines if line.startswith("!")}
    assert included == {
        "pyproject.toml", "uv.lock", "libs/*/pyproject.toml", "libs/*/src",
        "services/*/pyproject.toml", "services/*/src",
    }  # fmt: skip


def test_install_tools_script_parses() -> None:
    result = subprocess.run(
        ["bash", "-n", str(INSTALL_TOOLS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
