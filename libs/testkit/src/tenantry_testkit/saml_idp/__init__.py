"""A real SAML 2.0 identity provider for tests, built on pysaml2 (not on our SP library).

Why a separate implementation: a service provider tested only against messages made by its
own SAML library proves nothing about interoperability, and hides bugs the two halves share.
pysaml2 builds, signs (through the `xmlsec1` binary) and encrypts the responses; the IdP keeps
its own parsing of SP messages (lxml, python-xmlsec, `cryptography`) so it can report exactly
what an SP sent (signed or not, valid or not, which algorithm).

    async with running_idp(tmp_path, login_as=lambda: SamlUser("ann@acme.test")) as idp:
        idp.register_sp(sp_metadata_xml)          # learns ACS URLs and certificates
        ...  # point the SP at idp.metadata_url; drive a browser or an HTTP client:
        # GET /sso/redirect or POST /sso/post answers with a page that auto-posts the
        # signed SAMLResponse to the request's ACS URL.

Modules (this package re-exports their public names): `protocol` (namespaces, algorithms,
keys, the bindings' encodings and signatures), `sp_metadata`, `idp` (`SamlIdp`) and
`server` (serving it over HTTP).

`SamlIdp.response()` makes responses directly (expired, unsigned, encrypted, wrong audience,
RSA-SHA1 ...); `saml_attacks` turns them into attacks.

pysaml2 quirks handled here: it signs with RSA-SHA1/SHA-1 unless told otherwise (we always
pass RSA-SHA256/SHA-256 unless overridden); it silently skips encryption when the SP metadata
has no encryption certificate and encrypts with 3DES by default (we pass the certificate and
choose AES ourselves); encrypted assertions need `encrypt_assertion_self_contained=False` to
be accepted by python3-saml; and it has no way to shift the clock, so the assertion is built
here with explicit instants and pysaml2 only wraps, signs and encrypts it.
"""

from tenantry_testkit.asgi import free_port  # serve_idp needs a port chosen first
from tenantry_testkit.saml_idp.idp import (
    AuthnRequestInfo,
    LogoutMessageInfo,
    SamlIdp,
    SamlUser,
)
from tenantry_testkit.saml_idp.protocol import (
    DIGEST_ALGS,
    ENCRYPTION_ALGS,
    HASH_OF_SIG_ALG,
    MAX_MESSAGE,
    NAMEID_EMAIL,
    NAMEID_PERSISTENT,
    NAMEID_UNSPECIFIED,
    NS_DS,
    NS_MD,
    NS_SAML,
    NS_SAMLP,
    NS_XENC,
    SIG_ALGS,
    XMLSEC1,
    cert_body,
    deflate_b64,
    digest_alg_uri,
    inflate_b64,
    make_key_and_cert,
    new_request_id,
    parse_xml,
    pem_from_body,
    pem_of_cert,
    pem_of_key,
    redirect_signed_octets,
    sig_alg_uri,
    verify_enveloped_signature,
    verify_redirect_signature,
    xml_parser,
)
from tenantry_testkit.saml_idp.server import (
    auto_post_page,
    running_idp,
    serve_idp,
)
from tenantry_testkit.saml_idp.sp_metadata import (
    Endpoint,
    RegisteredSp,
    parse_sp_metadata,
)

__all__ = [
    "DIGEST_ALGS",
    "ENCRYPTION_ALGS",
    "HASH_OF_SIG_ALG",
    "MAX_MESSAGE",
    "NAMEID_EMAIL",
    "NAMEID_PERSISTENT",
    "NAMEID_UNSPECIFIED",
    "NS_DS",
    "NS_MD",
    "NS_SAML",
    "NS_SAMLP",
    "NS_XENC",
    "SIG_ALGS",
    "XMLSEC1",
    "AuthnRequestInfo",
    "Endpoint",
    "LogoutMessageInfo",
    "RegisteredSp",
    "SamlIdp",
    "SamlUser",
    "auto_post_page",
    "cert_body",
    "deflate_b64",
    "digest_alg_uri",
    "free_port",
    "inflate_b64",
    "make_key_and_cert",
    "new_request_id",
    "parse_sp_metadata",
    "parse_xml",
    "pem_from_body",
    "pem_of_cert",
    "pem_of_key",
    "redirect_signed_octets",
    "running_idp",
    "serve_idp",
    "sig_alg_uri",
    "verify_enveloped_signature",
    "verify_redirect_signature",
    "xml_parser",
]
