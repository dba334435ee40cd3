"""Resolution and connection pinning: an httpcore network backend that resolves the host
itself, drops every address the policy refuses, and connects to the IP literal it checked,
so no second lookup exists for DNS rebinding to win."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpcore

from tenantry_outbound.outbound.addresses import parse_address, parse_ip_literal
from tenantry_outbound.outbound.errors import BlockedDestination, OutboundConnectError
from tenantry_outbound.outbound.policy import OutboundPolicy

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""`(host, port) -> IP address strings`. Injected in tests (rebinding) and where a
deployment wants its own DNS; the default is the system resolver."""

CONNECTED_IP = "tenantry.connected_ip"
"""`get_extra_info` key of a guarded network stream: the IP literal it connected to."""


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """The system resolver (getaddrinfo in a thread), deduplicated, in its order."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _CheckedStream(httpcore.AsyncNetworkStream):
    """A connected stream that remembers the address it was checked against, also across
    `start_tls` (which returns a new stream)."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, address: str) -> None:
        self._inner = inner
        self.address = address

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # server_hostname is the URL's host (httpcore's connection passes its origin), so
        # SNI and certificate verification are for the name, not for the IP we dialled.
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return _CheckedStream(tls, self.address)

    def get_extra_info(self, info: str) -> Any:
        if info == CONNECTED_IP:
            return self.address
        return self._inner.get_extra_info(info)


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves, checks and connects in one step.

    Every address the host resolves to is judged by `policy.refusal`; blocked ones are
    dropped, and the connection is made to an allowed IP literal (in resolver order), so
    nothing below can resolve the name again. If no address is allowed it raises
    `BlockedDestination` without opening a socket. Resolution and connect share
    httpcore's connect timeout. asyncio only (the deadline is an `asyncio.timeout`).
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        resolver: Resolver | None = None,
        backend: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self._resolve = resolver or system_resolver
        self._backend = backend or httpcore.AnyIOBackend()

    async def resolve_allowed(self, host: str, port: int) -> list[str]:
        """The addresses of `host` that the policy allows, in resolver order; raises
        `BlockedDestination` if there are none, `OutboundConnectError` if it cannot be
        resolved."""
        literal = parse_ip_literal(host)
        if literal is not None:
            answers: Sequence[str] = [str(literal)]  # no lookup
        else:
            try:
                answers = await self._resolve(host, port)
            except OSError as exc:
                raise OutboundConnectError(f"cannot resolve {host}: {exc}") from exc
        if not answers:
            raise OutboundConnectError(f"{host} resolved to no address")
        allowed: list[str] = []
        reasons: list[str] = []
        for answer in answers:
            try:
                reason = self.policy.refusal(answer)
            except ValueError:
                reason = "invalid-address"
            if reason is None:
                ip = parse_address(answer)
                mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
                # Dial a mapped address as plain IPv4: same destination, works without IPv6.
                allowed.append(str(mapped) if mapped is not None else answer)
            else:
                reasons.append(reason)
        if not allowed:
            raise BlockedDestination(reasons[0], host=host, addresses=answers)
        return list(dict.fromkeys(allowed))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.resolve_allowed(host, port)
                last_error: Exception | None = None
                for address in addresses:
                    try:
                        stream = await self._backend.connect_tcp(
                            address,
                            port,
                            timeout=timeout,
                            local_address=local_address,
                            socket_options=socket_options,
                        )
                    except httpcore.ConnectError as exc:
                        last_error = exc
                        continue
                    await self._verify_peer(stream, address)
                    return _CheckedStream(stream, address)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from exc
        except OutboundConnectError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        assert last_error is not None
        raise last_error

    @staticmethod
    async def _verify_peer(stream: httpcore.AsyncNetworkStream, address: str) -> None:
        # Belt and braces: the socket's peer must be the literal we checked. It always is
        # for an IP literal; this catches a backend that resolves or proxies on its own.
        peer = stream.get_extra_info("server_addr")
        if (
            isinstance(peer, tuple)
            and peer
            and parse_address(str(peer[0])) != parse_address(address)
        ):
            await stream.aclose()
            raise BlockedDestination("peer-mismatch", host=address, addresses=[str(peer[0])])

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedDestination("unix-socket", host=path)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
