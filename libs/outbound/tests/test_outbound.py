"""The outbound client: the address classifier (pure, table-driven and property-based), and
the client against tiny HTTP servers on loopback.

Network rule of this file: nothing connects anywhere but loopback. Every client is built
with `SpyBackend`, which refuses (fails the test) any connection to a non-loopback address
and, with `forbid=True`, any connection at all; every client resolves names with
`FakeResolver`, never real DNS. Refusal of other ranges is proved before connecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ipaddress
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tenacity import wait_none

from tenantry_outbound.outbound import (
    SPECIAL_NETWORKS,
    BlockedDestination,
    BreakerOpen,
    GuardedNetworkBackend,
    GuardedTransport,
    OutboundClient,
    OutboundConnectError,
    OutboundPolicy,
    OutboundTimeout,
    OutboundTransportError,
    classify,
    parse_ip_literal,
)
from tenantry_resilience import BreakerConfig, BreakerRegistry, BreakerState, RetryBudget
from tenantry_resilience.testing import ManualClock
from tenantry_testkit.tls import write_tls_files

# -- the classifier ---------------------------------------------------------------------------

BLOCKED: list[tuple[str, str]] = [
    # IPv4
    ("0.0.0.0", "unspecified"),  # noqa: S104 (an address under test, not a bind)
    ("0.1.2.3", "unspecified"),
    ("10.0.0.0", "private"),
    ("10.255.255.255", "private"),
    ("100.64.0.0", "cgnat"),
    ("100.127.255.255", "cgnat"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.0.1", "link-local"),
    ("169.254.255.255", "link-local"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.1", "reserved"),
    ("192.0.0.9", "reserved"),
    ("192.0.2.1", "documentation"),
    ("192.31.196.1", "reserved"),
    ("192.52.193.1", "reserved"),
    ("192.88.99.1", "reserved"),
    ("192.168.0.1", "private"),
    ("192.168.255.255", "private"),
    ("192.175.48.1", "reserved"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.254", "reserved"),
    ("255.255.255.255", "broadcast"),
    # cloud metadata
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("169.254.170.23", "metadata"),
    ("169.254.0.23", "metadata"),
    ("100.100.100.200", "metadata"),
    ("192.0.0.192", "metadata"),
    ("168.63.129.16", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("fd00:ec2::23", "metadata"),
    ("fd20:ce::254", "metadata"),
    # IPv6
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("100::1", "reserved"),
    ("2001:2::1", "benchmarking"),
    ("2001:10::1", "reserved"),
    ("2001:20::1", "reserved"),
    ("2001:1ff:ffff::1", "reserved"),
    ("2001:db8::1", "documentation"),
    ("2001:db8:ffff::1", "documentation"),
    ("3fff::1", "documentation"),
    ("3fff:fff:ffff::1", "documentation"),
    ("2620:4f:8000::1", "reserved"),
    ("5f00::1", "reserved"),
    ("64:ff9b:1::1", "nat64-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456:789a::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff05::1:3", "multicast"),
    ("4000::1", "reserved"),
    ("8000::1", "reserved"),
    ("1::1", "reserved"),
    ("::2", "ipv4-compatible:unspecified"),
    # IPv4 inside IPv6: judged by the IPv4
    ("::ffff:127.0.0.1", "ipv4-mapped:loopback"),
    ("::ffff:7f00:1", "ipv4-mapped:loopback"),
    ("::ffff:10.0.0.1", "ipv4-mapped:private"),
    ("::ffff:169.254.169.254", "ipv4-mapped:metadata"),
    ("::ffff:100.64.0.1", "ipv4-mapped:cgnat"),
    ("::ffff:0.0.0.0", "ipv4-mapped:unspecified"),
    ("::127.0.0.1", "ipv4-compatible:loopback"),
    ("::10.1.1.1", "ipv4-compatible:private"),
    ("::8.8.8.8", "ipv4-compatible"),
    ("64:ff9b::7f00:1", "nat64:loopback"),
    ("64:ff9b::10.0.0.1", "nat64:private"),
    ("64:ff9b::169.254.169.254", "nat64:metadata"),
    ("64:ff9b::192.168.1.1", "nat64:private"),
    ("2002:7f00:1::1", "6to4:loopback"),
    ("2002:a00:1::", "6to4:private"),
    ("2002:a9fe:a9fe:1234::1", "6to4:metadata"),
    ("2002:c0a8:101::1", "6to4:private"),
    # Teredo: server 65.54.227.120, client ~0xc000022d... = 192.0.2.45 (RFC 4380 example)
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "teredo:documentation"),
    # client 10.0.0.1 (stored inverted: f5ff:fffe), public server
    ("2001:0:808:808::f5ff:fffe", "teredo:private"),
    # server 127.0.0.1
    ("2001:0:7f00:1::f7f7:f7f7", "teredo:loopback"),
    ("2001:0:808:808::f7f7:f7f7", "teredo"),  # both public: obsolete, refused anyway
]

ALLOWED: list[str] = [
    "8.8.8.8",
    "1.1.1.1",
    "9.9.9.9",
    "11.0.0.1",
    "93.184.215.14",
    "151.101.1.69",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "126.255.255.255",
    "128.0.0.1",
    "169.253.255.255",
    "169.255.0.1",
    "172.15.255.255",
    "172.32.0.0",
    "192.167.255.255",
    "192.169.0.0",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:80b::200e",
    "2001:200::1",  # just past 2001::/23
    "2001:db7:ffff:ffff::1",
    "2c0f:fb50::1",
    "3ffe:ffff::1",
    "::ffff:8.8.8.8",  # IPv4-mapped public: the same as 8.8.8.8
    "64:ff9b::808:808",  # NAT64 of a public IPv4: needed on IPv6-only clusters
    "64:ff9b::1.1.1.1",
    "2002:808:808::1",  # 6to4 of a public IPv4
]


@pytest.mark.parametrize(("address", "reason"), BLOCKED)
def test_classify_refuses_special_addresses(address: str, reason: str) -> None:
    assert classify(address) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_classify_allows_public_addresses(address: str) -> None:
    assert classify(address) is None


def test_classify_takes_address_objects_and_rejects_garbage() -> None:
    assert classify(ipaddress.IPv4Address("127.0.0.1")) == "loopback"
    assert classify(ipaddress.IPv6Address("::1")) == "loopback"
    for garbage in ("localhost", "127.1", "", "1.2.3.4.5", "::g"):
        with pytest.raises(ValueError, match="does not appear to be"):
            classify(garbage)


EMBEDDING_FORMS = {"ipv4-mapped", "nat64", "6to4", "teredo", "ipv4-compatible"}
KNOWN_REASONS = {
    "loopback",
    "private",
    "link-local",
    "unique-local",
    "site-local",
    "cgnat",
    "multicast",
    "broadcast",
    "metadata",
    "reserved",
    "unspecified",
    "benchmarking",
    "documentation",
    "nat64-local",
}
BLOCKING = [(net, why) for net, why in SPECIAL_NETWORKS if why not in EMBEDDING_FORMS]
BLOCKING_V4 = [net for net, _ in BLOCKING if net.version == 4]


def test_the_table_uses_known_reasons_only() -> None:
    assert {why for _, why in SPECIAL_NETWORKS} <= KNOWN_REASONS | EMBEDDING_FORMS


def address_in(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> st.SearchStrategy[Any]:
    low, high = int(network.network_address), int(network.broadcast_address)
    if network.version == 4:
        return st.integers(low, high).map(ipaddress.IPv4Address)
    return st.integers(low, high).map(ipaddress.IPv6Address)


blocked_addresses = st.sampled_from([net for net, _ in BLOCKING]).flatmap(address_in)
blocked_v4 = st.sampled_from(BLOCKING_V4).flatmap(address_in)


def in_table(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(ip.version == net.version and ip in net for net, _ in SPECIAL_NETWORKS)


@given(blocked_addresses)
def test_every_address_inside_a_blocked_network_is_blocked(ip: Any) -> None:
    assert classify(ip) is not None


def embed(form: str, v4: ipaddress.IPv4Address, noise: int) -> ipaddress.IPv6Address:
    """`v4` written inside an IPv6 address of `form`; `noise` fills the free bits."""
    n = int(v4)
    if form == "ipv4-mapped":
        return ipaddress.IPv6Address((0xFFFF << 32) | n)
    if form == "ipv4-compatible":
        return ipaddress.IPv6Address(n)
    if form == "nat64":
        return ipaddress.IPv6Address((0x64FF9B << 96) | n)
    if form == "6to4":  # 2002:V4ADDR::/48, any subnet and interface id
        return ipaddress.IPv6Address((0x2002 << 112) | (n << 80) | (noise & ((1 << 80) - 1)))
    # Teredo: 2001:0:SERVER:flags:port:~CLIENT; the client's address is stored inverted.
    server = noise & 0xFFFFFFFF
    return ipaddress.IPv6Address(
        (0x20010000 << 96)
        | (server << 64)
        | (((noise >> 32) & 0xFFFFFFFF) << 32)
        | (n ^ 0xFFFFFFFF)
    )


@given(st.sampled_from(sorted(EMBEDDING_FORMS)), blocked_v4, st.integers(0, (1 << 80) - 1))
def test_a_blocked_ipv4_is_blocked_in_every_ipv6_embedding(
    form: str, v4: ipaddress.IPv4Address, noise: int
) -> None:
    ip = embed(form, v4, noise)
    reason = classify(ip)
    assert reason is not None
    if ip in (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1")):
        assert reason in ("unspecified", "loopback")  # ::0.0.0.0 and ::0.0.0.1 are these
    elif form == "teredo" and classify(ipaddress.IPv4Address(noise & 0xFFFFFFFF)) is not None:
        assert reason.startswith("teredo:")  # the server half may be the blocked one
    else:
        assert reason == f"{form}:{classify(v4)}"


public_v4 = st.ip_addresses(v=4).filter(lambda ip: ip.is_global and not in_table(ip))


@given(public_v4, st.integers(0, (1 << 80) - 1))
def test_a_public_ipv4_is_judged_through_its_embedding(
    v4: ipaddress.IPv4Address, noise: int
) -> None:
    assert classify(v4) is None
    for form in ("ipv4-mapped", "nat64", "6to4"):
        assert classify(embed(form, v4, noise)) is None, form
    assert classify(embed("ipv4-compatible", v4, noise)) == "ipv4-compatible"
    teredo = classify(embed("teredo", v4, noise))
    assert teredo is not None
    assert teredo.startswith("teredo")


global_unicast_v6 = (
    st.integers(0x2000 << 112, (0x4000 << 112) - 1)
    .map(ipaddress.IPv6Address)
    .filter(lambda ip: ip.is_global and not in_table(ip))
)


@given(st.one_of(public_v4, global_unicast_v6))
def test_what_ipaddress_calls_global_and_the_table_does_not_list_is_allowed(ip: Any) -> None:
    assert classify(ip) is None


def transparent_ipv4(ip: Any) -> ipaddress.IPv4Address | None:
    """The IPv4 inside a mapped, NAT64 or 6to4 address: traffic really goes there."""
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # type: ignore[no-any-return]
    if ip.sixtofour is not None:
        return ip.sixtofour  # type: ignore[no-any-return]
    if ip in ipaddress.IPv6Network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


@given(st.ip_addresses())
def test_what_ipaddress_calls_not_global_is_blocked(ip: Any) -> None:
    inner = transparent_ipv4(ip)
    if inner is not None:
        # ipaddress calls all of ::ffff:0:0/96 reserved; we judge by the IPv4 inside.
        assert (classify(ip) is None) == (classify(inner) is None)
    elif not ip.is_global or ip.is_private or ip.is_reserved or ip.is_multicast:
        assert classify(ip) is not None


# -- the IP literal parser ------------------------------------------------------------------
# Registration (check_without_dns) and the connection guard read a host with the same
# parser, `parse_ip_literal`; it must read every numeric spelling the system's own parsers
# (inet_aton, which getaddrinfo uses for IPv4, and inet_pton for IPv6) read, as they read
# it. The references below are those libc functions, called on text only (no socket).


def aton(text: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


@st.composite
def spellings_of(draw: st.DrawFn, address: ipaddress.IPv4Address) -> str:
    """One of the inet_aton spellings of `address`: 1 to 4 parts (the last fills the bytes
    the others leave), each decimal, octal or hex, padded with zeros."""
    count = draw(st.integers(1, 4))
    raw = int(address).to_bytes(4, "big")
    values = [*raw[: count - 1], int.from_bytes(raw[count - 1 :], "big")]
    parts = []
    for value in values:
        zeros = "0" * draw(st.integers(0, 3))
        form = draw(st.sampled_from(["decimal", "octal", "hex", "HEX"]))
        if form == "decimal":
            parts.append(str(value))
        elif form == "octal":
            parts.append("0" + zeros + format(value, "o"))
        else:
            digits = format(value, "x" if form == "hex" else "X")
            parts.append(draw(st.sampled_from(["0x", "0X"])) + zeros + digits)
    return ".".join(parts)


any_ipv4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv4_spellings = any_ipv4.flatmap(lambda ip: spellings_of(ip).map(lambda text: (ip, text)))


@given(ipv4_spellings)
def test_every_inet_aton_spelling_of_an_ipv4_is_that_address(
    spelled: tuple[ipaddress.IPv4Address, str],
) -> None:
    address, text = spelled
    assert aton(text) == address  # the reference agrees this is a spelling of it
    assert parse_ip_literal(text) == address
    assert classify(parse_ip_literal(text) or "::") == classify(address)


@given(st.text(alphabet="0123456789abcdefABCDEFxX.", max_size=24))
def test_numeric_looking_hosts_are_addresses_exactly_when_inet_aton_says_so(text: str) -> None:
    assert parse_ip_literal(text) == aton(text)


@given(st.lists(st.sampled_from(["256", "0x100", "08", "0x", "", "1", "0377"]), max_size=6))
def test_malformed_numeric_hosts_are_names_as_for_inet_aton(parts: list[str]) -> None:
    text = ".".join(parts)
    assert parse_ip_literal(text) == aton(text)


@st.composite
def ipv6_spellings(draw: st.DrawFn) -> tuple[ipaddress.IPv6Address, str]:
    """An IPv6 address and one of its inet_pton spellings: compressed, exploded, any case,
    or with its last 32 bits as a dotted quad (::ffff:10.0.0.1)."""
    address = draw(
        st.one_of(
            st.integers(0, 2**128 - 1),
            st.integers(0, 2**32 - 1).map(lambda v4: (0xFFFF << 32) | v4),  # IPv4-mapped
            st.integers(0, 2**32 - 1).map(lambda v4: (0x64FF9B << 96) | v4),  # NAT64
        ).map(ipaddress.IPv6Address)
    )
    form = draw(st.sampled_from(["compressed", "exploded", "upper", "dotted"]))
    if form == "compressed":
        text = address.compressed
    elif form == "exploded":
        text = address.exploded
    elif form == "upper":
        text = address.compressed.upper()
    else:
        head = ipaddress.IPv6Address(int(address) >> 32 << 32).exploded.rsplit(":", 2)[0]
        text = f"{head}:{ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)}"
    return address, text


@given(ipv6_spellings())
def test_every_inet_pton_spelling_of_an_ipv6_is_that_address(
    spelled: tuple[ipaddress.IPv6Address, str],
) -> None:
    address, text = spelled
    assert ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text)) == address
    assert parse_ip_literal(text) == address
    assert parse_ip_literal(text + "%eth0") == address  # a zone names the link, not the range


def test_hosts_that_are_names_are_not_literals() -> None:
    for name in ["hooks.example.com", "0x", "1.2.3.4.", "1..2", "08", "0x100000000", "a:b", ""]:
        assert parse_ip_literal(name) is None, name


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://2852039166/", "metadata"),  # 169.254.169.254 as one number
        ("http://0xa9fea9fe/", "metadata"),
        ("http://0/", "unspecified"),
        ("http://10.1/", "private"),
        ("http://0x7f.1/", "loopback"),
        ("http://0X7F.0.0.1/", "loopback"),
        ("http://017700000001/", "loopback"),
        ("http://0177.0.0.1/", "invalid-url"),  # httpx refuses a dotted quad with octal parts
        ("http://127\u30020\u30020\u30021/", "loopback"),  # ideographic full stops (IDNA)
        ("http://[::ffff:10.0.0.1]/", "ipv4-mapped:private"),
        ("http://[::ffff:a00:1]/", "ipv4-mapped:private"),
        ("http://[0:0:0:0:0:ffff:169.254.169.254]/", "ipv4-mapped:metadata"),
        ("http://[64:ff9b::10.0.0.1]/", "nat64:private"),
        ("http://[fe80::1%25eth0]/", "link-local"),
        ("http://[::]/", "unspecified"),
        ("http://%31%32%37.0.0.1/", "host"),  # neither an address nor a DNS name
        ("http://127.1%20x/", "host"),
    ],
)
def test_registration_refuses_every_spelling_of_a_refused_address(url: str, reason: str) -> None:
    policy = replace(LOOPBACK, allow_networks=())
    with pytest.raises(BlockedDestination) as refused:
        policy.check_without_dns(url)
    assert refused.value.reason == reason


def test_registration_allows_names_public_literals_and_the_allow_list() -> None:
    for url in [
        "https://hooks.example.com/in",
        "http://8.8.8.8/",
        "http://134744072/",  # 8.8.8.8 too
        "http://[2606:4700::1111]/",
    ]:
        assert LOOPBACK.check_without_dns(url).host  # no DNS, no connection: only parsing
    for url in ["http://2130706433:8080/", "http://127.1/", "http://[::ffff:127.0.0.1]/"]:
        LOOPBACK.check_without_dns(url)  # loopback is allow-listed (as for the tests)
        with pytest.raises(BlockedDestination, match="loopback"):
            replace(LOOPBACK, allow_networks=()).check_without_dns(url)


special_or_public_v4: st.SearchStrategy[ipaddress.IPv4Address] = st.one_of(
    st.sampled_from([net for net, _ in SPECIAL_NETWORKS if net.version == 4]).flatmap(address_in),
    public_v4,
)


@given(special_or_public_v4.flatmap(lambda ip: spellings_of(ip).map(lambda text: (ip, text))))
def test_registration_and_the_connection_guard_judge_a_literal_alike(
    spelled: tuple[ipaddress.IPv4Address, str],
) -> None:
    address, text = spelled
    url = f"http://{text}/"
    policy = replace(LOOPBACK, allow_networks=())
    try:
        host = httpx.URL(url).raw_host.decode("ascii")
    except httpx.InvalidURL:
        return  # neither path gets further than the URL (see the parametrized cases)
    try:
        policy.check_without_dns(url)
        at_registration = None
    except BlockedDestination as refused:
        at_registration = refused.reason
    resolver = FakeResolver()  # a literal never reaches DNS
    backend = GuardedNetworkBackend(policy, resolver=resolver, backend=SpyBackend(forbid=True))
    try:
        asyncio.run(backend.resolve_allowed(host, 80))
        at_connection = None
    except BlockedDestination as refused:
        at_connection = refused.reason
    assert at_registration == at_connection == classify(address)
    assert resolver.calls == []


# -- the policy -------------------------------------------------------------------------------


def test_policy_defaults_are_for_production() -> None:
    policy = OutboundPolicy()
    assert policy.allow_networks == ()
    assert policy.allow_http is False
    assert policy.schemes == {"https"}
    assert policy.ports is None
    assert policy.refusal("127.0.0.1") == "loopback"
    assert policy.refusal("8.8.8.8") is None


def test_the_allow_list_opens_only_what_it_names() -> None:
    policy = OutboundPolicy(allow_networks=["127.0.0.0/8", "10.20.0.0/16"])
    assert policy.refusal("127.0.0.1") is None
    assert policy.refusal("::ffff:127.0.0.1") is None  # the same destination, written in v6
    assert policy.refusal("10.20.3.4") is None
    assert policy.refusal("10.21.0.1") == "private"
    assert policy.refusal("::1") == "loopback"
    assert policy.refusal("192.168.1.1") == "private"


@pytest.mark.parametrize(
    ("allow", "address"),
    [
        (["0.0.0.0/0", "::/0"], "169.254.169.254"),
        (["169.254.0.0/16"], "169.254.169.254"),
        (["100.64.0.0/10"], "100.100.100.200"),  # Tailscale users allow CGNAT
        (["fc00::/7"], "fd00:ec2::254"),
        (["::/0"], "::ffff:169.254.169.254"),
        (["0.0.0.0/0"], "168.63.129.16"),
    ],
)
def test_the_allow_list_never_opens_metadata(allow: list[str], address: str) -> None:
    reason = OutboundPolicy(allow_networks=allow).refusal(address)
    assert reason is not None
    assert reason.endswith("metadata")


def test_check_url_refuses_schemes_ports_and_garbage() -> None:
    strict = OutboundPolicy(ports=frozenset({443}))
    for url, reason in [
        ("http://example.com/", "scheme"),
        ("ftp://example.com/", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://example.com:70/", "scheme"),
        ("https://example.com:8443/", "port"),
        ("https:///nohost", "host"),
        ("https://example.com:99999/", "port"),
        ("https://[zz::1]/", "invalid-url"),
    ]:
        with pytest.raises(BlockedDestination) as refused:
            strict.check_url(url)
        assert refused.value.reason == reason, url
    assert strict.check_url("https://example.com/x").host == "example.com"
    assert OutboundPolicy(allow_http=True).check_url("http://example.com/").port is None


def test_policy_validates_its_settings() -> None:
    with pytest.raises(ValueError, match="timeouts"):
        OutboundPolicy(total_timeout=0)
    with pytest.raises(ValueError, match="ports"):
        OutboundPolicy(ports=frozenset({0}))
    with pytest.raises(ValueError, match="does not appear"):
        OutboundPolicy(allow_networks=["not-a-network"])


# -- loopback servers, a spy backend and fake DNS -----------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


HUGE = 50 * 1024 * 1024


@cache
def gzip_bomb() -> bytes:
    """20 MB of zeros in about 20 KB."""
    return gzip.compress(bytes(20 * 1024 * 1024), compresslevel=9)


class LoopbackServer:
    """A tiny HTTP/1.1 server on a loopback address, one request per connection, that
    records every connection and request it sees."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[Seen] = []
        self.flaky_failures = 0
        self.huge_sent = 0
        self.huge_done = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> LoopbackServer:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):  # Python 3.11 does not wait for handlers
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def url(self, path: str, host: str | None = None) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    @property
    def paths(self) -> list[str]:
        return [seen.path for seen in self.requests]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line, *lines = head.split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in lines:
                if line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Seen(method, path, headers, body))
            await self._route(path, writer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            # stop() ends the long handlers; Python 3.11's start_server callback logs a
            # traceback for a handler task that ends cancelled, so end it normally.
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    @staticmethod
    def _head(status: int, length: int, extra: Sequence[tuple[str, str]] = ()) -> bytes:
        lines = [f"HTTP/1.1 {status} Status", f"Content-Length: {length}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        writer.write(self._head(status, len(body), extra) + body)

    async def _route(self, path: str, writer: asyncio.StreamWriter) -> None:
        if path == "/ok":
            self._respond(writer, 200, b"hello")
        elif path == "/redirect":
            self._respond(writer, 302, b"", [("Location", self.url("/target"))])
        elif path.startswith("/status/"):
            self._respond(writer, int(path.rsplit("/", 1)[1]), b"status")
        elif path.startswith("/bytes/"):
            self._respond(writer, 200, b"a" * int(path.rsplit("/", 1)[1]))
        elif path == "/flaky":
            if self.flaky_failures > 0:
                self.flaky_failures -= 1
                self._respond(writer, 503, b"down")
            else:
                self._respond(writer, 200, b"recovered")
        elif path == "/gzip":
            self._respond(
                writer, 200, gzip.compress(b"compressed hello"), [("Content-Encoding", "gzip")]
            )
        elif path == "/deflate-raw":
            raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            body = raw.compress(b"raw deflate") + raw.flush()
            self._respond(writer, 200, body, [("Content-Encoding", "deflate")])
        elif path == "/gzip-bomb":
            self._respond(writer, 200, gzip_bomb(), [("Content-Encoding", "gzip")])
        elif path == "/huge":
            await self._huge(writer)
        elif path == "/trickle":
            writer.write(self._head(200, 100_000))
            while True:
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif path == "/cut":
            writer.write(self._head(200, 1000) + b"only ten b")
        elif path == "/hang":
            await asyncio.sleep(3600)
        else:
            self._respond(writer, 404, b"not found")

    async def _huge(self, writer: asyncio.StreamWriter) -> None:
        """50 MB, produced lazily: only as fast as the client reads."""
        chunk = b"x" * 65536
        writer.write(self._head(200, HUGE))
        try:
            while self.huge_sent < HUGE:
                writer.write(chunk)
                await writer.drain()
                self.huge_sent += len(chunk)
        finally:
            self.huge_done.set()


class SpyBackend(httpcore.AsyncNetworkBackend):
    """The network below the guard: records each connection the guard lets through, and
    fails the test rather than connect anywhere but loopback (or, with `forbid`, anywhere:
    the guard must refuse before this is reached)."""

    def __init__(self, *, forbid: bool = False) -> None:
        self.forbid = forbid
        self.connects: list[tuple[str, int]] = []
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if self.forbid:
            raise AssertionError(f"the guard let a connection to {host}:{port} through")
        if not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"tests connect to loopback only, not {host}")
        return await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class HangingBackend(SpyBackend):
    """A connect that never completes (a black-holed SYN), without any real address."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class FakeResolver:
    """Scripted DNS: each name answers its scripted answers in turn, the last one
    repeating. Unknown names do not resolve."""

    def __init__(self, script: dict[str, list[list[str]]] | None = None) -> None:
        self._script = {name: list(answers) for name, answers in (script or {}).items()}
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        answers = self._script.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers.pop(0) if len(answers) > 1 else answers[0]


class HangingResolver(FakeResolver):
    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.calls.append(host)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


LOOPBACK = OutboundPolicy(
    allow_http=True, allow_networks=["127.0.0.0/8"], connect_timeout=2.0, total_timeout=5.0
)


def make_client(
    policy: OutboundPolicy = LOOPBACK,
    *,
    resolver: FakeResolver | None = None,
    backend: httpcore.AsyncNetworkBackend | None = None,
    **kwargs: Any,
) -> OutboundClient:
    return OutboundClient(
        policy,
        resolver=resolver or FakeResolver(),
        network_backend=backend or SpyBackend(),
        **kwargs,
    )


@pytest.fixture
async def server() -> AsyncIterator[LoopbackServer]:
    started = await LoopbackServer().start()
    yield started
    await started.stop()


def closed_port() -> int:
    """A loopback port nobody listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- (1) refused before connecting ----------------------------------------------------------------


async def test_loopback_is_refused_when_the_allow_list_is_off(server: LoopbackServer) -> None:
    backend = SpyBackend()
    resolver = FakeResolver({"internal.test": [["127.0.0.1"]]})
    policy = replace(LOOPBACK, allow_networks=())
    async with make_client(policy, resolver=resolver, backend=backend) as client:
        for url in (
            server.url("/ok"),
            server.url("/ok", host="internal.test"),
            server.url("/ok", host="[::ffff:127.0.0.1]"),
        ):
            with pytest.raises(BlockedDestination) as refused:
                await client.request("GET", url)
            assert refused.value.reason in ("loopback", "ipv4-mapped:loopback"), url
    assert backend.connects == []
    assert server.connections == 0
    assert server.requests == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.1/", "private"),
        ("http://192.168.1.1:8080/", "private"),
        ("http://172.20.0.5/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://100.100.100.200/latest/meta-data/", "metadata"),
        ("http://100.64.0.1/", "cgnat"),
        ("http://0.0.0.0:8080/", "unspecified"),
        ("http://[::1]/", "loopback"),
        ("http://[fd00:ec2::254]/latest/", "metadata"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[::ffff:10.0.0.1]/", "ipv4-mapped:private"),
        ("http://[::ffff:a9fe:a9fe]/", "ipv4-mapped:metadata"),
        ("http://[64:ff9b::a9fe:a9fe]/", "nat64:metadata"),
        ("http://[2002:c0a8:101::1]/", "6to4:private"),
        ("http://224.0.0.1/", "multicast"),
        ("http://internal.test/", "private"),
        ("http://metadata.test/computeMetadata/v1/", "metadata"),
        ("http://mapped.test/", "ipv4-mapped:private"),
        ("http://both.test/", "private"),
        ("http://0xa9fea9fe/", "metadata"),  # a legacy spelling of 169.254.169.254
    ],
)
async def test_other_ranges_are_refused_before_connecting(url: str, reason: str) -> None:
    resolver = FakeResolver(
        {
            "internal.test": [["10.1.2.3"]],
            "metadata.test": [["169.254.169.254"]],
            "mapped.test": [["::ffff:192.168.0.1"]],
            "both.test": [["10.0.0.1", "fd00::1"]],
        }
    )
    backend = SpyBackend(forbid=True)
    # Even with loopback allow-listed, nothing else opens.
    async with make_client(LOOPBACK, resolver=resolver, backend=backend) as client:
        with pytest.raises(BlockedDestination) as refused:
            await client.request("GET", url)
    assert refused.value.reason == reason
    assert backend.connects == []
    assert set(resolver.calls) <= {"internal.test", "metadata.test", "mapped.test", "both.test"}


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("2130706433", "loopback"),
        ("0x7f.1", "loopback"),
        ("127.1", "loopback"),
        ("0x7f000001", "loopback"),
        ("017700000001", "loopback"),
        ("0177.0.0.1", "invalid-url"),  # httpx itself rejects a dotted quad with octal parts
    ],
)
async def test_legacy_ipv4_spellings_are_literals_not_names(host: str, reason: str) -> None:
    resolver = FakeResolver()
    backend = SpyBackend(forbid=True)
    async with make_client(
        replace(LOOPBACK, allow_networks=()), resolver=resolver, backend=backend
    ) as client:
        with pytest.raises(BlockedDestination) as refused:
            await client.request("GET", f"http://{host}/")
    assert refused.value.reason == reason
    assert resolver.calls == []  # never sent to DNS
    assert backend.connects == []


