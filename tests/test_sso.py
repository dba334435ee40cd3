"""Enterprise SSO against the running suite and independent peers on loopback: a SAML IdP
built on pysaml2 + xmlsec1 (not our SP library), the certified Node oidc-provider (not
authlib), a DNS server for domain verification, and (in test_sso_browser.py) Chromium.

Every login ends the way the product sees it: a redirect to its registered callback with a
one-time code, exchanged by its backend for the profile and Tenantry tokens."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import asyncpg
import httpx
import pytest
import pytest_asyncio

from tenantry_testkit import saml_attacks
from tenantry_testkit.dns import LoopbackDns
from tenantry_testkit.fixtures import eventually
from tenantry_testkit.oidc_provider import OidcAccount, OidcClient, OidcProvider
from tenantry_testkit.saml_idp import SamlIdp, SamlUser, running_idp
from tenantry_testkit.stack import Stack

from .test_identity import bearer, new_tenant
from .test_plans import override

pytestmark = pytest.mark.kafka

REDIRECT = "http://127.0.0.1:8199/sso/callback"  # TENANTRY_SSO_REDIRECT_URIS (stack.env)


def client_secret(stack: Stack) -> str:
    return stack.env["TENANTRY_SSO_CLIENT_SECRET"]


async def sso_tenant(stack: Stack, operator_headers: dict[str, str], plan: str = "business") -> str:
    """A tenant on a plan with SSO (business by default), known to identity."""
    return await new_tenant(stack, operator_headers, plan)


@pytest_asyncio.fixture
async def identity(
    stack: Stack, operator_headers: dict[str, str]
) -> AsyncIterator[httpx.AsyncClient]:
    """identity as the operator (tenant admin rights everywhere), following no redirects."""
    async with httpx.AsyncClient(
        base_url=stack.service_url("identity"), timeout=20, headers=operator_headers
    ) as client:
        yield client


@pytest_asyncio.fixture
async def browser_http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """What a browser does, without credentials: follows nothing by itself."""
    async with httpx.AsyncClient(timeout=20) as client:
        yield client


ALICE = SamlUser(
    name_id="alice@acme-sso.example",
    attributes={
        "email": ["alice@acme-sso.example"],
        "givenName": ["Alice"],
        "sn": ["Liddell"],
        "groups": ["engineering", "tenant-admins"],
    },
)


class User:
    """Whom the IdP signs in next (tests swap it)."""

    def __init__(self, user: SamlUser) -> None:
        self.current = user

    def __call__(self) -> SamlUser:
        return self.current


@pytest_asyncio.fixture
async def idp(tmp_path: Path) -> AsyncIterator[tuple[SamlIdp, User]]:
    who = User(ALICE)
    async with running_idp(tmp_path, login_as=who) as server:
        yield server, who


async def saml_connection(
    identity: httpx.AsyncClient, tenant_id: str, idp: SamlIdp, **options: Any
) -> dict[str, Any]:
    """A SAML connection from the IdP's metadata; the IdP learns our SP metadata."""
    saml_options = options.pop("saml", {})
    body = {
        "kind": "saml",
        "name": "Acme IdP",
        "saml": {"metadata_xml": idp.metadata_xml(), **saml_options},
        "attribute_mapping": {"roles": {"tenant-admins": "admin"}},
        **options,
    }
    r = await identity.post(f"/v1/tenants/{tenant_id}/sso/connections", json=body)
    assert r.status_code == 201, r.text
    connection: dict[str, Any] = r.json()
    metadata = await identity.get(connection["saml"]["sp_metadata_url"])
    assert metadata.status_code == 200, metadata.text
    idp.register_sp(metadata.text)
    return connection


def form_of(page: str) -> tuple[str, dict[str, str]]:
    """The action and fields of an auto-posting HTML form."""
    action = re.search(r'<form[^>]*action="([^"]+)"', page)
    assert action is not None, page[:500]
    fields = dict(re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page))
    unescape = {"&amp;": "&", "&quot;": '"', "&#x27;": "'", "&lt;": "<", "&gt;": ">"}

    def clean(value: str) -> str:
        for k, v in unescape.items():
            value = value.replace(k, v)
        return value

    return clean(action.group(1)), {k: clean(v) for k, v in fields.items()}


async def saml_login(
    http: httpx.AsyncClient, stack: Stack, connection_id: str, *, state: str = "st-1"
) -> httpx.Response:
    """SP-initiated: /sso/authorize -> IdP (redirect or POST binding) -> auto-post to our
    ACS. Returns the ACS's answer (303 to the product on success)."""
    action, fields = await saml_login_at_idp(http, stack, connection_id, state=state)
    return await http.post(action, data=fields)


async def saml_login_at_idp(
    http: httpx.AsyncClient, stack: Stack, connection_id: str, *, state: str = "st-1"
) -> tuple[str, dict[str, str]]:
    """An SP-initiated login walked as far as the IdP's answer, not yet posted to our ACS:
    the ACS URL and the form fields (SAMLResponse, RelayState) the IdP's page would post."""
    r = await http.get(
        f"{stack.service_url('identity')}/sso/authorize",
        params={"connection_id": connection_id, "redirect_uri": REDIRECT, "state": state},
    )
    if r.status_code == 302:
        at_idp = await http.get(r.headers["location"])
    else:
        assert r.status_code == 200, r.text
        action, fields = form_of(r.text)
        at_idp = await http.post(action, data=fields)
    assert at_idp.status_code == 200, at_idp.text
    return form_of(at_idp.text)


def code_of(response: httpx.Response, state: str = "st-1") -> str:
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT), location
    query = parse_qs(urlsplit(location).query)
    assert query.get("state") == [state], location
    assert "code" in query, location
    return query["code"][0]


def error_of(response: httpx.Response) -> str:
    """The refusal code, from the product's callback or the problem body."""
    if response.status_code == 303:
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["error"] == ["access_denied"], query
        return query["error_code"][0]
    assert response.status_code in (400, 403), response.text
    code: str = response.json()["code"]
    return code


async def exchange(http: httpx.AsyncClient, stack: Stack, code: str) -> httpx.Response:
    return await http.post(
        f"{stack.service_url('identity')}/v1/sso/token",
        json={"code": code},
        auth=("product", client_secret(stack)),
    )


async def failures(identity: httpx.AsyncClient, tenant_id: str, connection_id: str) -> list[str]:
    r = await identity.get(
        f"/v1/tenants/{tenant_id}/sso/connections/{connection_id}/login-failures"
    )
    assert r.status_code == 200, r.text
    return [f["code"] for f in r.json()]


async def post_response(
    http: httpx.AsyncClient, connection: dict[str, Any], xml: str
) -> httpx.Response:
    """An IdP response posted straight to the ACS (attacks, IdP-initiated)."""
    return await http.post(
        connection["saml"]["sp_acs_url"],
        data={"SAMLResponse": base64.b64encode(xml.encode()).decode()},
    )


