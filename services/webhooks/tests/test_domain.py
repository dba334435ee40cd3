"""The pure rules of webhooks: subscriptions, what an endpoint may look like, when to try
again, and signatures (checked with the reference Standard Webhooks verifier)."""

from __future__ import annotations

import base64
import random
import time
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tenantry_events.catalog import Catalog, EventType
from tenantry_webhooks.domain import (
    ENDPOINT_SETTINGS,
    MAX_CHANNELS,
    MAX_EVENT_TYPES,
    MAX_HEADERS,
    SECRET_PREFIX,
    TEST_EVENT,
    InvalidEndpoint,
    RetrySchedule,
    Verdict,
    changed_settings,
    is_opt_in,
    new_secret,
    opt_in_event_types,
    parse_retry_after,
    pattern_matches,
    public_event_types,
    secret_bytes,
    signature,
    signature_header,
    subscribed,
    unreachable_url,
    validate_channels,
    validate_event_types,
    validate_headers,
    validate_url,
    verdict,
)
from tenantry_webhooks.store import EndpointFields

# ---------------------------------------------------------------- subscriptions

# Few distinct segments, so that random names share prefixes often (user / users / user_x).
SEGMENTS = st.sampled_from(["a", "b", "user", "users", "user_x", "tenant", "created", "x1"])
NAMES = st.lists(SEGMENTS, min_size=1, max_size=4).map(".".join)
PATTERNS = st.one_of(st.just("*"), NAMES, NAMES.map(lambda n: n + ".*"))


def reference_match(pattern: str, event_type: str) -> bool:
    """Segment by segment: `*` alone is everything; `p.*` is every type with more segments
    than p that starts with all of p's; anything else is the type itself."""
    if pattern == "*":
        return True
    wanted = pattern.split(".")
    actual = event_type.split(".")
    if wanted[-1] == "*":
        prefix = wanted[:-1]
        return len(actual) > len(prefix) and actual[: len(prefix)] == prefix
    return wanted == actual


@given(PATTERNS, NAMES)
def test_pattern_matches_agrees_with_segment_matching(pattern: str, event_type: str) -> None:
    assert pattern_matches(pattern, event_type) is reference_match(pattern, event_type)


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("*", "user.email_verified", True),
        ("user.*", "user.email_verified", True),
        ("user.*", "user", False),  # the wildcard needs something under the prefix
        ("user.*", "users.deleted", False),  # a prefix of the name is not a prefix of the type
        ("tenant.*", "tenant.limits_changed", True),
        ("account.created", "account.created", True),
        ("account.created", "account.created_twice", False),
        ("account", "account.created", False),
    ],
)
def test_pattern_examples(pattern: str, event_type: str, expected: bool) -> None:
    assert pattern_matches(pattern, event_type) is expected


def test_subscribed_needs_a_matching_type_and_one_of_the_channels() -> None:
    assert subscribed(["user.*"], [], "user.email_verified", ["region:eu"])
    assert not subscribed(["tenant.*"], [], "user.email_verified", ["region:eu"])
    assert subscribed(["*"], ["region:eu", "source:x"], "user.email_verified", ["region:eu"])
    assert not subscribed(["*"], ["region:us"], "user.email_verified", ["region:eu"])
    assert not subscribed(["*"], ["region:us"], "user.email_verified", [])


def test_the_test_event_never_goes_through_subscriptions() -> None:
    assert not subscribed(["*"], [], TEST_EVENT, [])
    assert not subscribed([TEST_EVENT], [], TEST_EVENT, [])


# ---------------------------------------------------------------- opt-in types


class _Loud(msgspec.Struct, frozen=True):
    n: int


class _Quiet(msgspec.Struct, frozen=True):
    n: int


class _Hidden(msgspec.Struct, frozen=True):
    n: int


def catalog_with_an_opt_in_type() -> Catalog:
    """A throwaway catalog: audit.recorded-like `noisy.recorded` (public, opt-in), a plain
    public `noisy.changed`, and an internal opt-in type (never deliverable at all)."""
    catalog = Catalog()
    for name, payload, public, opt_in in (
        ("noisy.recorded", _Loud, True, True),
        ("noisy.changed", _Quiet, True, False),
        ("secret.recorded", _Hidden, False, True),
    ):
        catalog.register(
            EventType(
                name=name,
                payload=payload,
                owner="tests",
                public=public,
                version=1,
                description="",
                opt_in=opt_in,
            )
        )
    return catalog


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [("noisy.recorded", True), ("*", False), ("noisy.*", False), ("noisy.changed", False)],
)
def test_an_opt_in_type_is_matched_by_its_own_name_only(pattern: str, expected: bool) -> None:
    assert pattern_matches(pattern, "noisy.recorded", opt_in=True) is expected
    assert subscribed([pattern], [], "noisy.recorded", [], opt_in=True) is expected


