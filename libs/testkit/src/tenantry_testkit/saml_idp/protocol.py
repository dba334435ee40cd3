"""SAML's vocabulary and wire encoding, for the test IdP and the attacks built on it:
namespaces and algorithm URIs, a parser that never fetches or expands anything, keys and
self-signed certificates, the HTTP-Redirect binding's DEFLATE and detached signature, and
the check of an enveloped signature."""

from __future__ import annotations

import base64
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import xmlsec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

XMLSEC1 = "/usr/bin/xmlsec1"

NS_SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
NS_SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
NS_MD = "urn:oasis:names:tc:SAML:2.0:metadata"
NS_DS = "http://www.w3.org/2000/09/xmldsig#"
NS_XENC = "http://www.w3.org/2001/04/xmlenc#"

NAMEID_EMAIL = "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress"
NAMEID_PERSISTENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"

SIG_ALGS = {
    "rsa-sha1": "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
    "rsa-sha256": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "rsa-sha384": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "rsa-sha512": "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
}
DIGEST_ALGS = {
    "sha1": "http://www.w3.org/2000/09/xmldsig#sha1",
    "sha256": "http://www.w3.org/2001/04/xmlenc#sha256",
    "sha384": "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "sha512": "http://www.w3.org/2001/04/xmlenc#sha512",
}
# Data-encryption algorithm URI and the matching `xmlsec1 --session-key` kind.
ENCRYPTION_ALGS = {
    "aes128-cbc": ("http://www.w3.org/2001/04/xmlenc#aes128-cbc", "aes-128"),
    "aes256-cbc": ("http://www.w3.org/2001/04/xmlenc#aes256-cbc", "aes-256"),
    "aes128-gcm": ("http://www.w3.org/2009/xmlenc11#aes128-gcm", "aes-128"),
    "aes256-gcm": ("http://www.w3.org/2009/xmlenc11#aes256-gcm", "aes-256"),
    "tripledes-cbc": ("http://www.w3.org/2001/04/xmlenc#tripledes-cbc", "des-192"),
}
HASH_OF_SIG_ALG: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    SIG_ALGS["rsa-sha1"]: hashes.SHA1,
    SIG_ALGS["rsa-sha256"]: hashes.SHA256,
    SIG_ALGS["rsa-sha384"]: hashes.SHA384,
    SIG_ALGS["rsa-sha512"]: hashes.SHA512,
}
MAX_MESSAGE = 1 << 20  # an inflated SAML message larger than 1 MiB is refused


def sig_alg_uri(alg: str) -> str:
    """A signature algorithm as a URI; short names ("rsa-sha1") are accepted for brevity."""
    return SIG_ALGS.get(alg, alg)


def digest_alg_uri(alg: str) -> str:
    """A digest algorithm as a URI; short names ("sha1") are accepted for brevity."""
    return DIGEST_ALGS.get(alg, alg)


def xml_parser() -> Any:
    """An lxml parser that never loads DTDs, entities or anything from the network: SP
    messages are attacker-controlled input, even in tests."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def parse_xml(text: str | bytes) -> Any:
    data = text.encode() if isinstance(text, str) else text
    return etree.fromstring(data, parser=xml_parser())


def make_key_and_cert(
    common_name: str, *, days: int = 365
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """An RSA-2048 key and a self-signed certificate: SAML trusts certificates by pinning
    (metadata), so no CA is involved."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return key, cert


def pem_of_key(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def pem_of_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def cert_body(pem: str) -> str:
    """The base64 DER of a PEM certificate, as metadata and KeyInfo carry it."""
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return base64.b64encode(der).decode()


def pem_from_body(body: str) -> str:
    der = base64.b64decode("".join(body.split()))
    return pem_of_cert(x509.load_der_x509_certificate(der))


def deflate_b64(xml: str) -> str:
    """HTTP-Redirect binding encoding: raw DEFLATE, then base64."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return base64.b64encode(compressor.compress(xml.encode()) + compressor.flush()).decode()


def inflate_b64(value: str) -> bytes:
    inflater = zlib.decompressobj(-15)
    data = inflater.decompress(base64.b64decode(value), MAX_MESSAGE)
    if inflater.unconsumed_tail:
        raise ValueError("the SAML message inflates to more than 1 MiB")
    return data


def redirect_signed_octets(
    kind: str,
    message: str,
    relay_state: str | None,
    sig_alg: str,
    *,
    raw_query: str | None = None,
) -> bytes:
    """What the HTTP-Redirect binding signs (SAML bindings, 3.4.4.1): the URL-encoded
    `kind=...&RelayState=...&SigAlg=...`. Given the raw query string, its encoded values are
    used byte for byte, because re-encoding decoded values can differ from what the signer
    encoded (case of %-escapes, which characters are escaped)."""
    if raw_query is not None:
        raw: dict[str, str] = {}
        for part in raw_query.split("&"):
            name, _, value = part.partition("=")
            raw.setdefault(name, value)
        parts = [f"{kind}={raw.get(kind, '')}"]
        if "RelayState" in raw:
            parts.append(f"RelayState={raw['RelayState']}")
        parts.append(f"SigAlg={raw.get('SigAlg', '')}")
        return "&".join(parts).encode()
    parts = [f"{kind}={urllib.parse.quote_plus(message, safe='')}"]
    if relay_state is not None:
        parts.append(f"RelayState={urllib.parse.quote_plus(relay_state, safe='')}")
    parts.append(f"SigAlg={urllib.parse.quote_plus(sig_alg, safe='')}")
    return "&".join(parts).encode()


def verify_redirect_signature(
    octets: bytes, signature_b64: str, sig_alg: str, certs: Sequence[str]
) -> bool:
    """True when one of `certs` (PEM) verifies the detached redirect-binding signature."""
    hash_factory = HASH_OF_SIG_ALG.get(sig_alg)
    if hash_factory is None:
        return False
    try:
        signature = base64.b64decode(signature_b64, validate=False)
    except ValueError:
        return False
    for pem in certs:
        public = x509.load_pem_x509_certificate(pem.encode()).public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            continue
        try:
            public.verify(signature, octets, padding.PKCS1v15(), hash_factory())
        except InvalidSignature:
            continue
        return True
    return False


def verify_enveloped_signature(root: Any, certs: Sequence[str]) -> tuple[bool, bool, str | None]:
    """(signed, valid, signature algorithm) of the enveloped signature that is a direct child
    of `root` and references `root` itself: the only placement an IdP should accept for a
    POST-binding request (anything else is a wrapping attempt)."""
    signature = root.find(f"{{{NS_DS}}}Signature")
    if signature is None:
        return False, False, None
    method = signature.find(f"{{{NS_DS}}}SignedInfo/{{{NS_DS}}}SignatureMethod")
    alg = method.get("Algorithm") if method is not None else None
    references = signature.findall(f"{{{NS_DS}}}SignedInfo/{{{NS_DS}}}Reference")
    if len(references) != 1 or references[0].get("URI") != f"#{root.get('ID')}":
        return True, False, alg
    for pem in certs:
        context = xmlsec.SignatureContext()
        context.key = xmlsec.Key.from_memory(pem.encode(), xmlsec.constants.KeyDataFormatCertPem)
        context.register_id(root, "ID")
        try:
            context.verify(signature)
        except xmlsec.Error:
            continue
        return True, True, alg
    return True, False, alg


def new_request_id() -> str:
    """An ID for hand-built SAML messages in tests (must start with a letter or _)."""
    return f"_{uuid.uuid4().hex}"