async def tenant_events_seen(
    stack: Stack, tenant_id: str, wanted: set[str], *, timeout: float
) -> None:
    """Wait until the broker holds a record of each topic in `wanted` for the tenant (read
    from the start of each topic, so it may run after the events were published)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *sorted(wanted),
        bootstrap_servers=stack.kafka_bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    seen: set[str] = set()

    async def all_seen() -> bool:
        batch = await consumer.getmany(timeout_ms=300)
        for tp, records in batch.items():
            for r in records:
                if dict(r.headers).get("ce_tenantid") == tenant_id.encode():
                    seen.add(tp.topic)
        return wanted <= seen

    try:
        await eventually(all_seen, timeout=timeout, message=f"{sorted(wanted)} on Kafka")
    finally:
        await consumer.stop()


# ---------------------------------------------------------------------------- SAML logins


async def test_saml_sp_initiated_login_creates_the_account_just_in_time_and_signs_in(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_sp: SamlTarget,
    idp: tuple[SamlIdp, User],
) -> None:
    tenant_id, connection, server = saml_sp

    code = code_of(await saml_login(browser_http, stack, connection["id"]))
    # Our AuthnRequest was signed, with RSA-SHA256, and the IdP's check of it held.
    request = server.received[-1]
    assert request.signed
    assert request.signature_valid
    assert request.sig_alg is not None
    assert request.sig_alg.endswith("rsa-sha256")

    r = await exchange(browser_http, stack, code)
    assert r.status_code == 200, r.text
    profile = r.json()["profile"]
    assert profile["email"] == "alice@acme-sso.example"
    assert (profile["first_name"], profile["last_name"]) == ("Alice", "Liddell")
    assert profile["role"] == "admin"  # tenant-admins -> admin
    assert profile["tenant_id"] == tenant_id
    assert profile["connection_type"] == "saml"
    tokens = r.json()["tokens"]
    # Tenantry's own session: the access token works in every service.
    who = await browser_http.get(
        f"{stack.service_url('webhooks')}/v1/whoami", headers=bearer(tokens["access_token"])
    )
    assert who.status_code == 200, who.text
    assert who.json()["tenant_id"] == tenant_id

    # The code works once.
    again = await exchange(browser_http, stack, code)
    assert again.status_code == 400
    assert again.json()["type"].endswith("/invalid-grant")

    # A later login finds the same account (no second JIT account) and applies the
    # mapping again: alice left tenant-admins at the IdP, so she is a member now.
    who_is = idp[1]
    who_is.current = SamlUser(
        name_id=ALICE.name_id, attributes={**ALICE.attributes, "groups": ["engineering"]}
    )
    code2 = code_of(await saml_login(browser_http, stack, connection["id"]))
    r2 = await exchange(browser_http, stack, code2)
    assert r2.json()["profile"]["id"] == profile["id"]
    assert r2.json()["profile"]["role"] == "member"
    account = await identity.get(f"/v1/tenants/{tenant_id}/accounts/{profile['id']}")
    assert account.json()["role"] == "member"
    # The change travels as account.role_changed, and the session as user.signed_in.
    wanted = {"account.role_changed", "user.signed_in"}
    await tenant_events_seen(stack, tenant_id, wanted, timeout=30)


async def test_code_exchange_needs_the_product_secret(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_sp: SamlTarget,
) -> None:
    _tenant_id, connection, _server = saml_sp
    code = code_of(await saml_login(browser_http, stack, connection["id"]))
    wrong = await browser_http.post(
        f"{stack.service_url('identity')}/v1/sso/token",
        json={"code": code},
        auth=("product", "not-the-secret"),
    )
    assert wrong.status_code == 401
    # The failed attempt did not burn the code.
    assert (await exchange(browser_http, stack, code)).status_code == 200


async def test_saml_post_binding_and_encrypted_assertions(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    idp: tuple[SamlIdp, User],
) -> None:
    server, _ = idp
    tenant_id = await sso_tenant(stack, operator_headers)
    connection = await saml_connection(
        identity,
        tenant_id,
        server,
        saml={"request_binding": "post", "want_assertions_encrypted": True},
    )
    # Unencrypted assertions are refused once the connection wants encryption...
    refused = await saml_login(browser_http, stack, connection["id"])
    assert error_of(refused) == "not-encrypted"
    assert server.received[-1].binding == "post"
    assert server.received[-1].signature_valid
    # ...encrypted ones (signed inside, AES-256 to our SP certificate) sign in.
    server.response_options["encrypt"] = True
    code = code_of(await saml_login(browser_http, stack, connection["id"]))
    assert "EncryptedAssertion" in server.issued_responses[-1]
    r = await exchange(browser_http, stack, code)
    assert r.status_code == 200
    assert r.json()["profile"]["email"] == "alice@acme-sso.example"


async def test_idp_initiated_login_only_where_the_connection_allows_it(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_sp: SamlTarget,
) -> None:
    tenant_id, connection, server = saml_sp
    urls = connection["saml"]

    def unsolicited() -> str:
        return server.response(
            sp_entity_id=urls["sp_entity_id"], acs_url=urls["sp_acs_url"], user=ALICE
        )

    refused = await post_response(browser_http, connection, unsolicited())
    assert error_of(refused) == "unsolicited"

    r = await identity.patch(
        f"/v1/tenants/{tenant_id}/sso/connections/{connection['id']}",
        json={"allow_idp_initiated": True, "default_redirect_uri": REDIRECT},
    )
    assert r.status_code == 200, r.text
    accepted = await post_response(browser_http, connection, unsolicited())
    assert accepted.status_code == 303
    code = parse_qs(urlsplit(accepted.headers["location"]).query)["code"][0]
    assert (await exchange(browser_http, stack, code)).status_code == 200

    # A disabled connection refuses every path, IdP-initiated included (Keycloak
    # CVE-2026-2603), and SP-initiated.
    r = await identity.patch(
        f"/v1/tenants/{tenant_id}/sso/connections/{connection['id']}", json={"enabled": False}
    )
    assert r.status_code == 200
    assert error_of(await post_response(browser_http, connection, unsolicited())) == (
        "connection-disabled"
    )
    start = await browser_http.get(
        f"{stack.service_url('identity')}/sso/authorize",
        params={"connection_id": connection["id"], "redirect_uri": REDIRECT},
    )
    assert error_of(start) == "connection-disabled"
    assert "connection-disabled" in await failures(identity, tenant_id, connection["id"])


# ---------------------------------------------------------------------------- attacks


SamlTarget = tuple[str, dict[str, Any], SamlIdp]


@pytest_asyncio.fixture
async def saml_sp(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    idp: tuple[SamlIdp, User],
) -> SamlTarget:
    """A tenant with a SAML connection to the IdP, as an admin sets it up by default
    (SP-initiated only): (tenant id, connection, IdP)."""
    tenant_id = await sso_tenant(stack, operator_headers)
    return tenant_id, await saml_connection(identity, tenant_id, idp[0]), idp[0]


@pytest_asyncio.fixture
async def saml_target(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    idp: tuple[SamlIdp, User],
) -> tuple[str, dict[str, Any], SamlIdp]:
    """A connection that accepts IdP-initiated responses, so each attack is judged on
    the response alone (the most exposed configuration)."""
    server, _ = idp
    tenant_id = await sso_tenant(stack, operator_headers)
    connection = await saml_connection(
        identity, tenant_id, server, allow_idp_initiated=True, default_redirect_uri=REDIRECT
    )
    return tenant_id, connection, server


async def refused_eventually(
    http: httpx.AsyncClient, connection: dict[str, Any], server: SamlIdp, code: str
) -> None:
    """Good responses are refused with `code` once identity has applied a change that
    travels by event (a suspension, a plan change)."""

    async def refused() -> bool:
        answer = await post_response(http, connection, good_response(server, connection))
        return error_of(answer) == code

    await eventually(refused, timeout=30, message=f"logins refused with {code}")


def good_response(server: SamlIdp, connection: dict[str, Any], **options: Any) -> str:
    urls = connection["saml"]
    return server.response(
        sp_entity_id=urls["sp_entity_id"], acs_url=urls["sp_acs_url"], user=ALICE, **options
    )


@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        ("tampered-name-id", {"bad-signature"}),
        ("unsigned", {"unsigned"}),
        ("wrong-audience", {"wrong-audience"}),
        ("audience-changed-after-signing", {"bad-signature", "wrong-audience"}),
        ("expired", {"expired"}),
        ("not-yet-valid", {"not-yet-valid"}),
        ("unknown-certificate", {"unknown-certificate"}),
        ("sha1", {"deprecated-algorithm"}),
        ("wrong-destination", {"wrong-destination"}),
        ("idp-error-status", {"idp-error"}),
        *((f"xsw-{n}", {"bad-signature", "malformed", "unsigned"}) for n in range(1, 10)),
    ],
)
async def test_saml_attacks_are_refused_and_logged_for_the_admin(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
    tmp_path: Path,
    attack: str,
    expected: set[str],
) -> None:
    from datetime import UTC, datetime, timedelta

    tenant_id, connection, server = saml_target
    urls = connection["saml"]
    evil = "mallory@evil.example"
    if attack == "tampered-name-id":
        xml = saml_attacks.tamper_name_id(good_response(server, connection), evil)
    elif attack == "unsigned":
        xml = good_response(server, connection, sign_response=False, sign_assertion=False)
    elif attack == "wrong-audience":
        xml = good_response(server, connection, audience="https://another-sp.example/metadata")
    elif attack == "audience-changed-after-signing":
        xml = saml_attacks.replace_audience(
            good_response(server, connection), "https://another-sp.example/metadata"
        )
    elif attack == "expired":
        xml = good_response(
            server, connection, issued_at=datetime.now(UTC) - timedelta(hours=2), valid_for=300
        )
    elif attack == "not-yet-valid":
        xml = good_response(server, connection, issued_at=datetime.now(UTC) + timedelta(hours=2))
    elif attack == "unknown-certificate":
        xml = saml_attacks.resign_with_unknown_key(good_response(server, connection), tmp_path)
    elif attack == "sha1":
        xml = good_response(server, connection, sign_alg="rsa-sha1", digest_alg="sha1")
    elif attack == "wrong-destination":
        xml = good_response(server, connection, destination="https://evil.example/acs")
    elif attack == "idp-error-status":
        xml = good_response(server, connection, status_ok=False)
    else:
        variant = int(attack.split("-")[1])
        xml = saml_attacks.signature_wrapping(good_response(server, connection), variant, evil)
    response = await post_response(browser_http, connection, xml)
    assert response.status_code in (303, 400, 403), response.text
    if response.status_code == 303:
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert "code" not in query, "an attack signed someone in"
    code = error_of(response)
    assert code in expected, (attack, code)
    assert code in await failures(identity, tenant_id, connection["id"])
    assert urls["sp_acs_url"]  # the ACS was the one under attack


async def test_comment_injection_cannot_sign_in_as_the_victim(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    """CVE-2017-11427: the attacker owns victim@corp.example.attacker.example at the IdP; a
    reader that stops at the comment would see victim@corp.example."""
    _tenant_id, connection, server = saml_target
    urls = connection["saml"]
    xml = saml_attacks.comment_injection(
        server,
        sp_entity_id=urls["sp_entity_id"],
        acs_url=urls["sp_acs_url"],
        victim="victim@acme-sso.example",
        attacker_suffix=".attacker.example",
    )
    response = await post_response(browser_http, connection, xml)
    query = parse_qs(urlsplit(response.headers.get("location", "")).query)
    if response.status_code == 303 and "code" in query:
        # Read whole (python3-saml ignores the comment node): the attacker is themself.
        code = query["code"][0]
        profile = (await exchange(browser_http, stack, code)).json()["profile"]
        assert profile["email"] != "victim@acme-sso.example"
        assert profile["idp_id"] == "victim@acme-sso.example.attacker.example"
    else:
        assert error_of(response) in {"bad-signature", "malformed"}


async def test_a_replayed_assertion_is_refused(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    tenant_id, connection, server = saml_target
    xml = good_response(server, connection)
    first = await post_response(browser_http, connection, xml)
    assert "code" in parse_qs(urlsplit(first.headers["location"]).query)
    second = await post_response(browser_http, connection, xml)
    assert error_of(second) == "replay"
    assert "replay" in await failures(identity, tenant_id, connection["id"])


async def test_in_response_to_must_name_a_request_we_sent_and_only_once(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    _tenant_id, connection, server = saml_target
    forged = good_response(server, connection, in_response_to="_never-sent-by-us")
    assert error_of(await post_response(browser_http, connection, forged)) == "unknown-request"
    # A real login's response, posted twice: the request is answered once.
    ok = await saml_login(browser_http, stack, connection["id"])
    code_of(ok)
    replay = server.issued_responses[-1]
    assert error_of(await post_response(browser_http, connection, replay)) in {
        "unknown-request",
        "replay",
    }


async def test_idp_certificate_rotation_with_two_certificates_at_once(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_sp: SamlTarget,
) -> None:
    tenant_id, connection, server = saml_sp
    old = server.cert_pem
    new_metadata_certs = [old]
    server.rotate_key()  # the IdP now signs with a new key the connection does not know
    refused = await saml_login(browser_http, stack, connection["id"])
    assert error_of(refused) == "unknown-certificate"
    # The admin publishes both (the IdP's metadata during a rotation lists both).
    r = await identity.patch(
        f"/v1/tenants/{tenant_id}/sso/connections/{connection['id']}",
        json={"saml": {"metadata_xml": server.metadata_xml(extra_certs=new_metadata_certs)}},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["saml"]["idp_certificates"]) == 2
    code_of(await saml_login(browser_http, stack, connection["id"]))


async def test_metadata_from_a_url_is_fetched_guarded_and_refreshed(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    idp: tuple[SamlIdp, User],
) -> None:
    server, _ = idp
    tenant_id = await sso_tenant(stack, operator_headers)
    r = await identity.post(
        f"/v1/tenants/{tenant_id}/sso/connections",
        json={"kind": "saml", "name": "By URL", "saml": {"metadata_url": server.metadata_url}},
    )
    assert r.status_code == 201, r.text
    connection = r.json()
    assert connection["saml"]["idp_entity_id"] == server.entity_id
    server.register_sp((await identity.get(connection["saml"]["sp_metadata_url"])).text)
    code_of(await saml_login(browser_http, stack, connection["id"]))

    # The IdP rotates and publishes both certificates: the worker's schedule picks it up
    # (every 5 s locally) and logins keep working.
    old = server.rotate_key()
    server.metadata_extra_certs = [old]
    hits = server.metadata_hits

    async def refreshed() -> bool:
        r = await identity.get(f"/v1/tenants/{tenant_id}/sso/connections/{connection['id']}")
        return server.metadata_hits > hits and len(r.json()["saml"]["idp_certificates"]) == 2

    await eventually(refreshed, timeout=30, message="the metadata refreshed on schedule")
    code_of(await saml_login(browser_http, stack, connection["id"]))

    # Metadata URLs that are not a document, or too large, give a clear 422.
    from tenantry_testkit.receiver import running_receiver

    async with running_receiver() as receiver:
        for url, reason in (
            (f"{server.base_url}/nothing-here", "HTTP 404"),
            (f"{receiver.url}/huge/3", "larger than the size cap"),
        ):
            bad = await identity.post(
                f"/v1/tenants/{tenant_id}/sso/connections",
                json={"kind": "saml", "name": "Bad", "saml": {"metadata_url": url}},
            )
            assert bad.status_code == 422, bad.text
            assert reason in bad.json()["detail"]


async def test_metadata_url_to_a_refused_address_is_refused_before_connecting(
    stack: Stack, operator_headers: dict[str, str], identity: httpx.AsyncClient
) -> None:
    """The SSRF guard: link-local metadata addresses are refused even where loopback is
    allowed for the tests; nothing is connected to."""
    tenant_id = await sso_tenant(stack, operator_headers)
    for url in ("http://169.254.169.254/latest/meta-data", "file:///etc/passwd"):
        r = await identity.post(
            f"/v1/tenants/{tenant_id}/sso/connections",
            json={"kind": "saml", "name": "SSRF", "saml": {"metadata_url": url}},
        )
        assert r.status_code == 422, r.text
        assert "refused" in r.json()["detail"]


# ---------------------------------------------------------------------------- accounts


async def test_a_user_deprovisioned_or_disabled_cannot_sign_in_through_sso(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    tenant_id, connection, server = saml_target
    ok = await post_response(browser_http, connection, good_response(server, connection))
    code = parse_qs(urlsplit(ok.headers["location"]).query)["code"][0]
    account_id = (await exchange(browser_http, stack, code)).json()["profile"]["id"]
    r = await identity.post(
        f"/v1/tenants/{tenant_id}/provisioned-accounts/{account_id}/deprovision", json={}
    )
    assert r.status_code in (200, 204), r.text
    refused = await post_response(browser_http, connection, good_response(server, connection))
    assert error_of(refused) == "account-disabled"


async def test_jit_respects_the_seat_limit_and_emits_user_jit_provisioned_on_kafka(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    tenant_id, connection, server = saml_target
    ok = await post_response(browser_http, connection, good_response(server, connection))
    assert "code" in parse_qs(urlsplit(ok.headers["location"]).query)
    wanted = {"user.jit_provisioned", "sso.connection_changed"}
    await tenant_events_seen(stack, tenant_id, wanted, timeout=30)

    # Alice holds the only seat the override leaves: the next new user is refused.
    await override(stack, operator_headers, tenant_id, {"seats": 1})

    async def capped() -> bool:
        bob = SamlUser(
            name_id="bob@acme-sso.example", attributes={"email": ["bob@acme-sso.example"]}
        )
        urls = connection["saml"]
        xml = server.response(
            sp_entity_id=urls["sp_entity_id"], acs_url=urls["sp_acs_url"], user=bob
        )
        r = await post_response(browser_http, connection, xml)
        return r.status_code == 303 and "error_code=seat-limit" in r.headers["location"]

    await eventually(capped, timeout=30, message="the seat limit applied to JIT")


# ---------------------------------------------------------------------------- OIDC


OIDC_SECRET = "oidc-client-secret-for-tests-0123456789"


@pytest_asyncio.fixture
async def oidc_provider(stack: Stack, tmp_path: Path) -> AsyncIterator[OidcProvider]:
    callback = f"{stack.service_url('identity')}/sso/oidc/callback"
    async with OidcProvider.running(
        tmp_path,
        clients=[
            OidcClient(client_id="tenantry", client_secret=OIDC_SECRET, redirect_uris=[callback])
        ],
        accounts={
            "u-carol": OidcAccount(
                email="carol@acme-oidc.example",
                given_name="Carol",
                family_name="Danvers",
                groups=["admins"],
            ),
            "u-dave": OidcAccount(email="dave@acme-oidc.example", groups=["staff"]),
        },
    ) as op:
        yield op


async def oidc_connection(
    identity: httpx.AsyncClient, tenant_id: str, op: OidcProvider
) -> dict[str, Any]:
    r = await identity.post(
        f"/v1/tenants/{tenant_id}/sso/connections",
        json={
            "kind": "oidc",
            "name": "Acme OIDC",
            "oidc": {
                "issuer": op.issuer,
                "client_id": "tenantry",
                "client_secret": OIDC_SECRET,
                "scopes": ["openid", "email", "profile", "groups"],
            },
            "attribute_mapping": {"roles": {"admins": "admin"}},
        },
    )
    assert r.status_code == 201, r.text
    connection: dict[str, Any] = r.json()
    assert OIDC_SECRET not in r.text  # the secret is never read back
    return connection


OidcTarget = tuple[str, dict[str, Any], OidcProvider]


@pytest_asyncio.fixture
async def oidc_target(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    oidc_provider: OidcProvider,
) -> OidcTarget:
    """A tenant with an OIDC connection to the provider: (tenant id, connection, provider)."""
    tenant_id = await sso_tenant(stack, operator_headers)
    return tenant_id, await oidc_connection(identity, tenant_id, oidc_provider), oidc_provider


async def oidc_login(
    http: httpx.AsyncClient,
    stack: Stack,
    op: OidcProvider,
    connection_id: str,
    login: str,
    *,
    tamper: Any = None,
) -> httpx.Response:
    """The whole login; returns our callback's answer (303 to the product on success)."""
    return await http.get(await oidc_callback(http, stack, op, connection_id, login, tamper=tamper))


