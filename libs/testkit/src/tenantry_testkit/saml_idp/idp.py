"""`SamlIdp`: the identity provider itself (metadata, signed and optionally encrypted
responses, AuthnRequest and logout handling), built on pysaml2, and the records of what it
was asked."""

from __future__ import annotations

import base64
import functools
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree
from saml2 import (
    BINDING_HTTP_POST,
    BINDING_HTTP_REDIRECT,
    class_name,
    saml,
    samlp,
)
from saml2.config import IdPConfig
from saml2.s_utils import sid
from saml2.server import Server
from saml2.sigver import (
    RSA_OAEP_MGF1P,
    make_temp,
    pre_encryption_part,
    pre_signature_part,
)

from tenantry_testkit.saml_idp.protocol import (
    DIGEST_ALGS,
    ENCRYPTION_ALGS,
    HASH_OF_SIG_ALG,
    MAX_MESSAGE,
    NAMEID_EMAIL,
    NAMEID_PERSISTENT,
    NS_DS,
    NS_MD,
    NS_SAML,
    NS_SAMLP,
    SIG_ALGS,
    XMLSEC1,
    cert_body,
    deflate_b64,
    digest_alg_uri,
    inflate_b64,
    make_key_and_cert,
    parse_xml,
    pem_of_cert,
    pem_of_key,
    redirect_signed_octets,
    sig_alg_uri,
    verify_enveloped_signature,
    verify_redirect_signature,
)
from tenantry_testkit.saml_idp.sp_metadata import RegisteredSp, parse_sp_metadata


@dataclass(frozen=True)
class SamlUser:
    """Who the IdP says logged in: the NameID and the attributes released to the SP."""

    name_id: str
    attributes: dict[str, list[str]] = field(default_factory=dict)
    name_id_format: str = NAMEID_EMAIL


@dataclass(frozen=True)
class AuthnRequestInfo:
    """What an SP's AuthnRequest said, and whether its signature held."""

    request_id: str
    sp_entity_id: str
    acs_url: str | None
    signed: bool
    signature_valid: bool
    sig_alg: str | None
    force_authn: bool
    is_passive: bool = False
    binding: Literal["redirect", "post"] = "redirect"
    relay_state: str | None = None
    destination: str | None = None


@dataclass(frozen=True)
class LogoutMessageInfo:
    """A LogoutRequest or LogoutResponse an SP sent to /slo."""

    kind: Literal["request", "response"]
    message_id: str
    sp_entity_id: str
    binding: Literal["redirect", "post"]
    signed: bool
    signature_valid: bool
    sig_alg: str | None
    relay_state: str | None
    name_id: str | None = None
    session_indexes: tuple[str, ...] = ()
    in_response_to: str | None = None
    status: str | None = None


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _xml_text(result: Any) -> str:
    """pysaml2 returns a signed string or an unsigned instance, depending on the path."""
    if isinstance(result, bytes):
        return result.decode()
    if isinstance(result, str):
        return result
    return str(result.to_string().decode())


