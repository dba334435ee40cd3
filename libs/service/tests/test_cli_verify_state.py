"""Every service's command has `verify-state` (real processes against the local stack):
the services that register no event-sourced aggregate say so; tenancy (tenants) and identity
(accounts, API keys, SSO connections) fold every stream of their running database and find
each row equal to its fold."""

from __future__ import annotations

import pytest

from tenantry_testkit.stack import Stack

from .test_cli_dead_letters import SERVICES, run

REGISTERED = {"tenancy": "tenant", "identity": "account, api key, sso connection"}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_verifies_the_state_it_registers(stack: Stack, service: str) -> None:
    result = run(stack, service, "verify-state")
    assert result.returncode == 0, result.stdout + result.stderr
    if service in REGISTERED:
        kinds = REGISTERED[service]
        assert f"{service} verify-state: 0 difference(s), 0 left ({kinds})" in result.stdout
    else:
        assert "no event-sourced aggregates registered" in result.stdout


def test_verify_state_takes_only_rebuild(stack: Stack) -> None:
    result = run(stack, "ratelimit", "verify-state", "--fix")
    assert result.returncode == 2
    assert "unrecognized arguments: --fix" in result.stderr
