"""`OutboundPolicy`: what the outbound client may reach, and how long and how much it may
read; also the checks a URL gets when it is registered (no DNS)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from tenantry_outbound.outbound.addresses import (
    DNS_NAME,
    IPAddress,
    IPNetwork,
    classify,
    is_metadata,
    parse_address,
    parse_ip_literal,
)
from tenantry_outbound.outbound.errors import BlockedDestination


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundPolicy:
    """What the outbound client may reach and how long and how much it may read.

    The defaults are for production: public https destinations on any port, nothing
    allow-listed. Tests on loopback set `allow_http=True` and
    `allow_networks=["127.0.0.0/8"]`.
    """

    allow_networks: Sequence[str] = ()
    """CIDRs whose addresses are allowed even though `classify` refuses them (a self-hosted
    IdP on 10.0.0.0/8, tests on loopback). Metadata addresses stay refused regardless."""
    allow_http: bool = False
    """Permit plain http:// URLs; https only when False."""
    ports: frozenset[int] | None = None
    """Destination ports allowed; None allows any."""
    connect_timeout: float = 5.0
    """Seconds for DNS resolution plus the TCP connect, and again for a TLS handshake."""
    total_timeout: float = 30.0
    """Seconds of wall clock for the whole exchange: connect, send, headers and body."""
    max_response_bytes: int = 1024 * 1024
    """Body bytes kept (after decompression); reading stops beyond it. Webhook deliveries
    want far less (Convoy keeps 50 KB)."""
    user_agent: str = "Tenantry-Outbound/1.0"
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.allow_networks)
        object.__setattr__(self, "allow_networks", tuple(self.allow_networks))
        object.__setattr__(self, "_networks", networks)
        if self.connect_timeout <= 0 or self.total_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if self.max_response_bytes < 0:
            raise ValueError("max_response_bytes must not be negative")
        if self.ports is not None and any(not 0 < p < 65536 for p in self.ports):
            raise ValueError("ports must be in 1..65535")

    @property
    def schemes(self) -> frozenset[str]:
        """URL schemes allowed."""
        return frozenset({"https", "http"}) if self.allow_http else frozenset({"https"})

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why a connection to `address` is refused under this policy, or None."""
        ip = parse_address(address)
        reason = classify(ip)
        if reason is None or is_metadata(reason):
            return reason
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)  # the same destination, however it is written
        for candidate in candidates:
            if any(candidate in net for net in self._networks if net.version == candidate.version):
                return None
        return reason

    def check_url(self, url: str | httpx.URL) -> httpx.URL:
        """Refuse a URL whose scheme or port is not allowed (`BlockedDestination`); returns
        the parsed URL. Addresses are checked at connect time, not here."""
        try:
            parsed = httpx.URL(url) if isinstance(url, str) else url
        except httpx.InvalidURL as exc:
            raise BlockedDestination("invalid-url") from exc
        if parsed.scheme not in self.schemes:
            raise BlockedDestination("scheme", host=parsed.host or None)
        if not parsed.host:
            raise BlockedDestination("host", host=None)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if not 0 < port < 65536 or (self.ports is not None and port not in self.ports):
            raise BlockedDestination("port", host=parsed.host)
        return parsed

    def check_without_dns(self, url: str | httpx.URL) -> httpx.URL:
        """Everything the guard can judge about `url` without DNS, for registration (a
        webhook endpoint, an IdP's URL): `check_url`; then, if the host is an IP literal in
        any spelling (`parse_ip_literal`), `refusal` of that address (reason as there,
        `addresses` the address); else the host must be a DNS name ("host": "a b",
        "%31.0.0.1" can never be connected to). The URL is parsed as a request parses it,
        so what passes here is what a connection gets. A name is judged when it is
        connected to: DNS can answer differently later."""
        parsed = self.check_url(url)
        host = parsed.raw_host.decode("ascii")
        literal = parse_ip_literal(host)
        if literal is None:
            if not DNS_NAME.fullmatch(host) or len(host.rstrip(".")) > 253:
                raise BlockedDestination("host", host=host)
            return parsed
        reason = self.refusal(literal)
        if reason is not None:
            raise BlockedDestination(reason, host=host, addresses=[str(literal)])
        return parsed