def test_an_endpoint_on_every_event_does_not_get_opt_in_types() -> None:
    catalog = catalog_with_an_opt_in_type()
    assert is_opt_in("noisy.recorded", catalog)
    assert not is_opt_in("noisy.changed", catalog)
    assert not is_opt_in("no.such_type", catalog)
    everything = ["*"]
    asked = ["noisy.recorded", "user.*"]
    for endpoint, gets_it in ((everything, False), (asked, True), (["noisy.*"], False)):
        opt_in = is_opt_in("noisy.recorded", catalog)
        assert subscribed(endpoint, [], "noisy.recorded", [], opt_in=opt_in) is gets_it
    # Plain types are unchanged, and channels still filter an opt-in type.
    assert subscribed(everything, [], "noisy.changed", [], opt_in=False)
    assert subscribed(["noisy.*"], [], "noisy.changed", [], opt_in=False)
    assert not subscribed(asked, ["region:us"], "noisy.recorded", ["region:eu"], opt_in=True)
    assert subscribed(asked, ["region:eu"], "noisy.recorded", ["region:eu"], opt_in=True)


def test_opt_in_public_types_can_be_named_but_not_reached_by_wildcards() -> None:
    catalog = catalog_with_an_opt_in_type()
    known = public_event_types(catalog)
    opt_in = opt_in_event_types(catalog)
    assert known == ["noisy.changed", "noisy.recorded"]
    assert opt_in == frozenset({"noisy.recorded"}), "public ones only"
    assert validate_event_types(["noisy.recorded", "*"], known, opt_in) == [
        "*",
        "noisy.recorded",
    ]
    assert validate_event_types(["noisy.*"], known, opt_in) == ["noisy.*"]  # noisy.changed
    just_opt_in = [t for t in known if t != "noisy.changed"]
    with pytest.raises(InvalidEndpoint) as wildcard:
        validate_event_types(["noisy.*"], just_opt_in, opt_in)
    assert refusal(wildcard) == (
        "event type 'noisy.*' matches only opt-in types, which are sent only where named "
        "exactly: noisy.recorded"
    )
    with pytest.raises(InvalidEndpoint) as internal:
        validate_event_types(["secret.recorded"], known, opt_in)
    assert "matches no event" in refusal(internal)


def test_the_real_catalog_opt_in_types_are_public() -> None:
    assert opt_in_event_types() <= set(public_event_types())


# ---------------------------------------------------------------- what changes are told


def endpoint_settings(**changes: object) -> EndpointFields:
    settings = EndpointFields(
        url="https://a.example/in",
        description="",
        event_types=["*"],
        channels=[],
        headers={"X-Team": "blue"},
        enabled=True,
        rate_limit_per_second=None,
        fifo=False,
    )
    return msgspec.structs.replace(settings, **changes)


def test_changed_settings_names_what_differs_in_a_fixed_order() -> None:
    before = endpoint_settings()
    assert changed_settings(before, endpoint_settings()) == []
    after = endpoint_settings(enabled=False, url="https://b.example/in")
    assert changed_settings(before, after) == ["url", "enabled"]
    assert changed_settings(before, endpoint_settings(headers={"X-Team": "red"})) == ["headers"]
    everything = endpoint_settings(
        url="https://b.example/in",
        description="new",
        event_types=["user.*"],
        channels=["region:eu"],
        headers={},
        enabled=False,
        rate_limit_per_second=5.0,
        fifo=True,
    )
    assert changed_settings(before, everything) == list(ENDPOINT_SETTINGS)


# ---------------------------------------------------------------- what an endpoint may be


def refusal(excinfo: pytest.ExceptionInfo[InvalidEndpoint]) -> str:
    return str(excinfo.value)


