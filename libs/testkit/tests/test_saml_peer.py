"""Self-tests of the SAML test IdP and the attack helpers, without python3-saml.

Signatures are checked with the `xmlsec1` binary and redirect-binding signatures with
`cryptography`, so the peer is shown to be correct by tools other than the SP under test.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import subprocess
import urllib.parse
import uuid
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import lxml.html
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from tenantry_testkit.saml_attacks import (
    ASSERTION_XSW_VARIANTS,
    RESPONSE_XSW_VARIANTS,
    XSW_VARIANTS,
    assertion_digest,
    comment_injection,
    replace_audience,
    resign_with_unknown_key,
    sign_element,
    signature_wrapping,
    strip_signatures,
    tamper_name_id,
)
from tenantry_testkit.saml_idp import (
    SIG_ALGS,
    XMLSEC1,
    SamlIdp,
    SamlUser,
    cert_body,
    make_key_and_cert,
    pem_of_cert,
    pem_of_key,
    running_idp,
)

SP_ENTITY = "https://sp.tenantry.test/saml/metadata"
ACS = "https://sp.tenantry.test/saml/acs"
SP_SLO = "https://sp.tenantry.test/saml/slo"
NS = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
    "xenc": "http://www.w3.org/2001/04/xmlenc#",
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
}
RSA_SHA256 = SIG_ALGS["rsa-sha256"]
ANN = SamlUser(
    "ann@acme.test",
    {"email": ["ann@acme.test"], "givenName": ["Ann"], "sn": ["Lee"], "groups": ["eng", "ops"]},
)


@dataclass(frozen=True)
class Sp:
    """A throwaway service provider: its key, certificate and metadata."""

    key: rsa.RSAPrivateKey
    key_file: Path
    cert_pem: str
    metadata: str


@pytest.fixture
def sp(tmp_path: Path) -> Sp:
    key, cert = make_key_and_cert("sp.tenantry.test")
    key_file = tmp_path / "sp-key.pem"
    key_file.write_text(pem_of_key(key))
    body = cert_body(pem_of_cert(cert))
    key_info = (
        '<ds:KeyInfo xmlns:ds="http://www.w3.org/2000/09/xmldsig#"><ds:X509Data>'
        f"<ds:X509Certificate>{body}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>"
    )
    metadata = (
        '<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" '
        f'entityID="{SP_ENTITY}"><md:SPSSODescriptor AuthnRequestsSigned="true" '
        'WantAssertionsSigned="true" '
        'protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">'
        f'<md:KeyDescriptor use="signing">{key_info}</md:KeyDescriptor>'
        f'<md:KeyDescriptor use="encryption">{key_info}</md:KeyDescriptor>'
        '<md:SingleLogoutService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" '
        f'Location="{SP_SLO}"/>'
        "<md:NameIDFormat>urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
        "</md:NameIDFormat>"
        '<md:AssertionConsumerService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" '
        f'Location="{ACS}" index="0" isDefault="true"/>'
        "</md:SPSSODescriptor></md:EntityDescriptor>"
    )
    return Sp(key, key_file, pem_of_cert(cert), metadata)


@pytest.fixture
def idp(tmp_path: Path, sp: Sp) -> SamlIdp:
    peer = SamlIdp(tmp_path / "idp", base_url="http://127.0.0.1:9")
    peer.register_sp(sp.metadata)
    return peer


def xml_of(text: str | bytes) -> Any:
    return etree.fromstring(text.encode() if isinstance(text, str) else text)


def xmlsec1_verify(workdir: Path, xml: str, cert_pem: str, node_xpath: str) -> bool:
    """`xmlsec1 --verify` of the signature `node_xpath` selects, trusting only `cert_pem`."""
    name = uuid.uuid4().hex
    doc, cert = workdir / f"{name}.xml", workdir / f"{name}.crt"
    doc.write_text(xml)
    cert.write_text(cert_pem)
    result = subprocess.run(
        [
            XMLSEC1,
            "--verify",
            "--pubkey-cert-pem",
            str(cert),
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:protocol:Response",
            "--id-attr:ID",
            "urn:oasis:names:tc:SAML:2.0:assertion:Assertion",
            "--node-xpath",
            node_xpath,
            str(doc),
        ],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


RESPONSE_SIG = "/*/*[local-name()='Signature']"
ASSERTION_SIG = "/*/*[local-name()='Assertion']/*[local-name()='Signature']"


def sig_referencing(element_id: str) -> str:
    return (
        "//*[local-name()='Signature'][*[local-name()='SignedInfo']"
        f"/*[local-name()='Reference'][@URI='#{element_id}']]"
    )


def direct_response(idp: SamlIdp, **options: Any) -> str:
    return idp.response(sp_entity_id=SP_ENTITY, acs_url=ACS, user=ANN, **options)


# --- responses ------------------------------------------------------------------------


def test_response_is_signed_rsa_sha256_and_xmlsec1_accepts_it(
    idp: SamlIdp, sp: Sp, tmp_path: Path
) -> None:
    xml = direct_response(idp, in_response_to="_req1")
    root = xml_of(xml)
    methods = {e.get("Algorithm") for e in root.iterfind(".//ds:SignatureMethod", NS)}
    digests = {e.get("Algorithm") for e in root.iterfind(".//ds:DigestMethod", NS)}
    assert methods == {RSA_SHA256}
    assert digests == {"http://www.w3.org/2001/04/xmlenc#sha256"}
    assert root.get("InResponseTo") == "_req1"
    assert root.get("Destination") == ACS
    assertion = root.find("saml:Assertion", NS)
    assert assertion.findtext("saml:Subject/saml:NameID", namespaces=NS) == "ann@acme.test"
    assert assertion.findtext(".//saml:Audience", namespaces=NS) == SP_ENTITY
    data = assertion.find(".//saml:SubjectConfirmationData", NS)
    assert (data.get("Recipient"), data.get("InResponseTo")) == (ACS, "_req1")
    attributes = {
        a.get("Name"): [v.text for v in a.iterfind("saml:AttributeValue", NS)]
        for a in assertion.iterfind(".//saml:Attribute", NS)
    }
    assert attributes == ANN.attributes
    assert xmlsec1_verify(tmp_path, xml, idp.cert_pem, RESPONSE_SIG)
    assert xmlsec1_verify(tmp_path, xml, idp.cert_pem, ASSERTION_SIG)
    # Negative control: the SP's certificate must not verify the IdP's signatures.
    assert not xmlsec1_verify(tmp_path, xml, sp.cert_pem, RESPONSE_SIG)


def test_sha1_override_unsigned_and_error_responses(idp: SamlIdp, tmp_path: Path) -> None:
    sha1 = direct_response(idp, sign_alg="rsa-sha1", digest_alg="sha1")
    methods = {e.get("Algorithm") for e in xml_of(sha1).iterfind(".//ds:SignatureMethod", NS)}
    assert methods == {SIG_ALGS["rsa-sha1"]}
    assert xmlsec1_verify(tmp_path, sha1, idp.cert_pem, ASSERTION_SIG)

    only_response = xml_of(direct_response(idp, sign_assertion=False))
    assert only_response.find("ds:Signature", NS) is not None
    assert only_response.find("saml:Assertion/ds:Signature", NS) is None
    unsigned = xml_of(direct_response(idp, sign_response=False, sign_assertion=False))
    assert unsigned.find(".//ds:Signature", NS) is None

    failed = xml_of(direct_response(idp, status_ok=False))
    assert failed.find("saml:Assertion", NS) is None
    code = failed.find("samlp:Status/samlp:StatusCode", NS)
    assert code.get("Value") == "urn:oasis:names:tc:SAML:2.0:status:Responder"


def test_issued_at_shifts_the_whole_validity_window(idp: SamlIdp) -> None:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    root = xml_of(direct_response(idp, issued_at=hour_ago, valid_for=300, audience="other"))

    def when(value: str) -> datetime:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)

    conditions = root.find(".//saml:Conditions", NS)
    assert abs(when(root.get("IssueInstant")) - hour_ago) < timedelta(seconds=2)
    assert abs(when(conditions.get("NotBefore")) - hour_ago) < timedelta(seconds=2)
    assert when(conditions.get("NotOnOrAfter")) < datetime.now(UTC) - timedelta(minutes=50)
    confirmation = root.find(".//saml:SubjectConfirmationData", NS)
    assert confirmation.get("NotOnOrAfter") == conditions.get("NotOnOrAfter")
    assert root.findtext(".//saml:Audience", namespaces=NS) == "other"


def test_encrypted_assertion_decrypts_with_the_sp_key(idp: SamlIdp, sp: Sp, tmp_path: Path) -> None:
    xml = direct_response(idp, encrypt=True)
    root = xml_of(xml)
    assert root.find("saml:Assertion", NS) is None
    method = root.find("saml:EncryptedAssertion/xenc:EncryptedData/xenc:EncryptionMethod", NS)
    assert method.get("Algorithm") == "http://www.w3.org/2001/04/xmlenc#aes256-cbc"
    assert xmlsec1_verify(tmp_path, xml, idp.cert_pem, RESPONSE_SIG)

    encrypted, decrypted = tmp_path / "enc.xml", tmp_path / "dec.xml"
    encrypted.write_text(xml)
    subprocess.run(
        [
            XMLSEC1,
            "--decrypt",
            "--privkey-pem",
            str(sp.key_file),
            "--output",
            str(decrypted),
            str(encrypted),
        ],
        capture_output=True,
        timeout=30,
        check=True,
    )
    plain = decrypted.read_text()
    assertion = xml_of(plain).find("saml:EncryptedAssertion/saml:Assertion", NS)
    assert assertion.findtext("saml:Subject/saml:NameID", namespaces=NS) == "ann@acme.test"
    signed_inside = "//*[local-name()='Assertion']/*[local-name()='Signature']"
    assert xmlsec1_verify(tmp_path, plain, idp.cert_pem, signed_inside)

    with pytest.raises(LookupError):
        idp.response(sp_entity_id="https://unknown.test", acs_url=ACS, user=ANN, encrypt=True)


def test_rotation_returns_the_old_cert_and_metadata_lists_both(
    idp: SamlIdp, tmp_path: Path
) -> None:
    old = idp.cert_pem
    assert idp.rotate_key() == old
    assert idp.cert_pem != old
    listed = [
        e.text
        for e in xml_of(idp.metadata_xml(extra_certs=[old])).iterfind(
            ".//md:KeyDescriptor[@use='signing']//ds:X509Certificate", NS
        )
    ]
    assert listed == [cert_body(idp.cert_pem), cert_body(old)]
    xml = direct_response(idp)
    assert xmlsec1_verify(tmp_path, xml, idp.cert_pem, ASSERTION_SIG)
    assert not xmlsec1_verify(tmp_path, xml, old, ASSERTION_SIG)


def test_metadata_describes_the_idp(idp: SamlIdp) -> None:
    root = xml_of(idp.metadata_xml())
    assert root.get("entityID") == idp.entity_id == "http://127.0.0.1:9/metadata"
    services = {
        (e.get("Binding").rsplit(":", 1)[1], e.get("Location"))
        for e in root.iterfind(".//md:SingleSignOnService", NS)
    }
    assert services == {
        ("HTTP-Redirect", idp.sso_redirect_url),
        ("HTTP-POST", idp.sso_post_url),
    }
    assert root.find(".//md:SingleLogoutService", NS).get("Location") == idp.slo_url


# --- requests from the SP -----------------------------------------------------------


def authn_request(destination: str, request_id: str, *, force_authn: bool = False) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    force = ' ForceAuthn="true"' if force_authn else ""
    return (
        '<samlp:AuthnRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
        f'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="{request_id}" '
        f'Version="2.0" IssueInstant="{now}" Destination="{destination}"{force} '
        'ProtocolBinding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" '
        f'AssertionConsumerServiceURL="{ACS}"><saml:Issuer>{SP_ENTITY}</saml:Issuer>'
        "</samlp:AuthnRequest>"
    )


def signed_query(
    key: rsa.RSAPrivateKey, kind: str, xml: str, relay_state: str | None = "/after"
) -> str:
    """An HTTP-Redirect binding query, signed the way the bindings spec says: deflate,
    base64, URL-encode, then sign `kind=..&RelayState=..&SigAlg=..`."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    message = base64.b64encode(compressor.compress(xml.encode()) + compressor.flush()).decode()
    query = f"{kind}={urllib.parse.quote_plus(message)}"
    if relay_state is not None:
        query += f"&RelayState={urllib.parse.quote_plus(relay_state)}"
    query += f"&SigAlg={urllib.parse.quote_plus(RSA_SHA256)}"
    signature = key.sign(query.encode(), padding.PKCS1v15(), hashes.SHA256())
    return query + "&Signature=" + urllib.parse.quote_plus(base64.b64encode(signature).decode())


