"""The test IdP over HTTP: metadata, SSO over both bindings, IdP-initiated login and
SLO, served with uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import urllib.parse
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lxml import etree

from tenantry_testkit.asgi import (
    Receive,
    Scope,
    Send,
    free_port,
    lifespan,
    read_request,
    reply,
    serve,
)
from tenantry_testkit.saml_idp.idp import SamlIdp, SamlUser


def auto_post_page(action: str, fields: dict[str, str], *, auto_submit: bool = True) -> str:
    """The HTTP-POST binding page: a form to the SP that submits itself on load, with a
    visible button (id "continue") for browsers without JavaScript or tests that click."""
    inputs = "".join(
        f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
        for name, value in fields.items()
    )
    onload = ' onload="document.forms[0].submit()"' if auto_submit else ""
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Signing in</title></head>'
        f'<body{onload}><form method="post" action="{html.escape(action)}">{inputs}'
        '<button type="submit" id="continue">Continue</button></form></body></html>'
    )


@dataclass
class _Reply:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class _IdpApp:
    """The ASGI side of the IdP. pysaml2 shells out to xmlsec1, so message work runs in a
    thread to keep the caller's event loop (often also running the SP) responsive."""

    def __init__(self, idp: SamlIdp, login_as: Callable[[], SamlUser]) -> None:
        self.idp = idp
        self.login_as = login_as

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        request = await read_request(scope, receive)
        raw_query = request.query_string
        params = {k: v[0] for k, v in urllib.parse.parse_qs(raw_query).items()}
        if request.method == "POST":
            form = urllib.parse.parse_qs(request.body.decode("latin-1"))
            params.update({k: v[0] for k, v in form.items()})
        try:
            answer = await self._route(request.method, request.path, params, raw_query)
        except Exception as exc:  # the test should see what went wrong, not a hang
            self.idp.errors.append(repr(exc))
            answer = _Reply(500, f"IdP error: {exc!r}")
        headers = [(b"content-type", answer.content_type.encode()), *answer.headers]
        await reply(send, answer.status, answer.body.encode(), headers)

    async def _route(
        self, method: str, path: str, params: dict[str, str], raw_query: str
    ) -> _Reply:
        idp = self.idp
        if path == "/metadata" and method == "GET":
            idp.metadata_hits += 1
            xml = idp.metadata_xml(extra_certs=idp.metadata_extra_certs)
            return _Reply(200, xml, "application/samlmetadata+xml")
        if path == "/sso/redirect" and method == "GET":
            return await self._sso("redirect", params, raw_query)
        if path == "/sso/post" and method == "POST":
            return await self._sso("post", params, None)
        if path == "/sso/initiate" and method == "GET":
            return await self._initiate(params)
        if path == "/slo" and method in ("GET", "POST"):
            binding: Literal["redirect", "post"] = "redirect" if method == "GET" else "post"
            return await self._slo(binding, params, raw_query if method == "GET" else None)
        return _Reply(404, "not found")

    async def _sso(
        self, binding: Literal["redirect", "post"], params: dict[str, str], raw_query: str | None
    ) -> _Reply:
        idp = self.idp
        idp.login_page_hits += 1
        if "SAMLRequest" not in params:
            return _Reply(400, "missing SAMLRequest")
        try:
            info = await asyncio.to_thread(
                idp.parse_authn_request,
                binding=binding,
                saml_request=params["SAMLRequest"],
                relay_state=params.get("RelayState"),
                sig_alg=params.get("SigAlg"),
                signature=params.get("Signature"),
                raw_query=raw_query,
            )
        except (ValueError, etree.XMLSyntaxError, zlib.error) as exc:
            return _Reply(400, f"bad SAMLRequest: {exc}")
        idp.received.append(info)
        reason = idp.refusal(info)
        if reason is not None:
            return _Reply(400, reason)
        assert info.acs_url is not None
        return await self._answer(
            info.sp_entity_id, info.acs_url, info.request_id, info.relay_state
        )

    async def _initiate(self, params: dict[str, str]) -> _Reply:
        idp = self.idp
        idp.login_page_hits += 1
        sp = idp.sp(params.get("sp", ""))
        acs = sp.default_acs() if sp else None
        if sp is None or acs is None:
            return _Reply(400, "unknown SP or no HTTP-POST AssertionConsumerService")
        return await self._answer(sp.entity_id, acs.location, None, params.get("RelayState"))

    async def _answer(
        self, sp_entity_id: str, acs_url: str, in_response_to: str | None, relay_state: str | None
    ) -> _Reply:
        idp = self.idp
        user = self.login_as()
        options = {**idp.response_options, **idp.next_response_options}
        idp.next_response_options.clear()
        xml = await asyncio.to_thread(
            lambda: idp.response(
                sp_entity_id=sp_entity_id,
                acs_url=acs_url,
                user=user,
                in_response_to=in_response_to,
                **options,
            )
        )
        idp.issued_responses.append(xml)
        fields = {"SAMLResponse": base64.b64encode(xml.encode()).decode()}
        if relay_state is not None:
            fields["RelayState"] = relay_state
        page = auto_post_page(acs_url, fields, auto_submit=idp.auto_submit)
        return _Reply(200, page, "text/html; charset=utf-8")

    async def _slo(
        self, binding: Literal["redirect", "post"], params: dict[str, str], raw_query: str | None
    ) -> _Reply:
        idp = self.idp
        if "SAMLRequest" not in params and "SAMLResponse" not in params:
            return _Reply(400, "missing SAMLRequest or SAMLResponse")
        try:
            info = await asyncio.to_thread(
                idp.parse_logout_message,
                binding=binding,
                saml_request=params.get("SAMLRequest"),
                saml_response=params.get("SAMLResponse"),
                relay_state=params.get("RelayState"),
                sig_alg=params.get("SigAlg"),
                signature=params.get("Signature"),
                raw_query=raw_query,
            )
        except (ValueError, etree.XMLSyntaxError, zlib.error) as exc:
            return _Reply(400, f"bad logout message: {exc}")
        idp.logout_messages.append(info)
        sp = idp.sp(info.sp_entity_id)
        if sp is not None and info.signed and not info.signature_valid:
            return _Reply(400, "the logout message signature is not valid")
        if info.kind == "response":
            return _Reply(200, "logged out")
        endpoint = sp.slo_redirect() if sp else None
        if endpoint is None:
            return _Reply(400, "unknown SP or no HTTP-Redirect SingleLogoutService")
        target = endpoint.response_location or endpoint.location
        xml = idp.logout_response(in_response_to=info.message_id, destination=target)
        location = await asyncio.to_thread(
            idp.redirect_url, target, saml_response=xml, relay_state=info.relay_state
        )
        return _Reply(302, "", headers=[(b"location", location.encode())])


@contextlib.asynccontextmanager
async def serve_idp(idp: SamlIdp, *, login_as: Callable[[], SamlUser]) -> AsyncIterator[str]:
    """Serve `idp` with uvicorn in the running event loop, on the loopback port its
    base_url names (choose it with `free_port()` before building the IdP)."""
    parts = urllib.parse.urlsplit(idp.base_url)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        raise ValueError("serve_idp needs a base_url of the form http://127.0.0.1:<port>")
    async with serve(_IdpApp(idp, login_as), port=parts.port, name="the SAML IdP"):
        yield idp.base_url


@contextlib.asynccontextmanager
async def running_idp(workdir: Path, *, login_as: Callable[[], SamlUser]) -> AsyncIterator[SamlIdp]:
    """A fresh IdP on a free loopback port, served for the duration of the block."""
    idp = SamlIdp(workdir, base_url=f"http://127.0.0.1:{free_port()}")
    async with serve_idp(idp, login_as=login_as):
        yield idp
