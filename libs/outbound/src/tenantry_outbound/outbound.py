"""The one outbound HTTP client: every request Tenantry makes to a URL that a customer, an
IdP or an operator chose (webhook deliveries, SAML metadata, OIDC discovery and JWKS).

Such URLs are attacker-controlled, so the client is an SSRF guard first and an HTTP client
second:

- Destination guard on the address actually connected to. The TCP layer is an httpcore
  network backend (`GuardedNetworkBackend`) that resolves the host itself, classifies every
  answer (`classify`: private, loopback, link-local, unique-local, CGNAT, multicast, cloud
  metadata and the rest of the IANA special-purpose registries, IPv4 and IPv6, including
  IPv4 embedded in IPv4-mapped, NAT64, 6to4, Teredo and IPv4-compatible addresses) and
  connects to the IP literal it checked. There is no second lookup for DNS rebinding to win.
  A host written as an address, in any spelling the system accepts ("2852039166",
  "0x7f.1", "10.1", "[::ffff:10.0.0.1]"), is that address, never a name
  (`parse_ip_literal`, the one parser: registration checks use it too, through
  `OutboundPolicy.check_without_dns`).
  TLS still verifies, and sends SNI for, the URL's hostname: httpcore passes the origin's
  host to `start_tls` independently of the address the backend connected to.
- An allow-list of networks (`OutboundPolicy.allow_networks`, empty by default) opens
  blocked ranges for self-hosting and for tests on loopback. Cloud metadata addresses stay
  closed whatever it says.
- https only unless `allow_http`; optional port allow-list; redirects are never followed
  (a 3xx is returned as is: following one would be a request to a URL nobody vetted);
  environment proxies and .netrc are ignored (`trust_env=False`).
- Connect timeout (DNS + TCP, and the TLS handshake) and a total wall-clock timeout for the
  whole exchange, body included. The body is streamed and reading stops at
  `max_response_bytes` (`truncated=True`); a compressed body is decompressed with the same
  bound, so a gzip bomb costs at most the cap.
- A circuit-breaker hook (`breaker_key`, from `tenantry_resilience`) and retries inside a
  `RetryBudget` (`request_with_retries`).

Errors are typed: `BlockedDestination`, `OutboundTimeout`, `OutboundConnectError`,
`OutboundTransportError`, `BreakerOpen`; all derive from `OutboundError`.

Relies on httpcore's public network-backend API (`AsyncConnectionPool(network_backend=...)`,
`AsyncNetworkBackend.connect_tcp`, `AsyncNetworkStream`), checked against httpcore 1.0.9
and httpx 0.28.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
import time
import zlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Literal, cast

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

from tenantry_resilience import (
    BreakerConfig,
    BreakerRegistry,
    CallNotPermitted,
    CircuitBreaker,
    RetryBudget,
    record_first_attempt,
    stop_when_budget_exhausted,
)

__all__ = [
    "CONNECTED_IP",
    "RETRYABLE_STATUSES",
    "SPECIAL_NETWORKS",
    "BlockedDestination",
    "BreakerOpen",
    "GuardedNetworkBackend",
    "GuardedTransport",
    "IPAddress",
    "OutboundClient",
    "OutboundConnectError",
    "OutboundError",
    "OutboundPolicy",
    "OutboundResponse",
    "OutboundTimeout",
    "OutboundTransportError",
    "Resolver",
    "UpstreamStatusError",
    "classify",
    "is_server_error",
    "parse_ip_literal",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""`(host, port) -> IP address strings`. Injected in tests (rebinding) and where a
deployment wants its own DNS; the default is the system resolver."""

CONNECTED_IP = "tenantry.connected_ip"
"""`get_extra_info` key of a guarded network stream: the IP literal it connected to."""

RETRYABLE_STATUSES: frozenset[int] = frozenset({502, 503, 504})
"""Statuses `request_with_retries` retries: the gateway said the upstream is not there."""


# -- errors -------------------------------------------------------------------------------


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


# -- address classification -----------------------------------------------------------------

_METADATA = "metadata"

