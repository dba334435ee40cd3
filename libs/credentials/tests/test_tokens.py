"""Local verification of access tokens, with an injected clock."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tenantry_credentials.tokens import (
    AUDIENCE,
    ISSUER,
    AccessTokenVerifier,
    InvalidToken,
    JwksCache,
    new_signing_key,
    sign,
)
from tenantry_platform.clock import FakeClock
from tenantry_resilience import BreakerConfig, BreakerState, CircuitBreaker


class Jwks:
    """The identity side: a set of keys whose public half it publishes."""

    def __init__(self) -> None:
        self.keys = [new_signing_key("k1")]
        self.fetches = 0

    async def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        return {"keys": [k.as_dict(private=False) for k in self.keys]}


def claims(clock: FakeClock, **extra: Any) -> dict[str, Any]:
    now = int(clock.now())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "acct-1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": "j",
        **extra,
    }


@pytest.fixture
def setup() -> tuple[Jwks, FakeClock, AccessTokenVerifier]:
    jwks, clock = Jwks(), FakeClock()
    cache = JwksCache(jwks.fetch, ttl=300, min_refetch=5, clock=clock)
    return jwks, clock, AccessTokenVerifier(cache, clock=clock)


async def test_a_valid_token_verifies(setup: Any) -> None:
    jwks, clock, verifier = setup
    token = sign(claims(clock, tid="t-1"), jwks.keys[0])
    assert (await verifier.verify(token))["tid"] == "t-1"


async def test_expiry_uses_the_clock_with_bounded_leeway(setup: Any) -> None:
    jwks, clock, verifier = setup
    token = sign(claims(clock), jwks.keys[0])
    clock.advance(600 + 29)
    await verifier.verify(token)
    clock.advance(2)
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(token)


async def test_rotation_new_kid_triggers_one_refetch_and_old_keys_keep_working(setup: Any) -> None:
    jwks, clock, verifier = setup
    old_token = sign(claims(clock), jwks.keys[0])
    await verifier.verify(old_token)
    assert jwks.fetches == 1
    jwks.keys.append(new_signing_key("k2"))  # identity publishes the next key
    clock.advance(10)
    new_token = sign(claims(clock), jwks.keys[1])
    await verifier.verify(new_token)
    assert jwks.fetches == 2
    await verifier.verify(old_token)
    assert jwks.fetches == 2


async def test_forged_kids_cannot_force_a_fetch_per_request(setup: Any) -> None:
    jwks, clock, verifier = setup
    await verifier.verify(sign(claims(clock), jwks.keys[0]))
    stranger = new_signing_key("forged")
    for _ in range(50):
        with pytest.raises(InvalidToken):
            await verifier.verify(sign(claims(clock), stranger))
    assert jwks.fetches == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"iss": "https://evil"}, "issuer"),
        ({"aud": "other"}, "audience"),
        ({"sub": None}, "subject"),
    ],
)
async def test_wrong_claims_are_refused(setup: Any, change: dict[str, Any], reason: str) -> None:
    jwks, clock, verifier = setup
    with pytest.raises(InvalidToken, match=reason):
        await verifier.verify(sign({**claims(clock), **change}, jwks.keys[0]))


async def test_alg_none_and_tampered_payloads_are_refused(setup: Any) -> None:
    jwks, clock, verifier = setup
    token = sign(claims(clock), jwks.keys[0])
    header, payload, signature = token.split(".")
    forged_payload = (
        base64.urlsafe_b64encode(json.dumps({**claims(clock), "sub": "admin"}).encode())
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(InvalidToken):
        await verifier.verify(f"{header}.{forged_payload}.{signature}")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","kid":"k1"}').rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="algorithm"):
        await verifier.verify(f"{none_header}.{payload}.")
    with pytest.raises(InvalidToken):
        await verifier.verify("not-a-token")


class FlakyJwks(Jwks):
    """Identity that can go down."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    async def fetch(self) -> dict[str, Any]:
        document = await super().fetch()
        if self.down:
            raise ConnectionError("identity unreachable")
        return document


