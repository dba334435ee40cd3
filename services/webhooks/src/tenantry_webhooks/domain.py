"""The rules of webhooks, pure (no I/O): which endpoints an event goes to, what a message
looks like and how it is signed (Standard Webhooks v1), what an endpoint may look like, and
when to try again."""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import random
import re
import secrets
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import msgspec

from tenantry_events.catalog import CATALOG, Catalog, load_all
from tenantry_events.envelope import Envelope

SECRET_PREFIX = "whsec_"  # noqa: S105  (the format's prefix, not a secret)
TEST_EVENT = "webhook.test"
MAX_EVENT_TYPES = 50
MAX_CHANNELS = 10
MAX_HEADERS = 20
_PATTERN = re.compile(r"^(\*|[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?)$")
_CHANNEL = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")
# What the outbound client can send: it encodes header values as ASCII (a non-ASCII value
# raises in every delivery), and receivers refuse control characters.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]{0,1000}")
# Headers the platform sets or that would change how the request travels.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-authorization",
        "user-agent",
    }
)


class InvalidEndpoint(ValueError):
    """The endpoint as sent cannot be saved; the message says what to fix, `field` which
    member of the body is wrong when it is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# ---------------------------------------------------------------- subscriptions


def pattern_matches(pattern: str, event_type: str, *, opt_in: bool = False) -> bool:
    """`*` matches everything, `user.*` every type under `user.`, anything else itself. An
    opt-in type (`opt_in`: the catalog marks it so) is matched by its own name only: neither
    `*` nor a wildcard over its prefix selects it, so an endpoint gets it only by asking."""
    if opt_in:
        return pattern == event_type
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return event_type.startswith(pattern[:-1])
    return pattern == event_type


def subscribed(
    event_types: Sequence[str],
    channels: Sequence[str],
    event_type: str,
    message_channels: Sequence[str],
    *,
    opt_in: bool = False,
) -> bool:
    """An endpoint gets a message if one of its patterns matches the type (an opt-in type:
    if one of them names it exactly) and, when it filters on channels, the message carries
    one of them. The test event goes only where it is sent, never through subscriptions."""
    if event_type == TEST_EVENT:
        return False
    if not any(pattern_matches(p, event_type, opt_in=opt_in) for p in event_types):
        return False
    return not channels or bool(set(channels) & set(message_channels))


def validate_event_types(
    patterns: Sequence[str], known: Iterable[str], opt_in: Collection[str] = frozenset()
) -> list[str]:
    """Each pattern must be well formed and select at least one public event type (`known`;
    those in `opt_in` only by their exact name), so a typo is refused on save instead of
    silently receiving nothing."""
    if not patterns:
        raise InvalidEndpoint("subscribe to at least one event type (or *)", field="event_types")
    if len(patterns) > MAX_EVENT_TYPES:
        raise InvalidEndpoint(f"at most {MAX_EVENT_TYPES} event types", field="event_types")
    known_types = list(known)
    for pattern in patterns:
        if not _PATTERN.fullmatch(pattern):
            raise InvalidEndpoint(
                f"event type {pattern!r} is not a type or a pattern like user.*",
                field="event_types",
            )
        if any(pattern_matches(pattern, t, opt_in=t in opt_in) for t in known_types):
            continue
        wanted = sorted(t for t in known_types if t in opt_in and pattern_matches(pattern, t))
        if wanted:
            raise InvalidEndpoint(
                f"event type {pattern!r} matches only opt-in types, which are sent only "
                f"where named exactly: {', '.join(wanted)}",
                field="event_types",
            )
        raise InvalidEndpoint(
            f"event type {pattern!r} matches no event Tenantry sends", field="event_types"
        )
    return sorted(set(patterns))


def validate_channels(channels: Sequence[str]) -> list[str]:
    if len(channels) > MAX_CHANNELS:
        raise InvalidEndpoint(f"at most {MAX_CHANNELS} channels", field="channels")
    for channel in channels:
        if not _CHANNEL.fullmatch(channel):
            raise InvalidEndpoint(
                f"channel {channel!r}: letters, digits and _ . : - only", field="channels"
            )
    return sorted(set(channels))


def validate_headers(headers: dict[str, str]) -> dict[str, str]:
    if len(headers) > MAX_HEADERS:
        raise InvalidEndpoint(f"at most {MAX_HEADERS} custom headers", field="headers")
    for name, value in headers.items():
        lowered = name.lower()
        if not _HEADER_NAME.fullmatch(name):
            raise InvalidEndpoint(
                f"header name {name!r} is not a valid HTTP field name", field="headers"
            )
        if lowered in _RESERVED_HEADERS or lowered.startswith("webhook-"):
            raise InvalidEndpoint(
                f"header {name!r} is set by Tenantry and cannot be overridden", field="headers"
            )
        if not _HEADER_VALUE.fullmatch(value):
            raise InvalidEndpoint(
                f"header {name!r}: at most 1000 characters of printable ASCII, no line breaks",
                field="headers",
            )
    return headers


def validate_url(url: str, *, allow_http: bool) -> str:
    """Syntax and scheme here, with messages a customer can act on. The address is the
    outbound guard's to judge (the caller asks it, with the guard's own parser, about
    what it can know without DNS: an IP literal in any spelling); a name is checked on
    every connection, since DNS can change after the endpoint is saved."""
    if len(url) > 2048:
        raise InvalidEndpoint("the URL is longer than 2048 characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidEndpoint(f"the URL is not valid: {exc}", field="url") from exc
    if parts.scheme not in (("https", "http") if allow_http else ("https",)):
        raise InvalidEndpoint("the URL must use https", field="url")
    if not parts.hostname:
        raise InvalidEndpoint("the URL has no host", field="url")
    if parts.username or parts.password:
        raise InvalidEndpoint("put credentials in a custom header, not in the URL", field="url")
    if parts.fragment:
        raise InvalidEndpoint("the URL must not have a #fragment", field="url")
    if port == 0:
        raise InvalidEndpoint("port 0 is not a port", field="url")
    return url


def unreachable_url(url: str, reason: str, host: str | None, addresses: Sequence[str]) -> str:
    """What to tell a customer whose URL the outbound guard refuses (`reason` and the
    rest from its `BlockedDestination`)."""
    if addresses:
        return (
            f"url {url!r}: its host {host} is the IP address {addresses[0]}, which is "
            f"{reason}; webhooks are only sent to public addresses"
        )
    if reason == "host":
        return f"url {url!r}: its host {host!r} is neither an IP address nor a DNS name"
    return f"url {url!r} cannot be sent to ({reason})"


# ---------------------------------------------------------------- messages

_ENCODER = msgspec.json.Encoder()


def public_event_types(catalog: Catalog = CATALOG) -> list[str]:
    """What an endpoint can subscribe to: every event type the catalog marks public."""
    load_all()
    return [t.name for t in catalog if t.public]


def opt_in_event_types(catalog: Catalog = CATALOG) -> frozenset[str]:
    """The public types an endpoint gets only by naming them in its event types (`*` and
    wildcards leave them out)."""
    load_all()
    return frozenset(t.name for t in catalog if t.public and t.opt_in)


def is_opt_in(event_type: str, catalog: Catalog = CATALOG) -> bool:
    load_all()
    return event_type in catalog and catalog.by_name(event_type).opt_in


def message_id_of(event: Envelope[Any]) -> str:
    """The webhook-id: derived from the event id, so a redelivered event is the same
    message, and a receiver can deduplicate on it."""
    return f"msg_{event.id.hex}"


def channels_of(event: Envelope[Any]) -> list[str]:
    """Labels an endpoint may filter on: where the event happened and which service
    emitted it."""
    return [f"region:{event.region}", f"source:{event.source.rsplit('/', 1)[-1]}"]


def body_of(event: Envelope[Any]) -> bytes:
    """Standard Webhooks' body: {type, timestamp, data}. `data` is the event's payload,
    with the tenant and the subject it is about."""
    data = {
        "tenant_id": str(event.tenant_id),
        "subject": event.subject,
        **msgspec.to_builtins(event.payload),
    }
    return _ENCODER.encode(
        {"type": event.type, "timestamp": event.occurred_at.isoformat(), "data": data}
    )


def webhook_test_body(tenant_id: UUID, endpoint_id: str, now: datetime) -> bytes:
    """The body of a webhook.test message, which goes to one endpoint only."""
    return _ENCODER.encode(
        {
            "type": TEST_EVENT,
            "timestamp": now.isoformat(),
            "data": {"tenant_id": str(tenant_id), "endpoint_id": endpoint_id},
        }
    )


# ---------------------------------------------------------------- what changes are told

# An endpoint's settings, in the order webhook.endpoint_changed names the changed ones.
ENDPOINT_SETTINGS = (
    "url",
    "description",
    "event_types",
    "channels",
    "headers",
    "enabled",
    "rate_limit_per_second",
    "fifo",
)
# webhook.messages_replayed lists at most this many of the messages a recovery queued.
MAX_REPLAYED_IDS = 1000


def changed_settings(before: object, after: object) -> list[str]:
    """The settings (ENDPOINT_SETTINGS) whose value differs between two versions of an
    endpoint (the stored row and what it becomes: both have every setting as an attribute;
    event types and channels are kept sorted, so order alone is no change)."""
    return [name for name in ENDPOINT_SETTINGS if getattr(before, name) != getattr(after, name)]


# ---------------------------------------------------------------- signing


def new_secret() -> str:
    """whsec_ + base64 of 32 random bytes (Standard Webhooks allows 24 to 64)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64 HMAC-SHA256 over `id.timestamp.body`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(
    secrets_in_force: Sequence[str], message_id: str, timestamp: int, body: bytes
) -> str:
    """One signature per secret in force (during a rotation, the new and the old), space
    separated: a receiver verifying with either secret accepts the message."""
    return " ".join(signature(s, message_id, timestamp, body) for s in secrets_in_force)


