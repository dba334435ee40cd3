"""Every service's command has `dead-letters` with the same settings as its worker (real
processes against the local stack: its Kafka and the service's database)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from uuid_utils.compat import uuid4

from tenantry_testkit.stack import Stack

SERVICES = ["tenancy", "identity", "provisioning", "webhooks", "ratelimit"]


def run(stack: Stack, service: str, *argv: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    return subprocess.run(
        [sys.executable, "-m", f"tenantry_{service}", *argv],
        env={**clean, **stack.service_env(service)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.kafka
@pytest.mark.parametrize("service", SERVICES)
def test_each_service_lists_the_dead_letters_of_its_groups(stack: Stack, service: str) -> None:
    result = run(stack, service, "dead-letters", "list", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)["dead_letters"]
    groups = {
        f"tenantry-{service}",
        f"tenantry-{service}.critical",
        f"tenantry-{service}.background",
    }
    assert all(d["dlt_topic"].removeprefix("dlt.") in groups for d in listed)


@pytest.mark.kafka
def test_the_command_refuses_bad_requests_with_exit_code_2(stack: Stack) -> None:
    unknown = str(uuid4())
    cases = [
        (["dead-letters", "replay", unknown], f"no dead letter of event {unknown}"),
        (["dead-letters", "replay", "--type", "no.such.type"], "unknown event type"),
        (["api", "--json"], "unrecognized arguments: --json"),
    ]
    for argv, message in cases:
        result = run(stack, "ratelimit", *argv)
        assert result.returncode == 2, (argv, result.stdout, result.stderr)
        assert message in result.stderr, (argv, result.stderr)
