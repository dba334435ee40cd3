"""The SAML SP's boundary with python3-saml, xmlsec and lxml: every hostile message, at
the ACS or the SLO endpoint, ends as a refusal with a documented code, never as another
exception (which the routes would answer with a 500).

Messages come from the independent test IdP (pysaml2 + xmlsec1), damaged by
`saml_attacks` (named cases) and `saml_fuzz` (hypothesis). End-to-end versions, with the
failure log and "nothing changed", are in tests/test_sso.py."""

from __future__ import annotations

import base64
import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import get_args
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from tenantry_identity.sso import saml
from tenantry_identity.sso.domain import LoginRefused, RefusalCode
from tenantry_testkit import saml_attacks, saml_fuzz
from tenantry_testkit.saml_idp import SamlIdp, SamlUser, make_key_and_cert, pem_of_cert

DOCS = Path(__file__).resolve().parents[3] / "docs" / "sso.md"
USER = SamlUser(name_id="ann@acme.example", attributes={"email": ["ann@acme.example"]})
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def documented_codes() -> set[str]:
    """The codes in the first column of docs/sso.md's refusal table."""
    text = DOCS.read_text()
    section = text[text.index("## Why a login was refused") :]
    section = section[: section.index("\n## ", 1)]
    codes: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            codes.update(re.findall(r"`([a-z-]+)`", line.split("|")[1]))
    return codes


DOCUMENTED = documented_codes()


@dataclass(frozen=True)
class Sp:
    idp: SamlIdp
    conf: saml.SamlConfig
    urls: saml.SpUrls
    settings: OneLogin_Saml2_Settings
    cert: str  # our certificate: IdPs encrypt to it

    def response(self, **options: object) -> str:
        return self.idp.response(
            sp_entity_id=self.urls.entity_id,
            acs_url=self.urls.acs,
            user=USER,
            **options,  # type: ignore[arg-type]
        )

    def encrypted(self, **options: object) -> str:
        return self.response(encrypt=True, encrypt_to=self.cert, **options)

    def process(self, xml: str | bytes) -> saml.SamlAssertion:
        raw = xml.encode() if isinstance(xml, str) else xml
        return saml.process_response(
            self.settings, self.conf, self.urls, base64.b64encode(raw).decode(), request_id=None
        )

    def slo_query(self, url: str) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(url).query))


@pytest.fixture(scope="module")
def sp(tmp_path_factory: pytest.TempPathFactory) -> Sp:
    idp = SamlIdp(tmp_path_factory.mktemp("idp"), base_url="http://127.0.0.1:9")
    cert, key = saml.new_sp_keypair("sp")
    urls = saml.sp_urls("http://127.0.0.1:8102", "0196a8c4-0000-7000-8000-000000000001")
    conf = saml.SamlConfig(
        **saml.config_fields(saml.parse_idp_metadata(idp.metadata_xml())), sp_cert=cert
    )
    settings_ = saml.onelogin_settings(conf, key, urls)
    idp.register_sp(saml.sp_metadata(settings_))
    return Sp(idp=idp, conf=conf, urls=urls, settings=settings_, cert=cert)


def refusal(call: object) -> str:
    assert callable(call)
    with pytest.raises(LoginRefused) as refused:
        call()
    return refused.value.code


# ---------------------------------------------------------------------- the codes


def test_every_refusal_code_is_documented() -> None:
    assert set(get_args(RefusalCode)) <= DOCUMENTED, set(get_args(RefusalCode)) - DOCUMENTED
    assert "undecryptable" in DOCUMENTED


# ---------------------------------------------------------------------- decryption


def test_genuine_encrypted_and_plain_responses_are_accepted(sp: Sp) -> None:
    """The baseline the refusals below are measured against."""
    assert sp.process(sp.encrypted()).identity.subject == USER.name_id
    assert sp.process(sp.encrypted(sign_response=False)).identity.subject == USER.name_id
    assert sp.process(sp.response()).identity.subject == USER.name_id


def other_certificate() -> str:
    _, cert = make_key_and_cert("another SP")
    return pem_of_cert(cert)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("encrypted to another certificate", "undecryptable"),
        ("encrypted to another certificate, response unsigned", "undecryptable"),
        ("assertion ciphertext changed", "undecryptable"),
        ("session key ciphertext changed", "undecryptable"),
        ("junk ciphertext in an unsigned response", "undecryptable"),
        ("no KeyInfo", "undecryptable"),
        ("empty KeyInfo", "undecryptable"),
        ("RetrievalMethod without Type", "malformed"),
    ],
)
def test_an_assertion_that_cannot_be_decrypted_is_refused(sp: Sp, case: str, expected: str) -> None:
    xml = {
        "encrypted to another certificate": lambda: sp.response(
            encrypt=True, encrypt_to=other_certificate()
        ),
        "encrypted to another certificate, response unsigned": lambda: sp.response(
            encrypt=True, encrypt_to=other_certificate(), sign_response=False
        ),
        "assertion ciphertext changed": lambda: saml_attacks.corrupt_ciphertext(
            sp.encrypted(sign_response=False), "assertion"
        ),
        "session key ciphertext changed": lambda: saml_attacks.corrupt_ciphertext(
            sp.encrypted(sign_response=False), "key"
        ),
        "junk ciphertext in an unsigned response": lambda: saml_attacks.junk_encrypted_assertion(
            sp.response(), "ciphertext"
        ),
        "no KeyInfo": lambda: saml_attacks.junk_encrypted_assertion(sp.response(), "no-key-info"),
        "empty KeyInfo": lambda: saml_attacks.junk_encrypted_assertion(
            sp.response(), "empty-key-info"
        ),
        "RetrievalMethod without Type": lambda: saml_attacks.junk_encrypted_assertion(
            sp.response(), "retrieval-method"
        ),
    }[case]()
    with pytest.raises(LoginRefused) as refused:
        sp.process(xml)
    assert refused.value.code == expected, refused.value.detail
    assert refused.value.detail


