"""SSO against hostile messages: assertions that cannot be decrypted, forged or damaged
responses naming a real pending request (they must not end that login), racing genuine
answers, bad logout responses, and hypothesis-damaged messages at the ACS and SLO. Split
from test_sso.py, whose fixtures and helpers it shares."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, get_args
from urllib.parse import parse_qs, parse_qsl, urlsplit

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tenantry_identity.sso.domain import RefusalCode
from tenantry_testkit import saml_attacks, saml_fuzz
from tenantry_testkit.saml_idp import SamlIdp
from tenantry_testkit.stack import Stack

from .test_identity import bearer
from .test_sso import (
    ALICE,
    REDIRECT,
    OidcTarget,
    SamlTarget,
    code_of,
    error_of,
    exchange,
    failures,
    good_response,
    oidc_callback,
    post_response,
    refresh_works,
    saml_login_at_idp,
    sso_session,
)

# Fixtures shared with test_sso.py, imported so pytest finds them here too.
from .test_sso import browser_http as browser_http
from .test_sso import dns as dns
from .test_sso import identity as identity
from .test_sso import idp as idp
from .test_sso import oidc_provider as oidc_provider
from .test_sso import oidc_target as oidc_target
from .test_sso import saml_sp as saml_sp
from .test_sso import saml_target as saml_target

pytestmark = pytest.mark.kafka


# ---------------------------------------------------------------------------- hostile messages


def other_sp_certificate() -> str:
    from tenantry_testkit.saml_idp import make_key_and_cert, pem_of_cert

    _, cert = make_key_and_cert("another SP")
    return pem_of_cert(cert)


def assert_signed_in(response: httpx.Response) -> None:
    """An IdP-initiated login that reached the product with a code."""
    assert response.status_code == 303, response.text
    assert "code" in parse_qs(urlsplit(response.headers["location"]).query), response.headers


def undecryptable(server: SamlIdp, connection: dict[str, Any], case: str, **options: Any) -> str:
    """A response whose EncryptedAssertion the connection cannot decrypt."""
    ours = connection["saml"]["sp_certificate"]
    if case == "another-certificate":
        return good_response(server, connection, encrypt=True, encrypt_to=other_sp_certificate())
    if case == "changed-ciphertext":
        encrypted = good_response(
            server, connection, encrypt=True, encrypt_to=ours, sign_response=False, **options
        )
        return saml_attacks.corrupt_ciphertext(encrypted)
    kind: saml_attacks.JunkKind = "ciphertext" if case == "junk-ciphertext" else "retrieval-method"
    return saml_attacks.junk_encrypted_assertion(good_response(server, connection, **options), kind)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("another-certificate", "undecryptable"),
        ("changed-ciphertext", "undecryptable"),
        ("junk-ciphertext", "undecryptable"),
        ("junk-key-reference", "malformed"),
    ],
)
async def test_an_assertion_that_cannot_be_decrypted_is_refused_and_logged(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
    case: str,
    expected: str,
) -> None:
    """Wrong certificate, ciphertext changed on the way, junk in an unsigned response: a
    refusal the admin can read, the user's short reason, never a 500."""
    from tenantry_identity.sso.domain import DEFAULT_USER_MESSAGE

    tenant_id, connection, server = saml_target
    # The connection decrypts what is encrypted to it (the baseline).
    fine = good_response(
        server, connection, encrypt=True, encrypt_to=connection["saml"]["sp_certificate"]
    )
    assert_signed_in(await post_response(browser_http, connection, fine))
    refused = await post_response(browser_http, connection, undecryptable(server, connection, case))
    assert refused.status_code == 303, refused.text
    assert error_of(refused) == expected
    query = parse_qs(urlsplit(refused.headers["location"]).query)
    assert "code" not in query
    assert query["error_description"] == [DEFAULT_USER_MESSAGE]
    log = await identity.get(
        f"/v1/tenants/{tenant_id}/sso/connections/{connection['id']}/login-failures"
    )
    newest = log.json()[0]
    assert newest["code"] == expected
    assert newest["detail"]


