"""The worker's probe endpoints, served on a real loopback port."""

from __future__ import annotations

import asyncio

import httpx

from tenantry_service.worker_health import WorkerHealth


async def test_liveness_holds_while_readiness_follows_start_and_the_database() -> None:
    database = [True]

    async def database_ok() -> bool:
        return database[0]

    health = WorkerHealth(database_ok)
    async with (
        health.serving("127.0.0.1", 0) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client,
    ):
        assert (await client.get("/healthz")).status_code == 200
        not_started = await client.get("/readyz")
        assert not_started.status_code == 503
        assert not_started.json()["checks"] == {"started": False, "postgres": True}

        health.started = True
        assert (await client.get("/readyz")).status_code == 200
        database[0] = False
        down = await client.get("/readyz")
        assert down.status_code == 503
        assert down.json()["checks"]["postgres"] is False
        assert (await client.get("/healthz")).status_code == 200  # liveness unaffected

        assert (await client.get("/elsewhere")).status_code == 404
        assert (await client.post("/healthz")).status_code == 405

        # Garbage, or a client that never finishes its request, is dropped; the server
        # keeps answering.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x00" * 100 + b"\r\n\r\n")
        await writer.drain()
        assert (await reader.read()).startswith(b"HTTP/1.1 405")
        writer.close()
        assert (await client.get("/healthz")).status_code == 200
