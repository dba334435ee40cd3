"""SAML single logout (SLO) for SSO sessions, in both directions: the IdP asks us to end
its subject's sessions, or a product ends one of ours and we ask the IdP to end its own.
The connection lookup, settings and stores are the login flows' (logins.SsoLogins)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING
from uuid import UUID

from tenantry_identity.sso import saml
from tenantry_identity.sso.domain import LoginRefused

if TYPE_CHECKING:
    from tenantry_identity.sso.logins import SsoLogins


class SingleLogout:
    def __init__(self, logins: SsoLogins) -> None:
        self._logins = logins

    async def idp_logout(self, connection_id: UUID, query: Mapping[str, str]) -> str:
        """An IdP-initiated LogoutRequest: end the subject's sessions from that connection,
        answer with our LogoutResponse."""
        row, secrets_ = await self._logins.saml_connection(connection_id)
        _, urls, settings = self._logins.saml_settings(row, secrets_)
        logout = await asyncio.to_thread(saml.process_idp_logout_request, settings, urls, query)
        async with self._logins.db.transaction(tenant_id=row.tenant_id) as tx:
            families = await self._logins.store.session_families(
                tx, row.connection_id, logout.name_id, logout.session_indexes
            )
            await self._logins.identity.end_sessions(tx, families, reason="idp_logout")
        return logout.redirect_url

    async def sp_logout(self, family_id: UUID, return_to: str | None) -> str | None:
        """End this session here and, for a SAML session whose IdP has an SLO endpoint,
        return the URL that asks the IdP to end it there too (its answer comes back to
        our SLO endpoint, which then sends the browser to `return_to`)."""
        async with self._logins.db.transaction(platform=True) as tx:
            session = await self._logins.store.session_of_family(tx, family_id)
            await self._logins.identity.end_sessions(tx, [family_id], reason="logout")
        if session is None:
            return None
        connection_id, subject, session_index = session
        row, secrets_ = await self._logins.connection(connection_id)
        if row.kind != "saml" or not row.config.get("idp_slo_url"):
            return None
        _, urls, settings = self._logins.saml_settings(row, secrets_)
        request_id, url = await asyncio.to_thread(
            saml.start_logout,
            settings,
            urls,
            name_id=subject,
            session_index=session_index,
            relay_state=secrets.token_urlsafe(16),
        )
        async with self._logins.db.transaction(tenant_id=row.tenant_id) as tx:
            await self._logins.store.save_login_request(
                tx,
                request_id,
                tenant_id=row.tenant_id,
                connection_id=row.connection_id,
                redirect_uri=return_to or "",
                client_state=None,
                secrets=None,
                expires_at=self._logins.now() + self._logins.login_ttl,
            )
        return url

    async def idp_logout_response(
        self, connection_id: UUID, query: Mapping[str, str]
    ) -> str | None:
        """The IdP's answer to our LogoutRequest: it must answer a request this connection
        sent (once); returns where the browser goes next (None: nowhere registered). The
        request is used up only by a response that passes every check, so a forged one
        cannot spend it."""
        logins = self._logins
        row, secrets_ = await logins.saml_connection(connection_id)
        _, urls, settings = logins.saml_settings(row, secrets_)
        request_id = saml.logout_response_in_response_to(query.get("SAMLResponse", ""))
        pending = None
        if request_id is not None:
            async with self._logins.db.transaction(tenant_id=row.tenant_id) as tx:
                pending = await self._logins.store.find_login_request(
                    tx, request_id, self._logins.now()
                )
        if request_id is None or pending is None or pending.connection_id != row.connection_id:
            raise LoginRefused("unknown-request", "LogoutResponse to no LogoutRequest of ours")
        await asyncio.to_thread(saml.process_idp_logout_response, settings, urls, query, request_id)
        async with self._logins.db.transaction(tenant_id=row.tenant_id) as tx:
            if (
                await self._logins.store.take_login_request(tx, request_id, self._logins.now())
                is None
            ):
                raise LoginRefused("unknown-request", "this LogoutRequest was answered already")
        return pending.redirect_uri or None
