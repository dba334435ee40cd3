"""SSO in a real browser: headless Debian Chromium driven by Playwright through
SP-initiated SAML (redirect and POST bindings) and OIDC logins, ending signed in (the
product's callback receives a code that its backend exchanges for Tenantry tokens)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Route

from tenantry_testkit.browser import chromium_browser
from tenantry_testkit.oidc_provider import OidcProvider
from tenantry_testkit.saml_idp import SamlIdp
from tenantry_testkit.stack import Stack

from .test_identity import bearer
from .test_sso import (
    REDIRECT,
    User,
    exchange,
    oidc_connection,
    saml_connection,
    sso_tenant,
)

# Fixtures shared with test_sso.py, imported so pytest finds them here too.
from .test_sso import identity as identity
from .test_sso import idp as idp
from .test_sso import oidc_provider as oidc_provider

pytestmark = pytest.mark.kafka


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium_browser() as chromium:
        yield chromium


async def sign_in(page: Page, start_url: str, *, oidc_login: str | None = None) -> str:
    """Open the product's "sign in with SSO" URL and return the code the product's callback
    receives (the callback itself is served by this test: the product is not running)."""
    landed: list[str] = []

    async def product(route: Route) -> None:
        landed.append(route.request.url)
        await route.fulfill(status=200, content_type="text/html", body="<p id=done>signed in</p>")

    await page.route(f"{REDIRECT}**", product)
    await page.goto(start_url)
    if oidc_login is not None:
        await page.wait_for_selector("#sign-in")
        await page.fill("input[name=login]", oidc_login)
        await page.click("#sign-in")
    await page.wait_for_selector("#done", timeout=20_000)
    query = parse_qs(urlsplit(landed[-1]).query)
    assert "error" not in query, query
    return query["code"][0]


def authorize_url(stack: Stack, connection_id: str) -> str:
    query = urlencode({"connection_id": connection_id, "redirect_uri": REDIRECT, "state": "b"})
    return f"{stack.service_url('identity')}/sso/authorize?{query}"


async def signed_in(stack: Stack, code: str, email: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await exchange(http, stack, code)
        assert r.status_code == 200, r.text
        assert r.json()["profile"]["email"] == email
        token = r.json()["tokens"]["access_token"]
        who = await http.get(f"{stack.service_url('identity')}/v1/whoami", headers=bearer(token))
        assert who.status_code == 200, who.text


@pytest.mark.parametrize("binding", ["redirect", "post"])
async def test_saml_login_in_a_browser(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    idp: tuple[SamlIdp, User],
    browser: Browser,
    binding: str,
) -> None:
    server, _ = idp
    tenant_id = await sso_tenant(stack, operator_headers)
    options: dict[str, Any] = {"saml": {"request_binding": binding}}
    connection = await saml_connection(identity, tenant_id, server, **options)
    page = await browser.new_page()
    code = await sign_in(page, authorize_url(stack, connection["id"]))
    assert server.received[-1].binding == binding
    assert server.received[-1].signature_valid
    await signed_in(stack, code, "alice@acme-sso.example")


async def test_oidc_login_in_a_browser(
    stack: Stack,
    operator_headers: dict[str, str],
    identity: httpx.AsyncClient,
    oidc_provider: OidcProvider,
    browser: Browser,
    tmp_path: Path,
) -> None:
    tenant_id = await sso_tenant(stack, operator_headers)
    connection = await oidc_connection(identity, tenant_id, oidc_provider)
    page = await browser.new_page()
    code = await sign_in(page, authorize_url(stack, connection["id"]), oidc_login="u-carol")
    await signed_in(stack, code, "carol@acme-oidc.example")
