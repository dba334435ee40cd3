"""The OIDC relying party against a small fake provider served on loopback.

The fake exists to hit edge cases precisely (forged algorithms, rotations, clock skew, a
userinfo that names someone else); conformance against a certified provider is the job of
the end-to-end tests with Node's oidc-provider. It is a real HTTP server (uvicorn in the
test's event loop on 127.0.0.1), reached through tenantry_outbound's client with loopback
allow-listed, so the relying party's requests are real requests. Its ID tokens are signed
with keys made by `cryptography` and joserfc; at_hash and the PKCE check are computed here
with hashlib, not with the library under test.

Time is one FakeClock shared by the provider (it mints iat/exp from it) and the relying
party (TTLs, exp/iat checks).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import secrets
import ssl
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import httpcore
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwt
from joserfc.errors import SecurityWarning
from joserfc.jwk import ECKey, Key, KeyParameters, OctKey, OKPKey, RSAKey

from tenantry_identity.sso.domain import IdpIdentity, LoginRefused
from tenantry_identity.sso.oidc import (
    OidcAuthorization,
    OidcConnectionConfig,
    OidcRelyingParty,
)
from tenantry_outbound.outbound import OutboundClient, OutboundPolicy
from tenantry_platform.clock import Clock, FakeClock
from tenantry_resilience import BreakerConfig, BreakerRegistry
from tenantry_resilience.testing import ManualClock
from tenantry_testkit.asgi import (
    Receive,
    Scope,
    Send,
    free_port,
    lifespan,
    read_request,
    reply,
    serve,
)
from tenantry_testkit.tls import write_tls_files

pytestmark = pytest.mark.timeout(60)

LOOPBACK = OutboundPolicy(allow_networks=["127.0.0.0/8"], allow_http=True)
CLIENT_ID = "tenantry-acme"
CLIENT_SECRET = "s3cret/with+odd:chars-" + "x" * 24
REDIRECT_URI = "https://acme.tenantry.test/v1/sso/oidc/callback"
SUBJECT = "00u-ada-1815"
EMAIL = "ada@acme.example"
REALM = "/realms/acme"
DELETE = object()
"""An override value that removes the claim, header or discovery field."""


# ---------------------------------------------------------------- keys


def _pem(private_key: Any) -> bytes:
    data: bytes = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return data


@functools.cache
def make_key(kind: str, kid: str) -> Key:
    """A private signing key made by `cryptography`, as a joserfc key with `kid`. Cached:
    RSA generation is slow, and tests only need distinct kids."""
    params: KeyParameters = {"kid": kid, "use": "sig"}
    if kind == "RSA":
        return RSAKey.import_key(
            _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)), params
        )
    if kind == "EC":
        return ECKey.import_key(_pem(ec.generate_private_key(ec.SECP256R1())), params)
    if kind == "Ed25519":
        return OKPKey.import_key(_pem(ed25519.Ed25519PrivateKey.generate()), params)
    raise ValueError(kind)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def half_hash(value: str, alg: str) -> str:
    """OIDC Core 3.1.3.6: the left half of the hash that matches the signature's alg."""
    digest = hashlib.sha512 if alg == "EdDSA" else getattr(hashlib, f"sha{alg[2:]}")
    full = digest(value.encode()).digest()
    return b64url(full[: len(full) // 2])


def unsigned_token(claims: dict[str, Any]) -> str:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64url(json.dumps(claims).encode())}."


# ---------------------------------------------------------------- the fake provider


@dataclass
class Grant:
    client_id: str
    redirect_uri: str
    nonce: str
    challenge: str
    scope: str
    login_hint: str | None
    used: bool = False


@dataclass
class Seen:
    headers: dict[str, str]
    form: dict[str, str]


@dataclass
class FakeProvider:
    """An OpenID provider that does just enough, and does what a test tells it to."""

    clock: FakeClock
    tls: tuple[Path, Path, Path] | None = None  # cert, key, CA
    port: int = 0
    auth_method: str = "client_secret_basic"
    alg: str = "RS256"
    signing_kid: str = "rsa-1"
    keys: dict[str, Key] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    discovery_overrides: dict[str, Any] = field(default_factory=dict)
    claims_overrides: dict[str, Any] = field(default_factory=dict)
    header_overrides: dict[str, Any] = field(default_factory=dict)
    mint: Callable[[dict[str, Any], dict[str, Any]], str] | None = None
    token_response: tuple[int, bytes] | None = None
    id_token_email: bool = True
    userinfo: dict[str, Any] | None = None
    iss_in_callback: bool = False
    codes: dict[str, Grant] = field(default_factory=dict)
    access_tokens: dict[str, Grant] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    token_requests: list[Seen] = field(default_factory=list)
    userinfo_tokens: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.base + REALM

    def add_key(self, kind: str, kid: str, *, publish: bool = True) -> Key:
        key = make_key(kind, kid)
        self.keys[kid] = key
        if publish and kid not in self.published:
            self.published.append(kid)
        return key

    def discovery(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "userinfo_endpoint": f"{self.issuer}/userinfo",
            "scopes_supported": ["openid", "email", "profile"],
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256", "EdDSA"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
        }
        return _apply(doc, self.discovery_overrides)

    def id_token(self, grant: Grant, access_token: str) -> str:
        now = int(self.clock.now())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": SUBJECT,
            "aud": grant.client_id,
            "exp": now + 300,
            "iat": now,
            "auth_time": now - 5,
            "nonce": grant.nonce,
            "at_hash": half_hash(access_token, self.alg),
            "sid": "session-7",
            "email": EMAIL,
            "email_verified": True,
            "name": "Ada Lovelace",
            "groups": ["eng", "ops"],
            "address": {"country": "GB"},
        }
        if not self.id_token_email:
            del claims["email"]
        claims = _apply(claims, self.claims_overrides)
        header = _apply({"alg": self.alg, "kid": self.signing_kid}, self.header_overrides)
        if self.mint is not None:
            return self.mint(header, claims)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)  # EdDSA
            return jwt.encode(header, claims, self.keys[self.signing_kid], algorithms=[self.alg])

    # -- HTTP ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        request = await read_request(scope, receive)
        query = dict(parse_qsl(request.query_string))
        path = request.path.removeprefix(REALM)
        self.hits[path] += 1
        status, extra, payload = self._route(path, request.headers, query, request.body)
        await reply(send, status, payload, extra)

    def _route(
        self, path: str, headers: dict[str, str], query: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if path == "/.well-known/openid-configuration":
            return _json(200, self.discovery())
        if path == "/jwks":
            keys = [self.keys[kid].as_dict(private=False) for kid in self.published]
            return _json(200, {"keys": keys})
        if path == "/authorize":
            return self._authorize(query)
        if path == "/token":
            return self._token(headers, dict(parse_qsl(body.decode())))
        if path == "/userinfo":
            token = headers.get("authorization", "").removeprefix("Bearer ")
            if token not in self.access_tokens:
                return _json(401, {"error": "invalid_token"})
            self.userinfo_tokens.append(token)
            info = self.userinfo or {"sub": SUBJECT, "email": EMAIL, "email_verified": True}
            return _json(200, info)
        return _json(404, {"error": "not_found"})

    def _authorize(self, query: dict[str, str]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            return _json(400, {"error": "invalid_request"})
        code = secrets.token_urlsafe(16)
        self.codes[code] = Grant(
            client_id=query["client_id"],
            redirect_uri=query["redirect_uri"],
            nonce=query["nonce"],
            challenge=query["code_challenge"],
            scope=query["scope"],
            login_hint=query.get("login_hint"),
        )
        back = {"code": code, "state": query["state"]}
        if self.iss_in_callback:
            back["iss"] = self.issuer
        location = f"{query['redirect_uri']}?{urlencode(back)}"
        return 302, [(b"location", location.encode())], b""

    def _token(
        self, headers: dict[str, str], form: dict[str, str]
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        self.token_requests.append(Seen(headers, form))
        if self.token_response is not None:
            status, payload = self.token_response
            return status, [(b"content-type", b"application/json")], payload
        if self.auth_method == "client_secret_basic":
            encoded = headers.get("authorization", "").removeprefix("Basic ")
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            client_id, secret = unquote(user), unquote(password)
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if client_id != CLIENT_ID or secret != CLIENT_SECRET:
            return _json(401, {"error": "invalid_client"})
        grant = self.codes.get(form.get("code", ""))
        if grant is None or grant.used or form.get("grant_type") != "authorization_code":
            return _json(400, {"error": "invalid_grant", "error_description": "unknown code"})
        grant.used = True
        if form.get("redirect_uri") != grant.redirect_uri:
            return _json(400, {"error": "invalid_grant", "error_description": "redirect_uri"})
        verifier = form.get("code_verifier", "")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != grant.challenge:
            return _json(400, {"error": "invalid_grant", "error_description": "PKCE failed"})
        access_token = secrets.token_urlsafe(24)
        self.access_tokens[access_token] = grant
        return _json(
            200,
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 300,
                "id_token": self.id_token(grant, access_token),
            },
        )


def _apply(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for name, value in overrides.items():
        if value is DELETE:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def _json(status: int, body: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return status, [(b"content-type", b"application/json")], json.dumps(body).encode()


# ---------------------------------------------------------------- the world of a test


@dataclass
class Env:
    provider: FakeProvider
    clock: FakeClock
    client: OutboundClient
    rp: OidcRelyingParty

    @property
    def conf(self) -> OidcConnectionConfig:
        return OidcConnectionConfig(
            issuer=self.provider.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET
        )

    async def authorize(
        self, conf: OidcConnectionConfig | None = None, *, login_hint: str | None = None
    ) -> tuple[OidcAuthorization, dict[str, str]]:
        """begin(), then what the browser does: the provider's authorize endpoint redirects
        back with code and state; the query of that redirect is the callback's params."""
        auth = await self.rp.begin(conf or self.conf, REDIRECT_URI, login_hint=login_hint)
        return auth, await follow(auth.url, self.provider)

    async def finish(
        self,
        auth: OidcAuthorization,
        params: dict[str, str],
        conf: OidcConnectionConfig | None = None,
    ) -> IdpIdentity:
        return await self.rp.finish(
            conf or self.conf,
            REDIRECT_URI,
            params=params,
            expected_state=auth.state,
            nonce=auth.nonce,
            code_verifier=auth.code_verifier,
        )

    async def login(self, conf: OidcConnectionConfig | None = None) -> IdpIdentity:
        auth, params = await self.authorize(conf)
        return await self.finish(auth, params, conf)

    async def refused(self, conf: OidcConnectionConfig | None = None) -> LoginRefused:
        with pytest.raises(LoginRefused) as refused:
            await self.login(conf)
        return refused.value


async def follow(url: str, provider: FakeProvider) -> dict[str, str]:
    verify: ssl.SSLContext | bool = True
    if provider.tls is not None:
        verify = ssl.create_default_context(cafile=str(provider.tls[2]))
    async with httpx.AsyncClient(verify=verify, trust_env=False) as browser:
        response = await browser.get(url)
    assert response.status_code == 302, response.text
    return dict(parse_qsl(urlsplit(response.headers["location"]).query))


def make_rp(client: OutboundClient, clock: Clock) -> OidcRelyingParty:
    return OidcRelyingParty(
        client, clock=clock, metadata_ttl=86_400, jwks_ttl=600, jwks_min_refetch_interval=10
    )


@contextlib.asynccontextmanager
async def running_provider(clock: FakeClock, **kwargs: Any) -> AsyncIterator[FakeProvider]:
    provider = FakeProvider(clock, **kwargs)
    provider.add_key("RSA", "rsa-1")
    cert, key = provider.tls[:2] if provider.tls else (None, None)
    async with serve(provider, ssl_certfile=cert, ssl_keyfile=key, name="the fake provider") as url:
        provider.port = urlsplit(url).port or 0
        yield provider


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    clock = FakeClock()
    async with running_provider(clock) as provider, OutboundClient(LOOPBACK) as client:
        yield Env(provider, clock, client, make_rp(client, clock))


# ---------------------------------------------------------------- the happy paths


async def test_a_login_with_pkce_returns_the_identity(env: Env) -> None:
    auth, params = await env.authorize(login_hint="ada@acme.example")
    query = dict(parse_qsl(urlsplit(auth.url).query))
    assert auth.url.startswith(f"{env.provider.issuer}/authorize?")
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT_URI
    assert query["scope"] == "openid email profile"
    assert query["state"] == auth.state
    assert query["nonce"] == auth.nonce
    assert query["login_hint"] == "ada@acme.example"
    assert query["code_challenge_method"] == "S256"
    assert query["code_challenge"] == b64url(hashlib.sha256(auth.code_verifier.encode()).digest())
    assert "code_verifier" not in query
    # >= 128 bits each (base62: 22 characters), and 43..128 characters for the verifier.
    assert min(len(auth.state), len(auth.nonce)) >= 22
    assert 43 <= len(auth.code_verifier) <= 128

    identity = await env.finish(auth, params)

    assert identity.subject == SUBJECT
    assert identity.session_index == "session-7"
    assert identity.attributes["email"] == [EMAIL]
    assert identity.attributes["email_verified"] == ["true"]
    assert identity.attributes["name"] == ["Ada Lovelace"]
    assert identity.attributes["groups"] == ["eng", "ops"]
    assert identity.attributes["address"] == ['{"country":"GB"}']
    for protocol in ("iss", "sub", "aud", "exp", "iat", "nonce", "at_hash", "auth_time", "sid"):
        assert protocol not in identity.attributes

    [sent] = env.provider.token_requests
    assert sent.form["grant_type"] == "authorization_code"
    assert sent.form["code"] == params["code"]
    assert sent.form["code_verifier"] == auth.code_verifier
    assert sent.form["redirect_uri"] == REDIRECT_URI
    assert "client_secret" not in sent.form  # basic auth: the secret is in the header only
    assert sent.headers["authorization"].startswith("Basic ")
    assert sent.headers["content-type"] == "application/x-www-form-urlencoded"
    assert env.provider.hits["/userinfo"] == 0  # the ID token had the email

    second, _ = await env.authorize()
    assert {second.state, second.nonce, second.code_verifier}.isdisjoint(
        {auth.state, auth.nonce, auth.code_verifier}
    )


async def test_client_secret_post_sends_the_credentials_in_the_body(env: Env) -> None:
    env.provider.auth_method = "client_secret_post"
    conf = OidcConnectionConfig(
        issuer=env.provider.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        token_endpoint_auth_method="client_secret_post",
    )
    identity = await env.login(conf)
    assert identity.subject == SUBJECT
    [sent] = env.provider.token_requests
    assert sent.form["client_id"] == CLIENT_ID
    assert sent.form["client_secret"] == CLIENT_SECRET
    assert "authorization" not in sent.headers


@pytest.mark.parametrize(
    ("kind", "alg"),
    [("RSA", "RS256"), ("RSA", "PS256"), ("EC", "ES256"), ("Ed25519", "EdDSA")],
)
async def test_every_default_algorithm_verifies(env: Env, kind: str, alg: str) -> None:
    env.provider.add_key(kind, f"{kind}-{alg}")
    env.provider.signing_kid, env.provider.alg = f"{kind}-{alg}", alg
    assert (await env.login()).subject == SUBJECT


async def test_a_token_without_kid_verifies_with_a_matching_key(env: Env) -> None:
    env.provider.add_key("EC", "ec-1")
    env.provider.header_overrides["kid"] = DELETE
    assert (await env.login()).subject == SUBJECT  # RS256: the one RSA key in the set


async def test_a_login_over_tls_with_an_https_only_policy(tmp_path: Path) -> None:
    ca, cert, key = write_tls_files(tmp_path)
    clock = FakeClock()
    https_only = OutboundPolicy(allow_networks=["127.0.0.0/8"])
    context = ssl.create_default_context(cafile=str(ca))
    async with (
        running_provider(clock, tls=(cert, key, ca)) as provider,
        OutboundClient(https_only, ssl_context=context) as client,
    ):
        env = Env(provider, clock, client, make_rp(client, clock))
        assert (await env.login()).subject == SUBJECT
        # A document whose endpoints drop to http is refused under this policy.
        provider.discovery_overrides["token_endpoint"] = f"http://127.0.0.1:{provider.port}/t"
        fresh = make_rp(client, clock)
        with pytest.raises(LoginRefused) as refused:
            await fresh.discover(provider.issuer)
        assert refused.value.code == "malformed"
        assert "token_endpoint" in refused.value.detail


# ---------------------------------------------------------------- the callback


async def test_a_state_mismatch_is_refused_before_any_exchange(env: Env) -> None:
    auth, params = await env.authorize()
    for state in ("forged", "", auth.state[:-1]):
        with pytest.raises(LoginRefused) as refused:
            await env.finish(auth, {**params, "state": state})
        assert refused.value.code == "unknown-request"
    without = {k: v for k, v in params.items() if k != "state"}
    with pytest.raises(LoginRefused) as refused:
        await env.finish(auth, without)
    assert refused.value.code == "unknown-request"
    # A login the caller lost track of (no expected state) never matches a missing state.
    with pytest.raises(LoginRefused) as refused:
        await env.rp.finish(
            env.conf,
            REDIRECT_URI,
            params=without,
            expected_state="",
            nonce=auth.nonce,
            code_verifier=auth.code_verifier,
        )
    assert refused.value.code == "unknown-request"
    assert env.provider.token_requests == []


async def test_an_error_from_the_provider_is_idp_error(env: Env) -> None:
    auth, _ = await env.authorize()
    params = {
        "error": "access_denied",
        "error_description": "User is not assigned to the app",
        "state": auth.state,
    }
    with pytest.raises(LoginRefused) as refused:
        await env.finish(auth, params)
    assert refused.value.code == "idp-error"
    assert "access_denied" in refused.value.detail
    assert "not assigned" in refused.value.detail
    assert env.provider.token_requests == []


async def test_a_callback_iss_of_another_issuer_is_refused(env: Env) -> None:
    env.provider.iss_in_callback = True
    auth, params = await env.authorize()
    with pytest.raises(LoginRefused) as refused:
        await env.finish(auth, {**params, "iss": "https://evil.example"})
    assert refused.value.code == "wrong-issuer"
    assert (await env.finish(auth, params)).subject == SUBJECT  # the right iss passes


# ---------------------------------------------------------------- ID token claims


async def test_a_wrong_nonce_is_refused(env: Env) -> None:
    env.provider.claims_overrides["nonce"] = "replayed-nonce"
    assert (await env.refused()).code == "wrong-nonce"
    env.provider.claims_overrides["nonce"] = DELETE
    assert (await env.refused()).code == "wrong-nonce"


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "another-client"},
        {"aud": ["another-client"]},
        {"aud": [CLIENT_ID, "another-client"]},  # several audiences and no azp
        {"aud": [CLIENT_ID, "another-client"], "azp": "another-client"},
        {"azp": "another-client"},
    ],
)
async def test_a_wrong_audience_is_refused(env: Env, claims: dict[str, Any]) -> None:
    env.provider.claims_overrides.update(claims)
    assert (await env.refused()).code == "wrong-audience"


async def test_our_audience_among_others_with_azp_passes(env: Env) -> None:
    env.provider.claims_overrides.update(aud=[CLIENT_ID, "other"], azp=CLIENT_ID)
    assert (await env.login()).subject == SUBJECT


async def test_a_token_from_another_issuer_is_refused(env: Env) -> None:
    env.provider.claims_overrides["iss"] = "https://evil.example/realms/acme"
    refused = await env.refused()
    assert refused.code == "wrong-issuer"


async def test_expiry_is_judged_by_the_injected_clock_with_leeway(env: Env) -> None:
    now = int(env.clock.now())
    env.provider.claims_overrides.update(iat=now - 600, exp=now - 30)  # within 60 s leeway
    assert (await env.login()).subject == SUBJECT
    env.provider.claims_overrides["exp"] = now - 61
    refused = await env.refused()
    assert refused.code == "expired"
    # The token is minted valid, and our clock runs ahead of the provider's.
    env.provider.claims_overrides.clear()
    late = make_rp(env.client, _Skewed(env.clock, 300 + 61))
    auth = await late.begin(env.conf, REDIRECT_URI)
    params = await follow(auth.url, env.provider)
    with pytest.raises(LoginRefused) as refused_late:
        await late.finish(
            env.conf,
            REDIRECT_URI,
            params=params,
            expected_state=auth.state,
            nonce=auth.nonce,
            code_verifier=auth.code_verifier,
        )
    assert refused_late.value.code == "expired"


@dataclass
class _Skewed:
    """The relying party's clock, `offset` seconds ahead of the provider's."""

    base: FakeClock
    offset: float

    def now(self) -> float:
        return self.base.now() + self.offset


@pytest.mark.parametrize("claim", ["iat", "nbf"])
async def test_a_token_from_the_future_is_not_yet_valid(env: Env, claim: str) -> None:
    now = int(env.clock.now())
    env.provider.claims_overrides[claim] = now + 30  # within the leeway
    assert (await env.login()).subject == SUBJECT
    env.provider.claims_overrides[claim] = now + 61
    assert (await env.refused()).code == "not-yet-valid"


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"sub": DELETE}, "malformed"),
        ({"exp": DELETE}, "malformed"),
        ({"exp": "tomorrow"}, "malformed"),
        ({"iat": "now"}, "malformed"),
        ({"sub": 42}, "malformed"),
    ],
)
async def test_missing_or_mistyped_claims_are_malformed(
    env: Env, claims: dict[str, Any], code: str
) -> None:
    env.provider.claims_overrides.update(claims)
    assert (await env.refused()).code == code


