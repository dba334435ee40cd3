"""Small pieces for the in-loop HTTP servers of tests (fake peers, receivers, pages).

A test server here is a plain ASGI callable served by uvicorn in the test's own event loop
on 127.0.0.1, so a test can change what it answers between two requests:

    class Peer:
        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                return await lifespan(receive, send)
            request = await read_request(scope, receive)
            await reply(send, 200, b"hello", [(b"content-type", b"text/plain")])

    async with serve(Peer()) as url:  # "http://127.0.0.1:<port>"
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]

START_TIMEOUT = 10.0
"""Seconds a server may take to start, and to stop once told to."""


@dataclass(frozen=True)
class Request:
    """An HTTP request as a test server sees it, body read in full."""

    method: str
    path: str
    query_string: str
    """The raw query, undecoded (percent-escapes kept), without the "?"."""
    headers: dict[str, str]
    """Lower-cased names; of a repeated header, the last value. Values are UTF-8; a byte
    that is not valid UTF-8 is kept as a surrogate escape, so it fails no request."""
    body: bytes


async def read_request(scope: Scope, receive: Receive) -> Request:
    """Read an `http` scope's request, the whole body (every `more_body` chunk)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return Request(
        method=scope["method"],
        path=scope["path"],
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers={
            k.decode("latin-1").lower(): v.decode(errors="surrogateescape")
            for k, v in scope["headers"]
        },
        body=body,
    )


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the lifespan protocol (nothing to set up or tear down) until shutdown."""
    while True:
        event = (await receive())["type"]
        if event == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def reply(
    send: Send, status: int, body: bytes | Iterable[bytes] = b"", headers: Headers = ()
) -> None:
    """Send a whole response. A body given as an iterable of chunks is streamed: each
    chunk is sent (and, through uvicorn's flow control, read) before the next is made."""
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    if isinstance(body, bytes):
        await send({"type": "http.response.body", "body": body})
        return
    for chunk in body:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def free_port() -> int:
    """A loopback port nothing listens on at the moment of asking (another process may
    take it before it is used: prefer `serve` without a port where the URL can wait)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def serve(
    app: ASGIApp,
    *,
    port: int | None = None,
    ssl_certfile: str | Path | None = None,
    ssl_keyfile: str | Path | None = None,
    name: str = "the test server",
) -> AsyncIterator[str]:
    """Serve `app` with uvicorn in the running event loop on 127.0.0.1, for the duration
    of the block; yields the base URL ("http://127.0.0.1:<port>", https with a
    certificate). Without `port` the socket is bound here to a free port (no race).

    Raises what stopped the server if it dies while starting, and RuntimeError if it has
    not started within START_TIMEOUT seconds; `name` is what that error calls it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port or 0))
        scheme = "https" if ssl_certfile else "http"
        url = f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="on",
            ssl_certfile=str(ssl_certfile) if ssl_certfile else None,
            ssl_keyfile=str(ssl_keyfile) if ssl_keyfile else None,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped it
                    raise RuntimeError(f"{name} stopped before it started")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start in {START_TIMEOUT:g} s")
                await asyncio.sleep(0.01)
            yield url
        finally:
            server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=START_TIMEOUT)
    finally:
        sock.close()