async def test_schemes_and_ports_are_refused_before_resolving() -> None:
    resolver = FakeResolver({"hooks.test": [["127.0.0.1"]]})
    backend = SpyBackend(forbid=True)
    policy = replace(LOOPBACK, allow_http=False, ports=frozenset({443}))
    async with make_client(policy, resolver=resolver, backend=backend) as client:
        for url, reason in [
            ("http://hooks.test/", "scheme"),
            ("ftp://hooks.test/", "scheme"),
            ("https://hooks.test:22/", "port"),
        ]:
            with pytest.raises(BlockedDestination) as refused:
                await client.request("GET", url)
            assert refused.value.reason == reason
    assert resolver.calls == []
    assert backend.connects == []


async def test_the_transport_guards_a_plain_httpx_client(server: LoopbackServer) -> None:
    transport = GuardedTransport(OutboundPolicy(allow_http=True), network_backend=SpyBackend())
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(BlockedDestination):
            await client.get(server.url("/ok"))
    assert server.connections == 0


# -- (2) allowed by the allow-list -----------------------------------------------------------------


async def test_loopback_is_reachable_when_allow_listed(server: LoopbackServer) -> None:
    backend = SpyBackend()
    async with make_client(backend=backend) as client:
        response = await client.request(
            "POST",
            server.url("/ok"),
            headers={"Content-Type": "application/json"},
            content=b'{"type":"ping"}',
        )
    assert response.status == 200
    assert response.body == b"hello"
    assert response.truncated is False
    assert response.is_success
    assert response.connected_ip == "127.0.0.1"
    assert 0 < response.elapsed < 5
    assert backend.connects == [("127.0.0.1", server.port)]
    [seen] = server.requests
    assert (seen.method, seen.path, seen.body) == ("POST", "/ok", b'{"type":"ping"}')
    assert seen.headers["user-agent"] == LOOPBACK.user_agent
    assert seen.headers["accept-encoding"] == "identity"
    assert seen.headers["content-type"] == "application/json"


