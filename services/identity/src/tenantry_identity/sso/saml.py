"""The SAML 2.0 service provider, on python3-saml.

python3-saml does the XML work (schema, signatures, decryption, conditions); this module
sets it up the strict way and adds what it leaves to us (FIELD-NOTES):
- deprecated algorithms refused, signed AuthnRequests, signed assertions wanted;
- InResponseTo is checked against the request we sent (the caller looks it up from
  `peek_in_response_to` and passes it back); unsolicited responses only when allowed;
- exact Destination and Recipient (python3-saml compares prefixes and substrings);
- a response signed by a certificate we do not know is named as such, not as a bad
  signature, so the tenant admin sees a rotation problem for what it is;
- replay protection is the caller's (the assertion id and its NotOnOrAfter are returned);
- whatever python3-saml, xmlsec or lxml raise on a hostile message becomes a refusal with
  a documented code (`refusing`), never an unhandled error.

Everything here is synchronous and CPU-bound (xmlsec): callers run it in a thread.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import html
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from onelogin.saml2.xml_utils import OneLogin_Saml2_XML

from tenantry_identity.sso.domain import IdpIdentity, LoginRefused, RefusalCode

Binding = Literal["redirect", "post"]
UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
MAX_MESSAGE_BYTES = 512 * 1024  # a SAMLResponse larger than this is refused unread
REPLAY_MARGIN = dt.timedelta(minutes=10)  # beyond NotOnOrAfter: the clock skew and more
# The latest instant a replay-cache entry is kept to: NotOnOrAfter may be as late as the
# year 9999, and adding the margin to that would overflow.
_LATEST_KEEP = dt.datetime.max.replace(tzinfo=dt.UTC) - REPLAY_MARGIN


class SamlConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A SAML connection's settings (stored as the connection's config; nothing secret)."""

    idp_entity_id: str
    idp_sso_url: str
    idp_certs: list[str]  # PEM or bare base64; several at once during a rotation
    idp_slo_url: str | None = None
    idp_sso_post_url: str | None = None  # where POST-binding AuthnRequests go
    request_binding: Binding = "redirect"  # how our AuthnRequest travels to the IdP
    metadata_url: str | None = None  # refreshed on a schedule when set
    sp_cert: str = ""  # our certificate for this connection (public)
    want_assertions_signed: bool = True
    want_response_signed: bool = False
    want_assertions_encrypted: bool = False
    name_id_format: str = UNSPECIFIED


class SpUrls(msgspec.Struct, frozen=True, kw_only=True):
    entity_id: str
    acs: str
    slo: str


def sp_urls(public_url: str, connection_id: str) -> SpUrls:
    base = f"{public_url.rstrip('/')}/sso/saml/{connection_id}"
    return SpUrls(entity_id=f"{base}/metadata", acs=f"{base}/acs", slo=f"{base}/slo")


class SamlAssertion(msgspec.Struct, frozen=True, kw_only=True):
    identity: IdpIdentity
    assertion_id: str
    not_on_or_after: dt.datetime  # keep the id at least this long against replays
    in_response_to: str | None


# ---------------------------------------------------------------------- keys and metadata


def new_sp_keypair(common_name: str, *, years: int = 10) -> tuple[str, str]:
    """A fresh RSA-2048 key and self-signed certificate for one connection (cert, key PEM).
    SAML only uses the certificate as a key container, so self-signed is the norm."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_pem, key_pem


def cert_der(cert: str) -> bytes:
    """DER bytes of a PEM or bare-base64 certificate (ValueError if it is neither)."""
    body = "".join(
        line.strip() for line in cert.strip().splitlines() if line.strip() and "-----" not in line
    )
    try:
        der = base64.b64decode(body, validate=True)
        x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not an X.509 certificate in PEM or base64") from exc
    return der


def fingerprint(cert: str) -> str:
    return hashlib.sha256(cert_der(cert)).hexdigest()


class IdpMetadata(msgspec.Struct, frozen=True, kw_only=True):
    entity_id: str
    sso_url: str  # HTTP-Redirect binding, else HTTP-POST
    sso_post_url: str | None  # HTTP-POST binding, when the IdP offers it
    slo_url: str | None
    certs: list[str]


IDP_URL_FIELDS = ("idp_sso_url", "idp_sso_post_url", "idp_slo_url")


def config_fields(meta: IdpMetadata) -> dict[str, Any]:
    """The connection config fields an IdP's metadata sets (by hand or on refresh)."""
    return {
        "idp_entity_id": meta.entity_id,
        "idp_sso_url": meta.sso_url,
        "idp_sso_post_url": meta.sso_post_url,
        "idp_slo_url": meta.slo_url,
        "idp_certs": meta.certs,
    }


