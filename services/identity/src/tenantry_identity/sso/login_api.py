"""HTTP edge of the SSO login flow.

Browsers and IdPs use the public routes under /sso: start a login, the SAML ACS, SP
metadata and SLO, the OIDC callback. The SaaS product's backend trades the one-time code
for the profile and tokens at POST /v1/sso/token (WorkOS style), and ends a session at
POST /v1/sso/logout.
"""

from __future__ import annotations

import base64
import hmac
from typing import Annotated, Any
from urllib.parse import unquote_plus
from uuid import UUID

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, Parameter
from litestar.response import Redirect as RedirectResponse

from tenantry_http.api_docs import problems
from tenantry_http.auth import PUBLIC, principal_of, requires
from tenantry_http.problems import Problem
from tenantry_identity.sessions import TokenPair
from tenantry_identity.settings import IdentitySettings
from tenantry_identity.sso import saml
from tenantry_identity.sso.connections import SsoConnections
from tenantry_identity.sso.domain import LoginRefused
from tenantry_identity.sso.logins import LoginFailed, Redirect, SsoLogins
from tenantry_identity.store import SSO_CODE
from tenantry_regions.regions import region_of_token
from tenantry_regions.routing import REGION_BY_QUERY
from tenantry_service.residency import send_home

BROWSER = {"auth": PUBLIC, "priority": "critical", "rate_class": "auth"}


# ---------------------------------------------------------------------------- the product


class CodeExchange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    code: str
    client_secret: str | None = None  # or HTTP Basic / Bearer with the secret