async def test_check_destination_reports_the_allowed_addresses() -> None:
    resolver = FakeResolver({"mixed.test": [["10.0.0.1", "127.0.0.1", "::1"]]})
    async with make_client(resolver=resolver, backend=SpyBackend(forbid=True)) as client:
        assert await client.check_destination("http://mixed.test/") == ["127.0.0.1"]
        with pytest.raises(BlockedDestination):
            await client.check_destination("http://[::1]/")
        with pytest.raises(OutboundConnectError):
            await client.check_destination("http://nowhere.test/")


async def test_environment_proxies_are_ignored(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await LoopbackServer().start()
    try:
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url(""))
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        async with make_client() as client:
            response = await client.request("GET", server.url("/ok"))
        assert response.status == 200
        assert proxy.connections == 0
        assert server.paths == ["/ok"]
    finally:
        await proxy.stop()


async def test_name_errors_and_refused_connections_are_connect_errors() -> None:
    async with make_client() as client:
        with pytest.raises(OutboundConnectError, match=r"nowhere\.test"):
            await client.request("GET", "http://nowhere.test/")
        with pytest.raises(OutboundConnectError):
            await client.request("GET", f"http://127.0.0.1:{closed_port()}/")


async def test_a_broken_body_is_a_transport_error(server: LoopbackServer) -> None:
    async with make_client() as client:
        with pytest.raises(OutboundTransportError):
            await client.request("GET", server.url("/cut"))