def check_idp_url(field: str, url: str | None) -> None:
    """IdP endpoints are http(s) URLs (ValueError otherwise): the POST binding serves a page
    that submits itself to one, so `javascript:` or `data:` there would run script on our
    origin."""
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{field} must be an http(s) URL, got {url[:100]!r}")


def parse_idp_metadata(xml: str | bytes, entity_id: str | None = None) -> IdpMetadata:
    """The IdP's entity id, SSO and SLO endpoints and signing certificates (ValueError
    with a reason an admin understands when the document is not usable)."""
    found: dict[str, dict[str, Any]] = {}
    for binding_urn, name in ((C.BINDING_HTTP_REDIRECT, "redirect"), (C.BINDING_HTTP_POST, "post")):
        try:
            candidate = OneLogin_Saml2_IdPMetadataParser.parse(
                xml, required_sso_binding=binding_urn, entity_id=entity_id
            )
        except Exception as exc:  # lxml and python3-saml raise many kinds
            raise ValueError(f"metadata is not valid SAML metadata XML: {exc}") from None
        idp = candidate.get("idp", {})
        if idp.get("singleSignOnService", {}).get("url"):
            found[name] = idp
    if not found:
        raise ValueError("metadata has no IDPSSODescriptor with a Redirect or POST SSO service")
    parsed = found.get("redirect") or found["post"]
    certs: list[str] = []
    multi = parsed.get("x509certMulti", {}).get("signing") or []
    certs.extend(multi)
    if parsed.get("x509cert"):
        certs.append(parsed["x509cert"])
    if not certs:
        raise ValueError("metadata has no signing certificate")
    meta = IdpMetadata(
        entity_id=parsed["entityId"],
        sso_url=parsed["singleSignOnService"]["url"],
        sso_post_url=found["post"]["singleSignOnService"]["url"] if "post" in found else None,
        slo_url=(parsed.get("singleLogoutService") or {}).get("url"),
        certs=list(dict.fromkeys(certs)),
    )
    check_idp_url("the SSO service", meta.sso_url)
    check_idp_url("the POST SSO service", meta.sso_post_url)
    check_idp_url("the SLO service", meta.slo_url)
    return meta


# ---------------------------------------------------------------------- python3-saml setup


def onelogin_settings(
    conf: SamlConfig, sp_private_key: str, urls: SpUrls
) -> OneLogin_Saml2_Settings:
    """python3-saml settings with every safety it offers turned on."""
    idp: dict[str, Any] = {
        "entityId": conf.idp_entity_id,
        "singleSignOnService": {"url": conf.idp_sso_url, "binding": C.BINDING_HTTP_REDIRECT},
        "x509certMulti": {"signing": list(conf.idp_certs), "encryption": list(conf.idp_certs)},
    }
    if conf.idp_slo_url:
        idp["singleLogoutService"] = {"url": conf.idp_slo_url, "binding": C.BINDING_HTTP_REDIRECT}
    settings = {
        "strict": True,
        "debug": False,
        "sp": {
            "entityId": urls.entity_id,
            "assertionConsumerService": {"url": urls.acs, "binding": C.BINDING_HTTP_POST},
            "singleLogoutService": {"url": urls.slo, "binding": C.BINDING_HTTP_REDIRECT},
            "NameIDFormat": conf.name_id_format,
            "x509cert": conf.sp_cert,
            "privateKey": sp_private_key,
        },
        "idp": idp,
        "security": {
            "authnRequestsSigned": True,
            "logoutRequestSigned": True,
            "logoutResponseSigned": True,
            "signMetadata": False,
            "wantMessagesSigned": conf.want_response_signed,
            "wantAssertionsSigned": conf.want_assertions_signed,
            "wantAssertionsEncrypted": conf.want_assertions_encrypted,
            "wantNameId": True,
            "wantNameIdEncrypted": False,
            "wantAttributeStatement": False,
            "requestedAuthnContext": False,
            "rejectDeprecatedAlgorithm": True,
            "rejectUnsolicitedResponsesWithInResponseTo": True,
            "allowRepeatAttributeName": True,
            "signatureAlgorithm": C.RSA_SHA256,
            "digestAlgorithm": C.SHA256,
            "allowSingleLabelDomains": False,
        },
    }
    return OneLogin_Saml2_Settings(settings, sp_validation_only=False)