# The IANA IPv4 and IPv6 special-purpose address registries (as of 2025), plus the cloud
# metadata endpoints. Longest prefix wins, so a metadata /32 inside link-local reports
# "metadata". Ranges the registry calls globally reachable but that no customer endpoint
# lives in (AS112, AMT, anycast relays) are refused too: refusing costs nothing, and they
# are protocol infrastructure. Embedding prefixes are listed with their form as the reason;
# `classify` judges those by the IPv4 address inside.
_TABLE: tuple[tuple[str, str], ...] = (
    # cloud metadata (instance credentials): never reachable, not even via the allow-list
    ("169.254.169.254/32", _METADATA),  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack, ...
    ("169.254.170.2/32", _METADATA),  # AWS ECS task metadata and credentials
    ("169.254.170.23/32", _METADATA),  # AWS EKS Pod Identity agent
    ("169.254.0.23/32", _METADATA),  # Tencent Cloud
    ("100.100.100.200/32", _METADATA),  # Alibaba Cloud
    ("192.0.0.192/32", _METADATA),  # Oracle Cloud (legacy)
    ("168.63.129.16/32", _METADATA),  # Azure WireServer / host agent (a public address)
    ("fd00:ec2::254/128", _METADATA),  # AWS IMDS over IPv6
    ("fd00:ec2::23/128", _METADATA),  # AWS EKS Pod Identity agent over IPv6
    ("fd20:ce::254/128", _METADATA),  # Google Compute Engine metadata over IPv6
    # IPv4 special-purpose registry
    ("0.0.0.0/8", "unspecified"),  # "this network"; connecting to 0.0.0.0 reaches this host
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
    ("192.0.2.0/24", "documentation"),
    ("192.31.196.0/24", "reserved"),  # AS112-v4
    ("192.52.193.0/24", "reserved"),  # AMT
    ("192.88.99.0/24", "reserved"),  # deprecated 6to4 relay anycast
    ("192.168.0.0/16", "private"),
    ("192.175.48.0/24", "reserved"),  # AS112 direct delegation
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    # IPv6 special-purpose registry
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "ipv4-mapped"),
    ("::/96", "ipv4-compatible"),  # deprecated (RFC 4291)
    ("64:ff9b::/96", "nat64"),
    ("64:ff9b:1::/48", "nat64-local"),  # RFC 8215: local translators only
    ("100::/64", "reserved"),  # discard-only
    ("2001::/23", "reserved"),  # IETF protocol assignments (ORCHID, AMT, AS112, anycast)
    ("2001::/32", "teredo"),
    ("2001:2::/48", "benchmarking"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("2620:4f:8000::/48", "reserved"),  # AS112 direct delegation
    ("3fff::/20", "documentation"),  # RFC 9637
    ("5f00::/16", "reserved"),  # SRv6 SIDs (RFC 9602)
    ("fc00::/7", "unique-local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),  # deprecated; Python calls it global
    ("ff00::/8", "multicast"),
)

SPECIAL_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    sorted(
        ((ipaddress.ip_network(cidr), reason) for cidr, reason in _TABLE),
        key=lambda entry: entry[0].prefixlen,
        reverse=True,
    )
)
"""Every explicitly listed network and its reason, longest prefix first. Reasons that are
an embedding form ("ipv4-mapped", "nat64", "6to4", "teredo", "ipv4-compatible") mean
"judged by the IPv4 inside"; every other reason is a refusal."""

