"""A webhook receiver for the dispatcher tests: plain ASGI, served by uvicorn in the test's
event loop on 127.0.0.1 (a port the kernel picks). What it answers depends on the path:

    /ok            200 "ok"
    /fail/<n>/...  500 for the first n requests of each webhook-id (per path), then 200
    /hold/<ms>     200 after <ms> milliseconds (a slow but healthy endpoint)
    /slow          200 only once the test ends (longer than any client timeout)
    /gone          410
    /status/<code> that status, no headers
    /throttled     429 with Retry-After: 7
    /throttle/<n>/<retry-after>
                   429 with that Retry-After for the first n requests of each webhook-id
                   (per path), then 200
    /redirect      302 to /ok
    /huge          200 with 50 MB streamed lazily: a chunk at a time, while the client reads
    /nul           200 with a NUL byte in the body
    anything else  404

Every request is recorded (path, headers, body, wall-clock arrival) before it is answered,
and the receiver counts requests in flight per path (and the most ever at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import uvicorn

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HUGE_BYTES = 50 * 1024 * 1024
_CHUNK = b"x" * 65536


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # names lowercased
    body: bytes
    at: float = 0.0  # time.time() on arrival: comparable with the times the dispatcher records

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.port = 0
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self.streamed = 0  # bytes /huge handed to the server so far
        self.huge_finished = asyncio.Event()  # /huge stopped (client gone or all sent)
        self._release = asyncio.Event()  # frees /slow at the end of the test
        self._failures: Counter[str] = Counter()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def to(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path == path]

    # ------------------------------------------------------------ the ASGI app

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        self.requests.append(Received(path, headers, body, time.time()))
        self.in_flight[path] += 1
        self.max_in_flight[path] = max(self.max_in_flight[path], self.in_flight[path])
        try:
            await self._answer(path, headers, receive, send)
        finally:
            self.in_flight[path] -= 1

    async def _answer(
        self, path: str, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        parts = path.strip("/").split("/")
        route = parts[0]
        if route == "ok":
            await _respond(send, 200, b"ok")
        elif route == "fail":
            key = f"{path} {headers.get('webhook-id', '')}"
            self._failures[key] += 1
            failing = self._failures[key] <= int(parts[1])
            await _respond(send, 500 if failing else 200, b"boom" if failing else b"ok")
        elif route == "hold":
            await asyncio.sleep(int(parts[1]) / 1000)
            await _respond(send, 200, b"ok")
        elif route == "slow":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), timeout=30)
            await _respond(send, 200, b"late")
        elif route == "status":
            await _respond(send, int(parts[1]), b"as asked")
        elif route == "gone":
            await _respond(send, 410, b"gone")
        elif route == "throttled":
            await _respond(send, 429, b"slow down", [(b"retry-after", b"7")])
        elif route == "throttle":
            key = f"{path} {headers.get('webhook-id', '')}"
            self._failures[key] += 1
            if self._failures[key] <= int(parts[1]):
                await _respond(send, 429, b"slow down", [(b"retry-after", parts[2].encode())])
            else:
                await _respond(send, 200, b"ok")
        elif route == "redirect":
            await _respond(send, 302, b"", [(b"location", self.url("/ok").encode())])
        elif route == "huge":
            await self._huge(receive, send)
        elif route == "nul":
            await _respond(send, 200, b"ok\x00then binary")
        else:
            await _respond(send, 404, b"no such route")

    async def _huge(self, receive: Receive, send: Send) -> None:
        """50 MB, one chunk at a time: uvicorn's flow control makes `send` wait while the
        client does not read, and the loop stops as soon as the client hangs up."""
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while self.streamed < HUGE_BYTES and not gone.is_set():
                await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
                self.streamed += len(_CHUNK)
            if not gone.is_set():
                await send({"type": "http.response.body", "body": b""})
        finally:
            watcher.cancel()
            self.huge_finished.set()

    # ------------------------------------------------------------ serving

    async def start(self) -> None:
        config = uvicorn.Config(
            self,
            host="127.0.0.1",
            port=0,
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        async with asyncio.timeout(10):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # raises whatever stopped it
                await asyncio.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self._task, timeout=10)


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers or []})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()