async def test_ipv6_loopback_works_when_allow_listed() -> None:
    v6 = await LoopbackServer("::1").start()
    try:
        refused_policy = replace(LOOPBACK, allow_networks=["127.0.0.0/8"])
        async with make_client(refused_policy) as client:
            with pytest.raises(BlockedDestination):
                await client.request("GET", v6.url("/ok", "[::1]"))
        assert v6.connections == 0
        async with make_client(replace(LOOPBACK, allow_networks=["::1/128"])) as client:
            response = await client.request("GET", v6.url("/ok", "[::1]"))
        assert response.status == 200
        assert response.connected_ip == "::1"
    finally:
        await v6.stop()


# -- (3) DNS rebinding --------------------------------------------------------------------------


async def start_pair() -> tuple[LoopbackServer, LoopbackServer]:
    """A server on 127.0.0.2 (the "public" endpoint of these tests) and one on 127.0.0.1
    (an internal service) on the same port, so only the resolved address tells them
    apart."""
    for _ in range(20):
        public = await LoopbackServer("127.0.0.2").start()
        try:
            internal = await LoopbackServer("127.0.0.1", port=public.port).start()
        except OSError:
            await public.stop()
            continue
        return public, internal
    raise RuntimeError("no common free port on 127.0.0.1 and 127.0.0.2")


