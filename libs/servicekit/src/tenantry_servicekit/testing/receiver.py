"""A real HTTP receiver on loopback for tests of outbound calls (webhook deliveries).

Served by uvicorn in the test's event loop on 127.0.0.1 and a free port. What it answers
depends on the path, so one receiver serves every case at once:

    /ok                    200
    /status/<code>         that status
    /fail/<n>              500 for the first n requests of each webhook-id, then 200
    /slow/<seconds>        waits, then 200
    /throttle/<seconds>    429 with Retry-After: <seconds>
    /redirect              302 to /ok (a client that follows it shows up at /ok)
    /huge/<megabytes>      200 with a body streamed lazily
    anything else          404

Every request is recorded (path, headers, body, arrival time) before it is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

Scope = dict[str, Any]


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _failures: Counter[str] = field(default_factory=Counter)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = (await receive())["type"]
                if event == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path: str = scope["path"]
        self.requests.append(Received(path, headers, body, time.monotonic()))
        parts = path.strip("/").split("/")
        status, extra, stream_mb = 404, [], 0
        if parts[0] == "ok":
            status = 200
        elif parts[0] == "status":
            status = int(parts[1])
        elif parts[0] == "fail":
            key = headers.get("webhook-id", "")
            self._failures[key] += 1
            status = 500 if self._failures[key] <= int(parts[1]) else 200
        elif parts[0] == "slow":
            await asyncio.sleep(float(parts[1]))
            status = 200
        elif parts[0] == "throttle":
            status, extra = 429, [(b"retry-after", parts[1].encode())]
        elif parts[0] == "redirect":
            status, extra = 302, [(b"location", f"{self.url}/ok".encode())]
        elif parts[0] == "huge":
            status, stream_mb = 200, int(parts[1])
        await send({"type": "http.response.start", "status": status, "headers": extra})
        if stream_mb:
            chunk = b"x" * 65536
            for _ in range(stream_mb * 16):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"received"})

    async def start(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(
            self, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start in 10 s")
            if self._task.done():
                self._task.result()  # raises what stopped it
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=10)


@contextlib.asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()