def jwks_breaker(clock: FakeClock) -> CircuitBreaker:
    config = BreakerConfig(
        sliding_window_size=2,
        minimum_number_of_calls=2,
        wait_duration_in_open_state=60,
        permitted_calls_in_half_open_state=1,
    )
    return CircuitBreaker("jwks", config, clock=clock.now)


async def test_an_open_breaker_keeps_serving_cached_keys_without_fetching() -> None:
    jwks, clock = FlakyJwks(), FakeClock()
    breaker = jwks_breaker(clock)
    verifier = AccessTokenVerifier(
        JwksCache(jwks.fetch, ttl=300, min_refetch=5, clock=clock, breaker=breaker), clock=clock
    )
    token = sign(claims(clock), jwks.keys[0])
    await verifier.verify(token)
    jwks.down = True
    clock.advance(301)  # the keys are stale: the next request refetches, and fails
    await verifier.verify(token)
    assert (jwks.fetches, breaker.state) == (2, BreakerState.OPEN)
    for _ in range(20):  # stale keys and unknown kids would each refetch: the breaker refuses
        await verifier.verify(token)
        with pytest.raises(InvalidToken, match="unknown signing key"):
            await verifier.verify(sign(claims(clock), new_signing_key("forged")))
        clock.advance(1)
    assert jwks.fetches == 2
    jwks.down = False
    clock.advance(40)  # past the open wait: one trial fetch, and it closes the breaker
    await verifier.verify(token)
    assert (jwks.fetches, breaker.state) == (3, BreakerState.CLOSED)


async def test_an_open_breaker_with_no_keys_yet_refuses_tokens() -> None:
    jwks, clock = FlakyJwks(), FakeClock()
    breaker = jwks_breaker(clock)
    verifier = AccessTokenVerifier(
        JwksCache(jwks.fetch, ttl=300, min_refetch=5, clock=clock, breaker=breaker), clock=clock
    )
    token = sign(claims(clock), jwks.keys[0])
    breaker.force_open()
    with pytest.raises(InvalidToken, match="cannot load signing keys"):
        await verifier.verify(token)
    assert jwks.fetches == 0
    breaker.reset()
    await verifier.verify(token)
    assert jwks.fetches == 1


# A verified token is remembered (the signature check is most of authentication's cost);
# these prove that remembering it never accepts what a fresh check would refuse.


async def test_a_remembered_token_is_refused_once_its_key_is_withdrawn(setup: Any) -> None:
    jwks, clock, verifier = setup
    token = sign(claims(clock), jwks.keys[0])
    await verifier.verify(token)
    jwks.keys = [new_signing_key("k2")]  # k1 withdrawn (say, after a compromise)
    clock.advance(301)  # past the JWKS cache's TTL: the next call refetches
    with pytest.raises(InvalidToken, match="unknown signing key"):
        await verifier.verify(token)


async def test_a_remembered_token_is_checked_again_when_its_kid_gets_a_new_key(
    setup: Any,
) -> None:
    jwks, clock, verifier = setup
    token = sign(claims(clock), jwks.keys[0])
    await verifier.verify(token)
    jwks.keys = [new_signing_key("k1")]  # same kid, other key material
    clock.advance(301)
    with pytest.raises(InvalidToken, match="bad signature"):
        await verifier.verify(token)


async def test_a_remembered_token_gives_each_caller_its_own_claims(setup: Any) -> None:
    jwks, clock, verifier = setup
    token = sign(claims(clock, tid="t-1"), jwks.keys[0])
    first = await verifier.verify(token)
    first["tid"] = "t-2"
    assert (await verifier.verify(token))["tid"] == "t-1"


async def test_the_memory_of_verified_tokens_is_bounded(setup: Any) -> None:
    jwks, clock, _ = setup
    cache = JwksCache(jwks.fetch, ttl=300, min_refetch=5, clock=clock)
    verifier = AccessTokenVerifier(cache, clock=clock, verified_cache_size=2)
    tokens = [sign(claims(clock, jti=f"j{i}"), jwks.keys[0]) for i in range(3)]
    for token in tokens:
        await verifier.verify(token)
    assert list(verifier._verified) == tokens[1:]  # the oldest was forgotten