async def oidc_callback(
    http: httpx.AsyncClient,
    stack: Stack,
    op: OidcProvider,
    connection_id: str,
    login: str,
    *,
    tamper: Any = None,
) -> str:
    """Start a login and walk it through the provider: the URL of our callback it ends at."""
    start = await http.get(
        f"{stack.service_url('identity')}/sso/authorize",
        params={"connection_id": connection_id, "redirect_uri": REDIRECT, "state": "st-1"},
    )
    assert start.status_code == 302, start.text
    authorize = start.headers["location"]
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["code_challenge"][0]
    assert query["nonce"][0]
    assert query["state"][0]
    http.cookies.clear()  # a fresh provider session: sign in as `login`
    return await op.follow_login(http, authorize, login=login, tamper_authorize=tamper)


async def test_oidc_code_flow_with_pkce_signs_in_with_claims_from_userinfo(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    oidc_target: OidcTarget,
) -> None:
    _tenant_id, connection, oidc_provider = oidc_target
    code = code_of(
        await oidc_login(browser_http, stack, oidc_provider, connection["id"], "u-carol")
    )
    r = await exchange(browser_http, stack, code)
    assert r.status_code == 200, r.text
    profile = r.json()["profile"]
    # The provider puts email, names and groups only in userinfo (conformIdTokenClaims).
    assert profile["email"] == "carol@acme-oidc.example"
    assert (profile["first_name"], profile["last_name"]) == ("Carol", "Danvers")
    assert profile["groups"] == ["admins"]
    assert profile["role"] == "admin"
    assert profile["idp_id"] == "u-carol"
    assert profile["connection_type"] == "oidc"

    # Later logins update the mapped attributes: dave's group maps to nothing -> member.
    code = code_of(await oidc_login(browser_http, stack, oidc_provider, connection["id"], "u-dave"))
    dave = (await exchange(browser_http, stack, code)).json()["profile"]
    assert dave["role"] == "member"
    assert dave["id"] != profile["id"]


