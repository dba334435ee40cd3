"""HTTP edge of identity: sign-in and tokens, accounts, SCIM's provisioning calls, API keys
and email verification. Routes parse and check the request, call the service layer
(sessions.py, accounts.py, verification.py) or the store, and render."""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from tenantry_credentials import apikeys
from tenantry_events.payloads.identity import AccountVerificationSent
from tenantry_events.pg import Database
from tenantry_guardrails.plan_limits import guard_quantity
from tenantry_http.api_docs import problems
from tenantry_http.auth import PUBLIC, Principal, principal_of, requires
from tenantry_http.problems import Problem
from tenantry_identity.accounts import Accounts
from tenantry_identity.domain import (
    ADMIN_ROLES,
    IdentityRuleBroken,
    Role,
    Topic,
    check_password,
    check_scopes,
    check_subscriber,
    known_topic,
    normalise_email,
)
from tenantry_identity.keys import SigningKeys
from tenantry_identity.passwords import hash_password
from tenantry_identity.sessions import RefreshTokenRefused, Sessions, TokenPair
from tenantry_identity.settings import IdentitySettings
from tenantry_identity.store import (
    API_KEYS_IN_USE,
    REFRESH_TOKEN,
    AccountRow,
    ApiKeyRow,
    IdentityStore,
)
from tenantry_identity.verification import EmailVerification, TooSoon, VerificationRefused
from tenantry_regions.regions import region_of_token
from tenantry_service.residency import send_home

READ_ACCOUNTS = requires(scopes=("accounts:read",))
WRITE_ACCOUNTS = requires(roles=ADMIN_ROLES, scopes=("accounts:write",), verified_email=True)
READ_KEYS = requires(scopes=("apikeys:read",))
WRITE_KEYS = requires(roles=ADMIN_ROLES, scopes=("apikeys:write",), verified_email=True)
# An account's notice subscriptions: its own owner or admin user, or an operator (the
# route also refuses API keys and other users: `own_subscriptions`).
READ_SUBSCRIPTIONS = requires(roles=ADMIN_ROLES)
WRITE_SUBSCRIPTIONS = requires(roles=ADMIN_ROLES, verified_email=True)


def rule_problem(exc: IdentityRuleBroken) -> Problem:
    return Problem(exc.status, exc.slug, "The request breaks an identity rule", str(exc))


def actor(principal: Principal) -> str:
    """Who did it, as events and rows record it."""
    return f"{principal.kind}:{principal.subject}"