class _PysamlServer(Server):  # type: ignore[misc]
    """pysaml2's IdP, with assertion encryption using the algorithm we pick.

    Upstream `_encrypt_assertion` hardcodes a 3DES session key and looks certificates up in
    its own metadata store (which we do not fill); tests want AES by default and 3DES only
    on request."""

    data_encryption: tuple[str, str] = ENCRYPTION_ALGS["aes256-cbc"]

    def has_encrypt_cert_in_metadata(self, sp_entity_id: str) -> bool:
        # SPs live in SamlIdp._sps, not in a pysaml2 metadata store; the certificate is
        # always passed explicitly.
        return False

    def _encrypt_assertion(
        self, encrypt_cert: str, sp_entity_id: str, response: Any, node_xpath: Any = None
    ) -> Any:
        algorithm, session_key = self.data_encryption
        body = cert_body(encrypt_cert)
        pem_file = make_temp(encrypt_cert.encode(), decode=False, delete_tmpfiles=True)
        template = pre_encryption_part(msg_enc=algorithm, key_enc=RSA_OAEP_MGF1P, encrypt_cert=body)
        return self.sec.encrypt_assertion(
            response, pem_file.name, template, key_type=session_key, node_xpath=node_xpath
        )


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _serialized(
    method: Callable[Concatenate[SamlIdp, _P], _R],
) -> Callable[Concatenate[SamlIdp, _P], _R]:
    """Run the method under the IdP's lock: pysaml2 objects are not thread-safe and the HTTP
    side calls into them from worker threads."""

    @functools.wraps(method)
    def locked(self: SamlIdp, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self._lock:
            return method(self, *args, **kwargs)

    return locked


class SamlIdp:
    """A SAML 2.0 IdP: metadata, signed (and optionally encrypted) responses, AuthnRequest
    and logout handling. Serve it over HTTP with `serve_idp` / `running_idp`."""

    def __init__(self, workdir: Path, *, base_url: str) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.base_url = base_url.rstrip("/")
        self._generation = 0
        self._key_pem = ""
        self._cert_pem = ""
        self._sps: dict[str, RegisteredSp] = {}
        self._server: Any = None
        self._lock = threading.RLock()  # pysaml2 is not thread-safe; HTTP work runs in threads
        # What the HTTP side saw and did, for assertions in tests.
        self.received: list[AuthnRequestInfo] = []
        self.logout_messages: list[LogoutMessageInfo] = []
        self.issued_responses: list[str] = []
        self.issued_logout_requests: list[tuple[str, str]] = []  # (sp entity id, request id)
        self.login_page_hits = 0
        self.metadata_hits = 0
        self.errors: list[str] = []
        # Options for responses served over HTTP: `response_options` apply to every one,
        # `next_response_options` to the next one only (then it is cleared).
        self.response_options: dict[str, Any] = {}
        self.next_response_options: dict[str, Any] = {}
        self.metadata_extra_certs: list[str] = []  # listed by GET /metadata (rotation)
        self.auto_submit = True  # the served page posts itself on load
        self._new_key()

    # --- identity -------------------------------------------------------------------

    @property
    def entity_id(self) -> str:
        return f"{self.base_url}/metadata"

    @property
    def metadata_url(self) -> str:
        return f"{self.base_url}/metadata"

    @property
    def sso_redirect_url(self) -> str:
        return f"{self.base_url}/sso/redirect"

    @property
    def sso_post_url(self) -> str:
        return f"{self.base_url}/sso/post"

    @property
    def slo_url(self) -> str:
        return f"{self.base_url}/slo"

    @property
    def initiate_url(self) -> str:
        """GET with `sp=<entity id>` (and optional RelayState): an IdP-initiated login."""
        return f"{self.base_url}/sso/initiate"

    @property
    def cert_pem(self) -> str:
        return self._cert_pem

    @property
    def key_pem(self) -> str:
        return self._key_pem

    @property
    def cert_file(self) -> Path:
        return self.workdir / f"idp-cert-{self._generation}.pem"

    @property
    def key_file(self) -> Path:
        return self.workdir / f"idp-key-{self._generation}.pem"

    def _new_key(self) -> None:
        self._generation += 1
        key, cert = make_key_and_cert(f"Tenantry test IdP {self._generation}")
        self._key_pem, self._cert_pem = pem_of_key(key), pem_of_cert(cert)
        self.key_file.write_text(self._key_pem)
        self.key_file.chmod(0o600)
        self.cert_file.write_text(self._cert_pem)
        self._server = self._build_server()

    def _build_server(self) -> Any:
        config = IdPConfig()
        config.load(
            {
                "entityid": self.entity_id,
                "xmlsec_binary": XMLSEC1,
                "key_file": str(self.key_file),
                "cert_file": str(self.cert_file),
                "signing_algorithm": SIG_ALGS["rsa-sha256"],
                "digest_algorithm": DIGEST_ALGS["sha256"],
                "delete_tmpfiles": True,
                "service": {
                    "idp": {
                        "endpoints": {
                            "single_sign_on_service": [
                                (self.sso_redirect_url, BINDING_HTTP_REDIRECT),
                                (self.sso_post_url, BINDING_HTTP_POST),
                            ],
                            "single_logout_service": [
                                (self.slo_url, BINDING_HTTP_REDIRECT),
                                (self.slo_url, BINDING_HTTP_POST),
                            ],
                        },
                        "name_id_format": [NAMEID_EMAIL, NAMEID_PERSISTENT],
                    }
                },
            }
        )
        return _PysamlServer(config=config)

    @_serialized
    def rotate_key(self) -> str:
        """Make a new signing key and certificate current; returns the OLD certificate PEM
        (list it with `metadata_xml(extra_certs=[old])` to model a rollover window)."""
        old = self._cert_pem
        self._new_key()
        return old

    def metadata_xml(self, *, extra_certs: Sequence[str] = ()) -> str:
        """IdP metadata: the current signing certificate (plus `extra_certs`), SSO over
        HTTP-Redirect and HTTP-POST, SLO over both."""
        md = f"{{{NS_MD}}}"
        root = etree.Element(
            f"{md}EntityDescriptor", nsmap={"md": NS_MD, "ds": NS_DS}, entityID=self.entity_id
        )
        idp = etree.SubElement(
            root,
            f"{md}IDPSSODescriptor",
            protocolSupportEnumeration=NS_SAMLP,
            WantAuthnRequestsSigned="false",
        )
        for pem in (self._cert_pem, *extra_certs):
            descriptor = etree.SubElement(idp, f"{md}KeyDescriptor", use="signing")
            info = etree.SubElement(descriptor, f"{{{NS_DS}}}KeyInfo")
            data = etree.SubElement(info, f"{{{NS_DS}}}X509Data")
            etree.SubElement(data, f"{{{NS_DS}}}X509Certificate").text = cert_body(pem)
        for binding in (BINDING_HTTP_REDIRECT, BINDING_HTTP_POST):
            etree.SubElement(
                idp, f"{md}SingleLogoutService", Binding=binding, Location=self.slo_url
            )
        for name_format in (NAMEID_EMAIL, NAMEID_PERSISTENT):
            etree.SubElement(idp, f"{md}NameIDFormat").text = name_format
        etree.SubElement(
            idp,
            f"{md}SingleSignOnService",
            Binding=BINDING_HTTP_REDIRECT,
            Location=self.sso_redirect_url,
        )
        etree.SubElement(
            idp, f"{md}SingleSignOnService", Binding=BINDING_HTTP_POST, Location=self.sso_post_url
        )
        return str(etree.tostring(root, encoding="unicode"))

    # --- service providers ----------------------------------------------------------

    @_serialized
    def register_sp(self, sp_metadata_xml: str) -> None:
        """Learn an SP from its metadata: where it receives responses, which certificate
        signs its requests, which one responses are encrypted to. Re-registering replaces."""
        sp = parse_sp_metadata(sp_metadata_xml)
        self._sps[sp.entity_id] = sp

    def sp(self, entity_id: str) -> RegisteredSp | None:
        return self._sps.get(entity_id)

    # --- responses ------------------------------------------------------------------

    @_serialized
    def response(
        self,
        *,
        sp_entity_id: str,
        acs_url: str,
        user: SamlUser,
        in_response_to: str | None = None,
        sign_response: bool = True,
        sign_assertion: bool = True,
        encrypt: bool = False,
        audience: str | None = None,
        valid_for: float = 300.0,
        issued_at: datetime | None = None,
        sign_alg: str | None = None,
        digest_alg: str | None = None,
        session_index: str | None = None,
        status_ok: bool = True,
        encryption_alg: str = "aes256-cbc",
        destination: str | None = None,
        issuer: str | None = None,
        encrypt_to: str | None = None,
    ) -> str:
        """A Response to `acs_url` for `user` (XML text; callers base64 it for the POST
        binding). `issued_at` moves the whole validity window (IssueInstant, NotBefore,
        AuthnInstant) and `valid_for` sets NotOnOrAfter relative to it, so an expired
        assertion is `issued_at=now - 1h`. With `encrypt`, the (signed) assertion is an
        EncryptedAssertion to the SP's registered encryption certificate (or to `encrypt_to`,
        a PEM certificate, as an IdP configured with the wrong one does); the response
        signature, when asked for, covers the encrypted form."""
        sign_alg = sig_alg_uri(sign_alg or "rsa-sha256")
        digest_alg = digest_alg_uri(digest_alg or "sha256")
        start = (issued_at or datetime.now(UTC)).replace(microsecond=0)
        end = start + timedelta(seconds=valid_for)
        issuer_id = issuer or self.entity_id
        server = self._server
        if not status_ok:
            status = samlp.Status(
                status_code=samlp.StatusCode(
                    value=samlp.STATUS_RESPONDER,
                    status_code=samlp.StatusCode(value=samlp.STATUS_AUTHN_FAILED),
                ),
                status_message=samlp.StatusMessage(text="authentication failed"),
            )
            result = server._response(
                in_response_to,
                destination or acs_url,
                status,
                saml.Issuer(text=issuer_id, format=saml.NAMEID_FORMAT_ENTITY),
                sign_response,
                [],
                sp_entity_id=sp_entity_id,
                sign_alg=sign_alg,
                digest_alg=digest_alg,
                issue_instant=_instant(start),
            )
            return _xml_text(result)

        assertion = self._assertion(
            sp_entity_id=sp_entity_id,
            acs_url=acs_url,
            user=user,
            in_response_to=in_response_to,
            audience=audience or sp_entity_id,
            start=start,
            end=end,
            session_index=session_index,
            issuer=issuer_id,
        )
        to_sign: list[tuple[str, str]] = []
        encrypt_cert: str | None = None
        if encrypt:
            sp = self._sps.get(sp_entity_id)
            if encrypt_to is not None:
                encrypt_cert = encrypt_to
            elif sp is None or not sp.encryption_certs:
                raise LookupError(
                    f"cannot encrypt to {sp_entity_id!r}: register SP metadata with an "
                    "encryption certificate first"
                )
            else:
                encrypt_cert = sp.encryption_certs[0]
            server.data_encryption = ENCRYPTION_ALGS[encryption_alg]
        elif sign_assertion:
            # Unencrypted path: pysaml2 leaves preparing the assertion signature to the
            # caller (its own _authn_response does this step).
            assertion.signature = pre_signature_part(
                assertion.id, server.sec.my_cert, 2, sign_alg=sign_alg, digest_alg=digest_alg
            )
            to_sign.append((class_name(assertion), assertion.id))
        result = server._response(
            in_response_to,
            destination or acs_url,
            None,
            saml.Issuer(text=issuer_id, format=saml.NAMEID_FORMAT_ENTITY),
            sign_response,
            to_sign,
            sp_entity_id=sp_entity_id,
            encrypt_assertion=encrypt,
            encrypt_cert_assertion=encrypt_cert,
            encrypt_assertion_self_contained=False,
            sign_assertion=sign_assertion,
            sign_alg=sign_alg,
            digest_alg=digest_alg,
            assertion=assertion,
            issue_instant=_instant(start),
        )
        return _xml_text(result)

    def _assertion(
        self,
        *,
        sp_entity_id: str,
        acs_url: str,
        user: SamlUser,
        in_response_to: str | None,
        audience: str,
        start: datetime,
        end: datetime,
        session_index: str | None,
        issuer: str,
    ) -> Any:
        """The assertion, with every instant explicit (pysaml2 only knows "now")."""
        attributes = [
            saml.Attribute(
                name=name,
                name_format=saml.NAME_FORMAT_BASIC,
                attribute_value=[saml.AttributeValue(text=value) for value in values],
            )
            for name, values in user.attributes.items()
        ]
        return saml.Assertion(
            id=sid(),
            version="2.0",
            issue_instant=_instant(start),
            issuer=saml.Issuer(text=issuer, format=saml.NAMEID_FORMAT_ENTITY),
            subject=saml.Subject(
                name_id=saml.NameID(format=user.name_id_format, text=user.name_id),
                subject_confirmation=[
                    saml.SubjectConfirmation(
                        method=saml.SCM_BEARER,
                        subject_confirmation_data=saml.SubjectConfirmationData(
                            in_response_to=in_response_to,
                            not_on_or_after=_instant(end),
                            recipient=acs_url,
                        ),
                    )
                ],
            ),
            conditions=saml.Conditions(
                not_before=_instant(start),
                not_on_or_after=_instant(end),
                audience_restriction=[
                    saml.AudienceRestriction(audience=[saml.Audience(text=audience)])
                ],
            ),
            authn_statement=[
                saml.AuthnStatement(
                    authn_instant=_instant(start),
                    session_index=session_index or sid(),
                    authn_context=saml.AuthnContext(
                        authn_context_class_ref=saml.AuthnContextClassRef(
                            text=saml.AUTHN_PASSWORD_PROTECTED
                        )
                    ),
                )
            ],
            attribute_statement=[saml.AttributeStatement(attribute=attributes)]
            if attributes
            else [],
        )

    # --- requests from SPs ----------------------------------------------------------

    def _decode(self, binding: Literal["redirect", "post"], value: str) -> Any:
        data = inflate_b64(value) if binding == "redirect" else base64.b64decode(value)
        if len(data) > MAX_MESSAGE:
            raise ValueError("the SAML message is larger than 1 MiB")
        return parse_xml(data)

    def _check_signature(
        self,
        *,
        root: Any,
        kind: str,
        binding: Literal["redirect", "post"],
        message: str,
        relay_state: str | None,
        sig_alg: str | None,
        signature: str | None,
        raw_query: str | None,
        certs: Sequence[str],
    ) -> tuple[bool, bool, str | None]:
        if binding == "post":
            return verify_enveloped_signature(root, certs)
        if not signature:
            return False, False, sig_alg
        if not sig_alg:
            return True, False, None
        octets = redirect_signed_octets(kind, message, relay_state, sig_alg, raw_query=raw_query)
        return True, verify_redirect_signature(octets, signature, sig_alg, certs), sig_alg

    def parse_authn_request(
        self,
        *,
        binding: Literal["redirect", "post"],
        saml_request: str,
        relay_state: str | None = None,
        sig_alg: str | None = None,
        signature: str | None = None,
        raw_query: str | None = None,
    ) -> AuthnRequestInfo:
        """Decode an AuthnRequest and check its signature against the registered SP's
        signing certificates: for HTTP-Redirect the detached signature over the query
        (pass `raw_query` to verify the octets exactly as sent), for HTTP-POST the enveloped
        XML signature. An unknown SP's signature is reported as not valid."""
        root = self._decode(binding, saml_request)
        if root.tag != f"{{{NS_SAMLP}}}AuthnRequest":
            raise ValueError(f"not an AuthnRequest: {root.tag}")
        issuer = root.findtext(f"{{{NS_SAML}}}Issuer") or ""
        sp = self._sps.get(issuer.strip())
        signed, valid, alg = self._check_signature(
            root=root,
            kind="SAMLRequest",
            binding=binding,
            message=saml_request,
            relay_state=relay_state,
            sig_alg=sig_alg,
            signature=signature,
            raw_query=raw_query,
            certs=sp.signing_certs if sp else (),
        )
        acs_url = root.get("AssertionConsumerServiceURL")
        if acs_url is None and sp is not None:
            index = root.get("AssertionConsumerServiceIndex")
            chosen = (
                next((e for e in sp.acs if index is not None and str(e.index) == index), None)
                or sp.default_acs()
            )
            acs_url = chosen.location if chosen else None
        return AuthnRequestInfo(
            request_id=root.get("ID", ""),
            sp_entity_id=issuer.strip(),
            acs_url=acs_url,
            signed=signed,
            signature_valid=valid,
            sig_alg=alg,
            force_authn=root.get("ForceAuthn") in ("true", "1"),
            is_passive=root.get("IsPassive") in ("true", "1"),
            binding=binding,
            relay_state=relay_state,
            destination=root.get("Destination"),
        )

    def refusal(self, info: AuthnRequestInfo) -> str | None:
        """Why a real IdP would refuse this request (None: serve it). Known SPs must send a
        valid signature when they sign (or when their metadata promises to), and may only
        ask for an ACS URL listed in their metadata."""
        sp = self._sps.get(info.sp_entity_id)
        if sp is None:
            return None if info.acs_url else "unknown SP and no AssertionConsumerServiceURL"
        if info.signed and not info.signature_valid:
            return "the AuthnRequest signature is not valid"
        if sp.authn_requests_signed and not info.signed:
            return "the SP's metadata says AuthnRequestsSigned but the request is unsigned"
        if info.acs_url is None:
            return "no AssertionConsumerService for the SP"
        if sp.acs and info.acs_url not in {e.location for e in sp.acs}:
            return "the AssertionConsumerServiceURL is not in the SP's metadata"
        return None

    # --- logout ---------------------------------------------------------------------

    @_serialized
    def logout_request(
        self,
        *,
        sp_entity_id: str,
        slo_url: str,
        name_id: str,
        session_index: str | None,
        name_id_format: str = NAMEID_EMAIL,
        sign: bool = True,
        sign_alg: str | None = None,
        digest_alg: str | None = None,
    ) -> str:
        """An IdP-initiated LogoutRequest (signed XML) for the SP's session. For the
        redirect binding pass it to `redirect_url(..., saml_request=...)`."""
        request_id, request = self._server.create_logout_request(
            slo_url,
            sp_entity_id,
            name_id=saml.NameID(format=name_id_format, text=name_id),
            session_indexes=[session_index] if session_index else None,
            sign=sign,
            sign_alg=sig_alg_uri(sign_alg or "rsa-sha256"),
            digest_alg=digest_alg_uri(digest_alg or "sha256"),
        )
        self.issued_logout_requests.append((sp_entity_id, request_id))
        return _xml_text(request)

    @_serialized
    def logout_response(
        self,
        *,
        in_response_to: str,
        destination: str,
        status_ok: bool = True,
        sign: bool = False,
        sign_alg: str | None = None,
        digest_alg: str | None = None,
    ) -> str:
        """A LogoutResponse XML. Unsigned by default because the redirect binding signs the
        query instead (`redirect_url`); pass `sign=True` for the POST binding."""
        status = samlp.Status(
            status_code=samlp.StatusCode(
                value=samlp.STATUS_SUCCESS if status_ok else samlp.STATUS_RESPONDER
            )
        )
        response = samlp.LogoutResponse(
            id=sid(),
            version="2.0",
            issue_instant=_instant(datetime.now(UTC)),
            issuer=saml.Issuer(text=self.entity_id, format=saml.NAMEID_FORMAT_ENTITY),
            in_response_to=in_response_to,
            destination=destination,
            status=status,
        )
        if not sign:
            return _xml_text(response)
        return _xml_text(
            self._server.sign(
                response,
                sign_alg=sig_alg_uri(sign_alg or "rsa-sha256"),
                digest_alg=digest_alg_uri(digest_alg or "sha256"),
            )
        )

    def parse_logout_message(
        self,
        *,
        binding: Literal["redirect", "post"],
        saml_request: str | None = None,
        saml_response: str | None = None,
        relay_state: str | None = None,
        sig_alg: str | None = None,
        signature: str | None = None,
        raw_query: str | None = None,
    ) -> LogoutMessageInfo:
        """Decode an SP's LogoutRequest (`saml_request`) or LogoutResponse (`saml_response`)
        and check its signature like `parse_authn_request` does."""
        kind: Literal["request", "response"] = "request" if saml_request else "response"
        message = saml_request or saml_response
        if not message:
            raise ValueError("neither SAMLRequest nor SAMLResponse")
        root = self._decode(binding, message)
        expected = "LogoutRequest" if kind == "request" else "LogoutResponse"
        if root.tag != f"{{{NS_SAMLP}}}{expected}":
            raise ValueError(f"not a {expected}: {root.tag}")
        issuer = (root.findtext(f"{{{NS_SAML}}}Issuer") or "").strip()
        sp = self._sps.get(issuer)
        signed, valid, alg = self._check_signature(
            root=root,
            kind="SAMLRequest" if kind == "request" else "SAMLResponse",
            binding=binding,
            message=message,
            relay_state=relay_state,
            sig_alg=sig_alg,
            signature=signature,
            raw_query=raw_query,
            certs=sp.signing_certs if sp else (),
        )
        status = root.find(f"{{{NS_SAMLP}}}Status/{{{NS_SAMLP}}}StatusCode")
        return LogoutMessageInfo(
            kind=kind,
            message_id=root.get("ID", ""),
            sp_entity_id=issuer,
            binding=binding,
            signed=signed,
            signature_valid=valid,
            sig_alg=alg,
            relay_state=relay_state,
            name_id=root.findtext(f"{{{NS_SAML}}}NameID"),
            session_indexes=tuple(
                (e.text or "") for e in root.findall(f"{{{NS_SAMLP}}}SessionIndex")
            ),
            in_response_to=root.get("InResponseTo"),
            status=status.get("Value") if status is not None else None,
        )

    def redirect_url(
        self,
        destination: str,
        *,
        saml_request: str | None = None,
        saml_response: str | None = None,
        relay_state: str | None = None,
        sign: bool = True,
        sig_alg: str | None = None,
    ) -> str:
        """`destination` with an HTTP-Redirect binding query carrying the message (XML),
        signed with the IdP key over the query as the binding specifies."""
        kind = "SAMLRequest" if saml_request is not None else "SAMLResponse"
        message = deflate_b64(saml_request if saml_request is not None else saml_response or "")
        alg = sig_alg_uri(sig_alg or "rsa-sha256")
        query = f"{kind}={urllib.parse.quote_plus(message, safe='')}"
        if relay_state is not None:
            query += f"&RelayState={urllib.parse.quote_plus(relay_state, safe='')}"
        if sign:
            query += f"&SigAlg={urllib.parse.quote_plus(alg, safe='')}"
            private = serialization.load_pem_private_key(self._key_pem.encode(), password=None)
            assert isinstance(private, rsa.RSAPrivateKey)
            signature = private.sign(query.encode(), padding.PKCS1v15(), HASH_OF_SIG_ALG[alg]())
            query += "&Signature=" + urllib.parse.quote_plus(
                base64.b64encode(signature).decode(), safe=""
            )
        separator = "&" if "?" in destination else "?"
        return f"{destination}{separator}{query}"