# ---------------------------------------------------------------- attempts and retries


class Verdict(StrEnum):
    SUCCESS = "success"
    RETRY = "retry"
    GONE = "gone"  # 410: the receiver says the endpoint no longer exists; disable it
    # 429 or 503 with a Retry-After we honour: the receiver is up and asks for a pause.
    # Tried again at that time, like RETRY, but not a failure of the endpoint: neither its
    # circuit breaker nor its failing streak counts it.
    BACK_PRESSURE = "back_pressure"


BACK_PRESSURE_STATUSES = frozenset({429, 503})


def verdict(status: int | None, retry_after: float | None = None) -> Verdict:
    """Any 2xx is success; 410 disables; 429 or 503 with a Retry-After (`retry_after`, as
    `parse_retry_after` read it) is back-pressure; everything else (3xx included: redirects
    are never followed) fails and is tried again; no status means the request never
    completed."""
    if status is not None and 200 <= status < 300:
        return Verdict.SUCCESS
    if status == 410:
        return Verdict.GONE
    if status in BACK_PRESSURE_STATUSES and retry_after is not None:
        return Verdict.BACK_PRESSURE
    return Verdict.RETRY


def delivery_status(outcome: Verdict, next_delay: float | None) -> str:
    """What a delivery is after an attempt: succeeded; failed (gone, or no attempt left:
    `next_delay` None); or pending, to be tried again after `next_delay`."""
    if outcome is Verdict.SUCCESS:
        return "succeeded"
    if outcome is Verdict.GONE or next_delay is None:
        return "failed"
    return "pending"