class Logout(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    redirect_uri: str | None = None  # where the browser lands after the IdP logged out


class SsoProfile(msgspec.Struct, kw_only=True):
    profile: dict[str, Any]
    tokens: TokenPair


def _presented_secret(request: Request[Any, Any, Any], body: CodeExchange) -> str:
    if body.client_secret:
        return body.client_secret
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "basic":
        try:
            # RFC 6749 2.3.1: the client secret is form-urlencoded inside Basic.
            return unquote_plus(base64.b64decode(value).decode().partition(":")[2])
        except ValueError:
            return ""
    return value if scheme.lower() == "bearer" else ""


class SsoProductController(Controller):
    path = "/sso"
    tags = ["sso"]

    @post(
        "/token",
        status_code=200,
        opt={"auth": PUBLIC, "priority": "critical", "rate_class": "auth"},
        summary="Exchange a one-time SSO code for the profile and tokens (product backend)",
        responses=problems(401),
    )
    async def token(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[CodeExchange],
        identity_settings: NamedDependency[IdentitySettings],
        sso_logins: NamedDependency[SsoLogins],
    ) -> SsoProfile:
        await send_home(request, region=region_of_token(SSO_CODE, data.code))
        expected = identity_settings.sso_client_secret
        presented = _presented_secret(request, data)
        if not expected or not hmac.compare_digest(expected.encode(), presented.encode()):
            raise Problem(
                401,
                "invalid-client",
                "Client authentication failed",
                headers={"WWW-Authenticate": 'Basic realm="tenantry-sso"'},
            )
        try:
            issued, _, tokens = await sso_logins.exchange(data.code)
        except LookupError:
            raise Problem(
                400, "invalid-grant", "The code is unknown, expired or was used already"
            ) from None
        return SsoProfile(profile=issued.profile, tokens=tokens)

    @post(
        "/logout",
        status_code=200,
        opt=requires(),
        summary="End the caller's session, and at the IdP when it supports single logout",
    )
    async def logout(
        self,
        request: Request[Any, Any, Any],
        sso_connections: NamedDependency[SsoConnections],
        sso_logins: NamedDependency[SsoLogins],
        data: JSONBody[Logout] | None = None,
    ) -> dict[str, str | None]:
        """Ends the session now. For a SAML session whose IdP does single logout, returns
        `idp_logout_url`: send the browser there; the IdP's answer comes back to us and the
        browser lands on `redirect_uri` (one of the product's registered URIs)."""
        principal = principal_of(request)
        if principal.kind != "user" or not principal.credential_id:
            raise Problem(400, "not-a-session", "Only a signed-in user's session can log out")
        return_to = data.redirect_uri if data is not None else None
        sso_connections.check_redirect(return_to)
        url = await sso_logins.logouts.sp_logout(UUID(principal.credential_id), return_to)
        return {"idp_logout_url": url}


# ---------------------------------------------------------------------------- browsers


def _failure_response(failed: LoginFailed) -> Response[Any]:
    if failed.redirect is not None:
        return RedirectResponse(path=failed.redirect, status_code=303)
    problem = Problem(
        403 if failed.refused.code != "malformed" else 400,
        "sso-login-failed",
        failed.refused.user_message,
        "Your administrator can see the detailed reason in the SSO login log.",
        code=failed.refused.code,
    )
    return Response(
        content=problem.body(),
        status_code=problem.status,
        media_type="application/problem+json",
    )


def _to_browser(target: Redirect) -> Response[Any]:
    if target.url is not None:
        return RedirectResponse(path=target.url, status_code=302)
    return Response(content=target.html or "", media_type="text/html", status_code=200)


class SsoBrowserController(Controller):
    """Public routes browsers and IdPs reach (no /v1: these URLs are registered at IdPs)."""

    path = "/sso"
    tags = ["sso"]
    include_in_schema = True

    # Routed by its query: a product with one login URL for every region sends each login
    # to the region of its connection, tenant or email domain (docs/residency.md).
    @get(
        "/authorize",
        opt={**BROWSER, REGION_BY_QUERY: True},
        summary="Start an SSO login (redirects to the IdP)",
    )
    async def authorize(
        self,
        identity_settings: NamedDependency[IdentitySettings],
        sso_logins: NamedDependency[SsoLogins],
        redirect_uri: FromQuery[str],
        connection_id: Annotated[UUID | None, Parameter(query="connection_id")] = None,
        email: Annotated[str | None, Parameter(query="email")] = None,
        tenant_id: Annotated[UUID | None, Parameter(query="tenant_id")] = None,
        client_state: Annotated[str | None, Parameter(query="state", max_length=1024)] = None,
    ) -> Response[Any]:
        if redirect_uri not in identity_settings.redirect_uris():
            raise Problem(
                400,
                "invalid-redirect-uri",
                "redirect_uri is not registered",
                "the product registers its callback URLs in TENANTRY_SSO_REDIRECT_URIS",
            )
        row = await sso_logins.connection_for_login(
            connection_id=connection_id, email=email, tenant_id=tenant_id
        )
        try:
            target = await sso_logins.start(
                row,
                redirect_uri=redirect_uri,
                client_state=client_state,
                login_hint=email,
            )
        except LoginFailed as failed:
            return _failure_response(failed)
        return _to_browser(target)

    @get(
        "/saml/{connection_id:uuid}/metadata",
        opt={"auth": PUBLIC},
        media_type="application/samlmetadata+xml",
        summary="SAML SP metadata of a connection",
    )
    async def metadata(
        self, connection_id: FromPath[UUID], sso_logins: NamedDependency[SsoLogins]
    ) -> Response[str]:
        try:
            row, secrets_ = await sso_logins.connection(connection_id)
        except LookupError:
            raise Problem(404, "unknown-connection", "No such SSO connection") from None
        if row.kind != "saml":
            raise Problem(404, "unknown-connection", "Not a SAML connection")
        _, _, settings = sso_logins.saml_settings(row, secrets_)
        return Response(
            content=saml.sp_metadata(settings), media_type="application/samlmetadata+xml"
        )

    @post(
        "/saml/{connection_id:uuid}/acs",
        status_code=303,
        opt={**BROWSER, "body": "form"},  # the HTTP-POST binding posts a form
        summary="SAML assertion consumer service (HTTP-POST binding)",
    )
    async def acs(
        self,
        request: Request[Any, Any, Any],
        connection_id: FromPath[UUID],
        sso_logins: NamedDependency[SsoLogins],
    ) -> Response[Any]:
        form = await request.form()
        saml_response = form.get("SAMLResponse")
        if not isinstance(saml_response, str) or not saml_response:
            raise Problem(400, "invalid-saml-response", "The form has no SAMLResponse")
        try:
            url = await sso_logins.saml_acs(connection_id, saml_response)
        except LookupError:
            raise Problem(404, "unknown-connection", "No such SSO connection") from None
        except LoginFailed as failed:
            return _failure_response(failed)
        return RedirectResponse(path=url, status_code=303)

    @get(
        "/saml/{connection_id:uuid}/slo",
        opt=BROWSER,
        summary="SAML single logout (HTTP-Redirect binding)",
    )
    async def slo(
        self,
        request: Request[Any, Any, Any],
        connection_id: FromPath[UUID],
        sso_logins: NamedDependency[SsoLogins],
    ) -> Response[Any]:
        # python3-saml checks the signature over the query exactly as received.
        query = {k: v for k, v in request.query_params.items()}
        try:
            if "SAMLRequest" in query:
                url = await sso_logins.logouts.idp_logout(connection_id, query)
                return RedirectResponse(path=url, status_code=302)
            if "SAMLResponse" in query:
                target = await sso_logins.logouts.idp_logout_response(connection_id, query)
                if target is not None:
                    return RedirectResponse(path=target, status_code=303)
                return Response(content={"logged_out": True}, status_code=200)
        except LookupError:
            raise Problem(404, "unknown-connection", "No such SSO connection") from None
        except LoginRefused as refused:
            raise Problem(
                400, "invalid-logout", "Logout refused", refused.detail, code=refused.code
            ) from None
        raise Problem(400, "invalid-logout", "Neither SAMLRequest nor SAMLResponse given")

    @get("/oidc/callback", opt=BROWSER, summary="OIDC redirect URI (authorization code)")
    async def oidc_callback(
        self, request: Request[Any, Any, Any], sso_logins: NamedDependency[SsoLogins]
    ) -> Response[Any]:
        params = {k: v for k, v in request.query_params.items()}
        try:
            url = await sso_logins.finish_oidc_login(params)
        except LookupError:
            raise Problem(
                400,
                "sso-login-failed",
                "This sign-in attempt expired or was already used. Please start again.",
                code="unknown-request",
            ) from None
        except LoginFailed as failed:
            return _failure_response(failed)
        return RedirectResponse(path=url, status_code=303)
