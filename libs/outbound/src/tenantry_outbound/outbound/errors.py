"""The outbound client's typed errors; all derive from `OutboundError`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal


class OutboundError(Exception):
    """Base class of every error the outbound client raises."""


class BlockedDestination(OutboundError):
    """The request was refused before any byte left: the URL's scheme or port is not
    allowed, or every address the host resolved to is in a blocked range.

    `reason` is machine-readable: "scheme", "port", or a `classify` reason ("loopback",
    "metadata", "ipv4-mapped:private", ...). `addresses` lists what the host resolved to.
    """

    def __init__(self, reason: str, *, host: str | None = None, addresses: Sequence[str] = ()):
        self.reason = reason
        self.host = host
        self.addresses = tuple(addresses)
        where = f" ({host} -> {', '.join(self.addresses)})" if self.addresses else ""
        where = where or (f" ({host})" if host else "")
        super().__init__(f"outbound destination refused: {reason}{where}")


class OutboundTimeout(OutboundError):
    """A deadline passed. `phase` is "connect" (DNS, TCP and TLS handshake) or "total" (the
    wall clock of the whole exchange, body included)."""

    def __init__(self, phase: Literal["connect", "total"], message: str = "") -> None:
        self.phase = phase
        super().__init__(message or f"outbound request timed out ({phase})")


class OutboundConnectError(OutboundError):
    """No connection: refused, unreachable, name not found, or the TLS handshake failed
    (a certificate that does not match the hostname lands here)."""


class OutboundTransportError(OutboundError):
    """The connection broke or the peer spoke bad HTTP after the request was sent."""


class BreakerOpen(OutboundError):
    """The circuit breaker for this destination refused the call; nothing was sent.
    `retry_after` is seconds until it lets a trial call through, when known."""

    def __init__(self, name: str, retry_after: float | None) -> None:
        self.name = name
        self.retry_after = retry_after
        wait = f"; retry in {retry_after:.1f}s" if retry_after is not None else ""
        super().__init__(f"circuit breaker {name!r} is open{wait}")


class UpstreamStatusError(Exception):
    """What a breaker is told when a response's status counts as a failure (5xx by
    default). Never raised to callers: they get the response."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"upstream answered {status}")
