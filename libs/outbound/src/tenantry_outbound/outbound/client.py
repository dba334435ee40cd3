"""`OutboundClient`: requests under the policy's timeouts, the body read under its size
cap (decompression bounded too), a circuit breaker per destination and retries inside a
`RetryBudget`."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import zlib
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass
from typing import Any, cast

import httpcore
import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    wait_exponential_jitter,
)
from tenacity.wait import WaitBaseT

from tenantry_outbound.outbound.connections import CONNECTED_IP, Resolver
from tenantry_outbound.outbound.errors import (
    BlockedDestination,
    BreakerOpen,
    OutboundConnectError,
    OutboundTimeout,
    OutboundTransportError,
    UpstreamStatusError,
)
from tenantry_outbound.outbound.policy import OutboundPolicy
from tenantry_outbound.outbound.transport import GuardedTransport
from tenantry_resilience import (
    BreakerConfig,
    BreakerRegistry,
    CallNotPermitted,
    CircuitBreaker,
    RetryBudget,
    record_first_attempt,
    stop_when_budget_exhausted,
)

RETRYABLE_STATUSES: frozenset[int] = frozenset({502, 503, 504})
"""Statuses `request_with_retries` retries: the gateway said the upstream is not there."""


class _Decoder:
    """Content decoding with a bound on the output of every step: zlib's `max_length`
    stops a small compressed chunk from expanding into gigabytes in memory (httpx's own
    decoders have no bound)."""

    def __init__(self, encoding: str | None) -> None:
        encoding = (encoding or "identity").strip().lower()
        self._zlib: Any = None
        self._deflate_probe = False
        if encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._zlib = zlib.decompressobj()
            self._deflate_probe = True  # zlib-wrapped per the RFC; some servers send raw
        # identity, and encodings we do not decode (br, zstd, stacked): bytes as sent.

    def feed(self, chunk: bytes, room: int) -> tuple[bytes, bool]:
        """At most `room` decoded bytes of `chunk`, and whether there was more."""
        if self._zlib is None:
            return chunk[:room], len(chunk) > room
        try:
            out: bytes = self._zlib.decompress(chunk, room + 1)
        except zlib.error:
            if not self._deflate_probe:
                raise
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._zlib.decompress(chunk, room + 1)
        self._deflate_probe = False
        return out[:room], len(out) > room

    def finish(self, room: int) -> tuple[bytes, bool]:
        if self._zlib is None:
            return b"", False
        out: bytes = self._zlib.flush()
        return out[:room], len(out) > room


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    """A response read under the policy's caps."""

    status: int
    headers: httpx.Headers
    body: bytes
    """At most `max_response_bytes`, decoded if the server sent gzip or deflate."""
    truncated: bool
    """True when the body was longer than the cap and reading stopped."""
    elapsed: float
    """Seconds from the start of the request to the end of reading."""
    connected_ip: str | None
    """The IP literal the connection went to (after the guard allowed it)."""
    url: str

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300


def is_server_error(status: int) -> bool:
    """The default breaker failure predicate: 5xx."""
    return status >= 500


def _last_outcome(retry_state: RetryCallState) -> OutboundResponse:
    """After the last allowed attempt: its response as is, or its exception re-raised."""
    assert retry_state.outcome is not None
    return cast(OutboundResponse, retry_state.outcome.result())