def test_event_types_are_checked_against_the_public_catalogue() -> None:
    known = public_event_types()
    assert "user.email_verified" in known
    assert "apikey.created" not in known, "internal events are not for customers"
    assert validate_event_types(["user.*", "*", "user.*", "tenant.created"], known) == [
        "*",
        "tenant.created",
        "user.*",
    ]
    with pytest.raises(InvalidEndpoint) as empty:
        validate_event_types([], known)
    assert "at least one event type" in refusal(empty)
    with pytest.raises(InvalidEndpoint) as typo:
        validate_event_types(["user.email_verifed"], known)
    assert refusal(typo) == "event type 'user.email_verifed' matches no event Tenantry sends"
    with pytest.raises(InvalidEndpoint) as internal:
        validate_event_types(["apikey.*"], known)
    assert "matches no event" in refusal(internal)
    with pytest.raises(InvalidEndpoint) as many:
        validate_event_types(["*"] * (MAX_EVENT_TYPES + 1), known)
    assert f"at most {MAX_EVENT_TYPES}" in refusal(many)


@pytest.mark.parametrize(
    "pattern", ["User.created", "*.created", "user.*.x", "user..x", "user.", ".user", "**", "u-x"]
)
def test_malformed_patterns_are_refused_with_what_a_pattern_looks_like(pattern: str) -> None:
    with pytest.raises(InvalidEndpoint) as refused:
        validate_event_types([pattern], public_event_types())
    assert refusal(refused) == f"event type {pattern!r} is not a type or a pattern like user.*"


def test_channels() -> None:
    assert validate_channels(["region:eu", "b", "region:eu"]) == ["b", "region:eu"]
    assert validate_channels([]) == []
    with pytest.raises(InvalidEndpoint) as bad:
        validate_channels(["has space"])
    assert refusal(bad) == "channel 'has space': letters, digits and _ . : - only"
    with pytest.raises(InvalidEndpoint):
        validate_channels(["x" * 129])
    with pytest.raises(InvalidEndpoint) as many:
        validate_channels([f"c{i}" for i in range(MAX_CHANNELS + 1)])
    assert f"at most {MAX_CHANNELS} channels" in refusal(many)


def test_custom_headers() -> None:
    fine = {"X-Team": "blue", "Authorization": "Bearer abc", "X-Empty": ""}
    assert validate_headers(fine) == fine
    for name in ("Host", "content-type", "Content-Length", "User-Agent", "Transfer-Encoding"):
        with pytest.raises(InvalidEndpoint) as reserved:
            validate_headers({name: "x"})
        assert refusal(reserved) == f"header {name!r} is set by Tenantry and cannot be overridden"
    with pytest.raises(InvalidEndpoint) as signature_header_:
        validate_headers({"Webhook-Signature": "v1,forged"})
    assert "set by Tenantry" in refusal(signature_header_)
    with pytest.raises(InvalidEndpoint) as bad_name:
        validate_headers({"X Team": "x"})
    assert refusal(bad_name) == "header name 'X Team' is not a valid HTTP field name"
    for value in ("a\r\nX-Injected: 1", "a\nb", "a\x00b", "x" * 1001):
        with pytest.raises(InvalidEndpoint) as bad_value:
            validate_headers({"X-Team": value})
        assert "X-Team" in refusal(bad_value)
    with pytest.raises(InvalidEndpoint) as many:
        validate_headers({f"X-H{i}": "v" for i in range(MAX_HEADERS + 1)})
    assert f"at most {MAX_HEADERS} custom headers" in refusal(many)


@pytest.mark.parametrize("value", ["café", "naïve ✓", "a\x01b", "a\x7fb"])
def test_header_values_that_cannot_be_sent_are_refused_on_save(value: str) -> None:
    """The outbound client sends header values as ASCII (httpx encodes them so and raises
    UnicodeEncodeError otherwise; h11 refuses control characters): a value that cannot go
    out must be refused when the endpoint is saved, not crash every delivery."""
    with pytest.raises(InvalidEndpoint) as refused:
        validate_headers({"X-Team": value})
    assert "X-Team" in refusal(refused)


def test_a_trailing_newline_is_not_part_of_a_valid_name() -> None:
    """`$` in a Python regex also matches before a final newline: names are checked whole."""
    with pytest.raises(InvalidEndpoint) as header_name:
        validate_headers({"X-Team\n": "x"})
    assert "is not a valid HTTP field name" in refusal(header_name)
    with pytest.raises(InvalidEndpoint) as channel:
        validate_channels(["region:eu\n"])
    assert "letters, digits and _ . : - only" in refusal(channel)
    with pytest.raises(InvalidEndpoint) as pattern:
        validate_event_types(["user.*\n"], public_event_types())
    assert "is not a type or a pattern like user.*" in refusal(pattern)