@dataclass(frozen=True)
class RetrySchedule:
    """Delays before attempt 2, 3, ... (the first is immediate); Svix's by default."""

    delays: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    jitter: float = 0.2
    min_retry_after: float = 1.0
    max_retry_after: float = 86400.0

    @classmethod
    def parse(cls, text: str, *, jitter: float = 0.2) -> RetrySchedule:
        """ "5,300,1800" (seconds) from a setting."""
        try:
            delays = tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise ValueError(f"a retry schedule is seconds separated by commas: {text!r}") from exc
        if any(d < 0 for d in delays):
            raise ValueError("retry delays cannot be negative")
        return cls(delays=delays, jitter=jitter)

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    def next_delay(
        self,
        attempts_made: int,
        status: int | None,
        retry_after: float | None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds until the next attempt after `attempts_made` failed ones, or None when
        the schedule is exhausted. Retry-After is honoured within bounds; 429 and 503
        without one back off twice as long as the schedule says."""
        if attempts_made >= self.max_attempts:
            return None
        base = self.delays[attempts_made - 1]
        if retry_after is not None:
            return min(self.max_retry_after, max(self.min_retry_after, retry_after))
        if status in (429, 503):
            base *= 2
        spread = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return base * spread


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value: delay-seconds, or an HTTP-date (RFC 9110
    §10.2.3) read against `now` (epoch seconds; without it a date is not read). None when
    absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        if now is None:
            return None
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means no zone
            return None
        return max(0.0, when.timestamp() - now)
    return seconds if seconds >= 0 and math.isfinite(seconds) else None