REBIND = replace(LOOPBACK, allow_networks=["127.0.0.2/32"])


async def test_dns_rebinding_after_a_passing_check_is_refused_at_connect() -> None:
    public, internal = await start_pair()
    try:
        # The first answer is "public", every later one the internal address.
        resolver = FakeResolver({"hooks.rebind.test": [["127.0.0.2"], ["127.0.0.1"]]})
        backend = SpyBackend()
        url = f"http://hooks.rebind.test:{public.port}/ok"
        async with make_client(REBIND, resolver=resolver, backend=backend) as client:
            # A registration-time check sees the friendly answer...
            assert await client.check_destination(url) == ["127.0.0.2"]
            # ...the delivery resolves again, and the guard judges that answer.
            with pytest.raises(BlockedDestination) as refused:
                await client.request("POST", url, content=b"{}")
        assert refused.value.reason == "loopback"
        assert refused.value.addresses == ("127.0.0.1",)
        assert resolver.calls == ["hooks.rebind.test", "hooks.rebind.test"]
        assert backend.connects == []
        assert internal.connections == 0
        assert public.connections == 0
    finally:
        await public.stop()
        await internal.stop()


async def test_the_connection_goes_to_the_address_that_was_checked() -> None:
    public, internal = await start_pair()
    try:
        # Were anything to look the name up a second time, it would get 127.0.0.1.
        resolver = FakeResolver({"hooks.rebind.test": [["127.0.0.2"], ["127.0.0.1"]]})
        backend = SpyBackend()
        async with make_client(REBIND, resolver=resolver, backend=backend) as client:
            response = await client.request("GET", f"http://hooks.rebind.test:{public.port}/ok")
        assert response.status == 200
        assert response.connected_ip == "127.0.0.2"
        assert resolver.calls == ["hooks.rebind.test"]  # one lookup per connection
        # The socket layer was handed the checked IP literal, never the name.
        assert backend.connects == [("127.0.0.2", public.port)]
        assert public.paths == ["/ok"]
        assert internal.connections == 0
    finally:
        await public.stop()
        await internal.stop()