async def test_oidc_wrong_nonce_is_refused(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    oidc_target: OidcTarget,
) -> None:
    tenant_id, connection, oidc_provider = oidc_target

    def other_nonce(url: str) -> str:
        return re.sub(r"nonce=[^&]+", "nonce=an-attackers-nonce", url)

    refused = await oidc_login(
        browser_http, stack, oidc_provider, connection["id"], "u-carol", tamper=other_nonce
    )
    assert error_of(refused) == "wrong-nonce"
    assert "wrong-nonce" in await failures(identity, tenant_id, connection["id"])


async def test_oidc_provider_key_rotation_is_followed(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    oidc_target: OidcTarget,
) -> None:
    _tenant_id, connection, oidc_provider = oidc_target
    code_of(await oidc_login(browser_http, stack, oidc_provider, connection["id"], "u-carol"))
    old_kid = oidc_provider.signing_kid
    await oidc_provider.rotate_keys()  # the old key is gone from the JWKS
    assert oidc_provider.signing_kid != old_kid

    async def signs_in() -> bool:
        r = await oidc_login(browser_http, stack, oidc_provider, connection["id"], "u-carol")
        return r.status_code == 303 and "code" in parse_qs(urlsplit(r.headers["location"]).query)

    await eventually(signs_in, timeout=20, message="a login after the key rotation")