def test_parse_authn_request_checks_the_redirect_signature(idp: SamlIdp, sp: Sp) -> None:
    request_id = f"_{uuid.uuid4().hex}"
    query = signed_query(sp.key, "SAMLRequest", authn_request(idp.sso_redirect_url, request_id))
    params = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}

    def parse(**override: Any) -> Any:
        args = {
            "binding": "redirect",
            "saml_request": params["SAMLRequest"],
            "relay_state": params["RelayState"],
            "sig_alg": params["SigAlg"],
            "signature": params["Signature"],
            **override,
        }
        return idp.parse_authn_request(**args)

    info = parse()
    assert (info.request_id, info.sp_entity_id, info.acs_url) == (request_id, SP_ENTITY, ACS)
    assert (info.signed, info.signature_valid, info.sig_alg) == (True, True, RSA_SHA256)
    assert info.force_authn is False
    assert parse(raw_query=query).signature_valid
    assert not parse(relay_state="/elsewhere").signature_valid
    unsigned = parse(signature=None, sig_alg=None)
    assert (unsigned.signed, unsigned.signature_valid) == (False, False)
    assert idp.refusal(unsigned) is not None  # metadata says AuthnRequestsSigned


def test_parse_authn_request_checks_the_post_signature(idp: SamlIdp, sp: Sp) -> None:
    request_id = f"_{uuid.uuid4().hex}"
    root = xml_of(authn_request(idp.sso_post_url, request_id, force_authn=True))
    sign_element(root, key_pem=pem_of_key(sp.key), cert_pem=sp.cert_pem)
    encoded = base64.b64encode(etree.tostring(root)).decode()
    info = idp.parse_authn_request(binding="post", saml_request=encoded, relay_state=None)
    assert (info.signed, info.signature_valid, info.force_authn) == (True, True, True)
    assert idp.refusal(info) is None
    root.find("saml:Issuer", NS).tail = " "  # any change after signing breaks the digest
    broken = base64.b64encode(etree.tostring(root)).decode()
    info = idp.parse_authn_request(binding="post", saml_request=broken, relay_state=None)
    assert (info.signed, info.signature_valid) == (True, False)
    assert idp.refusal(info) is not None