def _request_data(
    url: str, *, post: Mapping[str, str] = {}, get: Mapping[str, str] = {}
) -> dict[str, Any]:
    """What python3-saml thinks the current request is: built from our configured public
    URL, never from Host headers, so a proxy cannot make a wrong Destination match."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    return {
        "https": "on" if https else "off",
        "http_host": parts.hostname or "",
        "server_port": port,
        "script_name": parts.path,
        "get_data": dict(get),
        "post_data": dict(post),
    }


def sp_metadata(settings: OneLogin_Saml2_Settings) -> str:
    xml = settings.get_sp_metadata()
    errors = settings.validate_metadata(xml)
    if errors:
        raise ValueError(f"SP metadata invalid: {errors}")
    return xml.decode() if isinstance(xml, bytes) else str(xml)


class StartedLogin(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str
    redirect_url: str | None  # redirect binding: send the browser here
    form_html: str | None  # POST binding: serve this page (it posts itself)


def start_login(
    settings: OneLogin_Saml2_Settings,
    urls: SpUrls,
    *,
    binding: Binding,
    relay_state: str,
    post_url: str | None = None,
    force_authn: bool = False,
) -> StartedLogin:
    """A signed AuthnRequest, in the binding the connection uses."""
    if binding == "redirect":
        auth = OneLogin_Saml2_Auth(_request_data(urls.acs), old_settings=settings)
        url = auth.login(return_to=relay_state, force_authn=force_authn)
        return StartedLogin(request_id=auth.get_last_request_id(), redirect_url=url, form_html=None)
    request = OneLogin_Saml2_Authn_Request(settings, force_authn=force_authn)
    security = settings.get_security_data()
    signed = OneLogin_Saml2_Utils.add_sign(
        request.get_xml(),
        settings.get_sp_key(),
        settings.get_sp_cert(),
        sign_algorithm=security["signatureAlgorithm"],
        digest_algorithm=security["digestAlgorithm"],
    )
    encoded = base64.b64encode(signed if isinstance(signed, bytes) else signed.encode()).decode()
    return StartedLogin(
        request_id=request.get_id(),
        redirect_url=None,
        form_html=auto_post_form(
            post_url or settings.get_idp_sso_url(),
            {"SAMLRequest": encoded, "RelayState": relay_state},
        ),
    )


def auto_post_form(action: str, fields: Mapping[str, str]) -> str:
    """A page that POSTs `fields` to `action` as soon as it loads (the POST binding), with
    a button for browsers that run no script."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Signing in</title></head>"
        "<body onload='document.forms[0].submit()'>"
        f'<form method="post" action="{html.escape(action)}">{inputs}'
        "<noscript><button type='submit'>Continue</button></noscript></form></body></html>"
    )


# ---------------------------------------------------------------------- the ACS


def decode_message(b64: str) -> bytes:
    if len(b64) > MAX_MESSAGE_BYTES * 4 // 3 + 4:
        raise LoginRefused("malformed", "SAMLResponse is larger than 512 KiB")
    try:
        return base64.b64decode(b64, validate=False)
    except (binascii.Error, ValueError):
        raise LoginRefused("malformed", "SAMLResponse is not base64") from None