# Forms whose traffic really goes to the embedded IPv4 (or to a translator that forwards to
# it): a public IPv4 inside is as good as the IPv4 itself. Teredo and IPv4-compatible are
# obsolete; they are refused whatever they embed, naming the embedded reason when there is
# one so a log shows what was targeted.
_TRANSPARENT_FORMS = frozenset({"ipv4-mapped", "nat64", "6to4"})
_EMBEDDING_FORMS = _TRANSPARENT_FORMS | {"teredo", "ipv4-compatible"}
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def _parse(address: str | IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        ip = address
    else:
        ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        # fe80::1%eth0: the zone says which link, not which range.
        ip = ipaddress.IPv6Address(int(ip))
    return ip


def _lookup(ip: IPAddress) -> str | None:
    for network, reason in SPECIAL_NETWORKS:
        if ip.version == network.version and ip in network:
            return reason
    return None


def _from_properties(ip: IPAddress) -> str | None:
    """The `ipaddress` module's view, as a backstop behind the table (it may learn ranges
    after this table was written)."""
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


# One part of a numeric IPv4 host as inet_aton reads it (C's strtoul with base 0): hex
# after 0x (at least one digit: "0x" alone is not a number), octal after a leading 0,
# decimal otherwise. ASCII only: C's isdigit knows no other digits.
_V4_PART = re.compile(r"0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*)", re.ASCII)
# The largest last part for 1, 2, 3 and 4 parts: it fills the bytes the others leave.
_V4_LAST_MAX = (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)
# A host name as DNS can hold it after IDNA: labels of letters, digits, - and _ (seen in
# real names), at most 63 long, an optional root dot.
_DNS_NAME = re.compile(r"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?", re.ASCII)


def _parse_numeric_v4(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if len(parts) > 4:
        return None
    values: list[int] = []
    for part in parts:
        match = _V4_PART.fullmatch(part)
        if match is None:
            return None
        hex_digits, octal, decimal = match.groups()
        if hex_digits is not None:
            values.append(int(hex_digits, 16))
        elif octal is not None:
            values.append(int(octal, 8))
        else:
            values.append(int(decimal, 10))
    *leading, last = values
    if any(value > 0xFF for value in leading) or last > _V4_LAST_MAX[len(leading)]:
        return None
    address = last
    for index, value in enumerate(leading):
        address |= value << (24 - 8 * index)
    return ipaddress.IPv4Address(address)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address `host` (a URL's host, without brackets) names if it is an IP literal,
    or None if it is a name for DNS. The one parser of IP literals for outbound requests:
    the connection guard and every check at registration use it, so both always agree.

    It reads every numeric spelling the system would connect to without asking DNS:
    IPv6 as inet_pton reads it (IPv4-mapped and other embedded forms, an optional %zone),
    and IPv4 as inet_aton reads it (and so getaddrinfo): one to four parts separated by
    dots, each decimal, octal (a leading 0) or hex (0x), the last one filling the bytes
    the others leave. "2852039166" is 169.254.169.254, "0" is 0.0.0.0, "10.1" is
    10.0.0.1, "0x7f.1" and "0177.0.0.1" are 127.0.0.1. Pure: no DNS, no libc, the same
    answer on every platform.
    """
    if ":" in host:
        try:
            return _parse(host)
        except ValueError:
            return None
    return _parse_numeric_v4(host)


def _embedded(ip: ipaddress.IPv6Address, form: str) -> list[ipaddress.IPv4Address]:
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if form == "6to4":
        inner = ip.sixtofour
        return [inner] if inner is not None else []
    if form == "teredo":
        pair = ip.teredo
        return list(pair) if pair is not None else []  # (server, client)
    return [low32]  # mapped, NAT64 /96, compatible: the last 32 bits


def _classify_v4(ip: ipaddress.IPv4Address) -> str | None:
    return _lookup(ip) or _from_properties(ip)


def classify(address: str | IPAddress) -> str | None:
    """Why an outbound connection to `address` is refused, or None if it is a public
    unicast address. Pure: no DNS, no allow-list.

    Reasons: "loopback", "private", "link-local", "unique-local", "site-local", "cgnat",
    "multicast", "broadcast", "metadata", "reserved", "unspecified", "benchmarking",
    "documentation", "nat64-local"; for an IPv6 address that embeds an IPv4 one,
    "<form>:<reason of the IPv4>" (form: "ipv4-mapped", "nat64", "6to4", "teredo",
    "ipv4-compatible"), or the bare form for the obsolete Teredo and IPv4-compatible
    encodings of a public IPv4. Raises ValueError for something that is not an address.
    """
    ip = _parse(address)
    if isinstance(ip, ipaddress.IPv4Address):
        return _classify_v4(ip)
    reason = _lookup(ip)
    if reason in _EMBEDDING_FORMS:
        assert reason is not None
        for inner in _embedded(ip, reason):
            inner_reason = _classify_v4(inner)
            if inner_reason is not None:
                return f"{reason}:{inner_reason}"
        return None if reason in _TRANSPARENT_FORMS else reason
    if reason is not None:
        return reason
    if ip not in _GLOBAL_UNICAST_V6:
        return "reserved"  # IANA has allocated nothing outside 2000::/3 for unicast use
    return _from_properties(ip)


def _is_metadata(reason: str) -> bool:
    return reason == _METADATA or reason.endswith(":" + _METADATA)


# -- policy ---------------------------------------------------------------------------------


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
        ip = _parse(address)
        reason = classify(ip)
        if reason is None or _is_metadata(reason):
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
            if not _DNS_NAME.fullmatch(host) or len(host.rstrip(".")) > 253:
                raise BlockedDestination("host", host=host)
            return parsed
        reason = self.refusal(literal)
        if reason is not None:
            raise BlockedDestination(reason, host=host, addresses=[str(literal)])
        return parsed


# -- resolution and connection ------------------------------------------------------------


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
                ip = _parse(answer)
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
        if isinstance(peer, tuple) and peer and _parse(str(peer[0])) != _parse(address):
            await stream.aclose()
            raise BlockedDestination("peer-mismatch", host=address, addresses=[str(peer[0])])

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedDestination("unix-socket", host=path)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# -- the httpx transport ------------------------------------------------------------------

# Most specific first: the first isinstance match wins.
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


def _to_httpx(exc: Exception, request: httpx.Request) -> Exception:
    """The httpx exception for an httpcore one (httpx's own mapping is private); any
    other exception, `BlockedDestination` included, as it is."""
    for source, target in _EXCEPTIONS:
        if isinstance(exc, source):
            mapped = target(str(exc), request=request)
            mapped.__cause__ = exc
            return mapped
    return exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for part in self._stream:
                yield part
        except Exception as exc:
            mapped = _to_httpx(exc, self._request)
            if mapped is exc:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore connection pool whose network backend is a
    `GuardedNetworkBackend`; it also enforces the policy's schemes and ports. HTTP/1.1
    only, no proxies, no retries.

    `OutboundClient` uses it; code that must hand an httpx client to a library can use it
    too, but then the caller owns timeouts, redirects and response size caps.
    """

    def __init__(
        self,
        policy: OutboundPolicy,
        *,
        resolver: Resolver | None = None,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        self.policy = policy
        self.backend = GuardedNetworkBackend(policy, resolver=resolver, backend=network_backend)
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            retries=0,
            network_backend=self.backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.policy.check_url(request.url)
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        try:
            response = await self._pool.handle_async_request(core_request)
        except Exception as exc:
            mapped = _to_httpx(exc, request)
            if mapped is exc:
                raise
            raise mapped from exc
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, request),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


# -- bounded body reading -----------------------------------------------------------------


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


# -- the client ------------------------------------------------------------------------------


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