async def test_oidc_state_is_single_use(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    oidc_target: OidcTarget,
) -> None:
    _tenant_id, connection, oidc_provider = oidc_target
    callback = await oidc_callback(browser_http, stack, oidc_provider, connection["id"], "u-carol")
    assert (await browser_http.get(callback)).status_code == 303
    again = await browser_http.get(callback)
    assert again.status_code == 400
    assert again.json()["code"] == "unknown-request"


async def test_oidc_connection_to_an_unreachable_issuer_is_refused_with_a_reason(
    stack: Stack, operator_headers: dict[str, str], identity: httpx.AsyncClient
) -> None:
    tenant_id = await sso_tenant(stack, operator_headers)
    for issuer in ("http://127.0.0.1:9/", "http://169.254.169.254"):
        r = await identity.post(
            f"/v1/tenants/{tenant_id}/sso/connections",
            json={
                "kind": "oidc",
                "name": "Nowhere",
                "oidc": {"issuer": issuer, "client_id": "x", "client_secret": "y"},
            },
        )
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith("oidc.issuer:")
    # Symmetric or no-signature ID tokens cannot be allowed (the client secret is shared).
    for algorithms in (["HS256"], ["none"], []):
        r = await identity.post(
            f"/v1/tenants/{tenant_id}/sso/connections",
            json={
                "kind": "oidc",
                "name": "Weak",
                "oidc": {
                    "issuer": "http://127.0.0.1:9/",
                    "client_id": "x",
                    "client_secret": "y",
                    "allowed_algorithms": algorithms,
                },
            },
        )
        assert r.status_code == 422, r.text
        assert "allowed_algorithms" in r.json()["detail"] or "algorithms" in r.json()["detail"]


# ---------------------------------------------------------------------------- domains


@pytest.fixture(scope="module")
def dns(stack: Stack) -> Iterator[LoopbackDns]:
    """The DNS server identity is configured to ask (TENANTRY_SSO_DNS_NAMESERVERS)."""
    host, port = stack.env["TENANTRY_SSO_DNS_NAMESERVERS"].split(",")[0].rsplit(":", 1)
    with LoopbackDns(host, int(port)) as server:
        yield server


async def test_domain_verification_by_dns_txt_and_home_realm_discovery(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    idp: tuple[SamlIdp, User],
    dns: LoopbackDns,
) -> None:
    server, _ = idp
    tenant_id = await sso_tenant(stack, operator_headers)
    connection = await saml_connection(identity, tenant_id, server)
    domain = f"acme-{uuid4().hex[:8]}.example"

    consumer = await identity.post(
        f"/v1/tenants/{tenant_id}/sso/domains", json={"domain": "Gmail.com"}
    )
    assert consumer.status_code == 422
    assert consumer.json()["type"].endswith("/consumer-domain")

    r = await identity.post(
        f"/v1/tenants/{tenant_id}/sso/domains",
        json={"domain": domain.upper(), "connection_id": connection["id"]},
    )
    assert r.status_code == 201, r.text
    claim = r.json()
    assert claim["domain"] == domain
    assert not claim["verified"]
    assert claim["txt_record_name"] == f"_tenantry-verification.{domain}"

    # Before the record exists: not verified, and the reason says what is missing.
    r = await identity.post(f"/v1/tenants/{tenant_id}/sso/domains/{domain}/verify")
    assert r.status_code == 200
    assert not r.json()["verified"]
    assert "no TXT record" in r.json()["last_error"]
    # Home realm discovery ignores unverified domains.
    start = await browser_http.get(
        f"{stack.service_url('identity')}/sso/authorize",
        params={"email": f"erin@{domain}", "redirect_uri": REDIRECT},
    )
    assert start.status_code == 404

    dns.set_txt(claim["txt_record_name"], ["v=spf1 -all", claim["txt_record_value"]])
    r = await identity.post(f"/v1/tenants/{tenant_id}/sso/domains/{domain}/verify")
    assert r.status_code == 200, r.text
    assert r.json()["verified"], r.text

    # A login that starts with an email address goes to that domain's connection.
    start = await browser_http.get(
        f"{stack.service_url('identity')}/sso/authorize",
        params={"email": f"Erin@{domain.upper()}", "redirect_uri": REDIRECT},
    )
    assert start.status_code == 302, start.text
    assert start.headers["location"].startswith(server.sso_redirect_url)

    # The admin routes the domain to another connection, or to none.
    other_idp = await identity.post(
        f"/v1/tenants/{tenant_id}/sso/connections",
        json={"kind": "saml", "name": "Second", "saml": {"metadata_xml": server.metadata_xml()}},
    )
    assert other_idp.status_code == 201, other_idp.text
    r = await identity.patch(
        f"/v1/tenants/{tenant_id}/sso/domains/{domain}",
        json={"connection_id": other_idp.json()["id"]},
    )
    assert r.status_code == 200, r.text
    assert r.json()["connection_id"] == other_idp.json()["id"]
    r = await identity.patch(
        f"/v1/tenants/{tenant_id}/sso/domains/{domain}", json={"connection_id": str(uuid4())}
    )
    assert r.status_code == 422, r.text
    r = await identity.patch(
        f"/v1/tenants/{tenant_id}/sso/domains/{domain}", json={"connection_id": None}
    )
    assert r.json()["connection_id"] is None
    # With two connections and no route, the login must name one.
    start = await browser_http.get(
        f"{stack.service_url('identity')}/sso/authorize",
        params={"email": f"erin@{domain}", "redirect_uri": REDIRECT},
    )
    assert start.status_code == 409, start.text

    # Another tenant cannot take the verified domain, even with its own valid record.
    other = await sso_tenant(stack, operator_headers)
    r = await identity.post(f"/v1/tenants/{other}/sso/domains", json={"domain": domain})
    assert r.status_code == 201
    dns.add_txt(claim["txt_record_name"], r.json()["txt_record_value"])
    r = await identity.post(f"/v1/tenants/{other}/sso/domains/{domain}/verify")
    assert r.status_code == 409
    assert r.json()["type"].endswith("/domain-taken")


