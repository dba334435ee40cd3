"""What the test IdP learns from a service provider's metadata: its endpoints and
certificates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT

from tenantry_testkit.saml_idp.protocol import NS_DS, NS_MD, parse_xml, pem_from_body


@dataclass(frozen=True)
class Endpoint:
    binding: str
    location: str
    response_location: str | None = None
    index: int | None = None
    is_default: bool = False


@dataclass(frozen=True)
class RegisteredSp:
    """What the IdP learned from an SP's metadata."""

    entity_id: str
    acs: tuple[Endpoint, ...]
    slo: tuple[Endpoint, ...]
    signing_certs: tuple[str, ...]
    encryption_certs: tuple[str, ...]
    authn_requests_signed: bool
    want_assertions_signed: bool
    metadata_xml: str

    def default_acs(self) -> Endpoint | None:
        posts = [e for e in self.acs if e.binding == BINDING_HTTP_POST]
        if not posts:
            return None
        return next((e for e in posts if e.is_default), min(posts, key=lambda e: e.index or 0))

    def slo_redirect(self) -> Endpoint | None:
        return next((e for e in self.slo if e.binding == BINDING_HTTP_REDIRECT), None)


def parse_sp_metadata(xml: str) -> RegisteredSp:
    """Entity id, ACS and SLO endpoints and certificates of the first SP in `xml`."""
    root = parse_xml(xml)
    if root.tag == f"{{{NS_MD}}}EntityDescriptor":
        entities = [root]
    else:
        entities = root.findall(f".//{{{NS_MD}}}EntityDescriptor")
    for entity in entities:
        sp = entity.find(f"{{{NS_MD}}}SPSSODescriptor")
        if sp is None:
            continue
        signing: list[str] = []
        encryption: list[str] = []
        for descriptor in sp.findall(f"{{{NS_MD}}}KeyDescriptor"):
            use = descriptor.get("use")
            for body in descriptor.iterfind(f".//{{{NS_DS}}}X509Certificate"):
                pem = pem_from_body(body.text or "")
                if use in (None, "signing"):
                    signing.append(pem)
                if use in (None, "encryption"):
                    encryption.append(pem)

        def endpoints(tag: str, element: Any = sp) -> tuple[Endpoint, ...]:
            found = []
            for e in element.findall(f"{{{NS_MD}}}{tag}"):
                index = e.get("index")
                found.append(
                    Endpoint(
                        binding=e.get("Binding", ""),
                        location=e.get("Location", ""),
                        response_location=e.get("ResponseLocation"),
                        index=int(index) if index is not None else None,
                        is_default=e.get("isDefault") in ("true", "1"),
                    )
                )
            return tuple(found)

        return RegisteredSp(
            entity_id=entity.get("entityID", ""),
            acs=endpoints("AssertionConsumerService"),
            slo=endpoints("SingleLogoutService"),
            signing_certs=tuple(signing),
            encryption_certs=tuple(encryption),
            authn_requests_signed=sp.get("AuthnRequestsSigned") in ("true", "1"),
            want_assertions_signed=sp.get("WantAssertionsSigned") in ("true", "1"),
            metadata_xml=xml,
        )
    raise ValueError("no SPSSODescriptor in the metadata")
