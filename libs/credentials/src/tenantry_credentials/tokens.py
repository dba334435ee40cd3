"""Access tokens: Ed25519-signed JWTs (alg Ed25519, RFC 9864) issued by identity and
verified locally by every service against identity's JWKS, cached with a TTL and refetched
on an unknown `kid`. Fetches go through a circuit breaker, so an identity outage costs
each request nothing once the breaker is open: the cached keys keep verifying tokens.

Claims: iss, aud, sub (account id), tid (tenant id, absent for operators), kind
("user" | "operator"), roles, scope (space-separated), ev (email verified), sid (session
family), jti, iat, nbf, exp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey

from tenantry_platform.clock import Clock, SystemClock
from tenantry_resilience import BreakerConfig, CircuitBreaker

# RFC 9864 names the fully-specified algorithm "Ed25519" (the polymorphic "EdDSA" is deprecated).
ALGORITHM = "Ed25519"
ISSUER = "https://tenantry.dev/identity"
AUDIENCE = "tenantry"


class InvalidToken(Exception):
    """The token is not one we accept; the message says why (never echo the token)."""


def new_signing_key(kid: str) -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": kid, "use": "sig", "alg": ALGORITHM})


def sign(claims: dict[str, Any], key: OKPKey) -> str:
    header = {"alg": ALGORITHM, "kid": key.kid}
    return jwt.encode(header, claims, key, algorithms=[ALGORITHM])


JwksFetcher = Callable[[], Awaitable[dict[str, Any]]]

JWKS_BREAKER = BreakerConfig(
    # Fetches are rare (a TTL, a rotation), so a few failures in a row are the signal.
    sliding_window_size=10,
    minimum_number_of_calls=3,
    failure_rate_threshold=50.0,
    slow_call_duration_threshold=5.0,
    slow_call_rate_threshold=100.0,
    # Keys rotate on a scale of days: cached keys stay good while identity recovers.
    wait_duration_in_open_state=30.0,
    permitted_calls_in_half_open_state=1,
)
"""The default breaker config of `JwksCache` (named "jwks")."""


class JwksCache:
    """Identity's public keys. Refreshed after `ttl` seconds, and at once when a token names
    a kid we do not know (a rotation), but at most every `min_refetch` seconds so a flood of
    forged kids cannot turn into a flood of fetches.

    A fetch that fails, or that `breaker` refuses (by default its own, named "jwks", with
    `JWKS_BREAKER`, timed by `clock`), keeps the cached keys; only a cache that never got
    keys raises `InvalidToken`."""

    def __init__(
        self,
        fetch: JwksFetcher,
        *,
        ttl: float = 300.0,
        min_refetch: float = 1.0,
        clock: Clock | None = None,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._clock = clock or SystemClock()
        self.breaker = breaker or CircuitBreaker("jwks", JWKS_BREAKER, clock=self._clock.now)
        self._keys: KeySet | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key_set(self, kid: str | None) -> KeySet:
        now = self._clock.now()
        stale = now - self._fetched_at > self._ttl
        unknown = self._keys is None or (kid is not None and not self._has(kid))
        if stale or (unknown and now - self._fetched_at > self._min_refetch):
            async with self._lock:
                if self._clock.now() - self._fetched_at > min(self._ttl, self._min_refetch) or (
                    self._keys is None
                ):
                    await self._refresh()
        if self._keys is None:
            raise InvalidToken("signing keys are not available")
        return self._keys

    def _has(self, kid: str) -> bool:
        assert self._keys is not None
        return any(k.kid == kid for k in self._keys.keys)

    async def _refresh(self) -> None:
        try:
            async with self.breaker.guard():  # raises CallNotPermitted while open
                document = await self._fetch()
                keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except Exception as exc:
            if self._keys is None:
                raise InvalidToken(f"cannot load signing keys: {type(exc).__name__}") from exc
            return  # keep serving with the keys we have
        self._keys = keys
        self._fetched_at = self._clock.now()


class AccessTokenVerifier:
    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str = ISSUER,
        audience: str = AUDIENCE,
        leeway: float = 30.0,
        clock: Clock | None = None,
        verified_cache_size: int = 4096,
    ) -> None:
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._clock = clock or SystemClock()
        # token -> (kid, key, claims) of tokens whose signature checked out. The Ed25519
        # check is most of what authenticating a request costs (a fifth of a small
        # request's CPU); the same bytes verify the same way against the same key, so a
        # client that reuses its token pays it once. Time-dependent checks (exp, nbf) and
        # the key still being published run on every call, and only good signatures are
        # cached, so a forger cannot fill it. Insertion order makes the eviction FIFO.
        self._verified: dict[str, tuple[str, Any, dict[str, Any]]] = {}
        self._verified_cache_size = verified_cache_size

    async def verify(self, token: str) -> dict[str, Any]:
        cached = self._verified.get(token)
        if cached is not None:
            known_kid, known_key, known_claims = cached
            keys = await self._jwks.key_set(known_kid)
            if any(k.kid == known_kid and k is known_key for k in keys.keys):
                return dict(self._checked(known_claims))  # a copy: callers may not edit the cache
            del self._verified[token]  # the key was withdrawn or replaced: verify afresh
        kid = _unverified_kid(token)
        keys = await self._jwks.key_set(kid)
        key = next((k for k in keys.keys if k.kid == kid), None) if kid is not None else None
        if kid is None or key is None:
            raise InvalidToken("unknown signing key")
        try:
            decoded = jwt.decode(token, keys, algorithms=[ALGORITHM])
        except (JoseError, ValueError) as exc:
            raise InvalidToken("bad signature or malformed token") from exc
        claims = self._checked(decoded.claims)
        if self._verified_cache_size > 0:
            if len(self._verified) >= self._verified_cache_size:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = (kid, key, claims)
        return dict(claims)

    def _checked(self, claims: dict[str, Any]) -> dict[str, Any]:
        """The claims, if they hold now (issuer, audience, time window, subject)."""
        now = self._clock.now()
        if claims.get("iss") != self._issuer:
            raise InvalidToken("wrong issuer")
        audience = claims.get("aud")
        if audience != self._audience and not (
            isinstance(audience, list) and self._audience in audience
        ):
            raise InvalidToken("wrong audience")
        exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
        if not isinstance(exp, int | float) or now > exp + self._leeway:
            raise InvalidToken("token expired")
        if isinstance(nbf, int | float) and now + self._leeway < nbf:
            raise InvalidToken("token not valid yet")
        if not isinstance(claims.get("sub"), str):
            raise InvalidToken("token has no subject")
        return claims


def _unverified_kid(token: str) -> str | None:
    import base64
    import json

    try:
        header_b64 = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    except (ValueError, IndexError):
        raise InvalidToken("malformed token") from None
    if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
        raise InvalidToken("algorithm not allowed")
    kid = header.get("kid")
    return kid if isinstance(kid, str) else None


def unverified_issuer(token: str) -> str | None:
    """The `iss` a token claims, read without checking it: enough to send the request to
    the region that can check it (docs/residency.md), never to trust anything."""
    import base64
    import json

    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 8192:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    issuer = claims.get("iss") if isinstance(claims, dict) else None
    return issuer if isinstance(issuer, str) else None
