"""SSO on the running identity service: how long the assertion consumer takes with a SAML
response (signed; signed and encrypted), and the OIDC callback.

SAML: RESPONSES responses per variant are made in advance by the test IdP (pysaml2 +
xmlsec1), each with its own ids, for a connection that accepts IdP-initiated responses,
then POSTed to the ACS one at a time over one keep-alive connection. The time runs from
sending the POST to its 303 (python3-saml validation in a thread, the replay cache insert,
the returning user's account lookup and role mapping, the one-time code). The baseline is
python3-saml's own `is_valid` on equivalent responses in this process (no HTTP, no
database): the library's floor, so the difference is what the service adds.

OIDC: LOGINS logins against the Node oidc-provider; each is started and walked through the
provider untimed, and only the GET of our callback is timed (state lookup, the code
exchange at the provider's token endpoint, ID token check with the cached JWKS, userinfo,
sign-in, code). The baseline is the provider's token endpoint alone, called by hand with
PKCE for the same kind of login: the part of the callback spent waiting on the IdP.
"""

from __future__ import annotations

import asyncio
import base64
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import msgspec
from authlib.common.security import generate_token  # type: ignore[import-untyped]
from authlib.oauth2.rfc7636 import create_s256_code_challenge  # type: ignore[import-untyped]

from bench.auth import _expect, _post, bearer
from bench.common import BenchResult, Context, Row, median, now, ratio
from tenantry_identity.sso import saml
from tenantry_testkit.fixtures import operator_token
from tenantry_testkit.oidc_provider import OidcAccount, OidcClient, OidcProvider
from tenantry_testkit.saml_idp import SamlIdp, SamlUser

RESPONSES = 150  # per SAML variant
LOGINS = 60  # OIDC logins
WARMUP = 5
REDIRECT_KEY = "TENANTRY_SSO_REDIRECT_URIS"
USER = SamlUser(
    name_id="bench@bench-sso.example",
    attributes={"email": ["bench@bench-sso.example"], "givenName": ["Ben"], "groups": ["x"]},
)


async def _tenant(client: httpx.AsyncClient, ctx: Context, operator: str) -> str:
    response = await client.post(
        f"{ctx.stack.service_url('tenancy')}/v1/tenants",
        json={
            "name": "Bench SSO",
            "slug": f"bench-sso-{ctx.run_id[:8]}-{now():.0f}",
            "plan": "business",
        },
        headers=bearer(operator),
    )
    tenant_id: str = _expect(response, 201, "POST /v1/tenants")["tenant_id"]
    return tenant_id


async def _saml_rows(
    ctx: Context, client: httpx.AsyncClient, operator: str, work: Path
) -> list[Row]:
    identity = ctx.stack.service_url("identity")
    redirect = ctx.stack.env[REDIRECT_KEY].split(",")[0]
    idp = SamlIdp(work / "idp", base_url="http://127.0.0.1:9")  # never served: in-process only
    tenant_id = await _tenant(client, ctx, operator)
    made = await _post(
        client,
        f"{identity}/v1/tenants/{tenant_id}/sso/connections",
        {
            "kind": "saml",
            "name": "bench",
            "allow_idp_initiated": True,
            "default_redirect_uri": redirect,
            "saml": {"metadata_xml": idp.metadata_xml(), "want_assertions_encrypted": False},
        },
        bearer(operator),
    )
    connection = _expect(made, 201, "POST .../sso/connections")
    urls = connection["saml"]
    idp.register_sp((await client.get(urls["sp_metadata_url"])).text)

    # The in-process baseline: an SP of our own with the same strict settings.
    cert, key = saml.new_sp_keypair("bench-sp")
    local_urls = saml.sp_urls("http://127.0.0.1:1", "bench")
    local_conf = saml.SamlConfig(
        idp_entity_id=idp.entity_id,
        idp_sso_url=idp.sso_redirect_url,
        idp_certs=[idp.cert_pem],
        sp_cert=cert,
    )
    local_settings = saml.onelogin_settings(local_conf, key, local_urls)
    idp.register_sp(
        saml.sp_metadata(
            saml.onelogin_settings(
                msgspec.structs.replace(local_conf, want_assertions_encrypted=True),
                key,
                local_urls,
            )
        )
    )

    rows = []
    for encrypted in (False, True):
        tag = "signed+encrypted" if encrypted else "signed"
        local = [
            idp.response(
                sp_entity_id=local_urls.entity_id,
                acs_url=local_urls.acs,
                user=USER,
                encrypt=encrypted,
            )
            for _ in range(RESPONSES + WARMUP)
        ]
        if encrypted:  # the connection must want what it is given (wants -> requires)
            changed = await client.patch(
                f"{identity}/v1/tenants/{tenant_id}/sso/connections/{connection['id']}",
                json={"saml": {"want_assertions_encrypted": True}},
                headers=bearer(operator),
            )
            _expect(changed, 200, "PATCH .../sso/connections/{id}")
            idp.register_sp((await client.get(urls["sp_metadata_url"])).text)
        over_http = [
            idp.response(
                sp_entity_id=urls["sp_entity_id"],
                acs_url=urls["sp_acs_url"],
                user=USER,
                encrypt=encrypted,
            )
            for _ in range(RESPONSES + WARMUP)
        ]
        base = Row(
            f"python3-saml is_valid in-process ({tag})", "validate one response", baseline=True
        )
        conf_local = msgspec.structs.replace(local_conf, want_assertions_encrypted=encrypted)
        settings_local = (
            saml.onelogin_settings(conf_local, key, local_urls) if encrypted else local_settings
        )
        latencies = []
        started = now()
        for i, xml in enumerate(local):
            t0 = now()
            await asyncio.to_thread(
                saml.process_response,
                settings_local,
                conf_local,
                local_urls,
                base64.b64encode(xml.encode()).decode(),
                request_id=None,
            )
            if i >= WARMUP:
                latencies.append(now() - t0)
        base.add(latencies, RESPONSES, now() - started)

        acs = Row(f"POST /sso/saml/{{id}}/acs ({tag})", "response -> 303 with code")
        latencies = []
        started = now()
        for i, xml in enumerate(over_http):
            t0 = now()
            r = await client.post(
                urls["sp_acs_url"], data={"SAMLResponse": base64.b64encode(xml.encode()).decode()}
            )
            elapsed = now() - t0
            if r.status_code != 303 or "code" not in parse_qs(
                urlsplit(r.headers["location"]).query
            ):
                raise RuntimeError(
                    f"ACS refused a good response: {r.status_code} {r.headers.get('location')}"
                )
            if i >= WARMUP:
                latencies.append(elapsed)
        acs.add(latencies, RESPONSES, now() - started)
        rows += [base, acs]
    return rows