async def test_blocked_answers_are_skipped_when_an_allowed_one_exists() -> None:
    public, internal = await start_pair()
    try:
        resolver = FakeResolver(
            {"mixed.rebind.test": [["127.0.0.1", "::ffff:127.0.0.1", "127.0.0.2"]]}
        )
        async with make_client(REBIND, resolver=resolver) as client:
            response = await client.request("GET", f"http://mixed.rebind.test:{public.port}/ok")
        assert response.connected_ip == "127.0.0.2"
        assert internal.connections == 0
    finally:
        await public.stop()
        await internal.stop()


# -- (4) redirects ----------------------------------------------------------------------------


async def test_redirects_are_returned_not_followed(server: LoopbackServer) -> None:
    async with make_client() as client:
        response = await client.request("GET", server.url("/redirect"))
    assert response.status == 302
    assert response.headers["location"] == server.url("/target")
    assert server.paths == ["/redirect"]


# -- (5) capped bodies --------------------------------------------------------------------------


async def test_a_huge_body_is_capped_while_streaming(server: LoopbackServer) -> None:
    policy = replace(LOOPBACK, max_response_bytes=100_000)
    async with make_client(policy) as client:
        started = time.monotonic()
        response = await client.request("GET", server.url("/huge"))
        took = time.monotonic() - started
    assert response.status == 200
    assert response.truncated is True
    assert len(response.body) == 100_000
    assert took < 2.0
    # The server stops once the client hangs up; it never got to send the 50 MB: what it
    # did send is what the socket buffers held.
    await asyncio.wait_for(server.huge_done.wait(), timeout=5)
    assert server.huge_sent < HUGE // 4