async def test_a_dns_failure_is_reported_as_temporary(
    stack: Stack, operator_headers: dict[str, str], identity: httpx.AsyncClient, dns: LoopbackDns
) -> None:
    tenant_id = await sso_tenant(stack, operator_headers)
    domain = f"broken-{uuid4().hex[:8]}.example"
    r = await identity.post(f"/v1/tenants/{tenant_id}/sso/domains", json={"domain": domain})
    assert r.status_code == 201
    dns.fail(r.json()["txt_record_name"], "SERVFAIL")
    r = await identity.post(f"/v1/tenants/{tenant_id}/sso/domains/{domain}/verify")
    assert r.status_code == 503
    assert r.json()["type"].endswith("/dns-unavailable")
    assert r.headers["retry-after"]


# ---------------------------------------------------------------------------- plans, RLS


async def test_sso_needs_a_plan_with_sso_and_bad_input_changes_nothing(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    idp: tuple[SamlIdp, User],
) -> None:
    server, _ = idp
    team = await sso_tenant(stack, operator_headers, plan="team")
    r = await identity.post(
        f"/v1/tenants/{team}/sso/connections",
        json={"kind": "saml", "name": "x", "saml": {"metadata_xml": server.metadata_xml()}},
    )
    assert r.status_code == 403, r.text
    assert r.json()["type"].endswith("/feature-not-in-plan"), r.text

    tenant_id = await sso_tenant(stack, operator_headers)
    bad_bodies: list[dict[str, Any]] = [
        {"kind": "saml", "name": "x", "saml": {"metadata_xml": "<not-metadata/>"}},
        {"kind": "saml", "name": "x", "saml": {"metadata_xml": "<<<"}},
        {
            "kind": "saml",
            "name": "x",
            "saml": {"idp_entity_id": "e", "idp_sso_url": "https://i", "idp_certs": ["nope"]},
        },
        {"kind": "saml", "name": "x"},
        {"kind": "ldap", "name": "x"},
        {"kind": "oidc", "name": "x", "oidc": {"client_id": "c"}},
        {"kind": "saml", "name": "", "saml": {"metadata_xml": server.metadata_xml()}},
        {
            "kind": "saml",
            "name": "x",
            "saml": {"metadata_xml": server.metadata_xml()},
            "default_redirect_uri": "https://evil.example/cb",
        },
        {"kind": "saml", "name": "x", "unknown": 1},
    ]
    for body in bad_bodies:
        r = await identity.post(f"/v1/tenants/{tenant_id}/sso/connections", json=body)
        assert r.status_code in (400, 422), (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
    listed = await identity.get(f"/v1/tenants/{tenant_id}/sso/connections")
    assert listed.json() == []


async def test_sso_rows_are_invisible_outside_their_tenant(
    stack: Stack,
    service_dbs: dict[str, asyncpg.Pool],
    saml_target: SamlTarget,
) -> None:
    """Row-level security: the app role sees no SSO row without a tenant scope."""
    conn = await asyncpg.connect(stack.app_dsn(stack.service_database("identity")))
    try:
        for table in ("sso_connections", "sso_domains", "sso_login_failures", "sso_identities"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        tenant_id = saml_target[0]
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", tenant_id)
            assert await conn.fetchval("SELECT count(*) FROM sso_connections") == 1
    finally:
        await conn.close()


# ---------------------------------------------------------------------------- sessions


async def test_two_first_logins_of_one_user_at_once_make_one_account(
    stack: Stack,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    _, connection, server = saml_target
    bodies = [good_response(server, connection) for _ in range(4)]
    answers = await asyncio.gather(*(post_response(browser_http, connection, b) for b in bodies))
    codes = [parse_qs(urlsplit(a.headers["location"]).query).get("code", [""])[0] for a in answers]
    assert all(codes), [a.headers.get("location") for a in answers]
    profiles = [(await exchange(browser_http, stack, c)).json()["profile"] for c in codes]
    assert len({p["id"] for p in profiles}) == 1


async def sso_session(
    stack: Stack, http: httpx.AsyncClient, connection: dict[str, Any], server: SamlIdp, index: str
) -> dict[str, Any]:
    xml = good_response(server, connection, session_index=index)
    answer = await post_response(http, connection, xml)
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    r = await exchange(http, stack, code)
    assert r.status_code == 200, r.text
    tokens: dict[str, Any] = r.json()["tokens"]
    return tokens


async def refresh_works(stack: Stack, http: httpx.AsyncClient, tokens: dict[str, Any]) -> bool:
    r = await http.post(
        f"{stack.service_url('identity')}/v1/sessions/refresh",
        json={"refresh_token": tokens["refresh_token"]},
    )
    if r.status_code == 201:
        tokens.update(r.json())
        return True
    return False


async def test_idp_initiated_single_logout_ends_that_session_only(
    stack: Stack,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    _, connection, server = saml_target
    urls = connection["saml"]
    laptop = await sso_session(stack, browser_http, connection, server, "idx-laptop")
    phone = await sso_session(stack, browser_http, connection, server, "idx-phone")
    request = server.logout_request(
        sp_entity_id=urls["sp_entity_id"],
        slo_url=urls["sp_slo_url"],
        name_id=ALICE.name_id,
        session_index="idx-laptop",
    )
    url = server.redirect_url(urls["sp_slo_url"], saml_request=request, relay_state="rs")
    r = await browser_http.get(url)
    assert r.status_code == 302, r.text
    # Our signed LogoutResponse goes back to the IdP, which accepts it.
    back = await browser_http.get(r.headers["location"])
    assert back.status_code == 200, back.text
    reply = server.logout_messages[-1]
    assert reply.kind == "response"
    assert reply.signed
    assert reply.signature_valid
    assert not await refresh_works(stack, browser_http, laptop)
    assert await refresh_works(stack, browser_http, phone)

    # A LogoutRequest with a bad signature, or none, changes nothing.
    forged = server.redirect_url(urls["sp_slo_url"], saml_request=request, relay_state="rs")
    forged = forged.replace("Signature=", "Signature=AAAA")
    r = await browser_http.get(forged)
    assert r.status_code == 400, r.text
    unsigned = server.redirect_url(
        urls["sp_slo_url"], saml_request=request, relay_state="rs", sign=False
    )
    assert "Signature=" not in unsigned
    r = await browser_http.get(unsigned)
    assert r.status_code == 400, r.text
    assert await refresh_works(stack, browser_http, phone)


async def test_sp_initiated_logout_ends_the_session_here_and_asks_the_idp(
    stack: Stack,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    _, connection, server = saml_target
    tokens = await sso_session(stack, browser_http, connection, server, "idx-1")
    r = await browser_http.post(
        f"{stack.service_url('identity')}/v1/sso/logout",
        headers=bearer(tokens["access_token"]),
        json={"redirect_uri": REDIRECT},
    )
    assert r.status_code == 200, r.text
    url = r.json()["idp_logout_url"]
    assert url.startswith(server.slo_url)
    assert not await refresh_works(stack, browser_http, tokens)
    at_idp = await browser_http.get(url)  # the IdP checks our signature and answers
    assert at_idp.status_code == 302, at_idp.text
    request = server.logout_messages[-1]
    assert request.kind == "request"
    assert request.signature_valid
    assert request.name_id == ALICE.name_id
    # The IdP's LogoutResponse answers our request (InResponseTo), once; the browser
    # lands on the product's page.
    done = await browser_http.get(at_idp.headers["location"])
    assert done.status_code == 303, done.text
    assert done.headers["location"] == REDIRECT
    again = await browser_http.get(at_idp.headers["location"])
    assert again.status_code == 400, again.text


async def test_a_suspended_tenant_cannot_sign_in_through_sso(
    stack: Stack,
    operator_headers: dict[str, str],
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    tenant_id, connection, server = saml_target
    async with httpx.AsyncClient(base_url=stack.service_url("tenancy"), timeout=10) as tenancy:
        r = await tenancy.post(
            f"/v1/tenants/{tenant_id}/suspend",
            json={"reason": "unpaid"},
            headers=operator_headers,
        )
        assert r.status_code == 200, r.text

    await refused_eventually(browser_http, connection, server, "tenant-suspended")


# ---------------------------------------------------------------------------- faults


async def test_sso_logins_during_a_kafka_outage_lose_no_event(
    stack: Stack,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    """The broker is stopped: logins still work (events wait in the outbox) and
    user.jit_provisioned and user.signed_in reach Kafka once it is back."""
    tenant_id, connection, server = saml_target
    await stack.control("kafka", "stop")
    try:
        tokens = await sso_session(stack, browser_http, connection, server, "during-outage")
        assert tokens["access_token"]
    finally:
        await stack.control("kafka", "start")
    # stack.sh waits until the broker serves again.
    wanted = {"user.jit_provisioned", "user.signed_in"}
    await tenant_events_seen(stack, tenant_id, wanted, timeout=90)


async def test_an_idp_killed_mid_login_gives_a_clear_reason_and_logins_resume(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    oidc_target: OidcTarget,
) -> None:
    tenant_id, connection, oidc_provider = oidc_target
    callback = await oidc_callback(browser_http, stack, oidc_provider, connection["id"], "u-carol")
    await oidc_provider.kill()  # SIGKILL: the token endpoint is gone
    assert error_of(await browser_http.get(callback)) == "idp-unreachable"
    assert "idp-unreachable" in await failures(identity, tenant_id, connection["id"])
    await oidc_provider.start()
    code_of(await oidc_login(browser_http, stack, oidc_provider, connection["id"], "u-carol"))


async def test_a_failing_metadata_host_trips_its_breaker(
    stack: Stack, operator_headers: dict[str, str], identity: httpx.AsyncClient
) -> None:
    """IdP metadata fetches go through a breaker per IdP origin: after ten failures in a
    row, the next fetch is refused without a request (and other IdPs are unaffected)."""
    from tenantry_testkit.receiver import running_receiver

    tenant_id = await sso_tenant(stack, operator_headers)
    async with running_receiver() as receiver:
        url = f"{receiver.url}/status/500"
        details = []
        for _ in range(12):
            r = await identity.post(
                f"/v1/tenants/{tenant_id}/sso/connections",
                json={"kind": "saml", "name": "flaky", "saml": {"metadata_url": url}},
            )
            assert r.status_code == 422, r.text
            details.append(r.json()["detail"])
        sent = len(receiver.to("/status/500"))
    assert details[0] == "metadata URL answered HTTP 500"
    assert details[-1].endswith("fetching paused for a while"), details
    assert sent < 12  # the open breaker sent nothing


async def test_idp_endpoints_must_be_http_urls(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    idp: tuple[SamlIdp, User],
) -> None:
    """The POST binding serves a page that submits itself to the IdP's address: a
    `javascript:` address there would run script on identity's origin."""
    server, _ = idp
    tenant_id = await sso_tenant(stack, operator_headers)
    evil = server.metadata_xml().replace(server.sso_post_url, "javascript:alert(document.domain)")
    assert "javascript:" in evil
    for saml_input in (
        {"metadata_xml": evil},
        {
            "idp_entity_id": server.entity_id,
            "idp_sso_url": "data:text/html,hi",
            "idp_certs": [server.cert_pem],
        },
    ):
        r = await identity.post(
            f"/v1/tenants/{tenant_id}/sso/connections",
            json={"kind": "saml", "name": "x", "saml": saml_input},
        )
        assert r.status_code == 422, r.text
        assert "http(s) URL" in r.json()["detail"]


async def test_a_plan_without_sso_refuses_logins_that_bypass_authorize(
    stack: Stack,
    operator_headers: dict[str, str],
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    tenant_id, connection, server = saml_target
    async with httpx.AsyncClient(timeout=10) as client:
        down = await client.post(
            f"{stack.service_url('tenancy')}/v1/tenants/{tenant_id}/plan",
            headers=operator_headers,
            json={"plan": "team"},
        )
        assert down.status_code == 200, down.text

    await refused_eventually(browser_http, connection, server, "sso-not-in-plan")


async def test_the_sweep_keeps_live_sso_sessions_and_drops_ended_ones(
    stack: Stack,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    """sso_sessions rows live as long as their refresh family does (rotation keeps a
    session alive past any fixed age); the sweep drops only ended ones."""
    from datetime import UTC, datetime, timedelta

    from tenantry_identity.sso.store import SsoStore

    tenant_id, connection, server = saml_target
    ended = await sso_session(stack, browser_http, connection, server, "idx-ended")
    live = await sso_session(stack, browser_http, connection, server, "idx-live")
    r = await browser_http.post(
        f"{stack.service_url('identity')}/v1/sso/logout", headers=bearer(ended["access_token"])
    )
    assert r.status_code == 200, r.text
    assert await refresh_works(stack, browser_http, live)  # rotated: a new token, same family
    conn = await asyncpg.connect(stack.owner_dsn(stack.service_database("identity")))
    try:
        tx = conn.transaction()  # rolled back: the sweep's clock is in the future
        await tx.start()
        await conn.execute("SELECT set_config('app.platform', 'on', true)")
        later = datetime.now(UTC) + timedelta(hours=2)
        await SsoStore(None, source="test", region="local").purge_expired(  # type: ignore[arg-type]
            conn, later
        )
        left = await conn.fetch(
            "SELECT session_index FROM sso_sessions WHERE tenant_id = $1::uuid", tenant_id
        )
        await tx.rollback()
        assert [r["session_index"] for r in left] == ["idx-live"]
    finally:
        await conn.close()


async def test_anonymous_login_routes_are_billed_to_the_connections_tenant(
    stack: Stack,
    operator_headers: dict[str, str],
    service_dbs: dict[str, asyncpg.Pool],
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    """/sso/authorize and the ACS carry no credential; each request is charged to the
    tenant of the connection it names (route class auth), so a flood against one
    tenant's login is refused with 429 before any XML or database work."""
    from .test_rate_limits import published_everywhere, set_tenant_policies

    tenant_id, connection, server = saml_target
    async with httpx.AsyncClient(timeout=10) as client:
        view = await set_tenant_policies(
            client,
            stack,
            operator_headers,
            tenant_id,
            {
                "policies": [
                    {
                        "name": "logins",
                        "limit": 1,
                        "period_seconds": 60,
                        "burst": 3,
                        "route_class": "auth",
                    }
                ]
            },
        )
    await published_everywhere(service_dbs, tenant_id, view["version"])
    statuses = []
    for _ in range(3):
        r = await browser_http.get(
            f"{stack.service_url('identity')}/sso/authorize",
            params={"connection_id": connection["id"], "redirect_uri": REDIRECT},
        )
        statuses.append(r.status_code)
    assert statuses == [302, 302, 302]
    refused = await browser_http.get(
        f"{stack.service_url('identity')}/sso/authorize",
        params={"connection_id": connection["id"], "redirect_uri": REDIRECT},
    )
    assert refused.status_code == 429, refused.text
    assert refused.json()["policy"] == "logins"
    assert int(refused.headers["Retry-After"]) > 0
    acs = await post_response(browser_http, connection, good_response(server, connection))
    assert acs.status_code == 429, acs.text


async def test_bad_login_requests_get_clear_problems_and_change_nothing(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    tenant_id, connection, server = saml_target
    base = stack.service_url("identity")
    cid = connection["id"]

    def problem(r: httpx.Response, status: int, slug: str | None = None) -> None:
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/problem+json"), r.text
        if slug is not None:
            assert r.json()["type"].endswith("/" + slug), r.text

    # Starting a login.
    authorize = f"{base}/sso/authorize"
    problem(await browser_http.get(authorize, params={"connection_id": cid}), 400)
    problem(
        await browser_http.get(
            authorize, params={"connection_id": cid, "redirect_uri": "https://evil.example/cb"}
        ),
        400,
        "invalid-redirect-uri",
    )
    for params, status, slug in (
        ({"connection_id": str(uuid4())}, 404, "unknown-connection"),
        ({}, 400, "connection-required"),
        ({"email": "not-an-email"}, 400, "invalid-email"),
        ({"email": f"x@unclaimed-{uuid4().hex[:6]}.example"}, 404, "no-sso-for-domain"),
        ({"connection_id": "not-a-uuid"}, 400, None),
    ):
        r = await browser_http.get(authorize, params={**params, "redirect_uri": REDIRECT})
        problem(r, status, slug)

    # The assertion consumer, the OIDC callback, single logout.
    acs = connection["saml"]["sp_acs_url"]
    problem(await browser_http.post(acs, data={}), 400, "invalid-saml-response")
    for garbage in ("%%%not-base64", base64.b64encode(b"<not-saml").decode()):
        assert error_of(await browser_http.post(acs, data={"SAMLResponse": garbage})) == (
            "malformed"
        )
    problem(
        await browser_http.post(f"{base}/sso/saml/{uuid4()}/acs", data={"SAMLResponse": "eA=="}),
        404,
    )
    problem(await browser_http.get(f"{base}/sso/oidc/callback"), 400, "sso-login-failed")
    problem(await browser_http.get(connection["saml"]["sp_slo_url"]), 400, "invalid-logout")

    # The product's code exchange.
    token = f"{base}/v1/sso/token"
    secret = ("product", client_secret(stack))
    problem(await browser_http.post(token, json={}, auth=secret), 400)
    problem(await browser_http.post(token, json={"code": "x", "extra": 1}, auth=secret), 400)
    problem(await browser_http.post(token, json={"code": "never-issued"}, auth=secret), 400)

    # Logout: only a user's session, only to a registered URI; a refused call ends nothing.
    problem(await identity.post("/v1/sso/logout"), 400, "not-a-session")
    tokens = await sso_session(stack, browser_http, connection, server, "idx-bad")
    r = await browser_http.post(
        f"{base}/v1/sso/logout",
        headers=bearer(tokens["access_token"]),
        json={"redirect_uri": "https://evil.example/after"},
    )
    problem(r, 422)
    assert await refresh_works(stack, browser_http, tokens)

    # Administration: domains, connections, the failure log.
    domains = f"/v1/tenants/{tenant_id}/sso/domains"
    problem(await identity.post(domains, json={"domain": "http://acme.example/x"}), 422)
    problem(await identity.post(domains, json={"domain": "acme.example", "x": 1}), 400)
    problem(await identity.patch(f"{domains}/nowhere.example", json={"connection_id": None}), 404)
    assert (await identity.get(domains)).json() == []
    one = f"/v1/tenants/{tenant_id}/sso/connections/{cid}"
    before = (await identity.get(one)).json()
    changes: list[tuple[dict[str, Any], int]] = [
        ({"attribute_mapping": {"roles": {"staff": "owner"}}}, 400),  # IdPs never make owners
        ({"attribute_mapping": {"unknown": []}}, 400),
        ({"name": ""}, 400),
        ({"default_redirect_uri": "https://evil.example/cb"}, 422),
        ({"oidc": {"issuer": "https://idp.example"}}, 422),  # not an OIDC connection
        ({"saml": {"idp_certs": ["not a certificate"]}}, 422),
    ]
    for body, status in changes:
        problem(await identity.patch(one, json=body), status)
    assert (await identity.get(one)).json() == before
    problem(await identity.get(f"{one}/login-failures", params={"limit": 0}), 400)
    problem(await identity.get(f"{one}/login-failures", params={"before": "x"}), 400)
