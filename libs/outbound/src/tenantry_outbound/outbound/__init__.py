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

One module per concern (this package re-exports their public names): `errors`,
`addresses` (classification and the IP-literal parser), `policy`, `connections` (the
resolving, pinning network backend), `transport` (httpx over it), `client`.

Relies on httpcore's public network-backend API (`AsyncConnectionPool(network_backend=...)`,
`AsyncNetworkBackend.connect_tcp`, `AsyncNetworkStream`), checked against httpcore 1.0.9
and httpx 0.28.1.
"""

from tenantry_outbound.outbound.addresses import (
    SPECIAL_NETWORKS,
    IPAddress,
    classify,
    parse_ip_literal,
)
from tenantry_outbound.outbound.client import (
    RETRYABLE_STATUSES,
    OutboundClient,
    OutboundResponse,
    is_server_error,
)
from tenantry_outbound.outbound.connections import (
    CONNECTED_IP,
    GuardedNetworkBackend,
    Resolver,
    system_resolver,
)
from tenantry_outbound.outbound.errors import (
    BlockedDestination,
    BreakerOpen,
    OutboundConnectError,
    OutboundError,
    OutboundTimeout,
    OutboundTransportError,
    UpstreamStatusError,
)
from tenantry_outbound.outbound.policy import OutboundPolicy
from tenantry_outbound.outbound.transport import GuardedTransport

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
