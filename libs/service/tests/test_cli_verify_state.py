"""Every service's command has `verify-state` (real processes against the local stack):
the services that register no event-sourced aggregate say so, tenancy folds every tenant
of its running database and finds each row equal to its stream."""

from __future__ import annotations

import pytest

from tenantry_testkit.stack import Stack

from .test_cli_dead_letters import SERVICES, run


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_verifies_the_state_it_registers(stack: Stack, service: str) -> None:
    result = run(stack, service, "verify-state")
    assert result.returncode == 0, result.stdout + result.stderr
    if service == "tenancy":
        assert "tenancy verify-state: 0 difference(s), 0 left (tenant)" in result.stdout
    else:
        assert "no event-sourced aggregates registered" in result.stdout


def test_verify_state_takes_only_rebuild(stack: Stack) -> None:
    result = run(stack, "ratelimit", "verify-state", "--fix")
    assert result.returncode == 2
    assert "unrecognized arguments: --fix" in result.stderr