class OutboundClient:
    """The outbound HTTP client of every service. One per process (it pools connections);
    close it with `aclose()` or use it as an async context manager.

    `breakers`: with a registry, a request that names a `breaker_key` goes through the
    breaker `breaker_prefix + breaker_key` (made with `breaker_config`). Connect errors,
    timeouts, broken responses and statuses for which `breaker_failure_status` is true (5xx
    by default) count as failures; a refused destination counts as nothing.
    """

    def __init__(
        self,
        policy: OutboundPolicy | None = None,
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: httpx.Limits | None = None,
        breakers: BreakerRegistry | None = None,
        breaker_config: BreakerConfig | None = None,
        breaker_failure_status: Callable[[int], bool] = is_server_error,
        breaker_prefix: str = "outbound:",
    ) -> None:
        self.policy = policy or OutboundPolicy()
        self.transport = GuardedTransport(
            self.policy,
            resolver=resolver,
            network_backend=network_backend,
            ssl_context=ssl_context,
            limits=limits,
        )
        total = self.policy.total_timeout
        self._client = httpx.AsyncClient(
            transport=self.transport,
            follow_redirects=False,
            trust_env=False,  # no proxies or .netrc credentials from the environment
            timeout=httpx.Timeout(
                connect=self.policy.connect_timeout, read=total, write=total, pool=total
            ),
            headers={
                "User-Agent": self.policy.user_agent,
                # Ask for the bytes as they are; a server that compresses anyway is
                # decoded under the cap.
                "Accept-Encoding": "identity",
            },
        )
        self.breakers = breakers
        self._breaker_config = breaker_config
        self._failure_status = breaker_failure_status
        self._breaker_prefix = breaker_prefix

    async def __aenter__(self) -> OutboundClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()

    def breaker(self, key: str) -> CircuitBreaker | None:
        """The breaker for `key`, or None without a registry."""
        if self.breakers is None:
            return None
        return self.breakers.get(self._breaker_prefix + key, self._breaker_config)

    async def check_destination(self, url: str) -> list[str]:
        """The addresses `url` would be allowed to connect to now, or `BlockedDestination`.

        Advisory, for a helpful error when a URL is registered (a webhook endpoint, an IdP
        metadata URL): DNS may answer differently later. The check that protects runs
        again on every connection.
        """
        parsed = self.policy.check_url(url)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        # raw_host is the IDNA (ASCII) form, the same string httpcore hands the backend.
        host = parsed.raw_host.decode("ascii")
        return await self.transport.backend.resolve_allowed(host, port)

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: httpx.Headers | dict[str, str] | None = None,
        content: bytes | str | None = None,
        breaker_key: str | None = None,
    ) -> OutboundResponse:
        """Send one request and read the response under the policy.

        Any status, 3xx included, is returned (redirects are not followed). Raises
        `BlockedDestination`, `OutboundTimeout`, `OutboundConnectError`,
        `OutboundTransportError`, or `BreakerOpen` (nothing sent).
        """
        self.policy.check_url(url)
        breaker = self.breaker(breaker_key) if breaker_key is not None else None
        if breaker is not None:
            try:
                breaker.try_acquire()
            except CallNotPermitted as refused:
                raise BreakerOpen(refused.name, refused.retry_after) from refused
        started = time.monotonic()
        try:
            response = await self._exchange(method, url, headers, content, started)
        except BlockedDestination:
            if breaker is not None:
                breaker.release_permission()  # our policy said no; the peer was not asked
            raise
        except BaseException as exc:
            if breaker is not None:
                breaker.on_error(time.monotonic() - started, exc)
            raise
        if breaker is not None:
            if self._failure_status(response.status):
                breaker.on_error(response.elapsed, UpstreamStatusError(response.status))
            else:
                breaker.on_success(response.elapsed)
        return response

    async def request_with_retries(
        self,
        method: str,
        url: str,
        *,
        budget: RetryBudget,
        attempts: int = 3,
        wait: WaitBaseT | None = None,
        retry_statuses: Collection[int] = RETRYABLE_STATUSES,
        headers: httpx.Headers | dict[str, str] | None = None,
        content: bytes | str | None = None,
        breaker_key: str | None = None,
    ) -> OutboundResponse:
        """`request`, retried on connect errors, timeouts and `retry_statuses`
        (502/503/504) up to `attempts` in all, each retry spent from `budget`; never once
        the budget is empty. Only for requests that are safe to repeat (webhook deliveries
        are: receivers deduplicate on webhook-id).

        After the last attempt its own outcome stands: the response (a 503, say) is
        returned, the exception raised. A refused destination or an open breaker is not
        retried. Each attempt goes through the breaker, so a refused one costs nothing.
        """
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        statuses = frozenset(retry_statuses)
        retrying = AsyncRetrying(
            before=record_first_attempt(budget),
            retry=retry_if_exception_type((OutboundConnectError, OutboundTimeout))
            | retry_if_result(lambda response: response.status in statuses),
            # stop_after_attempt is asked first, so the final attempt spends no retry.
            stop=stop_when_budget_exhausted(budget, stop_after_attempt(attempts)),
            wait=wait if wait is not None else wait_exponential_jitter(initial=0.2, max=5.0),
            retry_error_callback=_last_outcome,
        )
        result: Any = await retrying(
            self.request,
            method,
            url,
            headers=headers,
            content=content,
            breaker_key=breaker_key,
        )
        return cast(OutboundResponse, result)

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: httpx.Headers | dict[str, str] | None,
        content: bytes | str | None,
        started: float,
    ) -> OutboundResponse:
        try:
            async with asyncio.timeout(self.policy.total_timeout):
                async with self._client.stream(
                    method, url, headers=headers, content=content
                ) as response:
                    body, truncated = await self._read_capped(response)
                    stream = response.extensions.get("network_stream")
                    connected = stream.get_extra_info(CONNECTED_IP) if stream else None
        except TimeoutError as exc:
            raise OutboundTimeout("total") from exc
        except httpx.ConnectTimeout as exc:
            raise OutboundTimeout("connect", str(exc)) from exc
        except httpx.TimeoutException as exc:
            raise OutboundTimeout("total", str(exc)) from exc
        except httpx.ConnectError as exc:
            raise OutboundConnectError(str(exc) or "connection failed") from exc
        except httpx.TransportError as exc:
            raise OutboundTransportError(str(exc) or type(exc).__name__) from exc
        except httpx.InvalidURL as exc:
            raise BlockedDestination("invalid-url") from exc
        except zlib.error as exc:
            raise OutboundTransportError(f"undecodable response body: {exc}") from exc
        return OutboundResponse(
            status=response.status_code,
            headers=response.headers,
            body=body,
            truncated=truncated,
            elapsed=time.monotonic() - started,
            connected_ip=connected if isinstance(connected, str) else None,
            url=url,
        )

    async def _read_capped(self, response: httpx.Response) -> tuple[bytes, bool]:
        cap = self.policy.max_response_bytes
        decoder = _Decoder(response.headers.get("content-encoding"))
        parts: list[bytes] = []
        size = 0
        received = 0
        # aclosing: leaving early must finalise the generator now, not at garbage collection.
        raw = cast(AsyncGenerator[bytes, None], response.aiter_raw())
        async with contextlib.aclosing(raw) as chunks:
            async for chunk in chunks:
                received += len(chunk)
                out, overflow = decoder.feed(chunk, cap - size)
                parts.append(out)
                size += len(out)
                # Also bound what arrives on the wire: a compressed stream can be padded
                # with blocks that decode to nothing.
                if overflow or received > cap:
                    return b"".join(parts), True
        out, overflow = decoder.finish(cap - size)
        parts.append(out)
        return b"".join(parts), overflow