@pytest.mark.parametrize(
    ("size", "truncated"), [(0, False), (999, False), (1000, False), (1001, True)]
)
async def test_the_cap_is_exact(server: LoopbackServer, size: int, truncated: bool) -> None:
    async with make_client(replace(LOOPBACK, max_response_bytes=1000)) as client:
        response = await client.request("GET", server.url(f"/bytes/{size}"))
    assert response.truncated is truncated
    assert response.body == b"a" * min(size, 1000)


async def test_compressed_bodies_are_decoded_under_the_cap(server: LoopbackServer) -> None:
    async with make_client(replace(LOOPBACK, max_response_bytes=100_000)) as client:
        small = await client.request("GET", server.url("/gzip"))
        raw = await client.request("GET", server.url("/deflate-raw"))
        bomb = await client.request("GET", server.url("/gzip-bomb"))
    assert (small.body, small.truncated) == (b"compressed hello", False)
    assert (raw.body, raw.truncated) == (b"raw deflate", False)
    assert bomb.truncated is True
    assert bomb.body == bytes(100_000)


# -- (6) timeouts -----------------------------------------------------------------------------


async def test_the_total_timeout_covers_a_trickling_body(server: LoopbackServer) -> None:
    async with make_client(replace(LOOPBACK, total_timeout=0.5)) as client:
        started = time.monotonic()
        with pytest.raises(OutboundTimeout) as timed_out:
            await client.request("GET", server.url("/trickle"))
        took = time.monotonic() - started
    assert timed_out.value.phase == "total"
    assert 0.4 < took < 2.0


async def test_the_total_timeout_covers_a_server_that_never_answers(
    server: LoopbackServer,
) -> None:
    async with make_client(replace(LOOPBACK, total_timeout=0.3)) as client:
        with pytest.raises(OutboundTimeout) as timed_out:
            await client.request("GET", server.url("/hang"))
    assert timed_out.value.phase == "total"


async def test_the_connect_timeout_covers_a_hanging_resolver() -> None:
    resolver = HangingResolver()
    policy = replace(LOOPBACK, connect_timeout=0.2)
    async with make_client(policy, resolver=resolver, backend=SpyBackend(forbid=True)) as client:
        started = time.monotonic()
        with pytest.raises(OutboundTimeout) as timed_out:
            await client.request("GET", "http://slow-dns.test/")
        took = time.monotonic() - started
    assert timed_out.value.phase == "connect"
    assert took < 1.5
    assert resolver.calls == ["slow-dns.test"]


async def test_the_connect_timeout_covers_a_hanging_connect() -> None:
    backend = HangingBackend()
    policy = replace(LOOPBACK, connect_timeout=0.2)
    async with make_client(policy, backend=backend) as client:
        with pytest.raises(OutboundTimeout) as timed_out:
            await client.request("GET", f"http://127.0.0.1:{closed_port()}/")
    assert timed_out.value.phase == "connect"
    assert len(backend.connects) == 1


# -- TLS: the guard dials the IP, TLS still speaks to the name -------------------------------------


