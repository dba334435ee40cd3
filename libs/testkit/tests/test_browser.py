"""The browser fixture drives the real Chromium: a form on a loopback page is filled in,
submitted as a POST to a second route, and the browser lands on the result page."""

from __future__ import annotations

import contextlib
import html
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import pytest

from tenantry_testkit.asgi import (
    Receive,
    Scope,
    Send,
    lifespan,
    read_request,
    reply,
    serve,
)
from tenantry_testkit.browser import (
    ChromiumMissing,
    chromium_browser,
    chromium_executable,
)

FORM_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
  <form method="post" action="/submit">
    <label>Company <input name="company" id="company"></label>
    <label>Email <input name="email" id="email" type="email"></label>
    <button type="submit" id="go">Continue</button>
  </form>
</body></html>"""


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    content_type: str
    body: bytes


@dataclass
class FormSite:
    """Two routes: GET / (the form) and POST /submit (the result page)."""

    hits: list[Hit] = field(default_factory=list)
    url: str = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        request = await read_request(scope, receive)
        method, path, body = request.method, request.path, request.body
        self.hits.append(Hit(method, path, request.headers.get("content-type", ""), body))
        if (method, path) == ("GET", "/"):
            status, page = 200, FORM_PAGE
        elif (method, path) == ("POST", "/submit"):
            fields = parse_qs(body.decode(), keep_blank_values=True)
            company = html.escape(fields.get("company", [""])[0])
            email = html.escape(fields.get("email", [""])[0])
            status = 200
            page = (
                '<!doctype html><html><head><meta charset="utf-8"><title>Done</title></head>'
                f'<body><h1 id="result">Welcome, {company}</h1>'
                f'<p id="email">{email}</p></body></html>'
            ).encode()
        else:
            status, page = 404, b"not found"
        await reply(send, status, page, [(b"content-type", b"text/html; charset=utf-8")])


@contextlib.asynccontextmanager
async def serving(site: FormSite) -> AsyncIterator[FormSite]:
    """uvicorn in this event loop, on a socket bound here (no free-port race)."""
    async with serve(site, name="the form site") as url:
        site.url = url
        yield site


async def test_the_browser_submits_a_form_and_lands_on_the_result_page() -> None:
    async with serving(FormSite()) as site, chromium_browser() as browser:
        context = await browser.new_context()
        page = await context.new_page()
        response = await page.goto(f"{site.url}/")
        assert response is not None
        assert response.status == 200
        assert await page.title() == "Sign in"
        await page.fill("#company", "Acme & Söhne <GmbH>")
        await page.fill("#email", "alice@acme.example")
        async with page.expect_navigation():
            await page.click("#go")
        assert page.url == f"{site.url}/submit"
        assert await page.title() == "Done"
        assert await page.text_content("#result") == "Welcome, Acme & Söhne <GmbH>"
        assert await page.text_content("#email") == "alice@acme.example"
        await context.close()

    posts = [hit for hit in site.hits if hit.method == "POST"]
    assert len(posts) == 1
    assert posts[0].path == "/submit"
    assert posts[0].content_type == "application/x-www-form-urlencoded"
    assert parse_qs(posts[0].body.decode()) == {
        "company": ["Acme & Söhne <GmbH>"],
        "email": ["alice@acme.example"],
    }
    assert [(h.method, h.path) for h in site.hits if h.path != "/favicon.ico"] == [
        ("GET", "/"),
        ("POST", "/submit"),
    ]


def test_a_missing_chromium_fails_loudly_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TENANTRY_CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(ChromiumMissing, match="apt-get install chromium"):
        chromium_executable()


async def test_a_missing_chromium_fails_before_launching(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TENANTRY_CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(ChromiumMissing, match="/nonexistent/chromium"):
        async with chromium_browser():
            pass
