"""Self-tests of the OIDC peer (node oidc-provider and its Python driver), by hand with httpx
and joserfc, so the RP's own tests can trust the peer. Loopback only."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import pytest_asyncio
from joserfc import jwt
from joserfc.errors import InvalidClaimError
from joserfc.jwk import KeySet

from tenantry_testkit.oidc_provider import (
    OidcAccount,
    OidcClient,
    OidcProvider,
    OidcProviderError,
)

# Never fetched: follow_login stops at the redirect to it.
REDIRECT_URI = "http://127.0.0.1:9/sso/oidc/callback"
CLIENT = OidcClient("tenantry-rp", "rp-secret-" + "x" * 24, [REDIRECT_URI])
ACCOUNTS = {
    "alice": OidcAccount(
        email="alice@acme.test",
        given_name="Alice",
        family_name="Liddell",
        groups=["engineering", "admins"],
    ),
    "bob": OidcAccount(email="bob@acme.test", email_verified=False, groups=[]),
}


@pytest_asyncio.fixture(scope="module")
async def op(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OidcProvider]:
    async with OidcProvider.running(
        tmp_path_factory.mktemp("op"), clients=[CLIENT], accounts=ACCOUNTS
    ) as provider:
        yield provider


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10.0) as client:
        yield client


@dataclass(frozen=True)
class Authorization:
    url: str
    state: str
    nonce: str
    verifier: str


def authorization(
    discovery: dict[str, Any], *, scope: str = "openid email profile groups"
) -> Authorization:
    """The authorize URL an RP builds: code flow, PKCE S256, state and nonce."""
    state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    query = urlencode(
        {
            "response_type": "code",
            "client_id": CLIENT.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "login_hint": "alice",
        }
    )
    return Authorization(f"{discovery['authorization_endpoint']}?{query}", state, nonce, verifier)


async def discover(http: httpx.AsyncClient, op: OidcProvider) -> dict[str, Any]:
    response = await http.get(op.discovery_url)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


async def redeem(
    http: httpx.AsyncClient, discovery: dict[str, Any], code: str, verifier: str
) -> httpx.Response:
    return await http.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        },
        auth=(CLIENT.client_id, CLIENT.client_secret),  # client_secret_basic
    )


async def log_in(
    http: httpx.AsyncClient, op: OidcProvider, discovery: dict[str, Any], login: str = "alice"
) -> tuple[Authorization, str]:
    """A full login up to the code; checks what the redirect carries."""
    auth = authorization(discovery)
    location = await op.follow_login(http, auth.url, login=login)
    assert location.startswith(REDIRECT_URI + "?")
    params = parse_qs(urlsplit(location).query)
    assert params["state"] == [auth.state]
    assert params["iss"] == [op.issuer]  # RFC 9207
    return auth, params["code"][0]


async def verified_id_token(
    http: httpx.AsyncClient, op: OidcProvider, discovery: dict[str, Any], token: str, nonce: str
) -> jwt.Token:
    jwks = (await http.get(discovery["jwks_uri"])).json()
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["RS256"])
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": op.issuer},
        aud={"essential": True, "value": CLIENT.client_id},
        nonce={"essential": True, "value": nonce},
        sub={"essential": True},
        exp={"essential": True},
    ).validate(decoded.claims)
    return decoded


async def test_discovery_document(op: OidcProvider, http: httpx.AsyncClient) -> None:
    discovery = await discover(http, op)
    assert discovery["issuer"] == op.issuer
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    assert {"openid", "email", "profile", "groups"} <= set(discovery["scopes_supported"])
    assert "groups" in discovery["claims_supported"]
    assert "client_secret_basic" in discovery["token_endpoint_auth_methods_supported"]
    jwks = (await http.get(discovery["jwks_uri"])).json()
    assert [k["kid"] for k in jwks["keys"]] == [op.signing_kid]
    assert all("d" not in k for k in jwks["keys"])


async def test_code_flow_with_pkce_and_userinfo(op: OidcProvider, http: httpx.AsyncClient) -> None:
    discovery = await discover(http, op)
    auth, code = await log_in(http, op, discovery)
    response = await redeem(http, discovery, code, auth.verifier)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"].lower() == "bearer"
    id_token = await verified_id_token(http, op, discovery, tokens["id_token"], auth.nonce)
    assert id_token.header["kid"] == op.signing_kid
    assert id_token.claims["sub"] == "alice"
    # conformIdTokenClaims: scope-requested claims are left to userinfo.
    assert "email" not in id_token.claims
    assert "groups" not in id_token.claims

    userinfo = await http.get(
        discovery["userinfo_endpoint"],
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert userinfo.status_code == 200, userinfo.text
    assert userinfo.json() == {
        "sub": "alice",
        "email": "alice@acme.test",
        "email_verified": True,
        "given_name": "Alice",
        "family_name": "Liddell",
        "name": "Alice Liddell",
        "groups": ["engineering", "admins"],
    }

    # A code is single-use.
    again = await redeem(http, discovery, code, auth.verifier)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


async def test_second_walk_in_same_jar_is_silent_sso(
    op: OidcProvider, http: httpx.AsyncClient
) -> None:
    discovery = await discover(http, op)
    await log_in(http, op, discovery, login="alice")
    auth, code = await log_in(http, op, discovery, login="bob")  # no form shown: still alice
    tokens = (await redeem(http, discovery, code, auth.verifier)).json()
    id_token = await verified_id_token(http, op, discovery, tokens["id_token"], auth.nonce)
    assert id_token.claims["sub"] == "alice"

    http.cookies.clear()
    auth, code = await log_in(http, op, discovery, login="bob")
    tokens = (await redeem(http, discovery, code, auth.verifier)).json()
    id_token = await verified_id_token(http, op, discovery, tokens["id_token"], auth.nonce)
    assert id_token.claims["sub"] == "bob"


async def test_wrong_code_verifier_is_refused(op: OidcProvider, http: httpx.AsyncClient) -> None:
    discovery = await discover(http, op)
    _, code = await log_in(http, op, discovery)
    response = await redeem(http, discovery, code, secrets.token_urlsafe(32))
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_pkce_is_required(op: OidcProvider, http: httpx.AsyncClient) -> None:
    discovery = await discover(http, op)

    def without_pkce(url: str) -> str:
        parts = urlsplit(url)
        query = {k: v for k, v in parse_qs(parts.query).items() if not k.startswith("code_")}
        return urlunsplit(parts._replace(query=urlencode(query, doseq=True)))

    auth = authorization(discovery)
    location = await op.follow_login(http, auth.url, login="alice", tamper_authorize=without_pkce)
    params = parse_qs(urlsplit(location).query)
    assert params["error"] == ["invalid_request"]
    assert "code" not in params


async def test_tampered_nonce_shows_in_id_token(op: OidcProvider, http: httpx.AsyncClient) -> None:
    discovery = await discover(http, op)
    auth = authorization(discovery)
    location = await op.follow_login(
        http,
        auth.url,
        login="alice",
        tamper_authorize=lambda url: url.replace(f"nonce={auth.nonce}", "nonce=forged"),
    )
    code = parse_qs(urlsplit(location).query)["code"][0]
    tokens = (await redeem(http, discovery, code, auth.verifier)).json()
    with pytest.raises(InvalidClaimError, match="nonce"):
        await verified_id_token(http, op, discovery, tokens["id_token"], auth.nonce)


async def test_unknown_login_and_unknown_client_raise(
    op: OidcProvider, http: httpx.AsyncClient
) -> None:
    discovery = await discover(http, op)
    auth = authorization(discovery)
    with pytest.raises(OidcProviderError, match="refused login 'mallory'"):
        await op.follow_login(http, auth.url, login="mallory")
    with pytest.raises(OidcProviderError, match="invalid_client") as raised:
        await op.follow_login(
            http,
            auth.url.replace(CLIENT.client_id, "nobody"),
            login="alice",
        )
    assert raised.value.error == "invalid_client"


async def test_rotate_keys_and_restart(tmp_path: Path, http: httpx.AsyncClient) -> None:
    async with OidcProvider.running(tmp_path, clients=[CLIENT], accounts=ACCOUNTS) as op:
        old_kid = op.signing_kid
        port = op.port

        await op.rotate_keys(keep_old=True)
        discovery = await discover(http, op)
        jwks = (await http.get(discovery["jwks_uri"])).json()
        assert op.port == port
        assert [k["kid"] for k in jwks["keys"]] == [op.signing_kid, old_kid]

        await op.rotate_keys()
        new_kid = op.signing_kid
        assert new_kid != old_kid
        jwks = (await http.get(discovery["jwks_uri"])).json()
        assert [k["kid"] for k in jwks["keys"]] == [new_kid]

        auth, code = await log_in(http, op, discovery, login="bob")
        tokens = (await redeem(http, discovery, code, auth.verifier)).json()
        id_token = await verified_id_token(http, op, discovery, tokens["id_token"], auth.nonce)
        assert id_token.header["kid"] == new_kid

        await op.kill()
        with pytest.raises(httpx.ConnectError):
            await http.get(op.discovery_url)
        await op.start()
        assert (await discover(http, op))["issuer"] == op.issuer