async def test_a_bad_response_naming_a_pending_request_leaves_that_login_pending(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_sp: SamlTarget,
    tmp_path: Path,
) -> None:
    """Forged or broken responses that name a real pending request are refused, and the
    user's genuine response still signs in; a replay of it is still refused."""
    tenant_id, connection, server = saml_sp
    acs, genuine = await saml_login_at_idp(browser_http, stack, connection["id"])
    request_id = server.received[-1].request_id
    assert request_id

    def answering(**options: Any) -> str:
        return good_response(server, connection, in_response_to=request_id, **options)

    evil = "mallory@evil.example"
    forged = {
        "bad-signature": saml_attacks.tamper_name_id(answering(), evil),
        "unsigned": answering(sign_response=False, sign_assertion=False),
        "unknown-certificate": saml_attacks.resign_with_unknown_key(answering(), tmp_path),
        "undecryptable": undecryptable(
            server, connection, "changed-ciphertext", in_response_to=request_id
        ),
        "malformed": undecryptable(
            server, connection, "junk-key-reference", in_response_to=request_id
        ),
    }
    for expected, xml in forged.items():
        refused = await post_response(browser_http, connection, xml)
        assert error_of(refused) == expected, refused.headers.get("location")
    codes = await failures(identity, tenant_id, connection["id"])
    assert set(forged) <= set(codes)
    assert "unknown-request" not in codes

    signed_in = await browser_http.post(acs, data=genuine)
    assert (await exchange(browser_http, stack, code_of(signed_in))).status_code == 200
    replayed = await browser_http.post(acs, data=genuine)
    assert error_of(replayed) in {"unknown-request", "replay"}
    # Once answered, even another genuine response to the same request is refused.
    assert error_of(await post_response(browser_http, connection, answering())) == (
        "unknown-request"
    )


async def test_of_several_genuine_responses_to_one_request_only_one_signs_in(
    stack: Stack,
    browser_http: httpx.AsyncClient,
    saml_sp: SamlTarget,
) -> None:
    """The pending request is taken in the transaction that admits the login: answers
    racing each other cannot both pass."""
    _, connection, server = saml_sp
    await saml_login_at_idp(browser_http, stack, connection["id"])
    request_id = server.received[-1].request_id
    bodies = [good_response(server, connection, in_response_to=request_id) for _ in range(4)]
    answers = await asyncio.gather(*(post_response(browser_http, connection, b) for b in bodies))
    outcomes = sorted(
        "signed-in" if "code" in parse_qs(urlsplit(a.headers["location"]).query) else error_of(a)
        for a in answers
    )
    assert outcomes == ["signed-in", "unknown-request", "unknown-request", "unknown-request"]