def tls_contexts(tmp_path: Path, hostname: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts: a throwaway CA and a certificate for `hostname`."""
    ca_path, cert_path, key_path = write_tls_files(tmp_path, hostname)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    client_context = ssl.create_default_context(cafile=str(ca_path))
    return server_context, client_context


async def test_tls_verifies_and_sends_sni_for_the_hostname_not_the_ip(tmp_path: Path) -> None:
    server_context, client_context = tls_contexts(tmp_path, "hooks.tenantry.test")
    sni: list[str | None] = []
    server_context.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    tls_server = await LoopbackServer(ssl_context=server_context).start()
    try:
        resolver = FakeResolver(
            {"hooks.tenantry.test": [["127.0.0.1"]], "other.tenantry.test": [["127.0.0.1"]]}
        )
        backend = SpyBackend()
        policy = OutboundPolicy(allow_networks=["127.0.0.1/32"], total_timeout=5.0)
        async with make_client(
            policy, resolver=resolver, backend=backend, ssl_context=client_context
        ) as client:
            response = await client.request("GET", tls_server.url("/ok", "hooks.tenantry.test"))
            assert response.status == 200
            assert response.connected_ip == "127.0.0.1"
            assert backend.connects == [("127.0.0.1", tls_server.port)]
            assert sni == ["hooks.tenantry.test"]
            # Same IP, a name the certificate does not cover: verification fails.
            with pytest.raises(OutboundConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.request("GET", tls_server.url("/ok", "other.tenantry.test"))
        assert tls_server.paths == ["/ok"]
    finally:
        await tls_server.stop()


# -- (7) the circuit breaker ---------------------------------------------------------------------


def breaker_setup() -> tuple[ManualClock, BreakerRegistry, BreakerConfig]:
    clock = ManualClock()
    config = BreakerConfig(
        sliding_window_size=4,
        minimum_number_of_calls=4,
        failure_rate_threshold=50,
        wait_duration_in_open_state=30,
        permitted_calls_in_half_open_state=1,
    )
    return clock, BreakerRegistry(clock=clock), config


async def test_the_breaker_opens_on_5xx_and_then_refuses_without_connecting(
    server: LoopbackServer,
) -> None:
    clock, registry, config = breaker_setup()
    async with make_client(breakers=registry, breaker_config=config) as client:
        for _ in range(4):
            response = await client.request("GET", server.url("/status/500"), breaker_key="ep_1")
            assert response.status == 500  # the caller still gets the response
        breaker = client.breaker("ep_1")
        assert breaker is not None
        assert breaker.name == "outbound:ep_1"
        assert breaker.state is BreakerState.OPEN
        connections = server.connections
        with pytest.raises(BreakerOpen) as refused:
            await client.request("GET", server.url("/ok"), breaker_key="ep_1")
        assert refused.value.retry_after == pytest.approx(30)
        assert server.connections == connections  # nothing was sent
        # Another endpoint has its own breaker.
        other = await client.request("GET", server.url("/ok"), breaker_key="ep_2")
        assert other.status == 200
        # After the wait, one trial call; it succeeds and closes the breaker.
        clock.advance(30)
        trial = await client.request("GET", server.url("/ok"), breaker_key="ep_1")
        assert trial.status == 200
        assert breaker.snapshot().state is BreakerState.CLOSED


async def test_connect_errors_and_timeouts_count_as_failures() -> None:
    _, registry, config = breaker_setup()
    resolver = HangingResolver()
    policy = replace(LOOPBACK, connect_timeout=0.05)
    async with make_client(
        policy, resolver=resolver, breakers=registry, breaker_config=config
    ) as client:
        for _ in range(2):
            with pytest.raises(OutboundConnectError):
                await client.request("GET", f"http://127.0.0.1:{closed_port()}/", breaker_key="e")
        for _ in range(2):
            with pytest.raises(OutboundTimeout):
                await client.request("GET", "http://slow.test/", breaker_key="e")
        with pytest.raises(BreakerOpen):
            await client.request("GET", f"http://127.0.0.1:{closed_port()}/", breaker_key="e")


async def test_refused_destinations_and_4xx_do_not_trip_the_breaker(
    server: LoopbackServer,
) -> None:
    _, registry, config = breaker_setup()
    policy = replace(LOOPBACK, allow_networks=())
    async with make_client(policy, breakers=registry, breaker_config=config) as client:
        for _ in range(10):
            with pytest.raises(BlockedDestination):
                await client.request("GET", server.url("/ok"), breaker_key="e")
        breaker = client.breaker("e")
        assert breaker is not None
        assert breaker.snapshot().buffered_calls == 0
        assert breaker.state is BreakerState.CLOSED
    async with make_client(breakers=registry, breaker_config=config) as client:
        for _ in range(6):
            await client.request("GET", server.url("/status/404"), breaker_key="e")
        assert breaker.state is BreakerState.CLOSED


async def test_the_failure_status_predicate_is_configurable(server: LoopbackServer) -> None:
    _, registry, config = breaker_setup()
    async with make_client(
        breakers=registry,
        breaker_config=config,
        breaker_failure_status=lambda status: status == 429 or status >= 500,
    ) as client:
        for _ in range(4):
            await client.request("GET", server.url("/status/429"), breaker_key="e")
        with pytest.raises(BreakerOpen):
            await client.request("GET", server.url("/ok"), breaker_key="e")


# -- (8) retries inside a budget -------------------------------------------------------------------


def two_retry_budget() -> RetryBudget:
    """No retries earned by requests, a floor of exactly two in the window."""
    return RetryBudget(
        ratio=0.0, min_retries_per_second=0.2, window_seconds=10, clock=ManualClock()
    )


async def test_retries_stop_when_the_budget_is_spent(server: LoopbackServer) -> None:
    budget = two_retry_budget()
    async with make_client() as client:
        first = await client.request_with_retries(
            "POST", server.url("/status/503"), budget=budget, attempts=5, wait=wait_none()
        )
        assert first.status == 503  # the last attempt's response, as is
        assert len(server.requests) == 3  # the attempt and the two retries the budget had
        second = await client.request_with_retries(
            "POST", server.url("/status/503"), budget=budget, attempts=5, wait=wait_none()
        )
        assert second.status == 503
        assert len(server.requests) == 4  # no retry left
    assert budget.available == 0


async def test_an_empty_budget_allows_no_retry(server: LoopbackServer) -> None:
    budget = RetryBudget(ratio=0.0, min_retries_per_second=0.0, clock=ManualClock())
    async with make_client() as client:
        response = await client.request_with_retries(
            "GET", server.url("/status/502"), budget=budget, attempts=5, wait=wait_none()
        )
    assert response.status == 502
    assert server.paths == ["/status/502"]


async def test_attempts_bound_the_retries_and_the_last_attempt_spends_nothing(
    server: LoopbackServer,
) -> None:
    budget = RetryBudget(min_retries_per_second=100, clock=ManualClock())
    async with make_client() as client:
        response = await client.request_with_retries(
            "GET", server.url("/status/504"), budget=budget, attempts=3, wait=wait_none()
        )
    assert response.status == 504
    assert len(server.requests) == 3
    assert budget.retries == 2


async def test_a_retry_can_succeed(server: LoopbackServer) -> None:
    server.flaky_failures = 2
    async with make_client() as client:
        response = await client.request_with_retries(
            "GET", server.url("/flaky"), budget=two_retry_budget(), attempts=5, wait=wait_none()
        )
    assert (response.status, response.body) == (200, b"recovered")
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [200, 400, 404, 410, 429, 500, 501])
async def test_other_statuses_are_not_retried(server: LoopbackServer, status: int) -> None:
    budget = two_retry_budget()
    async with make_client() as client:
        response = await client.request_with_retries(
            "GET", server.url(f"/status/{status}"), budget=budget, wait=wait_none()
        )
    assert response.status == status
    assert len(server.requests) == 1
    assert budget.retries == 0


async def test_connect_errors_and_timeouts_are_retried_then_raised() -> None:
    backend = SpyBackend()
    async with make_client(backend=backend) as client:
        url = f"http://127.0.0.1:{closed_port()}/"
        with pytest.raises(OutboundConnectError):
            await client.request_with_retries(
                "GET", url, budget=two_retry_budget(), attempts=3, wait=wait_none()
            )
    assert len(backend.connects) == 3
    resolver = HangingResolver()
    async with make_client(replace(LOOPBACK, connect_timeout=0.05), resolver=resolver) as client:
        with pytest.raises(OutboundTimeout):
            await client.request_with_retries(
                "GET", "http://slow.test/", budget=two_retry_budget(), attempts=2, wait=wait_none()
            )
    assert len(resolver.calls) == 2


async def test_refusals_are_not_retried(server: LoopbackServer) -> None:
    resolver = FakeResolver({"internal.test": [["10.0.0.1"]]})
    budget = two_retry_budget()
    async with make_client(resolver=resolver, backend=SpyBackend(forbid=True)) as client:
        with pytest.raises(BlockedDestination):
            await client.request_with_retries(
                "GET", "http://internal.test/", budget=budget, wait=wait_none()
            )
    assert resolver.calls == ["internal.test"]
    _clock, registry, config = breaker_setup()
    async with make_client(breakers=registry, breaker_config=config) as client:
        breaker = client.breaker("e")
        assert breaker is not None
        breaker.force_open()
        with pytest.raises(BreakerOpen):
            await client.request_with_retries(
                "GET", server.url("/ok"), budget=budget, breaker_key="e", wait=wait_none()
            )
    assert budget.retries == 0
    assert server.connections == 0