async def test_an_at_hash_for_another_access_token_is_a_bad_signature(env: Env) -> None:
    env.provider.claims_overrides["at_hash"] = half_hash("some-other-access-token", "RS256")
    refused = await env.refused()
    assert refused.code == "bad-signature"
    assert "at_hash" in refused.detail


# ---------------------------------------------------------------- algorithms and keys


def _hs256(header: dict[str, Any], claims: dict[str, Any]) -> str:
    # The classic confusion: an HMAC keyed with the client secret, which the IdP shares.
    secret = OctKey.import_key(CLIENT_SECRET.encode())
    return jwt.encode({**header, "alg": "HS256"}, claims, secret, algorithms=["HS256"])


def _none(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return unsigned_token(claims)


@pytest.mark.parametrize(
    ("mint", "alg"), [(_none, "none"), (_hs256, "HS256")], ids=["none", "HS256"]
)
async def test_none_and_hmac_tokens_are_refused(
    env: Env, mint: Callable[[dict[str, Any], dict[str, Any]], str], alg: str
) -> None:
    env.provider.mint = mint
    refused = await env.refused()
    assert refused.code == "deprecated-algorithm"
    assert repr(alg) in refused.detail
    assert env.provider.hits["/jwks"] == 0  # refused before any key is looked at


async def test_an_algorithm_outside_the_connection_allow_list_is_refused(env: Env) -> None:
    env.provider.alg = "RS384"  # a fine algorithm, but this connection does not allow it
    assert (await env.refused()).code == "deprecated-algorithm"
    conf = OidcConnectionConfig(
        issuer=env.provider.issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        allowed_algorithms=("RS384",),
    )
    assert (await env.login(conf)).subject == SUBJECT


@pytest.mark.parametrize("algorithms", [("none",), ("HS256",), ("RS256", "HS512"), ("RS1",), ()])
def test_a_connection_cannot_allow_unsafe_algorithms(algorithms: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="algorithm"):
        OidcConnectionConfig(
            issuer="https://idp.example",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            allowed_algorithms=algorithms,
        )


def test_a_connection_must_ask_for_openid() -> None:
    with pytest.raises(ValueError, match="openid"):
        OidcConnectionConfig(
            issuer="https://idp.example",
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            scopes=("email",),
        )


async def test_a_signature_by_another_key_under_a_known_kid_is_refused(env: Env) -> None:
    env.provider.add_key("RSA", "rsa-impostor", publish=False)
    env.provider.signing_kid = "rsa-impostor"
    env.provider.header_overrides["kid"] = "rsa-1"  # claims the published key's kid
    refused = await env.refused()
    assert refused.code == "bad-signature"


async def test_a_kid_whose_key_cannot_do_the_alg_is_a_bad_signature(env: Env) -> None:
    env.provider.add_key("EC", "ec-1")
    env.provider.signing_kid, env.provider.alg = "ec-1", "ES256"
    env.provider.header_overrides["kid"] = "rsa-1"  # an RSA key for an ES256 token
    assert (await env.refused()).code == "bad-signature"


async def test_an_unknown_kid_refetches_once_and_a_rotation_succeeds(env: Env) -> None:
    await env.login()
    assert env.provider.hits["/jwks"] == 1
    env.clock.advance(11)  # past the minimum refetch interval, well within the TTL
    env.provider.add_key("RSA", "rsa-2")
    env.provider.signing_kid = "rsa-2"  # the IdP rotated
    assert (await env.login()).subject == SUBJECT
    assert env.provider.hits["/jwks"] == 2
    assert (await env.login()).subject == SUBJECT  # and the new key is now cached
    assert env.provider.hits["/jwks"] == 2


async def test_forged_kids_cause_at_most_one_refetch_per_interval(env: Env) -> None:
    await env.login()
    env.clock.advance(11)
    env.provider.add_key("RSA", "rsa-forged", publish=False)
    env.provider.signing_kid = "rsa-forged"
    first = await env.refused()
    assert first.code == "unknown-certificate"
    assert "rsa-forged" in first.detail
    assert env.provider.hits["/jwks"] == 2  # one refetch
    env.clock.advance(5)  # still within the 10 s interval
    second = await env.refused()
    assert second.code == "unknown-certificate"
    assert env.provider.hits["/jwks"] == 2  # no new request to the IdP
    env.clock.advance(6)
    await env.refused()
    assert env.provider.hits["/jwks"] == 3  # the interval passed: one more


async def test_a_rotation_right_after_a_fetch_waits_for_the_interval(env: Env) -> None:
    await env.login()
    env.provider.add_key("RSA", "rsa-2")
    env.provider.signing_kid = "rsa-2"
    assert (await env.refused()).code == "unknown-certificate"
    assert env.provider.hits["/jwks"] == 1
    env.clock.advance(10)
    assert (await env.login()).subject == SUBJECT
    assert env.provider.hits["/jwks"] == 2


async def test_concurrent_logins_with_an_unknown_kid_share_one_refetch(env: Env) -> None:
    await env.login()
    env.clock.advance(11)
    env.provider.add_key("RSA", "rsa-2")
    env.provider.signing_kid = "rsa-2"
    identities = await asyncio.gather(*(env.login() for _ in range(5)))
    assert {i.subject for i in identities} == {SUBJECT}
    assert env.provider.hits["/jwks"] == 2


async def test_the_jwks_ttl_forces_a_refetch_and_a_withdrawn_key_stops_verifying(
    env: Env,
) -> None:
    await env.login()
    env.clock.advance(599)
    await env.login()
    assert env.provider.hits["/jwks"] == 1  # cached within the TTL
    env.clock.advance(2)  # past the 600 s TTL; the kid is known, yet it refetches
    await env.login()
    assert env.provider.hits["/jwks"] == 2
    # The IdP withdraws rsa-1 (compromised) and publishes rsa-2 instead.
    env.provider.add_key("RSA", "rsa-2")
    env.provider.published.remove("rsa-1")
    env.clock.advance(601)
    refused = await env.refused()  # still signed with rsa-1
    assert refused.code == "unknown-certificate"
    assert env.provider.hits["/jwks"] == 3


async def test_jwks_with_only_unusable_keys_is_malformed(env: Env) -> None:
    # A symmetric key in a JWKS proves nothing about the IdP: it is never used.
    env.provider.keys["oct-1"] = OctKey.import_key(b"k" * 32, {"kid": "oct-1"})
    env.provider.published[:] = ["oct-1"]
    refused = await env.refused()
    assert refused.code == "malformed"
    assert "no usable signing key" in refused.detail


# ---------------------------------------------------------------- userinfo


async def test_userinfo_fills_in_a_missing_email(env: Env) -> None:
    env.provider.id_token_email = False
    env.provider.userinfo = {
        "sub": SUBJECT,
        "email": EMAIL,
        "email_verified": True,
        "name": "Ada (userinfo)",
        "locale": "en-GB",
    }
    identity = await env.login()
    assert identity.attributes["email"] == [EMAIL]
    assert identity.attributes["locale"] == ["en-GB"]
    assert identity.attributes["name"] == ["Ada Lovelace"]  # the signed ID token wins
    [token] = env.provider.userinfo_tokens
    assert token in env.provider.access_tokens


async def test_userinfo_about_another_subject_is_refused(env: Env) -> None:
    env.provider.id_token_email = False
    env.provider.userinfo = {"sub": "00u-someone-else", "email": "eve@acme.example"}
    assert (await env.refused()).code == "wrong-issuer"
    env.provider.userinfo = {"email": "eve@acme.example"}
    assert (await env.refused()).code == "malformed"


async def test_no_userinfo_endpoint_means_no_email(env: Env) -> None:
    env.provider.id_token_email = False
    env.provider.discovery_overrides["userinfo_endpoint"] = DELETE
    identity = await env.login()
    assert "email" not in identity.attributes  # the caller refuses with missing-email
    assert env.provider.hits["/userinfo"] == 0


# ---------------------------------------------------------------- the token endpoint


async def test_invalid_grant_is_a_failed_exchange_that_never_names_the_secret(
    env: Env,
) -> None:
    body = {"error": "invalid_grant", "error_description": f"bad code for {CLIENT_SECRET}"}
    env.provider.token_response = (400, json.dumps(body).encode())
    refused = await env.refused()
    assert refused.code == "token-exchange-failed"
    assert "400" in refused.detail
    assert "invalid_grant" in refused.detail
    assert CLIENT_SECRET not in refused.detail
    assert CLIENT_SECRET not in str(refused)


async def test_a_wrong_code_verifier_is_refused_by_the_provider(env: Env) -> None:
    auth, params = await env.authorize()
    with pytest.raises(LoginRefused) as refused:
        await env.rp.finish(
            env.conf,
            REDIRECT_URI,
            params=params,
            expected_state=auth.state,
            nonce=auth.nonce,
            code_verifier="x" * 64,
        )
    assert refused.value.code == "token-exchange-failed"
    assert "PKCE" in refused.value.detail


async def test_a_token_endpoint_that_is_down_is_unreachable(env: Env) -> None:
    closed = free_port()  # nothing listens there: connection refused
    env.provider.discovery_overrides["token_endpoint"] = f"http://127.0.0.1:{closed}/token"
    refused = await env.refused()
    assert refused.code == "idp-unreachable"
    assert "token endpoint" in refused.detail


async def test_a_gateway_error_is_unreachable(env: Env) -> None:
    env.provider.token_response = (503, b"<html>maintenance</html>")
    assert (await env.refused()).code == "idp-unreachable"


@pytest.mark.parametrize(
    "payload",
    [b"<html>not json</html>", b"[]", b'{"access_token": "a", "token_type": "Bearer"}'],
    ids=["html", "array", "no-id-token"],
)
async def test_a_token_response_that_is_not_what_we_need_is_malformed(
    env: Env, payload: bytes
) -> None:
    env.provider.token_response = (200, payload)
    assert (await env.refused()).code == "malformed"


async def test_a_truncated_token_response_is_malformed() -> None:
    clock = FakeClock()
    small = OutboundPolicy(allow_networks=["127.0.0.0/8"], allow_http=True, max_response_bytes=8192)
    async with running_provider(clock) as provider, OutboundClient(small) as client:
        env = Env(provider, clock, client, make_rp(client, clock))
        body = {"access_token": "a", "token_type": "Bearer", "id_token": "x" * 20_000}
        provider.token_response = (200, json.dumps(body).encode())
        refused = await env.refused()
    assert refused.code == "malformed"
    assert "larger" in refused.detail


async def test_an_open_breaker_is_unreachable_without_a_request() -> None:
    clock = FakeClock()
    config = BreakerConfig(
        sliding_window_size=4,
        minimum_number_of_calls=4,
        failure_rate_threshold=50,
        wait_duration_in_open_state=30,
        permitted_calls_in_half_open_state=1,
    )
    breakers = BreakerRegistry(clock=ManualClock())
    async with (
        running_provider(clock) as provider,
        OutboundClient(LOOPBACK, breakers=breakers, breaker_config=config) as client,
    ):
        env = Env(provider, clock, client, make_rp(client, clock))
        provider.token_response = (500, b'{"error": "server_error"}')
        # Discovery succeeded, then three 500s: 3 failures in a window of 4 open it.
        for _ in range(3):
            assert (await env.refused()).code == "token-exchange-failed"
        requests = len(provider.token_requests)
        refused = await env.refused()
        assert refused.code == "idp-unreachable"
        assert "circuit breaker" in refused.detail
        assert len(provider.token_requests) == requests


# ---------------------------------------------------------------- discovery


async def test_discovery_is_cached_until_its_ttl(env: Env) -> None:
    await env.login()
    await env.login()
    assert env.provider.hits["/.well-known/openid-configuration"] == 1
    env.clock.advance(86_401)
    await env.login()
    assert env.provider.hits["/.well-known/openid-configuration"] == 2


async def test_a_discovery_document_for_another_issuer_is_refused(env: Env) -> None:
    env.provider.discovery_overrides["issuer"] = "https://evil.example/realms/acme"
    with pytest.raises(LoginRefused) as refused:
        await env.rp.begin(env.conf, REDIRECT_URI)
    assert refused.value.code == "wrong-issuer"
    assert "evil.example" in refused.value.detail
    # Not even a trailing slash is forgiven: the issuer is compared exactly.
    env.provider.discovery_overrides["issuer"] = env.provider.issuer + "/"
    with pytest.raises(LoginRefused) as refused:
        await env.rp.discover(env.provider.issuer)
    assert refused.value.code == "wrong-issuer"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"code_challenge_methods_supported": ["plain"]}, "S256"),
        ({"response_types_supported": ["id_token"]}, "code flow"),
        ({"jwks_uri": DELETE}, "jwks_uri"),
        ({"token_endpoint": "ftp://127.0.0.1/token"}, "token_endpoint"),
        ({"userinfo_endpoint": "javascript:alert(1)"}, "userinfo_endpoint"),
        ({"subject_types_supported": DELETE}, "subject_types_supported"),
        ({"id_token_signing_alg_values_supported": "RS256"}, "JSON array"),
    ],
)
async def test_a_discovery_document_that_breaks_the_rules_is_malformed(
    env: Env, overrides: dict[str, Any], needle: str
) -> None:
    env.provider.discovery_overrides.update(overrides)
    with pytest.raises(LoginRefused) as refused:
        await env.rp.discover(env.provider.issuer)
    assert refused.value.code == "malformed"
    assert needle in refused.value.detail