def peek_in_response_to(saml_response_b64: str) -> str | None:
    """InResponseTo of a response, read before validation to find the request we sent
    (nothing is trusted from it until `process_response` has checked everything)."""
    with refusing("SAMLResponse"):
        root = OneLogin_Saml2_XML.to_etree(decode_message(saml_response_b64))
    value = root.get("InResponseTo")
    return str(value) if value else None


_CODES: dict[int, RefusalCode] = {
    OneLogin_Saml2_ValidationError.STATUS_CODE_IS_NOT_SUCCESS: "idp-error",
    OneLogin_Saml2_ValidationError.WRONG_INRESPONSETO: "unknown-request",
    OneLogin_Saml2_ValidationError.ASSERTION_TOO_EARLY: "not-yet-valid",
    OneLogin_Saml2_ValidationError.ASSERTION_EXPIRED: "expired",
    OneLogin_Saml2_ValidationError.RESPONSE_EXPIRED: "expired",
    OneLogin_Saml2_ValidationError.SESSION_EXPIRED: "expired",
    OneLogin_Saml2_ValidationError.WRONG_DESTINATION: "wrong-destination",
    OneLogin_Saml2_ValidationError.EMPTY_DESTINATION: "wrong-destination",
    OneLogin_Saml2_ValidationError.WRONG_AUDIENCE: "wrong-audience",
    OneLogin_Saml2_ValidationError.WRONG_ISSUER: "wrong-issuer",
    OneLogin_Saml2_ValidationError.ISSUER_MULTIPLE_IN_RESPONSE: "wrong-issuer",
    OneLogin_Saml2_ValidationError.ISSUER_NOT_FOUND_IN_ASSERTION: "wrong-issuer",
    OneLogin_Saml2_ValidationError.WRONG_SUBJECTCONFIRMATION: "wrong-recipient",
    OneLogin_Saml2_ValidationError.NO_SIGNED_MESSAGE: "unsigned",
    OneLogin_Saml2_ValidationError.NO_SIGNED_ASSERTION: "unsigned",
    OneLogin_Saml2_ValidationError.NO_SIGNATURE_FOUND: "unsigned",
    OneLogin_Saml2_ValidationError.NO_ENCRYPTED_ASSERTION: "not-encrypted",
    OneLogin_Saml2_ValidationError.INVALID_SIGNATURE: "bad-signature",
    OneLogin_Saml2_ValidationError.DEPRECATED_SIGNATURE_METHOD: "deprecated-algorithm",
    OneLogin_Saml2_ValidationError.DEPRECATED_DIGEST_METHOD: "deprecated-algorithm",
}

# python3-saml's own complaints about an EncryptedAssertion's key information.
_UNDECRYPTABLE = {
    OneLogin_Saml2_ValidationError.KEYINFO_NOT_FOUND_IN_ENCRYPTED_DATA,
    OneLogin_Saml2_ValidationError.CHILDREN_NODE_NOT_FOUND_IN_KEYINFO,
    OneLogin_Saml2_ValidationError.UNSUPPORTED_RETRIEVAL_METHOD,
}

# What python3-saml and lxml raise on a message that is not what they expect, besides
# their own errors: XML that does not parse (lxml), base64 that does not decode
# (binascii.Error), bytes that are not UTF-8 and a DTD or entity (defusedxml), all
# ValueErrors; a redirect-binding message that does not inflate (zlib); and the lookups
# python3-saml makes into a tree without checking the element or attribute is there
# (KeyError, IndexError, AttributeError, TypeError); instants past year 9999.
_UNREADABLE: tuple[type[Exception], ...] = (
    etree.LxmlError,
    ValueError,
    zlib.error,
    KeyError,
    IndexError,
    AttributeError,
    TypeError,
    OverflowError,
    OneLogin_Saml2_Error,
)


def validation_code(error: OneLogin_Saml2_ValidationError) -> RefusalCode:
    if error.code in _UNDECRYPTABLE:
        return "undecryptable"
    return _CODES.get(error.code, "malformed")


