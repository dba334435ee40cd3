"""Every service's worker answers its probes (what the Helm chart's probes call)."""

from __future__ import annotations

import httpx

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.stack import Stack

from .conftest import SERVICES


async def test_every_worker_is_live_and_ready(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        for service in SERVICES:
            port = int(stack.service_env(service)["TENANTRY_WORKER_HEALTH_PORT"])
            base = f"http://127.0.0.1:{port}"
            assert (await client.get(f"{base}/healthz")).json() == {"status": "ok"}

            async def ready(base: str = base) -> bool:
                r = await client.get(f"{base}/readyz")
                return r.status_code == 200 and r.json()["checks"]["started"] is True

            await eventually(ready, timeout=30, message=f"{service} worker ready")