def test_urls() -> None:
    assert validate_url("https://hooks.example.com/in?x=1", allow_http=False)
    assert validate_url("http://127.0.0.1:8080/in", allow_http=True)
    cases = {
        "http://hooks.example.com/": "the URL must use https",
        "ftp://hooks.example.com/": "the URL must use https",
        "https:///path-only": "the URL has no host",
        "https://user:pw@hooks.example.com/": "put credentials in a custom header, not in the URL",
        "https://hooks.example.com/#frag": "the URL must not have a #fragment",
        "https://hooks.example.com:0/": "port 0 is not a port",
        "https://hooks.example.com/" + "a" * 2048: "the URL is longer than 2048 characters",
    }
    for url, message in cases.items():
        with pytest.raises(InvalidEndpoint) as refused:
            validate_url(url, allow_http=False)
        assert refusal(refused) == message, url
    with pytest.raises(InvalidEndpoint) as bad_port:
        validate_url("https://hooks.example.com:99999/", allow_http=False)
    assert refusal(bad_port).startswith("the URL is not valid: ")


def test_a_refused_url_is_named_with_what_its_host_is() -> None:
    address = unreachable_url("http://10.1/", "private", "10.1", ["10.0.0.1"])
    assert address == (
        "url 'http://10.1/': its host 10.1 is the IP address 10.0.0.1, which is private; "
        "webhooks are only sent to public addresses"
    )
    host = unreachable_url("http://a%20b/", "host", "a%20b", [])
    assert host == "url 'http://a%20b/': its host 'a%20b' is neither an IP address nor a DNS name"
    other = unreachable_url("http://x/", "port", "x", [])
    assert other == "url 'http://x/' cannot be sent to (port)"


def test_url_refusals_name_the_url_field() -> None:
    with pytest.raises(InvalidEndpoint) as refused:
        validate_url("ftp://hooks.example.com/", allow_http=False)
    assert refused.value.field == "url"
    with pytest.raises(InvalidEndpoint) as bad_type:
        validate_event_types(["nope"], ["user.created"])
    assert bad_type.value.field == "event_types"


# ---------------------------------------------------------------- verdicts and retries


@given(
    st.one_of(st.none(), st.integers(min_value=100, max_value=599)),
    st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
)
def test_verdict(status: int | None, retry_after: float | None) -> None:
    expected = (
        Verdict.SUCCESS
        if status is not None and 200 <= status < 300
        else Verdict.GONE
        if status == 410
        else Verdict.BACK_PRESSURE
        if status in (429, 503) and retry_after is not None
        else Verdict.RETRY
    )
    assert verdict(status, retry_after) is expected
    if retry_after is None:
        assert verdict(status) is expected


def test_verdict_examples() -> None:
    assert verdict(204) is Verdict.SUCCESS
    assert verdict(302) is Verdict.RETRY, "a redirect is never followed: it is a failure"
    assert verdict(404) is Verdict.RETRY
    assert verdict(410) is Verdict.GONE
    assert verdict(None) is Verdict.RETRY
    assert verdict(429, 7.0) is Verdict.BACK_PRESSURE, "the receiver paces us: not a failure"
    assert verdict(503, 0.0) is Verdict.BACK_PRESSURE
    assert verdict(429) is Verdict.RETRY, "without a Retry-After it is a failure"
    assert verdict(500, 7.0) is Verdict.RETRY, "Retry-After on a 500 says nothing of health"


@given(
    delays=st.lists(
        st.floats(min_value=0, max_value=1e5, allow_nan=False), min_size=1, max_size=8
    ).map(tuple),
    jitter=st.floats(min_value=0, max_value=0.9),
    data=st.data(),
    seed=st.integers(),
)
def test_next_delay_stays_within_the_jitter_around_the_schedule(
    delays: tuple[float, ...], jitter: float, data: st.DataObject, seed: int
) -> None:
    schedule = RetrySchedule(delays=delays, jitter=jitter)
    attempts = data.draw(st.integers(min_value=1, max_value=len(delays)))
    status = data.draw(st.sampled_from([None, 500, 404, 302, 429, 503]))
    delay = schedule.next_delay(attempts, status, None, random.Random(seed))
    assert delay is not None
    base = delays[attempts - 1] * (2 if status in (429, 503) else 1)
    slack = 1e-9 + base * 1e-12  # float rounding only
    assert base * (1 - jitter) - slack <= delay <= base * (1 + jitter) + slack