@contextmanager
def refusing(what: str) -> Iterator[None]:
    """Turn whatever python3-saml, xmlsec or lxml raise while reading `what` into a
    refusal with a documented code. xmlsec only raises out of python3-saml when it
    decrypts (an EncryptedAssertion or EncryptedID): signature checks report False."""
    try:
        yield
    except LoginRefused:
        raise
    except OneLogin_Saml2_ValidationError as exc:
        raise LoginRefused(validation_code(exc), f"{what}: {exc}") from None
    except xmlsec.Error as exc:
        raise LoginRefused(
            "undecryptable",
            f"{what}: an encrypted element could not be decrypted with this connection's "
            f"key ({exc}); the IdP must encrypt to sp_certificate",
        ) from None
    except _UNREADABLE as exc:
        raise LoginRefused(
            "malformed", f"{what} is unreadable: {type(exc).__name__}: {exc}"
        ) from None


def replay_keep_until(not_on_or_after: dt.datetime, now: dt.datetime) -> dt.datetime:
    """How long an accepted assertion's id stays in the replay cache: past its
    NotOnOrAfter by the margin, never beyond what a datetime holds."""
    return min(max(not_on_or_after, now), _LATEST_KEEP) + REPLAY_MARGIN


_DS = "http://www.w3.org/2000/09/xmldsig#"


def _unknown_signers(document: Any, known: set[str]) -> list[str]:
    """Fingerprints of certificates embedded in the document's signatures that are not
    among the connection's (only a hint for the error: the signature check never trusts
    KeyInfo, it uses the configured certificates)."""
    found = []
    for node in document.iter(f"{{{_DS}}}X509Certificate"):
        text = (node.text or "").strip()
        try:
            print_ = fingerprint(text)
        except ValueError:
            continue
        if print_ not in known:
            found.append(print_)
    return found


def process_response(
    settings: OneLogin_Saml2_Settings,
    conf: SamlConfig,
    urls: SpUrls,
    saml_response_b64: str,
    *,
    request_id: str | None,
) -> SamlAssertion:
    """Validate a response at the ACS and return who signed in (LoginRefused otherwise).
    `request_id` is the AuthnRequest we sent and matched, or None for IdP-initiated."""
    raw = decode_message(saml_response_b64)
    with refusing("SAMLResponse"):
        return _validated(settings, conf, urls, raw, request_id)


def _validated(
    settings: OneLogin_Saml2_Settings,
    conf: SamlConfig,
    urls: SpUrls,
    raw: bytes,
    request_id: str | None,
) -> SamlAssertion:
    try:
        # Parses, and decrypts an EncryptedAssertion (xmlsec.Error: see `refusing`).
        response = OneLogin_Saml2_Response(settings, base64.b64encode(raw).decode())
        response.is_valid(_request_data(urls.acs), request_id=request_id, raise_exceptions=True)
    except OneLogin_Saml2_ValidationError as exc:
        code = validation_code(exc)
        if code == "bad-signature":
            try:
                doc = OneLogin_Saml2_XML.to_etree(raw)
                unknown = _unknown_signers(doc, {fingerprint(c) for c in conf.idp_certs})
            except Exception:
                unknown = []
            if unknown:
                raise LoginRefused(
                    "unknown-certificate",
                    f"signed with a certificate this connection does not trust "
                    f"(SHA-256 {unknown[0]}); update the IdP certificates",
                ) from None
        raise LoginRefused(code, str(exc)) from None
    if request_id is None and response.get_in_response_to() is not None:
        raise LoginRefused("unknown-request", "InResponseTo names a request we did not send")
    # Exact matches where python3-saml is lenient (prefix / substring comparisons).
    destination = response.document.get("Destination")
    if destination is not None and destination != urls.acs:
        raise LoginRefused("wrong-destination", f"Destination {destination!r} is not our ACS")
    for data in response._query_assertion(
        "/saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData"
    ):
        recipient = data.get("Recipient")
        if recipient is not None and recipient != urls.acs:
            raise LoginRefused("wrong-recipient", f"Recipient {recipient!r} is not our ACS")
    name_id = response.get_nameid()
    if not name_id:
        raise LoginRefused("malformed", "the assertion has no NameID")
    assertion_id = response.get_assertion_id()
    not_after = response.get_assertion_not_on_or_after()
    expires = (
        dt.datetime.fromtimestamp(min(not_after, _LATEST_KEEP.timestamp()), dt.UTC)
        if not_after
        else dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    )
    attributes = {k: [str(v) for v in vs] for k, vs in response.get_attributes().items()}
    return SamlAssertion(
        identity=IdpIdentity(
            subject=str(name_id),
            attributes=attributes,
            session_index=response.get_session_index(),
        ),
        assertion_id=str(assertion_id),
        not_on_or_after=expires,
        in_response_to=response.get_in_response_to(),
    )