async def _oidc_rows(
    ctx: Context, client: httpx.AsyncClient, operator: str, work: Path
) -> list[Row]:
    identity = ctx.stack.service_url("identity")
    redirect = ctx.stack.env[REDIRECT_KEY].split(",")[0]
    callback = f"{identity}/sso/oidc/callback"
    direct = "http://127.0.0.1:8199/direct"
    secret = "bench-oidc-secret-0123456789abcdef"  # noqa: S105  (the test provider's client)
    async with OidcProvider.running(
        work / "op",
        clients=[
            OidcClient(client_id="bench", client_secret=secret, redirect_uris=[callback, direct])
        ],
        accounts={"u-bench": OidcAccount(email="oidc-bench@bench-sso.example", groups=["g"])},
    ) as op:
        tenant_id = await _tenant(client, ctx, operator)
        made = await _post(
            client,
            f"{identity}/v1/tenants/{tenant_id}/sso/connections",
            {
                "kind": "oidc",
                "name": "bench",
                "oidc": {"issuer": op.issuer, "client_id": "bench", "client_secret": secret},
            },
            bearer(operator),
        )
        connection = _expect(made, 201, "POST .../sso/connections")
        row = Row("GET /sso/oidc/callback", "callback -> 303 with code")
        base = Row("provider token endpoint alone", "code -> tokens", baseline=True)
        discovery = (await client.get(f"{op.issuer}/.well-known/openid-configuration")).json()
        async with httpx.AsyncClient(timeout=20) as walker:
            for i in range(LOGINS + WARMUP):
                walker.cookies.clear()
                start = await walker.get(
                    f"{identity}/sso/authorize",
                    params={"connection_id": connection["id"], "redirect_uri": redirect},
                )
                url = await op.follow_login(walker, start.headers["location"], login="u-bench")
                t0 = now()
                r = await client.get(url)
                elapsed = now() - t0
                if r.status_code != 303 or "code" not in parse_qs(
                    urlsplit(r.headers["location"]).query
                ):
                    raise RuntimeError(f"callback refused: {r.status_code} {r.text[:200]}")
                if i >= WARMUP:
                    row.add([elapsed], 1, elapsed)

                walker.cookies.clear()
                verifier = generate_token(64)
                authorize = str(
                    httpx.URL(
                        discovery["authorization_endpoint"],
                        params={
                            "client_id": "bench",
                            "response_type": "code",
                            "scope": "openid email",
                            "redirect_uri": direct,
                            "state": generate_token(20),
                            "nonce": generate_token(20),
                            "code_challenge": create_s256_code_challenge(verifier),
                            "code_challenge_method": "S256",
                        },
                    )
                )
                back = await op.follow_login(walker, authorize, login="u-bench")
                code = parse_qs(urlsplit(back).query)["code"][0]
                t0 = now()
                tokens = await client.post(
                    discovery["token_endpoint"],
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": direct,
                        "code_verifier": verifier,
                    },
                    auth=("bench", secret),
                )
                elapsed = now() - t0
                _expect(tokens, 200, "provider token endpoint")
                if i >= WARMUP:
                    base.add([elapsed], 1, elapsed)
        return [base, row]


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        name="sso",
        title="SSO: SAML assertion consumer (signed, encrypted) and OIDC callback latency",
        rate_unit="logins",
        params={"saml_responses_per_variant": RESPONSES, "oidc_logins": LOGINS, "warmup": WARMUP},
    )
    operator = await operator_token(ctx.stack)
    with tempfile.TemporaryDirectory() as tmp:
        async with httpx.AsyncClient(timeout=30) as client:
            result.rows += await _saml_rows(ctx, client, operator, Path(tmp))
            result.rows += await _oidc_rows(ctx, client, operator, Path(tmp))
    for tag in ("signed", "signed+encrypted"):
        acs = result.row(f"POST /sso/saml/{{id}}/acs ({tag})")
        lib = result.row(f"python3-saml is_valid in-process ({tag})")
        result.ratios[f"acs_over_library_median_{tag}"] = ratio(
            median(acs.latencies), median(lib.latencies)
        )
    cb, token = result.row("GET /sso/oidc/callback"), result.row("provider token endpoint alone")
    result.ratios["callback_over_token_endpoint_median"] = ratio(
        median(cb.latencies), median(token.latencies)
    )
    result.notes.append(
        "SAML rows are sequential over one keep-alive connection, returning user (the first "
        "response created the account). The OIDC callback includes the token call and a "
        "userinfo call to the provider (Node 20, same machine)."
    )
    return result
