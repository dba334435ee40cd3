"""A service refuses to start on bad settings, naming the variable (a real process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "TENANTRY_DATABASE_URL is required"),
        (
            {
                "TENANTRY_DATABASE_URL": "postgresql://x@127.0.0.1/x",
                "TENANTRY_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
                "TENANTRY_MASTER_KEY": "A" * 43 + "=",  # tenancy requires one (32 bytes)
                "TENANTRY_HTTP_PORT": "eighty",
            },
            "TENANTRY_HTTP_PORT",
        ),
    ],
)
def test_bad_settings_stop_the_process_with_a_message_naming_them(
    env: dict[str, str], named: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    result = subprocess.run(
        [sys.executable, "-m", "tenantry_tenancy", "api"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert named in result.stderr