# ---------------------------------------------------------------------- single logout


class IdpLogout(msgspec.Struct, frozen=True, kw_only=True):
    name_id: str
    session_indexes: list[str]
    redirect_url: str  # our signed LogoutResponse, back to the IdP


def process_idp_logout_request(
    settings: OneLogin_Saml2_Settings, urls: SpUrls, query: Mapping[str, str]
) -> IdpLogout:
    """An IdP's LogoutRequest (redirect binding, signature checked): who to log out, and
    where to send the browser with our LogoutResponse. Unsigned requests are refused
    whatever the connection's settings: anyone could otherwise end a user's sessions."""
    if not query.get("Signature") or not query.get("SigAlg"):
        raise LoginRefused("unsigned", "LogoutRequest without a signature")
    if not settings.get_idp_data().get("singleLogoutService", {}).get("url"):
        # python3-saml would build its answer to no URL at all.
        raise LoginRefused("malformed", "LogoutRequest, but the connection has no idp_slo_url")
    request_data = _request_data(urls.slo, get=query)
    auth = OneLogin_Saml2_Auth(request_data, old_settings=settings)
    with refusing("LogoutRequest"):
        url = auth.process_slo(keep_local_session=True)
        errors = auth.get_errors()
        if errors or not url:
            reason = auth.get_last_error_reason() or ", ".join(errors)
            code: RefusalCode = "bad-signature" if "signature" in reason.lower() else "malformed"
            raise LoginRefused(code, f"LogoutRequest refused: {reason}")
        xml = auth.get_last_request_xml()
        name_id = str(OneLogin_Saml2_Logout_Request.get_nameid(xml))
        indexes = [str(s) for s in OneLogin_Saml2_Logout_Request.get_session_indexes(xml)]
    return IdpLogout(name_id=name_id, session_indexes=indexes, redirect_url=str(url))


def logout_response_in_response_to(saml_response: str) -> str | None:
    """InResponseTo of a LogoutResponse (redirect binding: deflated), read to find the
    LogoutRequest we sent; nothing else is trusted before validation."""
    with refusing("LogoutResponse"):
        xml = OneLogin_Saml2_Utils.decode_base64_and_inflate(saml_response)
        root = OneLogin_Saml2_XML.to_etree(xml)
    value = root.get("InResponseTo")
    return str(value) if value else None


def process_idp_logout_response(
    settings: OneLogin_Saml2_Settings,
    urls: SpUrls,
    query: Mapping[str, str],
    request_id: str | None,
) -> None:
    """The IdP's answer to our LogoutRequest (signature and InResponseTo checked)."""
    auth = OneLogin_Saml2_Auth(_request_data(urls.slo, get=query), old_settings=settings)
    with refusing("LogoutResponse"):
        auth.process_slo(keep_local_session=True, request_id=request_id)
    if auth.get_errors():
        raise LoginRefused("malformed", f"LogoutResponse refused: {auth.get_last_error_reason()}")


def start_logout(
    settings: OneLogin_Saml2_Settings,
    urls: SpUrls,
    *,
    name_id: str,
    session_index: str | None,
    relay_state: str,
) -> tuple[str, str]:
    """Our signed LogoutRequest to the IdP: (request id, redirect URL)."""
    auth = OneLogin_Saml2_Auth(_request_data(urls.slo), old_settings=settings)
    try:
        url = auth.logout(return_to=relay_state, name_id=name_id, session_index=session_index)
    except OneLogin_Saml2_Error as exc:
        raise LoginRefused("malformed", str(exc)) from None
    return str(auth.get_last_request_id()), str(url)