# ---------------------------------------------------------------------------- models
Email = Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class Bootstrap(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    email: Email
    password: Password


class Login(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    email: Email
    password: Password
    tenant_id: UUID | None = None  # omitted by platform operators


class Refresh(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class NewAccount(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    email: Email
    role: Role = "member"
    password: Password | None = None


class NewApiKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    scopes: Annotated[list[str], msgspec.Meta(max_length=20)]
    kind: str = "service"
    expires_at: datetime | None = None
    environment: str = "live"


class CreatedApiKey(msgspec.Struct, kw_only=True):
    key: str  # shown once, never again
    api_key: ApiKeyRow


# ---------------------------------------------------------------------------- sessions
class SessionsController(Controller):
    path = "/"
    tags = ["sessions"]

    @post(
        "/operators/bootstrap",
        status_code=201,
        opt={"auth": PUBLIC},
        summary="Create the first platform operator",
        responses=problems(403),
    )
    async def bootstrap(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[Bootstrap],
        identity_settings: NamedDependency[IdentitySettings],
        accounts: NamedDependency[Accounts],
    ) -> AccountRow:
        """Works once: with the bootstrap secret and while no operator exists."""
        expected = identity_settings.bootstrap_secret
        x_bootstrap_secret = request.headers.get("x-bootstrap-secret", "")
        if not expected or not hmac.compare_digest(expected.encode(), x_bootstrap_secret.encode()):
            raise Problem(403, "forbidden", "Not allowed", "bad or missing X-Bootstrap-Secret")
        try:
            email = normalise_email(data.email)
            check_password(data.password)
        except IdentityRuleBroken as exc:
            raise rule_problem(exc) from None
        return await accounts.bootstrap_operator(email, await hash_password(data.password))

    @post(
        "/sessions",
        status_code=201,
        opt={"auth": PUBLIC, "priority": "critical", "rate_class": "auth"},
        summary="Sign in with a password",
        responses=problems(401, 403),
    )
    async def login(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[Login],
        sessions: NamedDependency[Sessions],
    ) -> TokenPair:
        await send_home(request, tenant_id=data.tenant_id)  # another region's tenant: 307
        tokens = await sessions.sign_in_with_password(data.email, data.password, data.tenant_id)
        if tokens is None:
            raise Problem(
                401,
                "invalid-credentials",
                "Wrong email or password",
                headers={"WWW-Authenticate": 'Bearer realm="tenantry"'},
            )
        return tokens

    @post(
        "/sessions/refresh",
        status_code=201,
        opt={"auth": PUBLIC, "priority": "critical", "rate_class": "auth"},
        summary="Rotate a refresh token",
        responses=problems(401, 403),
    )
    async def refresh(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[Refresh],
        sessions: NamedDependency[Sessions],
    ) -> TokenPair:
        """Each refresh token works once. Presenting a used one revokes its whole family."""
        await send_home(request, region=region_of_token(REFRESH_TOKEN, data.refresh_token))
        try:
            return await sessions.refresh(data.refresh_token)
        except RefreshTokenRefused as refused:
            detail = "refresh token reused: the session is revoked" if refused.reused else None
            raise Problem(401, "invalid-refresh-token", "Refresh token refused", detail) from None

    @post(
        "/signing-keys/rotate",
        status_code=201,
        opt=requires(operator_only=True),
        summary="Rotate the token signing key",
    )
    async def rotate(self, signing_keys: NamedDependency[SigningKeys]) -> dict[str, str]:
        key = await signing_keys.rotate()
        return {"kid": str(key.kid)}


@get(
    "/.well-known/jwks.json",
    opt={"auth": PUBLIC},
    include_in_schema=True,
    tags=["sessions"],
    summary="Public keys that verify access tokens",
)
async def jwks(signing_keys: NamedDependency[SigningKeys]) -> dict[str, Any]:
    return await signing_keys.jwks()


# ---------------------------------------------------------------------------- accounts
def in_tenant(row: AccountRow | None, tenant_id: UUID) -> AccountRow:
    if row is None or row.tenant_id != tenant_id:
        raise Problem(404, "not-found", "Not found", "No such account")
    return row


class AccountsController(Controller):
    path = "/tenants/{tenant_id:uuid}/accounts"
    tags = ["accounts"]

    @post("/", status_code=201, opt=WRITE_ACCOUNTS, summary="Invite an account")
    async def create(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[NewAccount],
        accounts: NamedDependency[Accounts],
    ) -> AccountRow:
        principal = principal_of(request)
        try:
            email = normalise_email(data.email)
            if data.password is not None:
                check_password(data.password)
        except IdentityRuleBroken as exc:
            raise rule_problem(exc) from None
        if data.role == "owner" and not principal.is_operator and "owner" not in principal.roles:
            raise Problem(403, "forbidden", "Only an owner can make an owner")
        return await accounts.seat(
            tenant_id,
            email=email,
            role=data.role,
            password_hash=await hash_password(data.password) if data.password else None,
            created_by=actor(principal),
        )

    @get("/", opt=READ_ACCOUNTS, summary="List accounts")
    async def list_accounts(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        identity_store: NamedDependency[IdentityStore],
    ) -> list[AccountRow]:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return await identity_store.list_accounts(tx, tenant_id, after=None, limit=200)


class DisableAccount(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] = "disabled by an admin"


class Subscriptions(msgspec.Struct, kw_only=True):
    topics: list[str]  # the notice topics the account is subscribed to


def own_subscriptions(request: Request[Any, Any, Any], account_id: UUID) -> None:
    """An account's subscriptions are its own: only the account itself, signed in (the
    route admits owners and admins), or an operator reads or changes them. An API key or
    another user of the tenant gets 403 (another tenant's user got 404 already)."""
    principal = principal_of(request)
    if principal.is_operator:
        return
    if principal.kind != "user" or principal.subject != str(account_id):
        raise Problem(
            403,
            "forbidden",
            "Not allowed",
            "only the account itself, signed in, or an operator manages its subscriptions",
        )


def topic_of(topic: str) -> Topic:
    try:
        return known_topic(topic)
    except IdentityRuleBroken as exc:
        raise rule_problem(exc) from None


class AccountAdminController(Controller):
    path = "/tenants/{tenant_id:uuid}/accounts/{account_id:uuid}"
    tags = ["accounts"]

    @get("/", opt=READ_ACCOUNTS, summary="Read an account")
    async def read(
        self,
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        db: NamedDependency[Database],
        identity_store: NamedDependency[IdentityStore],
    ) -> AccountRow:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return in_tenant(await identity_store.get_account(tx, account_id), tenant_id)

    @post(
        "/disable",
        status_code=200,
        opt=WRITE_ACCOUNTS,
        summary="Disable an account (sessions and personal API keys end with it)",
    )
    async def disable(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        data: JSONBody[DisableAccount],
        db: NamedDependency[Database],
        identity_store: NamedDependency[IdentityStore],
    ) -> AccountRow:
        principal = principal_of(request)
        if principal.subject == str(account_id):
            raise Problem(409, "cannot-disable-self", "You cannot disable your own account")
        async with db.transaction(tenant_id=tenant_id) as tx:
            target = in_tenant(await identity_store.get_account(tx, account_id), tenant_id)
            if target.role == "owner" and not (principal.is_operator or "owner" in principal.roles):
                raise Problem(403, "forbidden", "Only an owner can disable an owner")
            row = await identity_store.disable_account(
                tx, tenant_id, account_id, disabled_by=actor(principal), reason=data.reason
            )
        if row is None:
            raise Problem(409, "already-disabled", "This account is already disabled")
        return row

    @get("/subscriptions", opt=READ_SUBSCRIPTIONS, summary="List an account's notice subscriptions")
    async def list_subscriptions(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        db: NamedDependency[Database],
        identity_store: NamedDependency[IdentityStore],
    ) -> Subscriptions:
        """The notice topics the account is subscribed to. One topic today:
        `legal-notices`, announced changes of the tenant's data processing terms
        (sub-processors, a new DPA) and how to object before they take effect, mailed to
        the subscribed owners and admins whose addresses are verified."""
        own_subscriptions(request, account_id)
        async with db.transaction(tenant_id=tenant_id) as tx:
            in_tenant(await identity_store.get_account(tx, account_id), tenant_id)
            topics = await identity_store.subscriptions(tx, tenant_id, account_id)
        return Subscriptions(topics=topics)

    @put(
        "/subscriptions/{topic:str}",
        status_code=200,
        opt=WRITE_SUBSCRIPTIONS,
        summary="Subscribe an account to a notice topic",
        responses=problems(403, 404),
    )
    async def subscribe(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        topic: FromPath[str],
        db: NamedDependency[Database],
        identity_store: NamedDependency[IdentityStore],
    ) -> Subscriptions:
        """Idempotent: subscribing again changes nothing and records nothing. Only owners
        and admins may subscribe to legal-notices (403 topic-not-for-role); an unknown
        topic is 404 unknown-topic. A change appends account.subscription_changed."""
        own_subscriptions(request, account_id)
        name = topic_of(topic)
        async with db.transaction(tenant_id=tenant_id) as tx:
            account = in_tenant(await identity_store.get_account(tx, account_id), tenant_id)
            try:
                check_subscriber(name, account.role)
            except IdentityRuleBroken as exc:
                raise rule_problem(exc) from None
            await identity_store.subscribe(tx, tenant_id, account_id, name)
            topics = await identity_store.subscriptions(tx, tenant_id, account_id)
        return Subscriptions(topics=topics)

    @delete(
        "/subscriptions/{topic:str}",
        status_code=204,
        opt=READ_SUBSCRIPTIONS,
        summary="Unsubscribe an account from a notice topic",
        responses=problems(403, 404),
    )
    async def unsubscribe(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        topic: FromPath[str],
        db: NamedDependency[Database],
        identity_store: NamedDependency[IdentityStore],
    ) -> None:
        """Idempotent: 204 whether or not the account was subscribed (only a change
        appends account.subscription_changed). An unknown topic is 404 unknown-topic."""
        own_subscriptions(request, account_id)
        name = topic_of(topic)
        async with db.transaction(tenant_id=tenant_id) as tx:
            in_tenant(await identity_store.get_account(tx, account_id), tenant_id)
            await identity_store.unsubscribe(tx, tenant_id, account_id, name)


# ---------------------------------------------------------------------------- provisioning
class ProvisionedAccount(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
    # The id provisioning allocated for this user: a retried or re-created user names the
    # same account, which is returned (enabled or disabled as `active` asks) instead of a
    # second one. Without it identity allocates the id.
    account_id: UUID | None = None
    active: bool = True


# SCIM's calls cut or restore access: they go first when identity is busy.
SCIM = {**requires(scopes=("scim:write",)), "priority": "critical"}


def scim_actor(request: Request[Any, Any, Any]) -> str:
    return f"scim:{principal_of(request).subject}"


class ProvisioningController(Controller):
    """What the provisioning service (SCIM) asks of identity, with the tenant's SCIM key:
    an account per provisioned user (identity allocates the id and the seat, so SCIM,
    invites and JIT share one seat count), and deprovisioning that cuts access."""

    path = "/tenants/{tenant_id:uuid}/provisioned-accounts"
    tags = ["provisioning"]

    @post("/", status_code=201, opt=SCIM, summary="Provision an account")
    async def provision(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[ProvisionedAccount],
        accounts: NamedDependency[Accounts],
    ) -> AccountRow:
        """A member account, its address vouched for by the tenant's identity provider
        (verified). Within the seat limit (403 plan-limit-exceeded). Honours
        Idempotency-Key, so a retried SCIM create never takes two seats."""
        try:
            email = normalise_email(data.email)
        except IdentityRuleBroken as exc:
            # SCIM requires no email: a userName that is not an address is the login
            # name, kept as the identity provider sent it (lower case, no spaces).
            email = data.email.strip().lower()
            if not email.isprintable() or any(c.isspace() for c in email):
                raise rule_problem(exc) from None
        return await accounts.provision(
            tenant_id,
            email=email,
            account_id=data.account_id,
            active=data.active,
            actor=scim_actor(request),
        )

    @post(
        "/{account_id:uuid}/deprovision",
        status_code=200,
        opt=SCIM,
        summary="Deprovision: disable, end sessions and personal keys",
    )
    async def deprovision(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        accounts: NamedDependency[Accounts],
    ) -> AccountRow:
        """Idempotent: an account already disabled is returned as it is."""
        row = await accounts.deprovision(tenant_id, account_id, scim_actor(request))
        return in_tenant(row, tenant_id)

    @post(
        "/{account_id:uuid}/reprovision",
        status_code=200,
        opt=SCIM,
        summary="Reprovision: the account is active again",
    )
    async def reprovision(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        accounts: NamedDependency[Accounts],
    ) -> AccountRow:
        """Idempotent: an active account is returned as it is. Enabling takes a seat
        again, within the plan's limit (403 plan-limit-exceeded)."""
        row = await accounts.provisioned_state(tenant_id, account_id, True, scim_actor(request))
        return in_tenant(row, tenant_id)


# ---------------------------------------------------------------------------- API keys
class ApiKeysController(Controller):
    path = "/tenants/{tenant_id:uuid}/api-keys"
    tags = ["api-keys"]

    @post(
        "/", status_code=201, opt=WRITE_KEYS, summary="Create an API key (the secret is shown once)"
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[NewApiKey],
        db: NamedDependency[Database],
        identity_store: NamedDependency[IdentityStore],
        identity_settings: NamedDependency[IdentitySettings],
    ) -> CreatedApiKey:
        principal = principal_of(request)
        try:
            scopes = check_scopes(data.scopes)
        except IdentityRuleBroken as exc:
            raise rule_problem(exc) from None
        if data.kind not in ("service", "personal") or data.environment not in ("live", "test"):
            raise Problem(400, "invalid-api-key", "kind is service|personal, environment live|test")
        personal = data.kind == "personal"
        owner = UUID(principal.subject) if personal and principal.kind == "user" else None
        if personal and owner is None:
            raise Problem(400, "invalid-api-key", "personal keys are created by a signed-in user")
        key = apikeys.generate(
            "live" if data.environment == "live" else "test", region=identity_settings.region
        )
        async with db.transaction(tenant_id=tenant_id) as tx:
            await guard_quantity(tx, tenant_id, "api_keys", API_KEYS_IN_USE)
            row = await identity_store.create_api_key(
                tx,
                tenant_id=tenant_id,
                key=key,
                display_prefix=apikeys.display_prefix(key),
                name=data.name,
                kind=data.kind,
                owner_account_id=owner,
                scopes=scopes,
                expires_at=data.expires_at,
                created_by=actor(principal),
            )
        return CreatedApiKey(key=key, api_key=row)

    @get("/", opt=READ_KEYS, summary="List API keys (no secrets)")
    async def list_keys(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        identity_store: NamedDependency[IdentityStore],
    ) -> list[ApiKeyRow]:
        async with db.transaction(tenant_id=tenant_id) as tx:
            return await identity_store.list_api_keys(tx, tenant_id)

    @delete("/{key_id:str}", status_code=200, opt=WRITE_KEYS, summary="Revoke an API key")
    async def revoke(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        key_id: FromPath[str],
        db: NamedDependency[Database],
        identity_store: NamedDependency[IdentityStore],
    ) -> ApiKeyRow:
        principal = principal_of(request)
        async with db.transaction(tenant_id=tenant_id) as tx:
            row = await identity_store.revoke_api_key(
                tx, tenant_id, key_id, actor(principal), "revoked by request"
            )
        if row is None:
            raise Problem(404, "not-found", "Not found", "No such active API key")
        return row


# ---------------------------------------------------------------------------- verification
class VerificationToken(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    password: Password | None = None  # required when the account has none yet (invites)


class Verified(msgspec.Struct, kw_only=True):
    account_id: UUID
    email_verified: bool


CONFIRM_PAGE = """<!doctype html><meta charset="utf-8"><title>Verify your email</title>
<p>Confirm that this email address is yours.</p>
<form id="f"><label>Password (only when you are setting up a new account)
<input type="password" name="password" autocomplete="new-password" minlength="12"></label>
<button>Verify</button></form><p id="r"></p>
<script>document.getElementById('f').onsubmit=async e=>{e.preventDefault();
const body={token:new URLSearchParams(location.search).get('token')};
const p=e.target.password.value;if(p)body.password=p;
const r=await fetch('../email-verifications',{method:'POST',
headers:{'content-type':'application/json'},body:JSON.stringify(body)});
document.getElementById('r').textContent=r.ok?'Verified.':(await r.json()).title;};</script>"""


class VerificationController(Controller):
    path = "/"
    tags = ["email-verification"]

    @get(
        "/email-verifications/confirm",
        opt={"auth": PUBLIC},
        media_type="text/html",
        summary="The page a verification link opens",
    )
    async def confirm_page(self) -> str:
        """Shows a button and changes nothing: mail scanners that open links must not
        consume the single-use token."""
        return CONFIRM_PAGE

    @post(
        "/email-verifications",
        status_code=200,
        opt={"auth": PUBLIC},
        summary="Confirm an email address with the token from the link",
        responses=problems(404, 410),
    )
    async def confirm(
        self,
        data: JSONBody[VerificationToken],
        db: NamedDependency[Database],
        verification: NamedDependency[EmailVerification],
    ) -> Verified:
        password_hash = None
        if data.password is not None:
            try:
                check_password(data.password)
            except IdentityRuleBroken as exc:
                raise rule_problem(exc) from None
            password_hash = await hash_password(data.password)
        try:
            async with db.transaction(platform=True) as tx:
                account_id = await verification.confirm(tx, data.token, password_hash)
        except VerificationRefused as exc:
            raise Problem(exc.status, exc.slug, str(exc)) from None
        return Verified(account_id=account_id, email_verified=True)

    @post(
        "/tenants/{tenant_id:uuid}/accounts/{account_id:uuid}/verification-email",
        status_code=202,
        summary="Send the verification email again (spaced and capped)",
    )
    async def resend(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        db: NamedDependency[Database],
        identity_store: NamedDependency[IdentityStore],
        verification: NamedDependency[EmailVerification],
    ) -> Verified:
        principal = principal_of(request)
        if not (
            principal.is_operator
            or principal.subject == str(account_id)
            or principal.roles & set(ADMIN_ROLES)
        ):
            raise Problem(403, "forbidden", "Not allowed")
        async with db.transaction(tenant_id=tenant_id) as tx:
            account = in_tenant(await identity_store.get_account(tx, account_id), tenant_id)
            if account.email_verified:
                raise Problem(409, "already-verified", "This address is already verified")
            try:
                expires_at = await verification.send(
                    tx, account_id, account.email, enforce_spacing=True
                )
            except TooSoon as exc:
                raise Problem(
                    429,
                    "too-many-verification-emails",
                    "Wait before asking again",
                    headers={"Retry-After": str(int(exc.retry_after) + 1)},
                ) from None
            sent = AccountVerificationSent(account_id=account_id, expires_at=expires_at)
            await identity_store.record(tx, sent, tenant_id=tenant_id, subject=str(account_id))
        return Verified(account_id=account_id, email_verified=False)
