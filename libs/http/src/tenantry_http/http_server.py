"""The HTTP server every api process runs: uvicorn on httptools, with one change.

httptools cannot split a request target past 64 KiB (its URL parser keeps 16-bit offsets),
and uvicorn answers such a request with a plain-text 400 before any of our code runs. A
client that sends one (a SCIM filter built from a huge group, a fuzzer) deserves an answer
in the mount's own format, so `BoundedUrlProtocol` shortens an overlong target to its path
before parsing and marks the request; `input_guard` then refuses it with 414 (a SCIM Error
on /scim/v2, problem+json elsewhere). The head as a whole stays bounded by httptools.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from tenantry_http.asgi import ASGIApp
from tenantry_http.input_guard import MAX_URL_BYTES, URL_BYTES_KEY
from tenantry_platform.settings import ServiceSettings


class BoundedUrlProtocol(HttpToolsProtocol):
    """httptools' protocol, but a target past `MAX_URL_BYTES` reaches the app as its
    (shortened) path with `scope[URL_BYTES_KEY]` = the target's real length."""

    def on_headers_complete(self) -> None:
        url_bytes = len(self.url)
        if url_bytes <= MAX_URL_BYTES:
            super().on_headers_complete()
            return
        self.url = self.url[:MAX_URL_BYTES].split(b"?", 1)[0]
        super().on_headers_complete()
        # The request's task is scheduled, not yet running: it will see the mark.
        self.scope[URL_BYTES_KEY] = url_bytes  # type: ignore[literal-required]


def serve(app: ASGIApp, settings: ServiceSettings, **options: Any) -> None:
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        http=BoundedUrlProtocol,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        lifespan="on",
        **options,
    )
    server = uvicorn.Server(config)
    if not settings.http_reuse_port:
        server.run()
        return
    server.run(sockets=[reuse_port_socket(settings.http_host, settings.http_port)])


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other processes may bind too (SO_REUSEPORT): the kernel
    hands each new connection to one of them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
