"""Verified email domains, the pure rules: which domains a tenant may claim, their
canonical form, and how it proves it owns one (a DNS TXT challenge). The lookup itself is
txt_lookup.py.

A tenant claims `example.com` by publishing

    _tenantry-verification.example.com.  TXT  "tenantry-verification=<token>"

among any other TXT records there.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Sequence
from typing import Literal

import idna

# -- refusals ------------------------------------------------------------------------------

DomainRefusalCode = Literal["invalid-domain", "invalid-email", "consumer-domain"]


class DomainRefused(ValueError):
    """A domain (or email address) we will not accept. `code` is for programs, `message`
    can be shown to the admin who typed the value."""

    def __init__(self, code: DomainRefusalCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: DomainRefusalCode = code
        self.message = message


def _invalid(message: str) -> DomainRefused:
    return DomainRefused("invalid-domain", message)


# -- normalising a domain ------------------------------------------------------------------

MAX_DOMAIN_LENGTH = 253  # characters of the A-label form, without the root dot
MAX_LABEL_LENGTH = 63

_LDH_LABEL = re.compile(r"[a-z0-9-]+")
# A last label that a browser would read as a number makes the whole thing an IPv4
# address (WHATWG URL "ends in a number"): 1.2.3.4, 127.1, 0x7f.0x1.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")


def normalise_domain(value: str) -> str:
    """The canonical form of a domain someone typed: stripped, lowercased, without the
    root dot, unicode labels as their ASCII A-labels (IDNA 2008 with UTS #46 mapping,
    non-transitional: `Bücher.example` -> `xn--bcher-kva.example`).

    Refuses (DomainRefused "invalid-domain") what is not a plain registrable-looking host
    name: URLs, ports, paths, email addresses, IP literals, single labels, wildcards,
    underscores, empty labels, labels over 63 or names over 253 characters, labels
    starting or ending with a hyphen, invalid A-labels. Consumer mail domains are NOT
    refused here (an email at gmail.com has a perfectly good domain): use
    `claimable_domain` for what a tenant may claim.

    Idempotent: normalise_domain(normalise_domain(x)) == normalise_domain(x).
    """
    if not isinstance(value, str):
        raise TypeError(f"a domain is a str, not {type(value).__name__}")
    text = value.strip()
    if not text:
        raise _invalid("Enter a domain, such as example.com.")
    if "://" in text or text.lower().startswith(("http:", "https:", "mailto:")):
        raise _invalid("Enter only the domain, without https:// or a path.")
    if "@" in text:
        raise _invalid("Enter the domain, not an email address (example.com, not a@example.com).")
    if any(c.isspace() for c in text):
        raise _invalid("A domain contains no spaces.")
    if text.startswith("[") or _is_ip_address(text):
        raise _invalid("An IP address is not a domain.")
    if ":" in text:
        raise _invalid("Enter the domain without a port.")
    if any(c in "/?#\\" for c in text):
        raise _invalid("Enter only the domain, without a path.")
    if "*" in text:
        raise _invalid("Wildcards are not allowed: add each domain on its own.")
    if "_" in text:
        raise _invalid("A mail domain contains no underscores.")
    if text.endswith("."):
        text = text[:-1]  # the root label, as in "example.com."
    if text.isascii():
        ascii_form = text.lower()
    else:
        try:
            encoded = idna.encode(text, uts46=True, std3_rules=True, transitional=False)
        except (idna.IDNAError, UnicodeError, ValueError) as error:
            raise _invalid(f"This is not a valid internationalised domain ({error}).") from error
        ascii_form = encoded.decode("ascii").lower()
        if ascii_form.endswith("."):  # a mapped full stop at the end, as in "example.com。"
            ascii_form = ascii_form[:-1]
    return _checked_ascii_domain(ascii_form)


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.rstrip("."))
    except ValueError:
        return False
    return True


def _checked_ascii_domain(domain: str) -> str:
    if not domain:
        raise _invalid("Enter a domain, such as example.com.")
    if len(domain) > MAX_DOMAIN_LENGTH:
        raise _invalid(f"A domain is at most {MAX_DOMAIN_LENGTH} characters long.")
    labels = domain.split(".")
    if len(labels) < 2:
        raise _invalid("Enter a full domain with at least two parts, such as example.com.")
    for label in labels:
        if not label:
            raise _invalid("A domain has no empty parts (two dots in a row, or a leading dot).")
        if len(label) > MAX_LABEL_LENGTH:
            raise _invalid(f"Each part of a domain is at most {MAX_LABEL_LENGTH} characters.")
        if not _LDH_LABEL.fullmatch(label):
            raise _invalid(
                f"{label!r} is not allowed: a domain has letters, digits and hyphens only."
            )
        if label.startswith("-") or label.endswith("-"):
            raise _invalid(f"{label!r} is not allowed: a part cannot start or end with '-'.")
        if label[2:4] == "--":
            if not label.startswith("xn--"):
                raise _invalid(f"{label!r} is not allowed: '--' in third and fourth place.")
            _check_a_label(label)
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise _invalid("An IP address is not a domain.")
    return domain


def _check_a_label(label: str) -> None:
    """An `xn--` label must decode to a valid U-label that encodes back to itself (so
    that every accepted domain has exactly one spelling)."""
    try:
        canonical = idna.alabel(idna.ulabel(label)).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError) as error:
        raise _invalid(f"{label!r} is not a valid internationalised label.") from error
    if canonical != label:
        raise _invalid(f"{label!r} is not the canonical form of its name ({canonical!r}).")


# -- consumer mail domains -----------------------------------------------------------------

# Free and consumer mailbox providers (and big consumer ISPs): nobody may claim them for a
# tenant, nor any of their subdomains. Exact registered domains, not patterns.
CONSUMER_DOMAINS: frozenset[str] = frozenset(
    {
        # Google
        "gmail.com",
        "googlemail.com",
        # Microsoft
        "outlook.com",
        "outlook.de",
        "outlook.fr",
        "outlook.es",
        "outlook.it",
        "outlook.jp",
        "outlook.co.uk",
        "hotmail.com",
        "hotmail.co.uk",
        "hotmail.fr",
        "hotmail.de",
        "hotmail.it",
        "hotmail.es",
        "hotmail.nl",
        "hotmail.be",
        "hotmail.ca",
        "hotmail.co.jp",
        "hotmail.com.au",
        "hotmail.com.br",
        "hotmail.com.mx",
        "hotmail.com.ar",
        "live.com",
        "live.co.uk",
        "live.fr",
        "live.de",
        "live.it",
        "live.nl",
        "live.ca",
        "live.com.au",
        "live.com.mx",
        "msn.com",
        "passport.com",
        "windowslive.com",
        # Yahoo
        "yahoo.com",
        "yahoo.co.uk",
        "yahoo.co.jp",
        "yahoo.co.in",
        "yahoo.fr",
        "yahoo.de",
        "yahoo.it",
        "yahoo.es",
        "yahoo.ca",
        "yahoo.in",
        "yahoo.com.au",
        "yahoo.com.br",
        "yahoo.com.mx",
        "yahoo.com.ar",
        "yahoo.com.sg",
        "yahoo.com.hk",
        "yahoo.com.tw",
        "ymail.com",
        "rocketmail.com",
        # Apple
        "icloud.com",
        "me.com",
        "mac.com",
        # AOL
        "aol.com",
        "aol.co.uk",
        "aol.de",
        "aol.fr",
        "aim.com",
        # Proton, Tuta and other privacy providers
        "proton.me",
        "protonmail.com",
        "protonmail.ch",
        "pm.me",
        "tutanota.com",
        "tutanota.de",
        "tutamail.com",
        "tuta.io",
        "tuta.com",
        "posteo.de",
        "posteo.net",
        "mailbox.org",
        "hushmail.com",
        "runbox.com",
        "disroot.org",
        "riseup.net",
        "duck.com",
        "startmail.com",
        # GMX, WEB.DE, mail.com (United Internet)
        "gmx.com",
        "gmx.net",
        "gmx.de",
        "gmx.at",
        "gmx.ch",
        "gmx.fr",
        "gmx.co.uk",
        "gmx.us",
        "web.de",
        "mail.com",
        "email.com",
        "usa.com",
        # Russia and neighbours
        "mail.ru",
        "inbox.ru",
        "list.ru",
        "bk.ru",
        "internet.ru",
        "yandex.ru",
        "yandex.com",
        "yandex.by",
        "yandex.kz",
        "yandex.ua",
        "yandex.com.tr",
        "ya.ru",
        "rambler.ru",
        "ukr.net",
        # China
        "qq.com",
        "foxmail.com",
        "163.com",
        "126.com",
        "yeah.net",
        "188.com",
        "sina.com",
        "sina.cn",
        "sohu.com",
        "aliyun.com",
        "139.com",
        # Korea, Japan, India
        "naver.com",
        "daum.net",
        "hanmail.net",
        "nate.com",
        "rediffmail.com",
        # Zoho, Fastmail, HEY
        "zoho.com",
        "zohomail.com",
        "zohomail.eu",
        "fastmail.com",
        "fastmail.fm",
        "hey.com",
        # Europe
        "t-online.de",
        "freenet.de",
        "arcor.de",
        "orange.fr",
        "wanadoo.fr",
        "free.fr",
        "sfr.fr",
        "laposte.net",
        "libero.it",
        "virgilio.it",
        "tiscali.it",
        "alice.it",
        "seznam.cz",
        "centrum.cz",
        "wp.pl",
        "o2.pl",
        "interia.pl",
        "onet.pl",
        "btinternet.com",
        "sky.com",
        "virginmedia.com",
        "ntlworld.com",
        "talktalk.net",
        "bluewin.ch",
        "telenet.be",
        "skynet.be",
        "ziggo.nl",
        "kpnmail.nl",
        # North and South America, Oceania
        "comcast.net",
        "verizon.net",
        "att.net",
        "sbcglobal.net",
        "bellsouth.net",
        "cox.net",
        "charter.net",
        "earthlink.net",
        "juno.com",
        "netzero.net",
        "optonline.net",
        "rogers.com",
        "shaw.ca",
        "sympatico.ca",
        "uol.com.br",
        "bol.com.br",
        "terra.com.br",
        "bigpond.com",
        "optusnet.com.au",
        "xtra.co.nz",
    }
)


def is_consumer_domain(domain: str) -> bool:
    """Whether `domain` is a consumer mail domain or a subdomain of one."""
    try:
        name = normalise_domain(domain)
    except DomainRefused:
        name = domain.strip().lower().rstrip(".")
    labels = name.split(".")
    return any(".".join(labels[i:]) in CONSUMER_DOMAINS for i in range(len(labels)))


def claimable_domain(value: str) -> str:
    """`normalise_domain`, also refusing consumer mail domains ("consumer-domain"): what a
    tenant may claim and verify."""
    domain = normalise_domain(value)
    if is_consumer_domain(domain):
        raise DomainRefused(
            "consumer-domain",
            f"{domain} is a public email provider: only an organisation's own domain can "
            "be verified.",
        )
    return domain


def domain_of_email(email: str) -> str:
    """The normalised domain of an email address (after the last '@'). Consumer domains
    are returned like any other (home-realm discovery simply finds no tenant for them).
    Raises DomainRefused("invalid-email") when there is no usable domain."""
    if not isinstance(email, str):
        raise TypeError(f"an email address is a str, not {type(email).__name__}")
    text = email.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or any(c.isspace() for c in text):
        raise DomainRefused("invalid-email", "Enter an email address, such as a@example.com.")
    try:
        return normalise_domain(domain)
    except DomainRefused as error:
        raise DomainRefused(
            "invalid-email", f"The part after '@' is not a valid domain. {error.message}"
        ) from error


# -- the TXT challenge ---------------------------------------------------------------------

CHALLENGE_LABEL = "_tenantry-verification"
CHALLENGE_PREFIX = "tenantry-verification="
TOKEN_BYTES = 32

_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


def challenge_name(domain: str) -> str:
    """Where the TXT record goes: `_tenantry-verification.<domain>` (domain normalised,
    without the root dot)."""
    return f"{CHALLENGE_LABEL}.{normalise_domain(domain)}"


def challenge_value(token: str) -> str:
    """The TXT record's value: `tenantry-verification=<token>`."""
    if not _TOKEN.fullmatch(token):
        raise ValueError("a challenge token is 16 to 128 URL-safe base64 characters")
    return f"{CHALLENGE_PREFIX}{token}"


def new_challenge_token() -> str:
    """A fresh token: 32 random bytes, URL-safe base64 without padding (43 characters)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def record_matches(records: Sequence[str], token: str) -> bool:
    """Whether one of the TXT records (joined character-strings) is the challenge value
    for `token`. Other records may sit beside it. Surrounding whitespace, and one pair of
    surrounding double quotes (a common copy-paste slip in DNS consoles), are ignored.
    Compares in constant time and always looks at every record."""
    if isinstance(records, str):
        raise TypeError("records is a sequence of TXT values, not one string")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        return False  # an empty or malformed token never matches anything
    expected = challenge_value(token).encode()
    found = False
    for record in records:
        candidate = record.strip()
        if len(candidate) >= 2 and candidate[0] == candidate[-1] == '"':
            candidate = candidate[1:-1].strip()
        found |= hmac.compare_digest(candidate.encode("utf-8", "replace"), expected)
    return found