def test_the_schedule_in_order_and_its_end() -> None:
    schedule = RetrySchedule(delays=(1, 2, 4), jitter=0)
    assert schedule.max_attempts == 4
    assert [schedule.next_delay(n, 500, None) for n in (1, 2, 3)] == [1, 2, 4]
    assert schedule.next_delay(4, 500, None) is None, "four attempts made: exhausted"
    assert schedule.next_delay(4, 429, 7) is None, "Retry-After does not extend the schedule"
    assert schedule.next_delay(9, None, None) is None
    assert RetrySchedule(delays=()).next_delay(1, 500, None) is None


def test_429_and_503_back_off_twice_as_long_unless_they_say_when() -> None:
    schedule = RetrySchedule(delays=(10, 20), jitter=0)
    assert schedule.next_delay(1, 429, None) == 20
    assert schedule.next_delay(1, 503, None) == 20
    assert schedule.next_delay(2, 503, None) == 40
    assert schedule.next_delay(1, 500, None) == 10
    assert schedule.next_delay(1, 429, 7) == 7, "Retry-After as is, no doubling, no jitter"


@given(retry_after=st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_retry_after_is_honoured_within_bounds(retry_after: float) -> None:
    schedule = RetrySchedule(delays=(5, 300), jitter=0.5)
    delay = schedule.next_delay(1, 503, retry_after, random.Random(1))
    assert delay == min(86400.0, max(1.0, retry_after))


def test_retry_after_clamping_examples() -> None:
    schedule = RetrySchedule(delays=(5,))
    assert schedule.next_delay(1, 429, 0) == 1.0, "Retry-After: 0 does not mean hammer"
    assert schedule.next_delay(1, 429, 10**9) == 86400.0, "nor a year of silence"


def test_parse_schedule() -> None:
    parsed = RetrySchedule.parse("5, 300,1800,", jitter=0.1)
    assert parsed == RetrySchedule(delays=(5.0, 300.0, 1800.0), jitter=0.1)
    assert RetrySchedule.parse("").max_attempts == 1
    with pytest.raises(ValueError, match="seconds separated by commas"):
        RetrySchedule.parse("5,five")
    with pytest.raises(ValueError, match="cannot be negative"):
        RetrySchedule.parse("5,-1")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # a date needs `now`
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_an_http_date_retry_after_is_read_against_now() -> None:
    now = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC).timestamp()
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now) == 0.0, "past: now"
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00", now) is None, "no zone"
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("12", now) == 12.0


# ---------------------------------------------------------------- signatures


def test_a_new_secret_is_whsec_and_32_random_bytes() -> None:
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX)
    assert len(base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)) == 32
    assert secret_bytes(secret) == base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    assert new_secret() != secret


def headers_for(secrets: list[str], message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, message_id, timestamp, body),
    }


@given(body=st.binary(max_size=500).map(lambda b: b.hex().encode()), message_id=st.uuids())
def test_the_reference_verifier_accepts_our_signature(body: bytes, message_id: object) -> None:
    secret = new_secret()
    timestamp = int(time.time())
    msg_id = f"msg_{message_id}"
    headers = headers_for([secret], msg_id, timestamp, body)
    Webhook(secret).verify(body, headers, json_parse=False)
    reference = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    assert headers["webhook-signature"] == reference == signature(secret, msg_id, timestamp, body)


def test_during_a_rotation_either_secret_verifies() -> None:
    old, new = new_secret(), new_secret()
    body = b'{"type":"user.email_verified","timestamp":"2025-01-01T00:00:00+00:00","data":{}}'
    timestamp = int(time.time())
    headers = headers_for([new, old], "msg_1", timestamp, body)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert all(s.startswith("v1,") for s in headers["webhook-signature"].split(" "))
    assert Webhook(new).verify(body, headers)["type"] == "user.email_verified"
    assert Webhook(old).verify(body, headers)["type"] == "user.email_verified"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_a_changed_body_id_or_timestamp_does_not_verify() -> None:
    secret = new_secret()
    body = b'{"a":1}'
    timestamp = int(time.time())
    headers = headers_for([secret], "msg_1", timestamp, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_2"})
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-timestamp": str(timestamp + 1)})
