"""The OIDC relying party of enterprise SSO: the authorization code flow with PKCE (S256),
state and nonce, against the IdP a tenant configured.

Every byte to or from the IdP goes through tenantry_outbound's `OutboundClient` (the issuer
URL is tenant-chosen, so it is an SSRF vector like any other; DESIGN: one outbound client).
authlib's own HTTP clients are not used (their httpx integration is moving, FIELD-NOTES),
nor its JWKS cache (it lives as long as the client and refetches only on an unknown kid;
ours has a TTL so a revoked key goes away). authlib does the pieces that are pure: PKCE
(`create_s256_code_challenge`), random tokens (`generate_token`), discovery document rules
(`OpenIDProviderMetadata`) and ID token claims rules (`CodeIDToken`: iss, aud, exp, iat,
nbf, nonce, azp, at_hash). joserfc verifies signatures, always with an explicit algorithm
allow-list and a key we picked ourselves, so "none", HS* (the client secret is shared with
the IdP, so an HMAC proves nothing about who minted the token) and key confusion never
reach a verifier. Keys come only from the discovered jwks_uri: jku, x5u and jwk headers in
a token are never followed.

Caches (per process, keyed by issuer and by jwks_uri; each has a lock so concurrent logins
make one fetch):

- Discovery documents live `metadata_ttl` seconds. A failed fetch is not cached.
- JWKS live `jwks_ttl` seconds and are refetched after that even when every kid is known.
  Stale keys are never used, not even when the refetch fails: the login fails instead
  ("idp-unreachable"), because a key the IdP withdrew must stop verifying.
- A token naming a kid we do not have triggers one refetch, but only if the last fetch of
  that JWKS (successful or not) is at least `jwks_min_refetch_interval` seconds old: forged
  kids must not turn into a flood of requests to the IdP. A rotation seen within that window
  of the previous fetch fails once with "unknown-certificate"; the next attempt succeeds.

Time comes from the injected clock only (TTLs, exp/iat/nbf with `leeway`). The pure checks
(JSON answers, JWKS documents, signatures, claims) are in oidc_messages.py.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote, urlencode, urlsplit

import msgspec
from authlib.common.security import generate_token  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]
from authlib.oidc.core import CodeIDToken  # type: ignore[import-untyped]
from authlib.oidc.discovery import (  # type: ignore[import-untyped]
    OpenIDProviderMetadata,
    get_well_known_url,
)
from joserfc.errors import (
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import Key, KeySet
from joserfc.jws import extract_compact

from tenantry_outbound.outbound import (
    BlockedDestination,
    BreakerOpen,
    OutboundClient,
    OutboundError,
    OutboundResponse,
    OutboundTimeout,
)
from tenantry_platform.clock import Clock

from .domain import IdpIdentity, LoginRefused, as_attribute_lists
from .oidc_messages import (
    attribute_claims,
    candidate_keys,
    claim_refusal,
    clip,
    json_object,
    jws_registry,
    oauth_error,
    redact,
    signing_key_set,
    strings,
    unreachable_status,
    verify_signature,
    with_query_params,
)

__all__ = [
    "SIGNATURE_ALGORITHMS",
    "OidcAuthorization",
    "OidcConnectionConfig",
    "OidcRelyingParty",
    "ProviderMetadata",
]

SIGNATURE_ALGORITHMS: Final = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "EdDSA",
        "Ed25519",
    }
)
"""The ID token algorithms a connection may allow: asymmetric only. Not "none", not HS*
(the client secret is shared, so an HMAC does not prove the IdP minted the token), not
Ed448 (authlib's at_hash check would hash it with SHA-512 instead of SHAKE256)."""

# Gateway statuses: the IdP is not there (the user is told to try again shortly).
_UNAVAILABLE: Final = frozenset({502, 503, 504})
_TOKEN_CHARS: Final = 43  # base62: 43 * log2(62) ≈ 256 bits (>= 128 required)
_VERIFIER_CHARS: Final = 64  # RFC 7636: 43..128 unreserved characters
# authlib checks these URLs with `is_secure_transport`, which the AUTHLIB_INSECURE_TRANSPORT
# environment variable switches off and which knows nothing of our policy: we check them.
_URL_KEYS: Final = frozenset(
    {"issuer", "authorization_endpoint", "token_endpoint", "jwks_uri", "registration_endpoint"}
)


class OidcConnectionConfig(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's OIDC connection, as the relying party needs it."""

    issuer: str
    client_id: str
    client_secret: str  # already decrypted by the caller
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    token_endpoint_auth_method: Literal["client_secret_basic", "client_secret_post"] = (
        "client_secret_basic"  # noqa: S105 - a method name, not a secret
    )
    allowed_algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")

    def __post_init__(self) -> None:
        # Refused when the connection is built, so a bad config never reaches a login.
        if not self.issuer or not self.client_id:
            raise ValueError("issuer and client_id are required")
        if "openid" not in self.scopes:
            raise ValueError('scopes must include "openid" (no ID token without it)')
        if not self.allowed_algorithms:
            raise ValueError("allowed_algorithms must not be empty")
        refused = [a for a in self.allowed_algorithms if a not in SIGNATURE_ALGORITHMS]
        if refused:
            raise ValueError(
                f"ID token algorithms {refused} are not allowed; choose from "
                f"{sorted(SIGNATURE_ALGORITHMS)} (never none or HS*: the secret is shared)"
            )


class OidcAuthorization(msgspec.Struct, frozen=True, kw_only=True):
    """Where to send the browser, and what the caller keeps (server side, bound to the
    browser) until the IdP sends it back: state, nonce and the PKCE verifier."""

    url: str
    state: str
    nonce: str
    code_verifier: str


class ProviderMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """The parts of an IdP's discovery document we use, checked."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    code_challenge_methods_supported: tuple[str, ...] | None = None
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ("client_secret_basic",)
    authorization_response_iss_parameter_supported: bool = False


@dataclass
class _CachedMetadata:
    value: ProviderMetadata
    fetched_at: float


@dataclass
class _CachedJwks:
    keys: KeySet | None = None
    fetched_at: float = -math.inf  # last successful fetch
    attempted_at: float = -math.inf  # last fetch, successful or not


class OidcRelyingParty:
    """Begins and finishes OIDC logins for any number of connections. One per process
    (it holds the discovery and JWKS caches); safe for concurrent use in one event loop."""

    def __init__(
        self,
        client: OutboundClient,
        *,
        clock: Clock,
        metadata_ttl: float = 3600.0,
        jwks_ttl: float = 3600.0,
        leeway: float = 60.0,
        jwks_min_refetch_interval: float = 10.0,
    ) -> None:
        if metadata_ttl <= 0 or jwks_ttl <= 0 or leeway < 0 or jwks_min_refetch_interval < 0:
            raise ValueError("TTLs must be positive, leeway and interval not negative")
        if jwks_min_refetch_interval > jwks_ttl:
            raise ValueError("jwks_min_refetch_interval must not exceed jwks_ttl")
        self._client = client
        self._clock = clock
        self._metadata_ttl = metadata_ttl
        self._jwks_ttl = jwks_ttl
        self._leeway = leeway
        self._min_refetch = jwks_min_refetch_interval
        self._metadata: dict[str, _CachedMetadata] = {}
        self._jwks: dict[str, _CachedJwks] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- discovery ---------------------------------------------------------------------

    async def discover(self, issuer: str) -> ProviderMetadata:
        """The IdP's checked discovery document, cached for `metadata_ttl` seconds.

        The document must name exactly `issuer` (a mix-up defence: a document served at
        one issuer must not speak for another), its endpoints must use a scheme the outbound
        policy allows (https unless it allows http), it must support the code flow and, if
        it lists PKCE methods, S256. Raises LoginRefused "idp-unreachable", "malformed" or
        "wrong-issuer".
        """
        cached = self._metadata.get(issuer)
        if cached is not None and self._clock.now() - cached.fetched_at < self._metadata_ttl:
            return cached.value
        async with self._lock(f"discovery {issuer}"):
            cached = self._metadata.get(issuer)  # another login may have fetched meanwhile
            if cached is not None and self._clock.now() - cached.fetched_at < self._metadata_ttl:
                return cached.value
            url = get_well_known_url(issuer, external=True)
            what = "discovery document"
            response = await self._call("GET", url, issuer=issuer, what=what)
            if response.status != 200:
                raise unreachable_status(what, url, response.status)
            metadata = self._check_metadata(issuer, json_object(response, what))
            self._metadata[issuer] = _CachedMetadata(metadata, self._clock.now())
            return metadata

    def _check_metadata(self, issuer: str, doc: dict[str, Any]) -> ProviderMetadata:
        named = doc.get("issuer")
        if named != issuer:
            raise LoginRefused(
                "wrong-issuer",
                clip(f"discovery document names issuer {named!r}, expected {issuer!r}"),
            )
        # authlib's rules for every other field (required fields, array types, RS256 among
        # the signing algorithms, ...); the URL fields are ours, checked below.
        spec = OpenIDProviderMetadata(doc)
        try:
            for key in spec.REGISTRY_KEYS:
                if key not in _URL_KEYS:
                    getattr(spec, f"validate_{key}")()
        except (ValueError, TypeError, AttributeError) as exc:  # a field of the wrong type
            raise LoginRefused("malformed", clip(f"discovery document: {exc}")) from exc
        self._check_url("issuer", issuer, issuer=True)
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            self._check_url(key, doc.get(key))
        for key in ("userinfo_endpoint", "end_session_endpoint", "registration_endpoint"):
            if doc.get(key) is not None:
                self._check_url(key, doc.get(key))
        response_types = strings(doc, "response_types_supported") or ()
        if "code" not in response_types:
            raise LoginRefused("malformed", "discovery document: the code flow is not supported")
        grant_types = strings(doc, "grant_types_supported")
        if grant_types is not None and "authorization_code" not in grant_types:
            raise LoginRefused(
                "malformed", "discovery document: the authorization_code grant is not supported"
            )
        pkce = strings(doc, "code_challenge_methods_supported")
        if pkce is not None and "S256" not in pkce:
            raise LoginRefused(
                "malformed", clip(f"discovery document: PKCE S256 is not supported ({pkce})")
            )
        return ProviderMetadata(
            issuer=issuer,
            authorization_endpoint=doc["authorization_endpoint"],
            token_endpoint=doc["token_endpoint"],
            jwks_uri=doc["jwks_uri"],
            userinfo_endpoint=doc.get("userinfo_endpoint"),
            end_session_endpoint=doc.get("end_session_endpoint"),
            code_challenge_methods_supported=pkce,
            id_token_signing_alg_values_supported=(
                strings(doc, "id_token_signing_alg_values_supported") or ()
            ),
            token_endpoint_auth_methods_supported=(
                strings(doc, "token_endpoint_auth_methods_supported") or ("client_secret_basic",)
            ),
            authorization_response_iss_parameter_supported=(
                doc.get("authorization_response_iss_parameter_supported") is True
            ),
        )

    def _check_url(self, name: str, value: object, *, issuer: bool = False) -> None:
        schemes = self._client.policy.schemes
        try:
            parts = urlsplit(value) if isinstance(value, str) else None
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in schemes
            or not parts.hostname
            or parts.fragment
            or (issuer and parts.query)
        ):
            allowed = " or ".join(sorted(schemes))
            raise LoginRefused(
                "malformed",
                clip(f"discovery document: {name} {value!r} is not an absolute {allowed} URL"),
            )

    # -- the authorization request ---------------------------------------------------------

    async def begin(
        self,
        conf: OidcConnectionConfig,
        redirect_uri: str,
        *,
        login_hint: str | None = None,
    ) -> OidcAuthorization:
        """The URL to send the browser to: response_type=code with PKCE S256, a fresh state
        (login CSRF) and nonce (ID token replay), 256 bits each. The caller must keep state,
        nonce and code_verifier server-side for `finish`; only state travels in the URL."""
        metadata = await self.discover(conf.issuer)
        state = generate_token(_TOKEN_CHARS)
        nonce = generate_token(_TOKEN_CHARS)
        verifier = generate_token(_VERIFIER_CHARS)
        params = [
            ("response_type", "code"),
            ("client_id", conf.client_id),
            ("redirect_uri", redirect_uri),
            ("scope", " ".join(conf.scopes)),
            ("state", state),
            ("nonce", nonce),
            ("code_challenge", create_s256_code_challenge(verifier)),
            ("code_challenge_method", "S256"),
        ]
        if login_hint:
            params.append(("login_hint", login_hint))
        return OidcAuthorization(
            url=with_query_params(metadata.authorization_endpoint, params),
            state=state,
            nonce=nonce,
            code_verifier=verifier,
        )

    # -- the callback ------------------------------------------------------------------------

    async def finish(
        self,
        conf: OidcConnectionConfig,
        redirect_uri: str,
        *,
        params: Mapping[str, str],
        expected_state: str,
        nonce: str,
        code_verifier: str,
    ) -> IdpIdentity:
        """The identity the IdP vouches for, from the callback's query `params`.

        Order: an error= from the IdP; the state (constant time); RFC 9207's iss parameter
        when present or promised; the code exchange; the ID token (algorithm allow-list,
        signature, then claims); userinfo when the ID token has no email.

        An at_hash that does not match the access token is refused as "bad-signature": the
        signed token does not vouch for the access token we were given (a substituted
        token), an integrity failure rather than a parse failure.
        """
        error = params.get("error")
        if error is not None:
            description = params.get("error_description")
            detail = f"{error}: {description}" if description else error
            raise LoginRefused("idp-error", clip(f"the IdP answered {detail}"))
        if not expected_state or not nonce or not code_verifier:
            # An empty expected state would match a callback without one.
            raise LoginRefused("unknown-request", "no login in progress for this callback")
        state = params.get("state", "")
        if not hmac.compare_digest(state.encode(), expected_state.encode()):
            raise LoginRefused("unknown-request", "state does not match the login in progress")
        metadata = await self.discover(conf.issuer)
        iss = params.get("iss")
        if iss is not None and iss != conf.issuer:
            raise LoginRefused("wrong-issuer", clip(f"callback iss {iss!r} is not the issuer"))
        if iss is None and metadata.authorization_response_iss_parameter_supported:
            raise LoginRefused("wrong-issuer", "callback lacks the iss the IdP promises")
        code = params.get("code")
        if not code:
            raise LoginRefused("malformed", "callback has neither code nor error")

        id_token, access_token = await self._exchange(
            conf, metadata, redirect_uri, code, code_verifier
        )
        claims = await self._verify_id_token(conf, metadata, id_token, nonce, access_token)
        if "email" not in claims and metadata.userinfo_endpoint is not None:
            claims = await self._merge_userinfo(metadata, claims, access_token)
        sid = claims.get("sid")
        return IdpIdentity(
            subject=claims["sub"],
            attributes=as_attribute_lists(attribute_claims(claims)),
            session_index=sid if isinstance(sid, str) else None,
        )

    async def _exchange(
        self,
        conf: OidcConnectionConfig,
        metadata: ProviderMetadata,
        redirect_uri: str,
        code: str,
        code_verifier: str,
    ) -> tuple[str, str]:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        if conf.token_endpoint_auth_method == "client_secret_basic":  # noqa: S105
            # RFC 6749 2.3.1: both halves form-encoded before base64.
            pair = f"{quote(conf.client_id, safe='')}:{quote(conf.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = conf.client_id
            form["client_secret"] = conf.client_secret
        what = "token endpoint"
        response = await self._call(
            "POST",
            metadata.token_endpoint,
            issuer=conf.issuer,
            what=what,
            headers=headers,
            content=urlencode(form),
        )
        if response.status in _UNAVAILABLE:
            raise unreachable_status(what, metadata.token_endpoint, response.status)
        if response.status != 200:
            detail = f"token endpoint answered {response.status}{oauth_error(response)}"
            raise LoginRefused("token-exchange-failed", clip(redact(detail, conf.client_secret)))
        body = json_object(response, "token response")
        id_token, access_token = body.get("id_token"), body.get("access_token")
        if not isinstance(id_token, str) or not id_token:
            raise LoginRefused("malformed", "token response has no id_token")
        if not isinstance(access_token, str) or not access_token:
            raise LoginRefused("malformed", "token response has no access_token")
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise LoginRefused("malformed", clip(f"token_type {token_type!r} is not Bearer"))
        return id_token, access_token

    # -- the ID token --------------------------------------------------------------------------

    async def _verify_id_token(
        self,
        conf: OidcConnectionConfig,
        metadata: ProviderMetadata,
        token: str,
        nonce: str,
        access_token: str,
    ) -> dict[str, Any]:
        segments = token.count(".") + 1
        if segments == 5:
            raise LoginRefused("malformed", "encrypted ID tokens (JWE) are not supported")
        if segments != 3:
            raise LoginRefused("malformed", "ID token is not a compact JWS")
        try:
            header = extract_compact(token.encode(), registry=jws_registry(None)).headers()
        except (JoseError, ValueError) as exc:  # bad base64 or JSON, oversized parts
            raise LoginRefused("malformed", clip(f"ID token cannot be parsed: {exc}")) from exc
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
            raise LoginRefused("malformed", "ID token header has no usable alg or kid")
        if alg not in conf.allowed_algorithms:
            raise LoginRefused(
                "deprecated-algorithm",
                clip(
                    f"ID token is signed with {alg!r}, which this connection does not accept "
                    f"(allowed: {', '.join(conf.allowed_algorithms)})"
                ),
            )
        candidates = await self._signing_keys(metadata, kid, alg)
        decoded = verify_signature(token, alg, candidates, kid)
        claims = decoded.claims
        # Ed25519 (RFC 9864) is EdDSA on Ed25519: authlib's at_hash knows only the old name.
        claims_header = {**decoded.header, "alg": "EdDSA" if alg == "Ed25519" else alg}
        id_token = CodeIDToken(
            claims,
            claims_header,
            options={
                "iss": {"essential": True, "value": conf.issuer},
                "aud": {"essential": True, "value": conf.client_id},
            },
            params={"nonce": nonce, "client_id": conf.client_id, "access_token": access_token},
        )
        try:
            id_token.validate(now=self._clock.now(), leeway=self._leeway)
        except (ExpiredTokenError, InvalidClaimError, MissingClaimError) as exc:
            raise claim_refusal(exc, claims) from exc
        except JoseError as exc:
            raise LoginRefused("malformed", clip(f"ID token claims: {exc}")) from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise LoginRefused("malformed", "ID token has no sub")
        return claims

    async def _signing_keys(
        self, metadata: ProviderMetadata, kid: str | None, alg: str
    ) -> list[Key]:
        keys = await self._key_set(metadata, refetch=False)
        candidates = candidate_keys(keys, kid, alg)
        if candidates is None:
            keys = await self._key_set(metadata, refetch=True)
            candidates = candidate_keys(keys, kid, alg)
        if candidates is None:
            which = f"key {kid!r}" if kid is not None else f"{alg} key"
            raise LoginRefused(
                "unknown-certificate",
                clip(f"no {which} in the IdP's JWKS at {metadata.jwks_uri}"),
            )
        if not candidates:
            raise LoginRefused(
                "bad-signature",
                clip(f"key {kid!r} of the IdP's JWKS cannot verify {alg} (type, alg or use)"),
            )
        return candidates

    async def _key_set(self, metadata: ProviderMetadata, *, refetch: bool) -> KeySet:
        """The IdP's keys: cached ones while younger than `jwks_ttl`; with `refetch` (a kid
        we do not know), new ones unless the last fetch is under the minimum interval old."""
        uri = metadata.jwks_uri
        entry = self._jwks.get(uri)
        if not refetch and entry is not None and self._fresh(entry):
            assert entry.keys is not None
            return entry.keys
        async with self._lock(f"jwks {uri}"):
            entry = self._jwks.setdefault(uri, _CachedJwks())
            now = self._clock.now()
            if self._fresh(entry) and (not refetch or now - entry.attempted_at < self._min_refetch):
                # Fresh and not asked to refetch, or refetched by a concurrent login or too
                # recently to ask again.
                assert entry.keys is not None
                return entry.keys
            if now - entry.attempted_at < self._min_refetch:
                raise LoginRefused(
                    "idp-unreachable",
                    clip(
                        f"JWKS at {uri} failed {now - entry.attempted_at:.0f}s ago; not retried yet"
                    ),
                )
            entry.attempted_at = now
            what = "JWKS"
            response = await self._call("GET", uri, issuer=metadata.issuer, what=what)
            if response.status != 200:
                raise unreachable_status(what, uri, response.status)
            entry.keys = signing_key_set(json_object(response, what), uri)
            entry.fetched_at = self._clock.now()
            return entry.keys

    def _fresh(self, entry: _CachedJwks) -> bool:
        return entry.keys is not None and self._clock.now() - entry.fetched_at < self._jwks_ttl

    # -- userinfo ------------------------------------------------------------------------------

    async def _merge_userinfo(
        self, metadata: ProviderMetadata, claims: dict[str, Any], access_token: str
    ) -> dict[str, Any]:
        """ID token claims plus userinfo's (many IdPs, oidc-provider by default, send email
        only there). The signed ID token wins where both have a claim."""
        url = metadata.userinfo_endpoint
        assert url is not None
        what = "userinfo endpoint"
        response = await self._call(
            "GET",
            url,
            issuer=metadata.issuer,
            what=what,
            headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
        )
        if response.status in _UNAVAILABLE:
            raise unreachable_status(what, url, response.status)
        if response.status != 200:
            raise LoginRefused("idp-error", clip(f"userinfo endpoint answered {response.status}"))
        if response.headers.get("content-type", "").lower().startswith("application/jwt"):
            raise LoginRefused("malformed", "signed or encrypted userinfo is not supported")
        info = json_object(response, "userinfo response")
        sub = info.get("sub")
        if not isinstance(sub, str):
            raise LoginRefused("malformed", "userinfo response has no sub")
        if sub != claims["sub"]:
            # OIDC Core 5.3.2: the response is about someone else (token substitution).
            raise LoginRefused(
                "wrong-issuer",
                clip(f"userinfo sub {sub!r} is not the ID token's sub {claims['sub']!r}"),
            )
        return {**info, **claims}

    # -- plumbing --------------------------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _call(
        self,
        method: str,
        url: str,
        *,
        issuer: str,
        what: str,
        headers: dict[str, str] | None = None,
        content: str | None = None,
    ) -> OutboundResponse:
        """One request to the IdP through the outbound client and the IdP's breaker; every
        way of not getting an answer becomes "idp-unreachable"."""
        try:
            return await self._client.request(
                method, url, headers=headers, content=content, breaker_key=f"oidc:{issuer}"
            )
        except BlockedDestination as exc:
            detail = f"destination refused ({exc.reason}): {what} at {url}"
        except BreakerOpen as exc:
            wait = f"; retry in {exc.retry_after:.0f}s" if exc.retry_after is not None else ""
            detail = f"circuit breaker open for {issuer}{wait} ({what})"
        except OutboundTimeout as exc:
            detail = f"{what} at {url} timed out ({exc.phase})"
        except OutboundError as exc:
            detail = f"{what} at {url}: {exc}"
        raise LoginRefused("idp-unreachable", clip(detail))
