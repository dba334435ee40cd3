"""Health endpoints of a worker process, for Kubernetes probes (the api has its own).

A worker serves no traffic, so this is a bare HTTP/1.1 responder on its own port
(TENANTRY_WORKER_HEALTH_PORT; 0 = off), not an app:

    GET /healthz   200 while the event loop answers: liveness. A broker or database
                   outage does not fail it; restarting the worker would not help then.
    GET /readyz    200 once the worker has started (consumers and relay connected) and
                   the database answers SELECT 1; 503 otherwise, with the failing checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

Check = Callable[[], Awaitable[bool]]
MAX_REQUEST_HEAD = 8192


class WorkerHealth:
    def __init__(self, database_ok: Check) -> None:
        self.started = False  # set by the worker once its consumers and relay run
        self._database_ok = database_ok

    async def readiness(self) -> tuple[int, dict[str, object]]:
        checks = {"started": self.started, "postgres": await self._database_ok()}
        ready = all(checks.values())
        return (200 if ready else 503), {
            "status": "ready" if ready else "not-ready",
            "checks": checks,
        }

    async def answer(self, path: str) -> tuple[int, dict[str, object]]:
        if path == "/healthz":
            return 200, {"status": "ok"}
        if path == "/readyz":
            return await self.readiness()
        return 404, {"status": "not-found"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
            parts = head[:MAX_REQUEST_HEAD].split(b" ", 2)
            method, path = parts[0], parts[1].decode("latin-1") if len(parts) > 1 else ""
            body: dict[str, object]
            if method not in (b"GET", b"HEAD"):
                status, body = 405, {"status": "method-not-allowed"}
            else:
                status, body = await self.answer(path.split("?", 1)[0])
            payload = json.dumps(body).encode()
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
                + (payload if method != b"HEAD" else b"")
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @contextlib.asynccontextmanager
    async def serving(self, host: str, port: int) -> AsyncIterator[int]:
        """Serve on host:port (port 0: any free one) for the block; yields the port."""
        server = await asyncio.start_server(self._serve, host, port, limit=MAX_REQUEST_HEAD)
        try:
            yield int(server.sockets[0].getsockname()[1])
        finally:
            server.close()
            await server.wait_closed()