# ---------------------------------------------------------------------- fuzzing


def outcome(call: object) -> str:
    """What `call` came to: "accepted" or its refusal code (any other exception escapes,
    failing the test)."""
    assert callable(call)
    try:
        call()
    except LoginRefused as refused:
        return refused.code
    return "accepted"


ALLOWED = DOCUMENTED | {"accepted"}


@pytest.fixture(scope="module")
def acs_seeds(sp: Sp) -> list[str]:
    return [
        sp.response(),
        sp.response(sign_response=False),
        sp.encrypted(),
        sp.encrypted(sign_response=False),
    ]


@FUZZ
@given(data=st.data())
def test_no_damaged_response_escapes_the_acs_as_an_error(
    sp: Sp, acs_seeds: list[str], data: st.DataObject
) -> None:
    value = data.draw(saml_fuzz.post_values(acs_seeds))
    assert outcome(lambda: saml.peek_in_response_to(value)) in ALLOWED
    accepted = outcome(
        lambda: saml.process_response(sp.settings, sp.conf, sp.urls, value, request_id=None)
    )
    assert accepted in ALLOWED


@pytest.fixture(scope="module")
def slo_seeds(sp: Sp) -> tuple[dict[str, str], dict[str, str]]:
    request = sp.idp.logout_request(
        sp_entity_id=sp.urls.entity_id, slo_url=sp.urls.slo, name_id=USER.name_id, session_index="i"
    )
    response = sp.idp.logout_response(in_response_to="_our-request", destination=sp.urls.slo)
    return (
        sp.slo_query(sp.idp.redirect_url(sp.urls.slo, saml_request=request, relay_state="rs")),
        sp.slo_query(sp.idp.redirect_url(sp.urls.slo, saml_response=response, relay_state="rs")),
    )


def test_genuine_logout_messages_are_accepted(
    sp: Sp, slo_seeds: tuple[dict[str, str], dict[str, str]]
) -> None:
    request, response = slo_seeds
    assert saml.process_idp_logout_request(sp.settings, sp.urls, request).name_id == USER.name_id
    assert saml.logout_response_in_response_to(response["SAMLResponse"]) == "_our-request"
    saml.process_idp_logout_response(sp.settings, sp.urls, response, "_our-request")


@FUZZ
@given(data=st.data())
def test_no_damaged_logout_message_escapes_the_slo_endpoint_as_an_error(
    sp: Sp, slo_seeds: tuple[dict[str, str], dict[str, str]], data: st.DataObject
) -> None:
    request, response = slo_seeds
    query = data.draw(saml_fuzz.redirect_queries(request, "SAMLRequest"))
    assert outcome(lambda: saml.process_idp_logout_request(sp.settings, sp.urls, query)) in (
        ALLOWED
    )
    query = data.draw(saml_fuzz.redirect_queries(response, "SAMLResponse"))
    peeked = outcome(lambda: saml.logout_response_in_response_to(query.get("SAMLResponse", "")))
    assert peeked in ALLOWED
    checked = outcome(
        lambda: saml.process_idp_logout_response(sp.settings, sp.urls, query, "_our-request")
    )
    assert checked in ALLOWED


def test_a_logout_request_to_a_connection_without_idp_slo_url_is_refused(sp: Sp) -> None:
    _, key = saml.new_sp_keypair("sp")
    conf = saml.SamlConfig(
        idp_entity_id=sp.conf.idp_entity_id,
        idp_sso_url=sp.conf.idp_sso_url,
        idp_certs=sp.conf.idp_certs,
        sp_cert=sp.cert,
    )
    no_slo = saml.onelogin_settings(conf, key, sp.urls)
    request = sp.idp.logout_request(
        sp_entity_id=sp.urls.entity_id, slo_url=sp.urls.slo, name_id=USER.name_id, session_index="i"
    )
    query = sp.slo_query(sp.idp.redirect_url(sp.urls.slo, saml_request=request))
    assert refusal(lambda: saml.process_idp_logout_request(no_slo, sp.urls, query)) == "malformed"


# ---------------------------------------------------------------------- the replay cache


def test_replay_cache_entries_never_overflow_a_datetime() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    latest = dt.datetime.max.replace(tzinfo=dt.UTC)
    assert saml.replay_keep_until(latest, now) == latest
    assert saml.replay_keep_until(now, now) == now + saml.REPLAY_MARGIN
    past = now - dt.timedelta(hours=1)
    assert saml.replay_keep_until(past, now) == now + saml.REPLAY_MARGIN