async def test_a_bad_logout_response_does_not_use_up_our_logout_request(
    stack: Stack,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    _, connection, server = saml_target
    slo = connection["saml"]["sp_slo_url"]
    tokens = await sso_session(stack, browser_http, connection, server, "idx-slo")
    r = await browser_http.post(
        f"{stack.service_url('identity')}/v1/sso/logout",
        headers=bearer(tokens["access_token"]),
        json={"redirect_uri": REDIRECT},
    )
    at_idp = await browser_http.get(r.json()["idp_logout_url"])
    assert at_idp.status_code == 302, at_idp.text
    genuine = at_idp.headers["location"]
    request_id = server.logout_messages[-1].message_id

    def answer(**options: Any) -> str:
        xml = server.logout_response(in_response_to=request_id, destination=slo, **options)
        return server.redirect_url(slo, saml_response=xml, relay_state="rs")

    bad_signature = re.sub(r"Signature=[^&]+", "Signature=" + "A" * 344, answer())
    for forged, code in (
        (bad_signature, "malformed"),
        (answer(status_ok=False), "malformed"),
        (re.sub(r"SAMLResponse=[^&]+", "SAMLResponse=bm90IGRlZmxhdGVk", genuine), "malformed"),
    ):
        refused = await browser_http.get(forged)
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == code
    done = await browser_http.get(genuine)
    assert done.status_code == 303, done.text
    assert done.headers["location"] == REDIRECT
    assert (await browser_http.get(genuine)).status_code == 400


async def sso_state(stack: Stack, tenant_id: str) -> dict[str, list[Any]]:
    """What a refused message must not change: the tenant's accounts and refresh tokens,
    its pending logins, replay cache, codes and SSO sessions."""
    conn = await asyncpg.connect(stack.owner_dsn(stack.service_database("identity")))
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.platform', 'on', true)")
            queries = {
                "accounts": "SELECT account_id, status, role, email_verified FROM accounts"
                " WHERE tenant_id = $1::uuid ORDER BY account_id",
                "refresh_tokens": "SELECT r.token_sha256, r.used_at, r.revoked_at"
                " FROM refresh_tokens r JOIN accounts a USING (account_id)"
                " WHERE a.tenant_id = $1::uuid ORDER BY 1",
                "logins": "SELECT request_sha256, used_at FROM sso_login_requests"
                " WHERE tenant_id = $1::uuid ORDER BY 1",
            }
            for table in ("sso_seen_assertions", "sso_codes", "sso_sessions", "sso_identities"):
                queries[table] = f"SELECT * FROM {table} WHERE tenant_id = $1::uuid ORDER BY 1, 2"
            return {
                name: [tuple(r) for r in await conn.fetch(sql, tenant_id)]
                for name, sql in queries.items()
            }
    finally:
        await conn.close()


FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


async def test_hostile_messages_at_the_acs_and_slo_get_no_5xx_and_change_nothing(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    saml_target: SamlTarget,
) -> None:
    """Damaged forms of real messages (saml_fuzz), thrown at the ACS (HTTP-POST) and the
    SLO endpoint (HTTP-Redirect, requests and responses): every answer is a clear refusal,
    nothing in the tenant changes, and the login and logout pending meanwhile still
    complete with their genuine answers."""
    tenant_id, connection, server = saml_target
    urls = connection["saml"]
    ours = urls["sp_certificate"]
    keep = await sso_session(stack, browser_http, connection, server, "idx-keep")
    # A logout of ours waiting for the IdP's answer, and a login waiting for the user's.
    leaving = await sso_session(stack, browser_http, connection, server, "idx-leaving")
    r = await browser_http.post(
        f"{stack.service_url('identity')}/v1/sso/logout",
        headers=bearer(leaving["access_token"]),
        json={"redirect_uri": REDIRECT},
    )
    logout_answer = (await browser_http.get(r.json()["idp_logout_url"])).headers["location"]
    acs, login_answer = await saml_login_at_idp(browser_http, stack, connection["id"])
    request_id = server.received[-1].request_id

    # Seeds: what the IdP genuinely sent before (each used once already, so that a
    # mutation that changes nothing significant is a replay), and forgeries naming the
    # pending request.
    used = [
        good_response(server, connection),
        good_response(server, connection, encrypt=True, encrypt_to=ours),
        good_response(server, connection, encrypt=True, encrypt_to=ours, sign_response=False),
    ]
    for xml in used:
        assert_signed_in(await post_response(browser_http, connection, xml))
    forged = [
        good_response(server, connection, in_response_to=request_id, sign_assertion=False),
        saml_attacks.tamper_name_id(
            good_response(server, connection, in_response_to=request_id), "mallory@evil.example"
        ),
    ]
    logout_request = server.logout_request(
        sp_entity_id=urls["sp_entity_id"],
        slo_url=urls["sp_slo_url"],
        name_id=ALICE.name_id,
        session_index="idx-nobody",
    )
    request_query = dict(
        parse_qsl(
            urlsplit(
                server.redirect_url(
                    urls["sp_slo_url"], saml_request=logout_request, relay_state="rs"
                )
            ).query
        )
    )
    # Forged answers to the pending logout: a genuine one without its signature is
    # accepted (the connection does not want_response_signed), so seeds are answers that
    # no damage can make acceptable: a failure status, another Destination.
    logout_id = server.logout_messages[-1].message_id
    response_queries = [
        dict(
            parse_qsl(
                urlsplit(
                    server.redirect_url(
                        urls["sp_slo_url"],
                        saml_response=server.logout_response(
                            in_response_to=logout_id, destination=destination, status_ok=ok
                        ),
                        relay_state="rs",
                    )
                ).query
            )
        )
        for destination, ok in ((urls["sp_slo_url"], False), ("https://elsewhere.example/", True))
    ]
    before = await sso_state(stack, tenant_id)
    answers: list[int] = []

    with httpx.Client(timeout=20) as client:

        @FUZZ
        @given(value=saml_fuzz.post_values(used + forged))
        def at_the_acs(value: str) -> None:
            answer = client.post(urls["sp_acs_url"], data={"SAMLResponse": value})
            answers.append(answer.status_code)
            assert answer.status_code in (303, 400, 403), answer.text
            if answer.status_code == 303:
                query = parse_qs(urlsplit(answer.headers["location"]).query)
                assert "code" not in query, "a damaged response signed someone in"
                assert query["error_code"][0] in ACS_REFUSALS

        @FUZZ
        @given(query=saml_fuzz.redirect_queries(request_query, "SAMLRequest"))
        def logout_requests(query: dict[str, str]) -> None:
            answer = client.get(urls["sp_slo_url"], params=query)
            answers.append(answer.status_code)
            # 302: a message the mutation left intact (it names a session nobody has); 414:
            # one the mutation made longer than any URL we read (the shared input guard).
            assert answer.status_code in (302, 400, 414), answer.text

        @FUZZ
        @given(
            query=st.one_of(
                *(saml_fuzz.redirect_queries(q, "SAMLResponse") for q in response_queries)
            )
        )
        def logout_responses(query: dict[str, str]) -> None:
            answer = client.get(urls["sp_slo_url"], params=query)
            answers.append(answer.status_code)
            if answer.status_code == 414:  # grown past any URL we read: refused unread
                assert answer.json()["type"].endswith("/uri-too-long")
                return
            assert answer.status_code == 400, answer.text
            assert answer.json()["code"] in ACS_REFUSALS

        await asyncio.to_thread(at_the_acs)
        await asyncio.to_thread(logout_requests)
        await asyncio.to_thread(logout_responses)

    assert 429 not in answers
    assert await sso_state(stack, tenant_id) == before
    assert await refresh_works(stack, browser_http, keep)
    assert len(await failures(identity, tenant_id, connection["id"])) >= 20
    # What was pending is still: the genuine answers complete.
    done = await browser_http.get(logout_answer)
    assert done.status_code == 303, done.text
    signed_in = await browser_http.post(acs, data=login_answer)
    assert (await exchange(browser_http, stack, code_of(signed_in))).status_code == 200


# Every refusal code (test_saml_refusals checks that docs/sso.md documents each).
ACS_REFUSALS = set(get_args(RefusalCode))


async def test_a_forged_oidc_callback_with_a_real_state_leaves_the_login_pending(
    stack: Stack,
    identity: httpx.AsyncClient,
    browser_http: httpx.AsyncClient,
    oidc_target: OidcTarget,
) -> None:
    """The state is taken only by a callback whose code, tokens and claims all pass."""
    tenant_id, connection, oidc_provider = oidc_target
    genuine = await oidc_callback(browser_http, stack, oidc_provider, connection["id"], "u-carol")
    forged = re.sub(r"([?&])code=[^&]+", r"\1code=made-up-by-an-attacker", genuine)
    assert forged != genuine
    assert error_of(await browser_http.get(forged)) == "token-exchange-failed"
    assert "token-exchange-failed" in await failures(identity, tenant_id, connection["id"])
    signed_in = await browser_http.get(genuine)
    assert (await exchange(browser_http, stack, code_of(signed_in))).status_code == 200
    again = await browser_http.get(genuine)
    assert again.status_code == 400
    assert again.json()["code"] == "unknown-request"
