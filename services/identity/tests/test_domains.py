"""Email-domain rules (pure) and the TXT lookup against a real DNS server on loopback."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import dns.asyncquery
import dns.message
import dns.rdatatype
import pytest
from dns.rdtypes.ANY.TXT import TXT
from hypothesis import given
from hypothesis import strategies as st

from tenantry_identity.sso.email_domains import (
    CONSUMER_DOMAINS,
    DomainRefused,
    challenge_name,
    challenge_value,
    claimable_domain,
    domain_of_email,
    is_consumer_domain,
    new_challenge_token,
    normalise_domain,
    record_matches,
)
from tenantry_identity.sso.txt_lookup import DomainLookupFailed, TxtResolver, parse_nameserver
from tenantry_testkit.dns import LoopbackDns

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
CANONICAL = re.compile(rf"(?=.{{1,253}}\Z)({_LABEL}\.)+{_LABEL}")

# -- normalise_domain ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("example.com", "example.com"),
        ("  Example.COM  ", "example.com"),
        ("example.com.", "example.com"),
        ("mail.eu.example.co.uk", "mail.eu.example.co.uk"),
        ("Bücher.Example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("straße.de", "xn--strae-oqa.de"),  # IDNA 2008: no transitional mapping to "ss"
        ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "example.com"),  # full-width letters
        ("example.com。", "example.com"),  # ideographic full stop
        ("例え.テスト", "xn--r8jz45g.xn--zckzah"),
        ("a-b.example", "a-b.example"),
        ("123.example", "123.example"),
        ("x" * 63 + ".com", "x" * 63 + ".com"),
    ],
)
def test_normalise_domain_gives_the_canonical_ascii_form(typed: str, canonical: str) -> None:
    assert normalise_domain(typed) == canonical


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "   ",
        "localhost",  # a single label
        "com",
        "https://example.com",
        "http://example.com/",
        "example.com/path",
        "example.com?x=1",
        "example.com#top",
        "example.com:443",
        "alice@example.com",
        "mailto:alice@example.com",
        "192.0.2.1",
        "192.0.2.1.",
        "127.1",
        "0x7f.0x1",
        "[2001:db8::1]",
        "2001:db8::1",
        "*.example.com",
        "foo*.example.com",
        "_dmarc.example.com",
        "under_score.example.com",
        "-lead.example.com",
        "trail-.example.com",
        "ab--cd.example.com",  # reserved (R-LDH) label that is not an A-label
        "xn--zzzz.example",  # not valid punycode
        "xn--ls8h.example",  # decodes to an emoji: not IDNA 2008
        "exa mple.com",
        "example .com",
        "example\t.com",
        "example..com",
        ".example.com",
        "example.com..",
        "x" * 64 + ".com",
        ".".join(["a" * 63] * 4),  # 255 characters
        "exa%6dple.com",
        "exämple.com/",
        "例え.テスト:80",
        "💩.la",  # emoji are not IDNA 2008
        "a\uff0fb.com",  # a full-width solidus maps to '/', which is refused
        "example.c_m",
    ],
)
def test_normalise_domain_refuses(typed: str) -> None:
    with pytest.raises(DomainRefused) as refused:
        normalise_domain(typed)
    assert refused.value.code == "invalid-domain"
    assert refused.value.message


def test_the_longest_domain_is_accepted_and_one_more_character_is_not() -> None:
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(longest) == 253
    assert normalise_domain(longest) == longest
    with pytest.raises(DomainRefused):
        normalise_domain(longest[:-1] + "dd")


def test_refusals_explain_themselves() -> None:
    messages = {}
    for typed in ["https://example.com", "example.com:443", "*.example.com", "192.0.2.1"]:
        with pytest.raises(DomainRefused) as refused:
            normalise_domain(typed)
        messages[typed] = refused.value.message
    assert "https://" in messages["https://example.com"]
    assert "port" in messages["example.com:443"]
    assert "Wildcard" in messages["*.example.com"]
    assert "IP address" in messages["192.0.2.1"]


# Domain-shaped strings (so that many are accepted) salted with what must be refused.
_LABEL_CHARS = "abcxyz019-ÄäößéñЖж例テ_*/:@ .。\uff0e\uff0f\t"
domainish = st.lists(
    st.text(alphabet=_LABEL_CHARS, min_size=0, max_size=12), min_size=1, max_size=5
).map(".".join)
valid_label = st.from_regex(
    r"[a-zA-Z0-9äöüßéñжЖ]([a-zA-Z0-9äöüßéñжЖ-]{0,10}[a-zA-Z0-9])?", fullmatch=True
)
valid_domain = st.lists(valid_label, min_size=1, max_size=4).map(lambda ls: ".".join([*ls, "com"]))


@given(st.one_of(st.text(), domainish, valid_domain))
def test_normalise_domain_accepts_only_clean_names_and_is_idempotent(value: str) -> None:
    try:
        result = normalise_domain(value)
    except DomainRefused as refused:
        code: str = refused.code
    else:
        code = "accepted"
    assert code in ("accepted", "invalid-domain")
    if code != "accepted":
        return
    assert not any(c in value for c in "/:@")
    assert not any(c.isspace() for c in value.strip())
    assert CANONICAL.fullmatch(result), result
    assert normalise_domain(result) == result


@given(valid_domain)
def test_plain_domains_are_accepted(value: str) -> None:
    result = normalise_domain(value)
    assert result.endswith(".com")
    assert normalise_domain(result.upper() + ".") == result


# -- consumer domains and emails -----------------------------------------------------------


def test_the_consumer_list_is_a_solid_list_of_normalised_domains() -> None:
    assert len(CONSUMER_DOMAINS) > 60
    for domain in CONSUMER_DOMAINS:
        assert normalise_domain(domain) == domain
    for expected in [
        "gmail.com",
        "googlemail.com",
        "outlook.com",
        "hotmail.com",
        "hotmail.co.uk",
        "live.com",
        "msn.com",
        "yahoo.com",
        "yahoo.co.jp",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "proton.me",
        "protonmail.com",
        "gmx.de",
        "gmx.net",
        "mail.ru",
        "yandex.ru",
        "qq.com",
        "163.com",
        "zoho.com",
        "fastmail.com",
        "hey.com",
    ]:
        assert expected in CONSUMER_DOMAINS


@pytest.mark.parametrize(
    ("domain", "consumer"),
    [
        ("gmail.com", True),
        ("GMail.COM.", True),
        ("eu.mail.yahoo.co.uk", True),
        ("foo.gmail.com", True),
        ("notgmail.com", False),
        ("gmail.com.evil.example", False),
        ("example.com", False),
        ("me.com", True),
        ("acme.me", False),
    ],
)
def test_is_consumer_domain_counts_exact_and_subdomains(domain: str, consumer: bool) -> None:
    assert is_consumer_domain(domain) is consumer


def test_a_tenant_cannot_claim_a_consumer_domain() -> None:
    assert claimable_domain(" Acme.Example ") == "acme.example"
    with pytest.raises(DomainRefused) as refused:
        claimable_domain("GMAIL.com")
    assert refused.value.code == "consumer-domain"
    with pytest.raises(DomainRefused) as refused:
        claimable_domain("team.outlook.com")
    assert refused.value.code == "consumer-domain"
    with pytest.raises(DomainRefused) as refused:
        claimable_domain("https://acme.example")
    assert refused.value.code == "invalid-domain"


@pytest.mark.parametrize(
    ("email", "domain"),
    [
        ("alice@example.com", "example.com"),
        ("  Alice.Smith+sso@Example.COM ", "example.com"),
        ("bob@Bücher.example", "xn--bcher-kva.example"),
        ('"odd@local"@example.org', "example.org"),  # the domain follows the last '@'
        ("carol@gmail.com", "gmail.com"),  # consumer domains are still domains
    ],
)
def test_domain_of_email(email: str, domain: str) -> None:
    assert domain_of_email(email) == domain


@pytest.mark.parametrize(
    "email", ["", "alice", "@example.com", "alice@", "alice@[192.0.2.1]", "a b@example.com"]
)
def test_domain_of_email_refuses(email: str) -> None:
    with pytest.raises(DomainRefused) as refused:
        domain_of_email(email)
    assert refused.value.code == "invalid-email"


# -- the challenge -------------------------------------------------------------------------


def test_challenge_name_and_value() -> None:
    token = new_challenge_token()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert new_challenge_token() != token
    assert challenge_name("Example.COM.") == "_tenantry-verification.example.com"
    assert challenge_name("Bücher.example") == "_tenantry-verification.xn--bcher-kva.example"
    assert challenge_value(token) == f"tenantry-verification={token}"
    with pytest.raises(ValueError, match="token"):
        challenge_value("")
    with pytest.raises(DomainRefused):
        challenge_name("gmail")


def test_record_matches_among_other_records() -> None:
    token = new_challenge_token()
    other = new_challenge_token()
    value = challenge_value(token)
    spf = "v=spf1 include:_spf.example.com ~all"
    assert record_matches([spf, value, "google-site-verification=abc"], token)
    assert record_matches([f"  {value}\t"], token)
    assert record_matches([f'"{value}"'], token)  # quotes pasted into a DNS console
    assert not record_matches([], token)
    assert not record_matches([spf], token)
    assert not record_matches([challenge_value(other)], token)
    assert not record_matches([value + "x"], token)
    assert not record_matches([value[:-1]], token)
    assert not record_matches([value.upper()], token)
    assert not record_matches([token], token)  # the bare token is not the value
    assert not record_matches([f"tenantry-verification={token} extra"], token)
    assert not record_matches(["tenantry-verification="], "")  # an empty token never matches
    assert not record_matches([value], "")


@given(st.lists(st.text(max_size=80), max_size=5))
def test_record_matches_only_the_exact_value(records: list[str]) -> None:
    token = new_challenge_token()
    assert not record_matches(records, token)
    assert record_matches([*records, challenge_value(token)], token)


# -- nameserver entries --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("192.0.2.53", ("192.0.2.53", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[2001:db8::53]", ("2001:db8::53", 53)),
        ("2001:db8::53", ("2001:db8::53", 53)),
        (" 10.0.0.1:53 ", ("10.0.0.1", 53)),
    ],
)
def test_parse_nameserver(entry: str, parsed: tuple[str, int]) -> None:
    assert parse_nameserver(entry) == parsed


@pytest.mark.parametrize(
    "entry",
    ["dns.example:53", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:", "[::1]:", "[::1", "x"],
)
def test_parse_nameserver_refuses(entry: str) -> None:
    with pytest.raises(ValueError, match="nameserver"):
        parse_nameserver(entry)


def test_resolver_reports_its_nameservers() -> None:
    resolver = TxtResolver(["127.0.0.1:5353", "[::1]:53"], timeout=1)
    assert resolver.nameservers == ["127.0.0.1:5353", "[::1]:53"]
    assert resolver.timeout == 1
    with pytest.raises(TypeError):
        TxtResolver("127.0.0.1:53")
    with pytest.raises(ValueError, match="timeout"):
        TxtResolver(["127.0.0.1:53"], timeout=0)


# -- TxtResolver against a DNS server on loopback ------------------------------------------


@pytest.fixture
def zone() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:
        yield server


async def test_finds_the_challenge_among_other_records(zone: LoopbackDns) -> None:
    token = new_challenge_token()
    name = challenge_name("acme.example")
    zone.set_txt(name, ["v=spf1 -all", challenge_value(token), "something else"])
    records = await TxtResolver([zone.address], timeout=2).txt(name)
    assert sorted(records) == sorted(["v=spf1 -all", challenge_value(token), "something else"])
    assert record_matches(records, token)
    assert zone.queries == [(name, "TXT")]


async def test_names_are_case_insensitive_and_may_be_absolute(zone: LoopbackDns) -> None:
    zone.set_txt("_tenantry-verification.acme.example", ["v"])
    resolver = TxtResolver([zone.address], timeout=2)
    assert await resolver.txt("_Tenantry-Verification.ACME.example.") == ["v"]


async def test_a_missing_name_or_missing_txt_is_an_empty_answer(zone: LoopbackDns) -> None:
    resolver = TxtResolver([zone.address], timeout=2)
    assert await resolver.txt("_tenantry-verification.nobody.example") == []  # NXDOMAIN
    zone.set_txt("_tenantry-verification.acme.example", ["x"])
    assert await resolver.txt("acme.example") == []  # exists (empty non-terminal), no TXT
    zone.set_txt("acme.example", [])
    assert await resolver.txt("acme.example") == []  # a name with no TXT records


async def test_records_come_and_go_without_caching(zone: LoopbackDns) -> None:
    token = new_challenge_token()
    name = challenge_name("acme.example")
    resolver = TxtResolver([zone.address], timeout=2)
    assert not record_matches(await resolver.txt(name), token)
    zone.add_txt(name, "unrelated")
    zone.add_txt(name, challenge_value(token))
    assert record_matches(await resolver.txt(name), token)
    zone.clear(name)
    assert await resolver.txt(name) == []


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED"])
async def test_a_broken_zone_is_a_lookup_failure_not_an_absence(
    zone: LoopbackDns, rcode: str
) -> None:
    name = challenge_name("broken.example")
    zone.set_txt(name, ["would match"])
    zone.fail(name, rcode)  # type: ignore[arg-type]
    with pytest.raises(DomainLookupFailed) as failed:
        await TxtResolver([zone.address], timeout=2).txt(name)
    assert rcode in failed.value.reason
    assert failed.value.name == name
    zone.clear(name)
    assert await TxtResolver([zone.address], timeout=2).txt(name) == []


async def test_a_slow_answer_beyond_the_timeout_is_a_lookup_failure(zone: LoopbackDns) -> None:
    name = challenge_name("slow.example")
    zone.set_txt(name, ["late"])
    zone.delay(name, 3)
    started = time.monotonic()
    with pytest.raises(DomainLookupFailed) as failed:
        await TxtResolver([zone.address], timeout=0.5).txt(name)
    elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 2.5
    assert "0.5 s" in failed.value.reason
    zone.delay(name, 0.2)  # slow but within the timeout
    assert await TxtResolver([zone.address], timeout=2).txt(name) == ["late"]


async def test_no_server_listening_is_a_lookup_failure() -> None:
    with LoopbackDns() as gone:
        address = gone.address
    with pytest.raises(DomainLookupFailed):
        await TxtResolver([address], timeout=1).txt("_tenantry-verification.acme.example")


async def test_a_value_over_255_bytes_is_split_on_the_wire_and_joined_back(
    zone: LoopbackDns,
) -> None:
    name = challenge_name("long.example")
    long_value = "tenantry-verification=" + "k" * 600
    zone.set_txt(name, [long_value, "short"])
    query = dns.message.make_query(name, dns.rdatatype.TXT, use_edns=0, payload=4096)
    raw = await dns.asyncquery.udp(query, zone.host, port=zone.port, timeout=2)
    assert raw.answer
    pieces = sorted((rdata.strings for rdata in raw.answer[0] if isinstance(rdata, TXT)), key=len)
    assert [len(p) for p in pieces[-1]] == [255, 255, 112]  # three character-strings
    records = await TxtResolver([zone.address], timeout=2).txt(name)
    assert sorted(records) == sorted([long_value, "short"])


async def test_a_truncated_udp_answer_is_retried_over_tcp(zone: LoopbackDns) -> None:
    token = new_challenge_token()
    name = challenge_name("big.example")
    filler = [f"filler-{i}-" + "f" * 480 for i in range(4)]  # ~2 KB: over any UDP limit
    zone.set_txt(name, [*filler, challenge_value(token)])
    records = await TxtResolver([zone.address], timeout=2).txt(name)
    assert sorted(records) == sorted([*filler, challenge_value(token)])
    assert record_matches(records, token)
    assert zone.queries == [(name, "TXT"), (name, "TXT")]  # UDP, truncated; then TCP
    assert zone.tcp_queries == [(name, "TXT")]


async def test_an_invalid_name_is_refused_before_any_query(zone: LoopbackDns) -> None:
    resolver = TxtResolver([zone.address], timeout=1)
    for name in ["", "a..b", "x" * 64 + ".example", "bücher.example"]:
        with pytest.raises(DomainRefused):
            await resolver.txt(name)
    assert zone.queries == []
