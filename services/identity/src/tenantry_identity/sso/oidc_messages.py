"""The pure pieces of the OIDC relying party (oidc.py): reading what an IdP sends (JSON
answers, OAuth errors, JWKS documents), checking ID token signatures and claims with keys
we picked, and reporting each failure as the refusal an admin can act on."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Final, cast
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import msgspec
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidPayloadError,
    JoseError,
    MissingClaimError,
    SecurityWarning,
)
from joserfc.jwk import JWKRegistry, Key, KeySet, OKPKey
from joserfc.jws import JWSRegistry

from tenantry_outbound.outbound import OutboundResponse

from .domain import LoginRefused, RefusalCode

# Claims about the protocol exchange, not about the person: kept out of the attributes.
# acr and amr stay: they describe how the person authenticated (MFA policies need them).
PROTOCOL_CLAIMS: Final = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "exp",
        "iat",
        "nbf",
        "jti",
        "nonce",
        "at_hash",
        "c_hash",
        "s_hash",
        "azp",
        "auth_time",
        "sid",
        "_claim_names",
        "_claim_sources",
    }
)

_DETAIL_LIMIT: Final = 300
_MAX_JWS_HEADER: Final = 8192  # joserfc's default (512) refuses headers carrying x5c chains


def jws_registry(alg: str | None) -> JWSRegistry:
    """A JWS registry allowing exactly `alg` (or none, for parsing a header). Header
    parameters outside the registry are tolerated: IdPs add their own."""
    registry = JWSRegistry(algorithms=[alg] if alg else [], strict_check_header=False)
    registry.max_header_length = _MAX_JWS_HEADER
    return registry


def candidate_keys(keys: KeySet, kid: str | None, alg: str) -> list[Key] | None:
    """Keys that may have signed a token with `kid` and `alg`; None when the JWKS has no
    such key (unknown kid, or no key of the right type when the token names none), an empty
    list when the kid is there but cannot sign `alg`."""
    named = [key for key in keys.keys if kid is None or key.kid == kid]
    usable = [key for key in named if _can_verify(key, alg)]
    if not named or (kid is None and not usable):
        return None
    return usable


def _can_verify(key: Key, alg: str) -> bool:
    ops = key.get("key_ops")
    if ops is not None and "verify" not in ops:
        return False
    if alg == "EdDSA" and not (isinstance(key, OKPKey) and key.curve_name == "Ed25519"):
        return False  # Ed448 excluded: see SIGNATURE_ALGORITHMS
    try:
        JWSRegistry.algorithms[alg].check_key(key)  # kty, use, the key's alg, EC curve
    except (JoseError, KeyError):
        return False
    return True


def verify_signature(token: str, alg: str, candidates: list[Key], kid: str | None) -> jwt.Token:
    for key in candidates:
        try:
            with warnings.catch_warnings():
                # EdDSA is allowed on purpose (deprecated by RFC 9864, still what IdPs send).
                warnings.simplefilter("ignore", SecurityWarning)
                return jwt.decode(token, key, algorithms=[alg], registry=jws_registry(alg))
        except BadSignatureError:
            continue
        except InvalidPayloadError as exc:
            raise LoginRefused("malformed", "ID token payload is not a JSON object") from exc
        except (JoseError, ValueError) as exc:
            raise LoginRefused("malformed", clip(f"ID token cannot be decoded: {exc}")) from exc
    which = f"key {kid!r}" if kid is not None else "any key of the IdP's JWKS"
    raise LoginRefused("bad-signature", clip(f"ID token signature does not verify with {which}"))


_CLAIM_CODES: Final[dict[str, RefusalCode]] = {
    "iss": "wrong-issuer",
    "aud": "wrong-audience",
    "azp": "wrong-audience",
    "nonce": "wrong-nonce",
    "at_hash": "bad-signature",
}


def claim_refusal(exc: JoseError, claims: Mapping[str, Any]) -> LoginRefused:
    if isinstance(exc, ExpiredTokenError):
        return LoginRefused("expired", "ID token has expired (exp, beyond the leeway)")
    names = getattr(exc, "claim", "")
    missing = isinstance(exc, MissingClaimError)
    if missing and names not in ("nonce", "azp"):
        return LoginRefused("malformed", clip(f"ID token lacks {names}"))
    if names in ("iat", "nbf") and _numeric(claims.get(names)):
        return LoginRefused(
            "not-yet-valid", f"ID token {names} is in the future (beyond the leeway)"
        )
    code = _CLAIM_CODES.get(names, "malformed")
    problem = "lacks" if missing else "has a wrong or invalid"
    return LoginRefused(code, clip(f"ID token {problem} {names}"))


def _numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def signing_key_set(doc: dict[str, Any], uri: str) -> KeySet:
    """The signature keys of a JWKS document. Keys we cannot use are skipped, not fatal
    (RFC 7517 §5): symmetric ones (a shared secret proves nothing about the IdP), encryption
    ones, unknown types and broken entries."""
    entries = doc.get("keys")
    if not isinstance(entries, list):
        raise LoginRefused("malformed", clip(f"JWKS at {uri} has no keys array"))
    keys: list[Key] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") == "oct" or entry.get("use") == "enc":
            continue
        try:
            keys.append(JWKRegistry.import_key(cast(dict[str, str | list[str]], entry)))
        except (JoseError, ValueError, TypeError, KeyError):
            continue
    if not keys:
        raise LoginRefused("malformed", clip(f"JWKS at {uri} has no usable signing key"))
    return KeySet(keys)


def json_object(response: OutboundResponse, what: str) -> dict[str, Any]:
    if response.truncated:
        raise LoginRefused("malformed", f"{what} is larger than we read")
    try:
        value = msgspec.json.decode(response.body)
    except msgspec.DecodeError as exc:
        raise LoginRefused("malformed", f"{what} is not JSON") from exc
    if not isinstance(value, dict):
        raise LoginRefused("malformed", f"{what} is not a JSON object")
    return value


def strings(doc: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LoginRefused("malformed", f"discovery document: {key} is not a list of strings")
    return tuple(value)


def oauth_error(response: OutboundResponse) -> str:
    """ ": <error> (<description>)" from an OAuth error body, or "". The raw body is never
    echoed: only the two fields RFC 6749 5.2 defines."""
    if response.truncated:
        return ""
    try:
        body = msgspec.json.decode(response.body)
    except msgspec.DecodeError:
        return ""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return ""
    description = body.get("error_description")
    extra = f" ({description})" if isinstance(description, str) and description else ""
    return f": {body['error']}{extra}"


def redact(text: str, client_secret: str) -> str:
    """The client secret out of anything an IdP sent back (some echo the request)."""
    for form in {client_secret, quote(client_secret, safe="")}:
        if form:
            text = text.replace(form, "[redacted]")
    return text


def unreachable_status(what: str, url: str, status: int) -> LoginRefused:
    hint = " (redirects are not followed)" if 300 <= status < 400 else ""
    return LoginRefused("idp-unreachable", clip(f"{what} at {url} answered {status}{hint}"))


def attribute_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """Claims about the person, flat enough for `as_attribute_lists`: no protocol claims,
    no nulls, objects (address) as JSON text rather than a Python repr."""
    out: dict[str, Any] = {}
    for name, value in claims.items():
        if name in PROTOCOL_CLAIMS or value is None:
            continue
        if isinstance(value, list):
            out[name] = [_flat(v) for v in value if v is not None]
        else:
            out[name] = _flat(value)
    return out


def _flat(value: Any) -> Any:
    if isinstance(value, dict | list):
        return msgspec.json.encode(value).decode()
    return value


def with_query_params(url: str, params: list[tuple[str, str]]) -> str:
    """`url` with `params` added to its query; a parameter of ours replaces one of the same
    name already there (an endpoint URL may carry its own, e.g. a tenant or policy)."""
    parts = urlsplit(url)
    ours = {name for name, _ in params}
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in ours]
    return urlunsplit(parts._replace(query=urlencode(kept + params, quote_via=quote)))


def clip(text: str) -> str:
    """A detail for the admin's log: printable and bounded (IdPs and attackers write some
    of it)."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"