# --- the HTTP server ----------------------------------------------------------------


def auto_post_form(page: str) -> tuple[str, dict[str, str], Any]:
    document = lxml.html.fromstring(page)
    form = document.forms[0]
    return form.action, dict(form.fields), document


async def test_server_serves_metadata_and_auto_posts_a_response(tmp_path: Path, sp: Sp) -> None:
    async with running_idp(tmp_path / "idp", login_as=lambda: ANN) as idp:
        idp.register_sp(sp.metadata)
        async with httpx.AsyncClient(timeout=30) as client:
            metadata = await client.get(idp.metadata_url)
            assert metadata.status_code == 200
            assert xml_of(metadata.text).get("entityID") == idp.entity_id
            assert idp.metadata_hits == 1

            request_id = f"_{uuid.uuid4().hex}"
            xml = authn_request(idp.sso_redirect_url, request_id)
            query = signed_query(sp.key, "SAMLRequest", xml)
            page = await client.get(f"{idp.sso_redirect_url}?{query}")
            assert page.status_code == 200, page.text
            action, fields, document = auto_post_form(page.text)
            assert action == ACS
            assert fields["RelayState"] == "/after"
            assert document.get_element_by_id("continue").get("type") == "submit"
            assert "submit()" in document.body.get("onload")
            response = base64.b64decode(fields["SAMLResponse"]).decode()
            assert xml_of(response).get("InResponseTo") == request_id
            assert xmlsec1_verify(tmp_path, response, idp.cert_pem, ASSERTION_SIG)
            info = idp.received[-1]
            assert (info.request_id, info.signed, info.signature_valid) == (
                request_id,
                True,
                True,
            )
            assert idp.login_page_hits == 1
            assert idp.issued_responses == [response]

            # A request whose signature does not hold is refused.
            tampered = query.replace("RelayState=%2Fafter", "RelayState=%2Fevil")
            refused = await client.get(f"{idp.sso_redirect_url}?{tampered}")
            assert refused.status_code == 400
            assert idp.received[-1].signature_valid is False

            # The next response only is encrypted and unsigned at the Response level.
            idp.next_response_options.update(encrypt=True, sign_response=False)
            query = signed_query(sp.key, "SAMLRequest", authn_request(idp.sso_redirect_url, "_a"))
            _, fields, _ = auto_post_form(
                (await client.get(f"{idp.sso_redirect_url}?{query}")).text
            )
            root = xml_of(base64.b64decode(fields["SAMLResponse"]))
            assert root.find("saml:EncryptedAssertion", NS) is not None
            assert root.find("ds:Signature", NS) is None
            query = signed_query(sp.key, "SAMLRequest", authn_request(idp.sso_redirect_url, "_b"))
            _, fields, _ = auto_post_form(
                (await client.get(f"{idp.sso_redirect_url}?{query}")).text
            )
            assert (
                xml_of(base64.b64decode(fields["SAMLResponse"])).find("saml:Assertion", NS)
                is not None
            )

            # POST binding, and an IdP-initiated (unsolicited) login.
            root = xml_of(authn_request(idp.sso_post_url, "_c"))
            sign_element(root, key_pem=pem_of_key(sp.key), cert_pem=sp.cert_pem)
            posted = await client.post(
                idp.sso_post_url,
                data={"SAMLRequest": base64.b64encode(etree.tostring(root)).decode()},
            )
            assert posted.status_code == 200
            assert idp.received[-1].binding == "post"
            initiated = await client.get(idp.initiate_url, params={"sp": SP_ENTITY})
            _, fields, _ = auto_post_form(initiated.text)
            assert xml_of(base64.b64decode(fields["SAMLResponse"])).get("InResponseTo") is None
            assert "RelayState" not in fields
        assert idp.errors == []


