"""The DNS TXT lookup behind email-domain verification: a dnspython stub resolver that never
caches, so a record the admin just published is seen at once.

A lookup that finds nothing (NXDOMAIN, no TXT) is an answer ("not found yet"); one that
could not be made (timeout, SERVFAIL, no nameserver) raises `DomainLookupFailed`, which the
API reports as "try again later", never as "not found".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.ANY.TXT import TXT

from tenantry_identity.sso.email_domains import DomainRefused


class DomainLookupFailed(Exception):
    """The TXT lookup could not be made (timeout, SERVFAIL, REFUSED, no nameserver...).
    Temporary: report "try again", never "record not found"."""

    def __init__(self, reason: str, *, name: str | None = None) -> None:
        super().__init__(f"DNS lookup of {name} failed: {reason}" if name else reason)
        self.reason = reason
        self.name = name


# -- the lookup ----------------------------------------------------------------------------

DEFAULT_TIMEOUT_SECONDS = 5.0
# Per-try timeout: a lost UDP packet is retried within the lifetime.
_ATTEMPT_TIMEOUT_SECONDS = 2.0
# EDNS payload size advertised over UDP (DNS Flag Day 2020); larger answers come back
# truncated and dnspython retries them over TCP.
EDNS_PAYLOAD = 1232


def parse_nameserver(value: str) -> tuple[str, int]:
    """A nameserver entry as (address, port): "192.0.2.1", "192.0.2.1:5353", "2001:db8::1",
    "[2001:db8::1]:5353". Addresses only: a resolver is not found by name."""
    text = value.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"not a nameserver address: {value!r}")
        port_text = rest[1:]
        if rest and not port_text:
            raise ValueError(f"missing port in nameserver {value!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text:
            raise ValueError(f"missing port in nameserver {value!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"a nameserver is an IP address (with an optional port): {value!r}"
        ) from None
    port = 53
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"not a port in nameserver {value!r}")
        port = int(port_text)
    return str(address), port


class TxtResolver:
    """TXT lookups for domain verification.

    `nameservers` are "host:port" entries (see `parse_nameserver`); empty means the
    system's (/etc/resolv.conf). `timeout` bounds a whole lookup, retries included.
    Nothing is cached."""

    def __init__(
        self, nameservers: Sequence[str] = (), *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> None:
        if isinstance(nameservers, str):
            raise TypeError("nameservers is a sequence of 'host:port' strings, not one string")
        if not timeout > 0:
            raise ValueError("the lookup timeout is positive")
        self._timeout = float(timeout)
        self._unconfigured: str | None = None
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [
                dns.nameserver.Do53Nameserver(*parse_nameserver(entry)) for entry in nameservers
            ]
        else:
            try:
                resolver = dns.asyncresolver.Resolver(configure=True)
            except (dns.resolver.NoResolverConfiguration, OSError) as error:
                resolver = dns.asyncresolver.Resolver(configure=False)
                self._unconfigured = f"no system DNS configuration ({error})"
        resolver.lifetime = self._timeout
        resolver.timeout = min(self._timeout, _ATTEMPT_TIMEOUT_SECONDS)
        resolver.cache = None
        resolver.use_edns(0, 0, EDNS_PAYLOAD)
        self._resolver = resolver

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def nameservers(self) -> list[str]:
        """The nameservers asked, as "host:port" (IPv6 in brackets)."""
        out: list[str] = []
        for server in self._resolver.nameservers:
            if isinstance(server, dns.nameserver.Do53Nameserver):
                host, port = server.address, server.port
            else:
                host, port = str(server), 53
            out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return out

    async def txt(self, name: str) -> list[str]:
        """The TXT records at `name`, each one's character-strings joined (UTF-8, bad bytes
        replaced). No such name or no TXT there: []. Raises DomainLookupFailed when no
        answer could be had, DomainRefused when `name` is not a DNS name."""
        qname = _absolute_name(name)
        shown = qname.to_text(omit_final_dot=True)
        if self._unconfigured is not None:
            raise DomainLookupFailed(self._unconfigured, name=shown)
        if not self._resolver.nameservers:
            raise DomainLookupFailed("no nameservers configured", name=shown)
        try:
            # tcp=False: dnspython asks over UDP and, on a truncated answer (TC), retries the
            # same server over TCP by itself (dns.message.Truncated never reaches us).
            answer = await self._resolver.resolve(
                qname, dns.rdatatype.TXT, tcp=False, search=False, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.Timeout as error:
            raise DomainLookupFailed(f"no answer within {self._timeout:g} s", name=shown) from error
        except dns.resolver.NoNameservers as error:
            raise DomainLookupFailed(_describe_failures(error), name=shown) from error
        except dns.exception.DNSException as error:
            raise DomainLookupFailed(f"{type(error).__name__}: {error}", name=shown) from error
        except OSError as error:
            raise DomainLookupFailed(f"network error: {error}", name=shown) from error
        if answer.rrset is None:
            return []
        return [
            b"".join(rdata.strings).decode("utf-8", "replace")
            for rdata in answer.rrset
            if isinstance(rdata, TXT)
        ]


def _absolute_name(name: str) -> dns.name.Name:
    text = name.strip()
    if not text or not text.isascii():
        raise DomainRefused("invalid-domain", f"not an ASCII DNS name: {name!r}")
    try:
        return dns.name.from_text(text, origin=dns.name.root)
    except dns.exception.DNSException as error:
        raise DomainRefused("invalid-domain", f"not a DNS name: {name!r} ({error})") from error


def _describe_failures(error: dns.resolver.NoNameservers) -> str:
    """Why every nameserver failed, e.g. "Do53:127.0.0.1@5353 (udp) answered SERVFAIL"."""
    failures = error.kwargs.get("errors") or []
    parts: list[str] = []
    for server, tcp, _port, problem, _response in failures:
        where = f"{server} ({'tcp' if tcp else 'udp'})"
        if isinstance(problem, str):  # an rcode, as text
            parts.append(f"{where} answered {problem}")
        else:
            parts.append(f"{where}: {type(problem).__name__}: {problem}")
    return "; ".join(parts) or "every nameserver failed"
