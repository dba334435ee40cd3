"""The SSO use cases: start a login, finish it at the ACS or callback, sign the user in
(just-in-time account, mapped profile), hand the product a one-time code, exchange it,
and single logout. Routes (sso/login_api.py) call these; these call the stores, python3-saml
(sso/saml.py) and the OIDC relying party (sso/oidc.py).

What each says, in the transaction that does it: a refused login user.sign_in_failed (with
its row in the failure log), an accepted one user.sso_authenticated (with its code), the
code's exchange user.signed_in and session.started, a logout session.ended."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import urlencode, urlsplit, urlunsplit
from uuid import UUID

import asyncpg
import msgspec
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from uuid_utils.compat import uuid7

from tenantry_credentials.crypto import SecretBox
from tenantry_events.actors import identify
from tenantry_events.envelope import new_event
from tenantry_events.payloads.identity import (
    UserSignedIn,
    UserSignInFailed,
    UserSsoAuthenticated,
)
from tenantry_events.pg import Database
from tenantry_events.storage import PostgresOutbox
from tenantry_guardrails.plan_limits import guard_feature
from tenantry_http.problems import Problem
from tenantry_identity.accounts import Accounts
from tenantry_identity.domain import ADMIN_ROLES
from tenantry_identity.sessions import Sessions, TokenPair
from tenantry_identity.sso import saml
from tenantry_identity.sso.domain import (
    AttributeMapping,
    IdpIdentity,
    LoginRefused,
    MappedProfile,
    map_profile,
    unstorable,
)
from tenantry_identity.sso.email_domains import DomainRefused, domain_of_email, normalise_domain
from tenantry_identity.sso.logouts import SingleLogout
from tenantry_identity.sso.oidc import OidcConnectionConfig, OidcRelyingParty
from tenantry_identity.sso.store import ConnectionRow, IssuedCode, PendingLogin, SsoStore
from tenantry_identity.store import SSO_CODE, AccountRow, IdentityStore
from tenantry_platform.clock import Clock
from tenantry_regions.regions import routable_token


class Redirect(msgspec.Struct, frozen=True, kw_only=True):
    """Where the browser goes next: a URL, or a page that posts itself (POST binding)."""

    url: str | None = None
    html: str | None = None


class LoginFailed(Exception):
    """A refused login, already recorded for the admin; `redirect` is the product's
    callback with error parameters when we know it."""

    def __init__(self, refused: LoginRefused, redirect: str | None) -> None:
        super().__init__(refused.code)
        self.refused = refused
        self.redirect = redirect


def with_query(url: str, params: Mapping[str, str | None]) -> str:
    parts = urlsplit(url)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def secret_context(connection_id: UUID) -> str:
    return f"sso-connection:{connection_id}"


class SsoLogins:
    def __init__(
        self,
        db: Database,
        outbox: PostgresOutbox,
        *,
        identity: IdentityStore,
        sessions: Sessions,
        accounts: Accounts,
        store: SsoStore,
        box: SecretBox,
        rp: OidcRelyingParty,
        clock: Clock,
        public_url: str,
        login_ttl: timedelta,
        code_ttl: timedelta,
        source: str,
        region: str,
        charge: Callable[[UUID], Awaitable[None]] | None = None,
    ) -> None:
        """`charge` bills an anonymous login request to its tenant's rate limits (the
        shared limiter's `charge`, class auth); it raises the 429 problem when over."""
        self.db = db
        self.outbox = outbox
        self.identity = identity
        self.sessions = sessions
        self.accounts = accounts
        self.store = store
        self.box = box
        self.rp = rp
        self.clock = clock
        self.public_url = public_url.rstrip("/")
        self.login_ttl = login_ttl
        self.code_ttl = code_ttl
        self.source = source
        self.region = region
        self._charge = charge
        self._saml_settings: dict[tuple[UUID, int], OneLogin_Saml2_Settings] = {}

    async def charge(self, tenant_id: UUID) -> None:
        if self._charge is not None:
            await self._charge(tenant_id)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock.now(), UTC)

    @property
    def oidc_callback(self) -> str:
        return f"{self.public_url}/sso/oidc/callback"

    # ------------------------------------------------------------------ secrets
    def seal(self, connection_id: UUID, values: Mapping[str, str]) -> bytes:
        return self.box.encrypt(json.dumps(dict(values)).encode(), secret_context(connection_id))

    def unseal(self, connection_id: UUID, blob: bytes | None) -> dict[str, str]:
        if blob is None:
            return {}
        opened: dict[str, str] = json.loads(self.box.decrypt(blob, secret_context(connection_id)))
        return opened

    async def connection(self, connection_id: UUID) -> tuple[ConnectionRow, dict[str, str]]:
        """A connection and its secrets, looked up across tenants (the ACS and callback
        learn the tenant from the connection)."""
        async with self.db.transaction(platform=True) as tx:
            row = await self.store.get_connection(tx, connection_id)
            blob = await self.store.connection_secrets(tx, connection_id) if row else None
        if row is None:
            raise LookupError(connection_id)
        return row, self.unseal(connection_id, blob)

    async def saml_connection(self, connection_id: UUID) -> tuple[ConnectionRow, dict[str, str]]:
        """A SAML connection and its secrets (LookupError for an OIDC one: its ACS and SLO
        do not exist)."""
        row, secrets_ = await self.connection(connection_id)
        if row.kind != "saml":
            raise LookupError(connection_id)
        return row, secrets_

    # ------------------------------------------------------------------ SAML settings
    def saml_settings(
        self, row: ConnectionRow, secrets_: Mapping[str, str]
    ) -> tuple[saml.SamlConfig, saml.SpUrls, OneLogin_Saml2_Settings]:
        conf = msgspec.convert(row.config, saml.SamlConfig)
        urls = saml.sp_urls(self.public_url, str(row.connection_id))
        key = (row.connection_id, row.version)
        built = self._saml_settings.get(key)
        if built is None:
            built = saml.onelogin_settings(conf, secrets_["sp_private_key"], urls)
            if len(self._saml_settings) > 1000:
                self._saml_settings.clear()
            self._saml_settings[key] = built
        return conf, urls, built

    def oidc_config(self, row: ConnectionRow, secrets_: Mapping[str, str]) -> OidcConnectionConfig:
        config = dict(row.config)
        config["client_secret"] = secrets_.get("client_secret", "")
        return msgspec.convert(config, OidcConnectionConfig)

    # ------------------------------------------------------------------ failures
    async def refuse(
        self,
        row: ConnectionRow,
        refused: LoginRefused,
        *,
        subject: str | None = None,
        redirect_uri: str | None = None,
        client_state: str | None = None,
        account_id: UUID | None = None,
    ) -> LoginFailed:
        """Record why for the admin (the failure log, and user.sign_in_failed: a transaction
        of its own, which the refusal does not undo); give the user the short reason. Only
        for a connection that exists, so only in a tenant that does."""
        async with self.db.transaction(tenant_id=row.tenant_id) as tx:
            await self.store.record_failure(
                tx,
                tenant_id=row.tenant_id,
                connection_id=row.connection_id,
                code=refused.code,
                detail=refused.detail,
                subject=subject,
            )
            failed = UserSignInFailed(
                method="sso",
                reason=refused.code,
                account_id=account_id,
                connection_id=row.connection_id,
            )
            await self.store.record(
                tx,
                failed,
                tenant_id=row.tenant_id,
                subject=str(account_id or row.connection_id),
            )
        redirect = None
        if redirect_uri is not None:
            redirect = with_query(
                redirect_uri,
                {
                    "error": "access_denied",
                    "error_code": refused.code,
                    "error_description": refused.user_message,
                    "state": client_state,
                },
            )
        return LoginFailed(refused, redirect)

    # ------------------------------------------------------------------ start
    async def connection_for_login(
        self, *, connection_id: UUID | None, email: str | None, tenant_id: UUID | None
    ) -> ConnectionRow:
        """Which connection a login uses: named, found from the email's verified domain (home
        realm discovery), or the tenant's only enabled one."""
        async with self.db.transaction(platform=True) as tx:
            if connection_id is not None:
                row = await self.store.get_connection(tx, connection_id)
                if row is None:
                    raise Problem(404, "unknown-connection", "No such SSO connection")
                return row
            if email is not None:
                try:
                    domain = normalise_domain(domain_of_email(email))
                except DomainRefused:
                    raise Problem(400, "invalid-email", "Not an email address") from None
                claimed = await self.store.verified_domain(tx, domain)
                if claimed is None:
                    raise Problem(
                        404,
                        "no-sso-for-domain",
                        "Single sign-on is not set up for this email domain",
                        "Sign in with a password, or ask your administrator",
                    )
                tenant_id = claimed.tenant_id
                if claimed.connection_id is not None:
                    row = await self.store.get_connection(tx, claimed.connection_id)
                    if row is not None:
                        return row
            if tenant_id is None:
                raise Problem(400, "connection-required", "Give connection_id, email or tenant_id")
            rows = [r for r in await self.store.list_connections(tx, tenant_id) if r.enabled]
        if len(rows) != 1:
            raise Problem(
                404 if not rows else 409,
                "no-sso-connection" if not rows else "connection-ambiguous",
                "No single enabled SSO connection for this organisation",
                None if not rows else "name the connection_id",
            )
        return rows[0]

    async def start(
        self,
        row: ConnectionRow,
        *,
        redirect_uri: str,
        client_state: str | None,
        login_hint: str | None,
    ) -> Redirect:
        """Send the browser to the IdP (billed to the connection's tenant: the route is
        anonymous), the login kept pending until its answer comes back."""
        await self.charge(row.tenant_id)
        async with self.db.transaction(tenant_id=row.tenant_id) as tx:
            await guard_feature(tx, row.tenant_id, "sso")
            blob = await self.store.connection_secrets(tx, row.connection_id)
        secrets_ = self.unseal(row.connection_id, blob)
        if not row.enabled:
            raise await self.refuse(
                row,
                LoginRefused("connection-disabled", "login started on a disabled connection"),
                redirect_uri=redirect_uri,
                client_state=client_state,
            )
        expires = self.now() + self.login_ttl
        if row.kind == "saml":
            conf, urls, settings = self.saml_settings(row, secrets_)
            relay = secrets.token_urlsafe(16)  # opaque; the request id is what we check
            started = await asyncio.to_thread(
                saml.start_login,
                settings,
                urls,
                binding=conf.request_binding,
                relay_state=relay,
                post_url=conf.idp_sso_post_url,
            )
            key, sealed = started.request_id, None
            target = Redirect(url=started.redirect_url, html=started.form_html)
        else:
            try:
                authorization = await self.rp.begin(
                    self.oidc_config(row, secrets_), self.oidc_callback, login_hint=login_hint
                )
            except LoginRefused as refused:
                raise await self.refuse(
                    row, refused, redirect_uri=redirect_uri, client_state=client_state
                ) from None
            key = authorization.state
            sealed = self.box.encrypt(
                json.dumps(
                    {"nonce": authorization.nonce, "code_verifier": authorization.code_verifier}
                ).encode(),
                f"sso-login:{row.connection_id}",
            )
            target = Redirect(url=authorization.url)
        async with self.db.transaction(tenant_id=row.tenant_id) as tx:
            await self.store.save_login_request(
                tx,
                key,
                tenant_id=row.tenant_id,
                connection_id=row.connection_id,
                redirect_uri=redirect_uri,
                client_state=client_state,
                secrets=sealed,
                expires_at=expires,
            )
        return target

    # ------------------------------------------------------------------ SAML ACS
    async def saml_acs(self, connection_id: UUID, saml_response: str) -> str:
        """Validate a SAML response and return the product's callback URL with a code.
        The request it answers stays pending until a response is accepted: a bad one
        naming it (forged, garbled) must not end that user's login."""
        row, secrets_ = await self.saml_connection(connection_id)
        await self.charge(row.tenant_id)  # before any XML work: the ACS is anonymous
        pending: PendingLogin | None = None
        try:
            if not row.enabled:
                raise LoginRefused(
                    "connection-disabled", "response arrived for a disabled connection"
                )
            conf, urls, settings = self.saml_settings(row, secrets_)
            request_id = saml.peek_in_response_to(saml_response)
            if request_id is not None:
                async with self.db.transaction(tenant_id=row.tenant_id) as tx:
                    pending = await self.store.find_login_request(tx, request_id, self.now())
                if pending is None or pending.connection_id != row.connection_id:
                    pending = None
                    raise LoginRefused(
                        "unknown-request",
                        f"InResponseTo {request_id!r} is not a request this connection sent, "
                        "or it expired or was answered already",
                    )
            elif not row.allow_idp_initiated:
                raise LoginRefused(
                    "unsolicited",
                    "IdP-initiated response, and this connection does not allow IdP-initiated "
                    "login",
                )
            assertion = await asyncio.to_thread(
                saml.process_response, settings, conf, urls, saml_response, request_id=request_id
            )
        except LoginRefused as refused:
            raise await self.refuse(
                row,
                refused,
                redirect_uri=pending.redirect_uri if pending else self.default_redirect(row),
                client_state=pending.client_state if pending else None,
            ) from None
        redirect_uri = pending.redirect_uri if pending else self.default_redirect(row)
        if redirect_uri is None:
            raise await self.refuse(
                row,
                LoginRefused(
                    "unsolicited", "IdP-initiated login, but no default redirect URI is set"
                ),
            )
        return await self.sign_in(
            row,
            assertion.identity,
            redirect_uri=redirect_uri,
            client_state=pending.client_state if pending else None,
            answers=request_id,
            assertion=(
                assertion.assertion_id,
                saml.replay_keep_until(assertion.not_on_or_after, self.now()),
            ),
        )

    def default_redirect(self, row: ConnectionRow) -> str | None:
        value = row.config.get("default_redirect_uri")
        return str(value) if value else None

    # ------------------------------------------------------------------ OIDC callback
    async def finish_oidc_login(self, params: Mapping[str, str]) -> str:
        state = params.get("state", "")
        if not state:
            raise LookupError("state")
        async with self.db.transaction(platform=True) as tx:
            pending = await self.store.find_login_request(tx, state, self.now())
        if pending is None:
            raise LookupError("state")
        await self.charge(pending.tenant_id)
        row, secrets_ = await self.connection(pending.connection_id)
        try:
            if not row.enabled:
                raise LoginRefused("connection-disabled", "callback for a disabled connection")
            sealed = json.loads(
                self.box.decrypt(pending.secrets or b"", f"sso-login:{row.connection_id}")
            )
            identity = await self.rp.finish(
                self.oidc_config(row, secrets_),
                self.oidc_callback,
                params=params,
                expected_state=state,
                nonce=sealed["nonce"],
                code_verifier=sealed["code_verifier"],
            )
        except LoginRefused as refused:
            raise await self.refuse(
                row, refused, redirect_uri=pending.redirect_uri, client_state=pending.client_state
            ) from None
        return await self.sign_in(
            row,
            identity,
            redirect_uri=pending.redirect_uri,
            client_state=pending.client_state,
            answers=state,
        )

    # ------------------------------------------------------------------ sign in
    async def sign_in(
        self,
        row: ConnectionRow,
        identity: IdpIdentity,
        *,
        redirect_uri: str,
        client_state: str | None,
        answers: str | None = None,
        assertion: tuple[str, datetime] | None = None,
    ) -> str:
        """Map the profile, find or create the account (JIT), and hand the product a code.
        `answers` (the pending login the response answers: SAML request id, OIDC state) is
        consumed, and `assertion` (SAML: its id and how long to keep it) remembered against
        replays, in the transaction that admits the login."""
        if (why := unstorable(identity)) is not None:
            raise LoginRefused("malformed", why)
        mapping = msgspec.convert(row.attribute_mapping, AttributeMapping)
        code = routable_token(SSO_CODE, self.region)
        # A SAML response answering no request of ours was the IdP's idea.
        initiated_by: Literal["sp", "idp"] = "sp" if answers is not None else "idp"
        account_id: UUID | None = None  # once known: a refusal names it
        try:
            profile = map_profile(identity, mapping)
            for attempt in range(2):
                try:
                    # A returning user: one transaction from the checks to the code.
                    async with self.db.transaction(tenant_id=row.tenant_id) as tx:
                        offboarding = await self._admit(tx, row, answers, assertion)
                        account = await self._existing_account(tx, row, identity, profile)
                        account_id = account.account_id if account is not None else None
                        if offboarding:
                            _refuse_unless_admin(account)
                        if account is not None:
                            await self._complete(
                                tx,
                                row,
                                identity,
                                profile,
                                account,
                                code,
                                redirect_uri,
                                initiated_by,
                                apply_role=not offboarding,
                            )
                            break
                    answers, assertion = None, None  # used up: that transaction committed
                    # A new one: the account is made within the seat limit (its own
                    # transaction), then the same completion.
                    created = await self._create_account(row, identity, profile)
                    account_id = created.account_id
                    async with self.db.transaction(tenant_id=row.tenant_id) as tx:
                        await self._complete(
                            tx, row, identity, profile, created, code, redirect_uri, initiated_by
                        )
                    break
                except Problem as problem:
                    if problem.status == 409 and attempt == 0:
                        continue  # a concurrent first login created it: look again
                    raise _as_refusal(problem) from None
        except LoginRefused as refused:
            raise await self.refuse(
                row,
                refused,
                subject=identity.subject,
                redirect_uri=redirect_uri,
                client_state=client_state,
                account_id=account_id,
            ) from None
        return with_query(redirect_uri, {"code": code, "state": client_state})

    async def _admit(
        self,
        tx: asyncpg.Connection,
        row: ConnectionRow,
        answers: str | None,
        assertion: tuple[str, datetime] | None,
    ) -> bool:
        """What every completing login must pass: the tenant active or offboarding (True:
        then only its owners and admins, the caller checks), SSO in its plan
        (IdP-initiated logins never pass /sso/authorize, and a plan may have changed since),
        a SAML assertion not seen before, and the pending login it answers still pending
        (taken here, so of two accepted answers to one request only one completes)."""
        tenant_id = row.tenant_id
        status = await self.store.tenant_status(tx, tenant_id)
        if status == "suspended":
            raise LoginRefused("tenant-suspended", "the tenant is suspended")
        if status is not None and status not in ("active", "offboarding"):  # purging, ...
            raise LoginRefused("tenant-suspended", f"the tenant is {status}")
        try:
            await guard_feature(tx, tenant_id, "sso")
        except Problem as problem:
            if problem.status == 403:
                raise LoginRefused("sso-not-in-plan", problem.detail or "no SSO") from None
            raise LoginRefused("temporarily-unavailable", problem.title) from None
        if assertion is not None:
            assertion_id, keep_until = assertion
            if not await self.store.remember_assertion(
                tx, row.connection_id, assertion_id, tenant_id, keep_until
            ):
                raise LoginRefused("replay", f"assertion {assertion_id!r} was already used")
        if answers is not None:
            pending = await self.store.take_login_request(tx, answers, self.now())
            if pending is None or pending.connection_id != row.connection_id:
                raise LoginRefused(
                    "unknown-request",
                    "the login this response answers was answered already or expired",
                )
        return status == "offboarding"

    async def _existing_account(
        self,
        tx: asyncpg.Connection,
        row: ConnectionRow,
        identity: IdpIdentity,
        profile: MappedProfile,
    ) -> AccountRow | None:
        """The account linked to the IdP subject, else one with the email (only where the
        tenant verified the email's domain), else None (a JIT account is due)."""
        tenant_id = row.tenant_id
        domain_ok = await self._domain_verified(tx, row, profile)
        account_id = await self.store.identity_account(tx, row.connection_id, identity.subject)
        account = await self.identity.get_account(tx, account_id) if account_id else None
        if account is not None:
            return account
        existing = await self.identity.account_by_email(tx, tenant_id, profile.email)
        if existing is not None and not domain_ok:
            # A concurrent first login of this same subject may have committed its JIT
            # account (and link, in the same transaction) between the two reads above:
            # read committed lets this statement see it, and it is this user's own.
            if await self.store.identity_account(tx, row.connection_id, identity.subject) == (
                existing.account_id
            ):
                return existing
            raise LoginRefused(
                "email-domain-not-allowed",
                f"an account with {profile.email} exists; SSO may sign it in only once the "
                f"tenant has verified {domain_of_email(profile.email)}",
            )
        return existing

    async def _domain_verified(
        self, tx: asyncpg.Connection, row: ConnectionRow, profile: MappedProfile
    ) -> bool:
        verified_domains = await self.store.verified_domain_names(tx, row.tenant_id)
        email_domain = domain_of_email(profile.email)
        domain_ok = email_domain in verified_domains
        if row.config.get("restrict_email_domains") and not domain_ok:
            raise LoginRefused(
                "email-domain-not-allowed",
                f"{email_domain} is not among the tenant's verified domains",
            )
        return domain_ok

    async def _create_account(
        self, row: ConnectionRow, identity: IdpIdentity, profile: MappedProfile
    ) -> AccountRow:
        """A just-in-time account, within the seat limit, linked to the IdP subject in the
        creating transaction (a concurrent first login then finds the link)."""
        async with self.db.transaction(tenant_id=row.tenant_id) as tx:
            domain_ok = await self._domain_verified(tx, row, profile)

        async def link(tx: asyncpg.Connection, created: AccountRow) -> None:
            await self._link(tx, row, identity, profile, created)

        return await self.accounts.seat(
            row.tenant_id,
            email=profile.email,
            role=profile.role or row.attribute_mapping.get("default_role", "member"),
            password_hash=None,
            created_by=f"sso:{row.connection_id}",
            # The tenant's own IdP vouches for its users' addresses unless it says otherwise
            # (an OIDC email_verified false); a verified domain settles it either way.
            email_verified=domain_ok or profile.email_verified_by_idp is not False,
            jit_connection_id=row.connection_id,
            on_created=link,
        )

    async def _complete(
        self,
        tx: asyncpg.Connection,
        row: ConnectionRow,
        identity: IdpIdentity,
        profile: MappedProfile,
        account: AccountRow,
        code: str,
        redirect_uri: str,
        initiated_by: Literal["sp", "idp"],
        *,
        apply_role: bool = True,
    ) -> None:
        """Refuse a disabled account; apply the mapped role (not while the tenant is
        offboarding: nothing changes then); record the link; save the one-time code, and
        say so (user.sso_authenticated)."""
        if account.status != "active":
            raise LoginRefused(
                "account-disabled",
                f"account {account.account_id} is {account.status} (deprovisioned or disabled)",
            )
        if apply_role and profile.role is not None:
            changed = await self.identity.change_role(
                tx,
                row.tenant_id,
                account.account_id,
                profile.role,
                changed_by=f"sso:{row.connection_id}",
            )
            account = changed or account
        await self._link(tx, row, identity, profile, account)
        issued = IssuedCode(
            tenant_id=row.tenant_id,
            connection_id=row.connection_id,
            account_id=account.account_id,
            subject=identity.subject,
            session_index=identity.session_index,
            redirect_uri=redirect_uri,
            profile={
                "id": str(account.account_id),
                "tenant_id": str(row.tenant_id),
                "connection_id": str(row.connection_id),
                "connection_type": row.kind,
                "idp_id": identity.subject,
                "email": account.email,
                "first_name": profile.given_name,
                "last_name": profile.family_name,
                "groups": profile.groups,
                "role": account.role,
                "raw_attributes": identity.attributes,
            },
        )
        await self.store.save_code(tx, code, issued, self.now() + self.code_ttl)
        identify("sso", str(account.account_id))
        authenticated = UserSsoAuthenticated(
            account_id=account.account_id,
            connection_id=row.connection_id,
            kind=row.kind,  # type: ignore[arg-type]
            initiated_by=initiated_by,
        )
        await self.store.record(
            tx, authenticated, tenant_id=row.tenant_id, subject=str(account.account_id)
        )

    async def _link(
        self,
        tx: asyncpg.Connection,
        row: ConnectionRow,
        identity: IdpIdentity,
        profile: MappedProfile,
        account: AccountRow,
    ) -> None:
        await self.store.link_identity(
            tx,
            connection_id=row.connection_id,
            subject=identity.subject,
            tenant_id=row.tenant_id,
            account_id=account.account_id,
            profile={
                "email": profile.email,
                "given_name": profile.given_name,
                "family_name": profile.family_name,
                "groups": profile.groups,
            },
        )

    # ------------------------------------------------------------------ code exchange
    async def exchange(self, code: str) -> tuple[IssuedCode, AccountRow, TokenPair]:
        """The product's backend trades a code for the profile and a session (once)."""
        async with self.db.transaction(platform=True) as tx:
            issued = await self.store.take_code(tx, code, self.now())
        if issued is None:
            raise LookupError("code")
        async with self.db.transaction(tenant_id=issued.tenant_id) as tx:
            account = await self.identity.get_account(tx, issued.account_id)
            if account is None or account.status != "active":
                # Disabled since the login: refused, and said so (the code is used up).
                failed = UserSignInFailed(
                    method="sso",
                    reason="account-disabled",
                    account_id=issued.account_id,
                    connection_id=issued.connection_id,
                )
                await self.store.record(
                    tx, failed, tenant_id=issued.tenant_id, subject=str(issued.account_id)
                )
                tokens = None
            else:
                tokens = await self._start_session(tx, issued, account)
        if account is None or tokens is None:
            raise LookupError("account")
        return issued, account, tokens

    async def _start_session(
        self, tx: asyncpg.Connection, issued: IssuedCode, account: AccountRow
    ) -> TokenPair:
        """A session for the code's account: its tokens, and user.signed_in and
        session.started."""
        family_id = _new_family()
        tokens = await self.sessions.issue(tx, account, family_id)
        await self.store.record_session(tx, family_id, issued)
        await self.sessions.started(
            tx, account, family_id, "sso", connection_id=issued.connection_id
        )
        signed_in = UserSignedIn(
            account_id=account.account_id, method="sso", connection_id=issued.connection_id
        )
        await self.outbox.put(
            tx,
            [
                new_event(
                    signed_in,
                    tenant_id=issued.tenant_id,
                    subject=str(account.account_id),
                    aggregate_version=0,  # an operational event
                    source=self.source,
                    region=self.region,
                )
            ],
        )
        return tokens

    @property
    def logouts(self) -> SingleLogout:
        """SAML single logout, in either direction (logouts.py)."""
        return SingleLogout(self)


def _refuse_unless_admin(account: AccountRow | None) -> None:
    """An offboarding tenant lets only its existing owners and admins sign in: no other
    user, and no new account (a just-in-time one would be a change)."""
    if account is None or account.role not in ADMIN_ROLES:
        who = "a new user" if account is None else f"account {account.account_id}"
        raise LoginRefused(
            "tenant-offboarding",
            f"the tenant is offboarding: only its owners and admins may sign in, not {who}",
        )


def _as_refusal(problem: Problem) -> LoginRefused:
    """A problem from the shared account code, as the refusal an SSO admin reads."""
    if problem.status == 403:
        return LoginRefused("seat-limit", problem.detail or "no free seat")
    if problem.status == 503:  # limits not known to identity yet
        return LoginRefused("temporarily-unavailable", problem.title)
    return LoginRefused("malformed", f"could not create the account: {problem.title}")


def _new_family() -> UUID:
    return uuid7()
