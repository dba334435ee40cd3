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
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tenantry_testkit.asgi import (
    Receive,
    Scope,
    Send,
    lifespan,
    read_request,
    reply,
    serve,
)


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
    _serving: contextlib.AsyncExitStack | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        request = await read_request(scope, receive)
        headers, path = request.headers, request.path
        self.requests.append(Received(path, headers, request.body, time.monotonic()))
        parts = path.strip("/").split("/")
        status, extra = 404, []
        body: bytes | Iterable[bytes] = b"received"
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
            status = 200
            chunks = itertools.repeat(b"x" * 65536, int(parts[1]) * 16)  # made lazily
            body = itertools.chain(chunks, [b"received"])
        await reply(send, status, body, extra)

    async def start(self) -> None:
        self._serving = contextlib.AsyncExitStack()
        url = await self._serving.enter_async_context(serve(self, name="the receiver"))
        self.port = urlsplit(url).port or 0

    async def stop(self) -> None:
        if self._serving is not None:
            await self._serving.aclose()
            self._serving = None


@contextlib.asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()
