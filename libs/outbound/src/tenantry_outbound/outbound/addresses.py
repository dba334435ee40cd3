"""Address classification, the heart of the SSRF guard: which IANA special-purpose range
(or cloud metadata endpoint) an IP address is in, IPv4 embedded in IPv6 judged by what it
embeds, and the one parser of hosts written as IP addresses in any spelling."""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def parse_address(address: str | IPAddress) -> IPAddress:
    """The address `address` names (an IP string or an address), zone id dropped."""
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
DNS_NAME = re.compile(r"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?", re.ASCII)


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
            return parse_address(host)
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
    ip = parse_address(address)
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


def is_metadata(reason: str) -> bool:
    return reason == _METADATA or reason.endswith(":" + _METADATA)