async def test_server_single_logout(tmp_path: Path, sp: Sp) -> None:
    async with running_idp(tmp_path / "idp", login_as=lambda: ANN) as idp:
        idp.register_sp(sp.metadata)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        logout = (
            '<samlp:LogoutRequest xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
            'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_lo1" Version="2.0" '
            f'IssueInstant="{now}" Destination="{idp.slo_url}">'
            f"<saml:Issuer>{SP_ENTITY}</saml:Issuer><saml:NameID>ann@acme.test</saml:NameID>"
            "<samlp:SessionIndex>s1</samlp:SessionIndex></samlp:LogoutRequest>"
        )
        async with httpx.AsyncClient(timeout=30) as client:
            query = signed_query(sp.key, "SAMLRequest", logout, relay_state="/bye")
            answer = await client.get(f"{idp.slo_url}?{query}")
            assert answer.status_code == 302
            location = answer.headers["location"]
            base, _, raw = location.partition("?")
            assert base == SP_SLO
            # Verify the IdP's redirect signature over the raw query, as an SP must.
            signed, _, signature = raw.rpartition("&Signature=")
            public = x509.load_pem_x509_certificate(idp.cert_pem.encode()).public_key()
            assert isinstance(public, rsa.RSAPublicKey)
            public.verify(
                base64.b64decode(urllib.parse.unquote_plus(signature)),
                signed.encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            params = urllib.parse.parse_qs(raw)
            assert params["RelayState"] == ["/bye"]
            response = zlib.decompress(base64.b64decode(params["SAMLResponse"][0]), -15)
            assert xml_of(response.decode()).get("InResponseTo") == "_lo1"
            info = idp.logout_messages[-1]
            assert (info.kind, info.signature_valid, info.session_indexes) == (
                "request",
                True,
                ("s1",),
            )

            # The SP answering an IdP-initiated logout.
            issued = idp.logout_request(
                sp_entity_id=SP_ENTITY, slo_url=SP_SLO, name_id="ann@acme.test", session_index="s1"
            )
            issued_id = xml_of(issued).get("ID")
            assert xml_of(issued).find("ds:Signature", NS) is not None
            sp_answer = (
                '<samlp:LogoutResponse xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
                'xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_lr1" Version="2.0" '
                f'IssueInstant="{now}" InResponseTo="{issued_id}">'
                f"<saml:Issuer>{SP_ENTITY}</saml:Issuer><samlp:Status><samlp:StatusCode "
                'Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>'
                "</samlp:LogoutResponse>"
            )
            query = signed_query(sp.key, "SAMLResponse", sp_answer, relay_state=None)
            done = await client.get(f"{idp.slo_url}?{query}")
            assert (done.status_code, done.text) == (200, "logged out")
            assert idp.logout_messages[-1].in_response_to == issued_id


# --- attacks --------------------------------------------------------------------------


def name_id_read_naively(xml: str) -> str:
    """What a careless SP reads: the first Assertion child of the top-level Response."""
    value = xml_of(xml).findtext("saml:Assertion/saml:Subject/saml:NameID", namespaces=NS)
    assert isinstance(value, str)
    return value


def test_tamper_strip_and_audience(idp: SamlIdp, tmp_path: Path) -> None:
    xml = direct_response(idp)
    tampered = tamper_name_id(xml, "mallory@acme.test")
    assert name_id_read_naively(tampered) == "mallory@acme.test"
    assert "ann@acme.test" not in tampered  # the email attribute followed
    assert xml_of(tampered).find(".//ds:Signature", NS) is not None
    assert not xmlsec1_verify(tmp_path, tampered, idp.cert_pem, ASSERTION_SIG)

    stripped = strip_signatures(xml)
    assert xml_of(stripped).find(".//ds:Signature", NS) is None
    assert name_id_read_naively(stripped) == "ann@acme.test"

    moved = replace_audience(xml, "https://other-sp.test")
    assert xml_of(moved).findtext(".//saml:Audience", namespaces=NS) == "https://other-sp.test"
    assert xml_of(moved).find(".//ds:Signature", NS) is not None
    assert not xmlsec1_verify(tmp_path, moved, idp.cert_pem, ASSERTION_SIG)


def naive_verify(xml: str, cert_pem: str, element_id: str) -> bool:
    """A verifier of the careless kind XSW targets: find the Signature whose Reference
    points at `element_id`, digest that element minus its own Signature child, compare,
    check SignatureValue over SignedInfo. It never asks where the element sits."""
    root = xml_of(xml)
    target = next((e for e in root.iter() if e.get("ID") == element_id), None)
    for signature in root.iter(f"{{{NS['ds']}}}Signature"):
        info = signature.find("ds:SignedInfo", NS)
        reference = info.find("ds:Reference", NS)
        if target is None or reference.get("URI") != f"#{element_id}":
            continue
        subject = copy.deepcopy(target)
        for inner in subject.findall("ds:Signature", NS):
            subject.remove(inner)  # pysaml2 output has no whitespace tails to keep
        canonical = etree.tostring(subject, method="c14n", exclusive=True, with_comments=False)
        digest = base64.b64encode(hashlib.sha256(canonical).digest()).decode()
        if digest != reference.findtext("ds:DigestValue", namespaces=NS):
            return False
        public = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        try:
            public.verify(
                base64.b64decode(signature.findtext("ds:SignatureValue", namespaces=NS)),
                etree.tostring(info, method="c14n", exclusive=True, with_comments=False),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return False
        return True
    return False


@pytest.mark.parametrize("variant", XSW_VARIANTS)
def test_signature_wrapping_keeps_the_original_signature(
    idp: SamlIdp, tmp_path: Path, variant: int
) -> None:
    xml = direct_response(idp)
    original = xml_of(xml)
    attacked = signature_wrapping(xml, variant, "mallory@acme.test")
    assert attacked != xml
    assert xml_of(attacked).find(".//ds:Signature", NS) is not None
    assert name_id_read_naively(attacked) == "mallory@acme.test"
    if variant in RESPONSE_XSW_VARIANTS:
        signed_id = original.get("ID")
    else:
        signed_id = original.find("saml:Assertion", NS).get("ID")
    assert naive_verify(xml, idp.cert_pem, signed_id)  # the naive verifier works at all
    strict = xmlsec1_verify(tmp_path, attacked, idp.cert_pem, sig_referencing(signed_id))
    if variant == 9:
        # Digest smuggling: SignedInfo is untouched, the real digest no longer matches,
        # and the first DigestValue in document order is the attacker's.
        assert not naive_verify(attacked, idp.cert_pem, signed_id)
        assert not strict
        first = xml_of(attacked).find(".//ds:DigestValue", NS)
        assert first.getparent().tag == f"{{{NS['samlp']}}}Extensions"
        assert first.text == assertion_digest(attacked)[1]
        return
    assert naive_verify(attacked, idp.cert_pem, signed_id)
    assert "ann@acme.test" in attacked  # the signed original is still in there
    # Originals inside the copied Signature fall to the enveloped-signature transform
    # as xmlsec applies it; the others verify even for xmlsec1.
    assert strict is (variant not in (1, 6, 8))


def test_wrapping_variants_need_the_matching_signature(idp: SamlIdp) -> None:
    only_assertion = direct_response(idp, sign_response=False)
    only_response = direct_response(idp, sign_assertion=False)
    with pytest.raises(ValueError, match="signed Response"):
        signature_wrapping(only_assertion, RESPONSE_XSW_VARIANTS[0], "m@acme.test")
    with pytest.raises(ValueError, match="signed Assertion"):
        signature_wrapping(only_response, ASSERTION_XSW_VARIANTS[0], "m@acme.test")
    with pytest.raises(ValueError, match="encrypted"):
        strip_signatures(direct_response(idp, encrypt=True))
    stated, recomputed = assertion_digest(only_assertion)
    assert stated == recomputed  # our c14n digest matches xmlsec1's


def test_comment_injection_stays_validly_signed(idp: SamlIdp, tmp_path: Path) -> None:
    attacked = comment_injection(
        idp,
        sp_entity_id=SP_ENTITY,
        acs_url=ACS,
        victim="ceo@acme.test",
        attacker_suffix=".evil.test",
        in_response_to="_req",
    )
    assert "ceo@acme.test<!---->.evil.test" in attacked
    name_id = xml_of(attacked).find("saml:Assertion/saml:Subject/saml:NameID", NS)
    assert name_id.text == "ceo@acme.test"  # what a first-text-node reader sees
    assert "".join(name_id.itertext()) == "ceo@acme.test.evil.test"
    assert attacked.count("<!---->") == 2  # NameID and the email attribute
    assert xmlsec1_verify(tmp_path, attacked, idp.cert_pem, RESPONSE_SIG)
    assert xmlsec1_verify(tmp_path, attacked, idp.cert_pem, ASSERTION_SIG)


def test_resign_with_unknown_key(idp: SamlIdp, tmp_path: Path) -> None:
    tampered = tamper_name_id(direct_response(idp), "mallory@acme.test")
    resigned = resign_with_unknown_key(tampered, tmp_path / "attacker")
    root = xml_of(resigned)
    embedded = root.findtext(
        "ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", namespaces=NS
    )
    assert embedded is not None
    assert embedded.strip() != cert_body(idp.cert_pem)
    attacker_cert = x509.load_der_x509_certificate(base64.b64decode(embedded))
    attacker_pem = attacker_cert.public_bytes(serialization.Encoding.PEM).decode()
    for xpath in (RESPONSE_SIG, ASSERTION_SIG):
        assert xmlsec1_verify(tmp_path, resigned, attacker_pem, xpath)
        assert not xmlsec1_verify(tmp_path, resigned, idp.cert_pem, xpath)
    assert len(list((tmp_path / "attacker").glob("attacker-*-cert.pem"))) == 1