async def test_pkce_methods_may_be_left_unsaid(env: Env) -> None:
    env.provider.discovery_overrides["code_challenge_methods_supported"] = DELETE
    assert (await env.login()).subject == SUBJECT


async def test_a_missing_discovery_document_is_unreachable(env: Env) -> None:
    with pytest.raises(LoginRefused) as refused:
        await env.rp.discover(env.provider.base + "/realms/nobody")
    assert refused.value.code == "idp-unreachable"
    assert "404" in refused.value.detail


class SpyBackend(httpcore.AsyncNetworkBackend):
    """Records every connect; connects nowhere."""

    def __init__(self) -> None:
        self.connects: list[tuple[str, int]] = []

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        raise httpcore.ConnectError("the spy connects nowhere")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def test_a_private_issuer_is_refused_before_connecting() -> None:
    spy = SpyBackend()
    # Loopback is allow-listed for the test; 10.0.0.0/8 is not.
    async with OutboundClient(LOOPBACK, network_backend=spy) as client:
        rp = make_rp(client, FakeClock())
        conf = OidcConnectionConfig(
            issuer="http://10.0.0.1/realms/acme", client_id=CLIENT_ID, client_secret="s"
        )
        with pytest.raises(LoginRefused) as refused:
            await rp.begin(conf, REDIRECT_URI)
    assert refused.value.code == "idp-unreachable"
    assert refused.value.detail.startswith("destination refused")
    assert "private" in refused.value.detail
    assert spy.connects == []
