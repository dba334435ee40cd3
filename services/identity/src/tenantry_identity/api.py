"""HTTP edge of identity."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar import Controller, Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from uuid_utils.compat import uuid7

from tenantry_credentials import apikeys
from tenantry_credentials.tokens import AUDIENCE, ISSUER, sign
from tenantry_events.envelope import new_event
from tenantry_events.payloads.identity import UserJitProvisioned
from tenantry_guardrails.plan_limits import guard_quantity
from tenantry_http.api_docs import problems
from tenantry_http.auth import (
    PUBLIC,
    principal_of,
    requires,
    tenant_refusal,
)
from tenantry_http.problems import Problem
from tenantry_identity.domain import (
    ADMIN_ROLES,
    IdentityRuleBroken,
    Role,
    check_password,
    check_scopes,
    normalise_email,
)
from tenantry_identity.keys import SigningKeys
from tenantry_identity.settings import IdentitySettings
from tenantry_identity.store import (
    AccountRow,
    ApiKeyRow,
    EmailTaken,
    IdentityStore,
    RefreshRefused,
)
from tenantry_identity.verification import EmailVerification, TooSoon, VerificationRefused
from tenantry_projections.projections import PostgresTenantStatus
from tenantry_service.runtime import Runtime

# Usage counted in identity's own rows, inside the creating transaction.
SEATS_IN_USE = "SELECT count(*) FROM accounts WHERE tenant_id = $1 AND status = 'active'"
API_KEYS_IN_USE = "SELECT count(*) FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NULL"

HASHER = PasswordHasher()  # argon2id, library defaults (RFC 9106 second recommendation)
_DUMMY_HASH = HASHER.hash("a password nobody has, to spend the same time on unknown users")


def store(runtime: Runtime) -> IdentityStore:
    return IdentityStore(runtime.events, source=runtime.source, region=runtime.settings.region)


def settings(runtime: Runtime) -> IdentitySettings:
    assert isinstance(runtime.settings, IdentitySettings)
    return runtime.settings


def signing_keys(runtime: Runtime) -> SigningKeys:
    keys = runtime.extras["signing_keys"]
    assert isinstance(keys, SigningKeys)
    return keys


def rule_problem(exc: IdentityRuleBroken) -> Problem:
    return Problem(exc.status, exc.slug, "The request breaks an identity rule", str(exc))


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(HASHER.hash, password)


async def password_matches(stored: str | None, password: str) -> bool:
    try:
        return await asyncio.to_thread(HASHER.verify, stored or _DUMMY_HASH, password) and bool(
            stored
        )
    except (VerificationError, InvalidHashError):
        return False


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


class TokenPair(msgspec.Struct, kw_only=True):
    access_token: str
    token_type: str
    expires_in: int
    refresh_token: str


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


# ---------------------------------------------------------------------------- tokens
async def refuse_if_suspended(runtime: Runtime, account: AccountRow) -> None:
    """No new tokens for the users of a tenant that is not active (identity's own tenant
    projection): suspended, or any state a later lifecycle adds, is refused by default."""
    if account.tenant_id is not None:
        status = await PostgresTenantStatus(runtime.db).status(account.tenant_id)
        refusal = tenant_refusal(status) if status is not None else None
        if refusal is not None:
            raise refusal


async def issue_tokens(
    runtime: Runtime, account: AccountRow, family_id: UUID, tx: Any
) -> TokenPair:
    conf = settings(runtime)
    now = int(time.time())
    kind = "operator" if account.role == "operator" else "user"
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(account.account_id),
        "kind": kind,
        "roles": [account.role],
        "ev": account.email_verified,
        "sid": str(family_id),
        "jti": str(uuid7()),
        "iat": now,
        "nbf": now,
        "exp": now + conf.access_token_ttl_seconds,
    }
    if account.tenant_id is not None:
        claims["tid"] = str(account.tenant_id)
    token = sign(claims, await signing_keys(runtime).active())
    refresh = await store(runtime).issue_refresh(
        tx, account.account_id, family_id, timedelta(seconds=conf.refresh_token_ttl_seconds)
    )
    return TokenPair(
        access_token=token,
        token_type="Bearer",  # noqa: S106  (the OAuth token type, not a secret)
        expires_in=conf.access_token_ttl_seconds,
        refresh_token=refresh,
    )


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
        runtime: NamedDependency[Runtime],
    ) -> AccountRow:
        """Works once: with the bootstrap secret and while no operator exists."""
        expected = settings(runtime).bootstrap_secret
        x_bootstrap_secret = request.headers.get("x-bootstrap-secret", "")
        if not expected or not hmac.compare_digest(expected.encode(), x_bootstrap_secret.encode()):
            raise Problem(403, "forbidden", "Not allowed", "bad or missing X-Bootstrap-Secret")
        try:
            email = normalise_email(data.email)
            check_password(data.password)
        except IdentityRuleBroken as exc:
            raise rule_problem(exc) from None
        password_hash = await hash_password(data.password)
        async with runtime.db.transaction(platform=True) as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(hashtext('identity.bootstrap'))")
            if await store(runtime).operators_exist(tx):
                raise Problem(409, "already-bootstrapped", "An operator already exists")
            return await store(runtime).create_account(
                tx,
                tenant_id=None,
                email=email,
                role="operator",
                password_hash=password_hash,
                created_by="bootstrap",
            )

    @post(
        "/sessions",
        status_code=201,
        opt={"auth": PUBLIC, "priority": "critical", "rate_class": "auth"},
        summary="Sign in with a password",
        responses=problems(401, 403),
    )
    async def login(self, data: JSONBody[Login], runtime: NamedDependency[Runtime]) -> TokenPair:
        refused = Problem(
            401,
            "invalid-credentials",
            "Wrong email or password",
            headers={"WWW-Authenticate": 'Bearer realm="tenantry"'},
        )
        async with runtime.db.transaction(platform=True) as tx:
            found = await store(runtime).account_for_login(tx, data.email.strip(), data.tenant_id)
            account, stored_hash = found if found else (None, None)
            if not await password_matches(stored_hash, data.password) or account is None:
                raise refused
            if account.status != "active":
                raise refused
            await refuse_if_suspended(runtime, account)
            return await issue_tokens(runtime, account, uuid7(), tx)

    @post(
        "/sessions/refresh",
        status_code=201,
        opt={"auth": PUBLIC, "priority": "critical", "rate_class": "auth"},
        summary="Rotate a refresh token",
        responses=problems(401, 403),
    )
    async def refresh(
        self, data: JSONBody[Refresh], runtime: NamedDependency[Runtime]
    ) -> TokenPair:
        """Each refresh token works once. Presenting a used one revokes its whole family."""
        reused = False
        try:
            async with runtime.db.transaction(platform=True) as tx:
                used = await store(runtime).use_refresh(tx, data.refresh_token)
                if used is None:
                    reused = True  # the family's revocation commits with this transaction
                else:
                    account = await store(runtime).get_account(tx, used[0])
                    if account is None or account.status != "active":
                        raise RefreshRefused()
                    await refuse_if_suspended(runtime, account)
                    return await issue_tokens(runtime, account, used[1], tx)
        except RefreshRefused:
            pass
        detail = "refresh token reused: the session is revoked" if reused else None
        raise Problem(401, "invalid-refresh-token", "Refresh token refused", detail)

    @post(
        "/signing-keys/rotate",
        status_code=201,
        opt=requires(operator_only=True),
        summary="Rotate the token signing key",
    )
    async def rotate(self, runtime: NamedDependency[Runtime]) -> dict[str, str]:
        key = await signing_keys(runtime).rotate()
        return {"kid": str(key.kid)}


@get(
    "/.well-known/jwks.json",
    opt={"auth": PUBLIC},
    include_in_schema=True,
    tags=["sessions"],
    summary="Public keys that verify access tokens",
)
async def jwks(runtime: NamedDependency[Runtime]) -> dict[str, Any]:
    return await signing_keys(runtime).jwks()


async def seated_account(
    runtime: Runtime,
    tenant_id: UUID,
    *,
    email: str,
    role: str,
    password_hash: str | None,
    created_by: str,
    email_verified: bool = False,
    jit_connection_id: UUID | None = None,
    on_created: Callable[[asyncpg.Connection, AccountRow], Awaitable[None]] | None = None,
    account_id: UUID | None = None,
) -> AccountRow:
    """A new account of the tenant within its seat limit: invites, SCIM and SSO's
    just-in-time accounts all come through here, so they share one seat count in one
    transaction. A JIT account also emits user.jit_provisioned; `on_created` runs in the
    same transaction (SSO links the IdP identity, so a concurrent login finds it)."""
    try:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            await guard_quantity(tx, tenant_id, "seats", SEATS_IN_USE)
            account = await store(runtime).create_account(
                tx,
                tenant_id=tenant_id,
                email=email,
                role=role,
                password_hash=password_hash,
                created_by=created_by,
                email_verified=email_verified,
                account_id=account_id,
            )
            if jit_connection_id is not None:
                payload = UserJitProvisioned(
                    account_id=account.account_id,
                    email=account.email,
                    role=role,  # type: ignore[arg-type]
                    connection_id=jit_connection_id,
                )
                await runtime.outbox.put(
                    tx,
                    [
                        new_event(
                            payload,
                            tenant_id=tenant_id,
                            subject=str(account.account_id),
                            aggregate_version=0,  # an operational event, not a stream's
                            source=runtime.source,
                            region=runtime.settings.region,
                        )
                    ],
                )
            if on_created is not None:
                await on_created(tx, account)
            return account
    except EmailTaken:
        raise Problem(409, "email-taken", "An account with this email exists") from None


def in_tenant(row: AccountRow | None, tenant_id: UUID) -> AccountRow:
    if row is None or row.tenant_id != tenant_id:
        raise Problem(404, "not-found", "Not found", "No such account")
    return row


class AccountsController(Controller):
    path = "/tenants/{tenant_id:uuid}/accounts"
    tags = ["accounts"]

    @post(
        "/",
        status_code=201,
        opt=requires(roles=ADMIN_ROLES, scopes=("accounts:write",), verified_email=True),
        summary="Invite an account",
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[NewAccount],
        runtime: NamedDependency[Runtime],
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
        password_hash = await hash_password(data.password) if data.password else None
        return await seated_account(
            runtime,
            tenant_id,
            email=email,
            role=data.role,
            password_hash=password_hash,
            created_by=f"{principal.kind}:{principal.subject}",
        )

    @get("/", opt=requires(scopes=("accounts:read",)), summary="List accounts")
    async def list_accounts(
        self,
        tenant_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
    ) -> list[AccountRow]:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            return await store(runtime).list_accounts(tx, tenant_id, after=None, limit=200)


class DisableAccount(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)] = "disabled by an admin"


class AccountAdminController(Controller):
    path = "/tenants/{tenant_id:uuid}/accounts/{account_id:uuid}"
    tags = ["accounts"]

    @get("/", opt=requires(scopes=("accounts:read",)), summary="Read an account")
    async def read(
        self,
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
    ) -> AccountRow:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            account = await store(runtime).get_account(tx, account_id)
        if account is None or account.tenant_id != tenant_id:
            raise Problem(404, "not-found", "Not found", "No such account")
        return account

    @post(
        "/disable",
        status_code=200,
        opt=requires(roles=ADMIN_ROLES, scopes=("accounts:write",), verified_email=True),
        summary="Disable an account (sessions and personal API keys end with it)",
    )
    async def disable(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        data: JSONBody[DisableAccount],
        runtime: NamedDependency[Runtime],
    ) -> AccountRow:
        principal = principal_of(request)
        if principal.subject == str(account_id):
            raise Problem(409, "cannot-disable-self", "You cannot disable your own account")
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            target = await store(runtime).get_account(tx, account_id)
            if target is None or target.tenant_id != tenant_id:
                raise Problem(404, "not-found", "Not found", "No such account")
            if target.role == "owner" and not (principal.is_operator or "owner" in principal.roles):
                raise Problem(403, "forbidden", "Only an owner can disable an owner")
            row = await store(runtime).disable_account(
                tx,
                tenant_id,
                account_id,
                disabled_by=f"{principal.kind}:{principal.subject}",
                reason=data.reason,
            )
        if row is None:
            raise Problem(409, "already-disabled", "This account is already disabled")
        return row


class ProvisionedAccount(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    email: Annotated[str, msgspec.Meta(min_length=3, max_length=320)]
    # The id provisioning allocated for this user: a retried or re-created user names the
    # same account, which is returned (enabled or disabled as `active` asks) instead of a
    # second one. Without it identity allocates the id.
    account_id: UUID | None = None
    active: bool = True


SCIM = requires(scopes=("scim:write",))
DEPROVISIONED = "deprovisioned by the identity provider (SCIM)"


async def provisioned_state(
    runtime: Runtime, tenant_id: UUID, account_id: UUID, active: bool, actor: str
) -> AccountRow | None:
    """Put an existing account of the tenant in the state SCIM asks for (enabling takes a
    seat, within the limit); None if there is no such account."""
    async with runtime.db.transaction(tenant_id=tenant_id) as tx:
        account = await store(runtime).get_account(tx, account_id)
        if account is None or account.tenant_id != tenant_id:
            return None
        if active and account.status == "disabled":
            await guard_quantity(tx, tenant_id, "seats", SEATS_IN_USE)
            changed = await store(runtime).enable_account(
                tx, tenant_id, account_id, enabled_by=actor
            )
        elif not active and account.status == "active":
            changed = await store(runtime).disable_account(
                tx, tenant_id, account_id, disabled_by=actor, reason=DEPROVISIONED
            )
        else:
            changed = None
        return changed or account


class ProvisioningController(Controller):
    """What the provisioning service (SCIM) asks of identity, with the tenant's SCIM key:
    an account per provisioned user (identity allocates the id and the seat, so SCIM,
    invites and JIT share one seat count), and deprovisioning that cuts access."""

    path = "/tenants/{tenant_id:uuid}/provisioned-accounts"
    tags = ["provisioning"]

    @post(
        "/", status_code=201, opt={**SCIM, "priority": "critical"}, summary="Provision an account"
    )
    async def provision(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[ProvisionedAccount],
        runtime: NamedDependency[Runtime],
    ) -> AccountRow:
        """A member account, its address vouched for by the tenant's identity provider
        (verified). Within the seat limit (403 plan-limit-exceeded). Honours
        Idempotency-Key, so a retried SCIM create never takes two seats."""
        principal = principal_of(request)
        try:
            email = normalise_email(data.email)
        except IdentityRuleBroken as exc:
            # SCIM requires no email: a userName that is not an address is the login
            # name, kept as the identity provider sent it (lower case, no spaces).
            email = data.email.strip().lower()
            if not email.isprintable() or any(c.isspace() for c in email):
                raise rule_problem(exc) from None
        actor = f"scim:{principal.subject}"
        if data.account_id is not None:
            existing = await provisioned_state(
                runtime, tenant_id, data.account_id, data.active, actor
            )
            if existing is not None:
                return existing

        async def disabled_at_once(tx: asyncpg.Connection, account: AccountRow) -> None:
            await store(runtime).disable_account(
                tx, tenant_id, account.account_id, disabled_by=actor, reason=DEPROVISIONED
            )

        try:
            account = await seated_account(
                runtime,
                tenant_id,
                email=email,
                role="member",
                password_hash=None,
                created_by=actor,
                email_verified=True,
                on_created=None if data.active else disabled_at_once,
                account_id=data.account_id,
            )
        except Problem as problem:
            # A concurrent request created this very account first: answer as a retry.
            if data.account_id is None or problem.status != 409:
                raise
            existing = await provisioned_state(
                runtime, tenant_id, data.account_id, data.active, actor
            )
            if existing is None:
                raise
            return existing
        if not data.active:
            return msgspec.structs.replace(account, status="disabled")
        return account

    @post(
        "/{account_id:uuid}/deprovision",
        status_code=200,
        opt={**SCIM, "priority": "critical"},
        summary="Deprovision: disable, end sessions and personal keys",
    )
    async def deprovision(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
    ) -> AccountRow:
        """Idempotent: an account already disabled is returned as it is."""
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            row = await store(runtime).disable_account(
                tx,
                tenant_id,
                account_id,
                disabled_by=f"scim:{principal_of(request).subject}",
                reason=DEPROVISIONED,
            )
            row = row or await store(runtime).get_account(tx, account_id)
        return in_tenant(row, tenant_id)

    @post(
        "/{account_id:uuid}/reprovision",
        status_code=200,
        opt={**SCIM, "priority": "critical"},
        summary="Reprovision: the account is active again",
    )
    async def reprovision(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        account_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
    ) -> AccountRow:
        """Idempotent: an active account is returned as it is. Enabling takes a seat
        again, within the plan's limit (403 plan-limit-exceeded)."""
        row = await provisioned_state(
            runtime, tenant_id, account_id, True, f"scim:{principal_of(request).subject}"
        )
        return in_tenant(row, tenant_id)


class ApiKeysController(Controller):
    path = "/tenants/{tenant_id:uuid}/api-keys"
    tags = ["api-keys"]

    @post(
        "/",
        status_code=201,
        opt=requires(roles=ADMIN_ROLES, scopes=("apikeys:write",), verified_email=True),
        summary="Create an API key (the secret is shown once)",
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        data: JSONBody[NewApiKey],
        runtime: NamedDependency[Runtime],
    ) -> CreatedApiKey:
        principal = principal_of(request)
        try:
            scopes = check_scopes(data.scopes)
        except IdentityRuleBroken as exc:
            raise rule_problem(exc) from None
        if data.kind not in ("service", "personal") or data.environment not in ("live", "test"):
            raise Problem(400, "invalid-api-key", "kind is service|personal, environment live|test")
        owner = (
            UUID(principal.subject)
            if data.kind == "personal" and principal.kind == "user"
            else None
        )
        if data.kind == "personal" and owner is None:
            raise Problem(400, "invalid-api-key", "personal keys are created by a signed-in user")
        key = apikeys.generate("live" if data.environment == "live" else "test")
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            await guard_quantity(tx, tenant_id, "api_keys", API_KEYS_IN_USE)
            row = await store(runtime).create_api_key(
                tx,
                tenant_id=tenant_id,
                key=key,
                display_prefix=apikeys.display_prefix(key),
                name=data.name,
                kind=data.kind,
                owner_account_id=owner,
                scopes=scopes,
                expires_at=data.expires_at,
                created_by=f"{principal.kind}:{principal.subject}",
            )
        return CreatedApiKey(key=key, api_key=row)

    @get("/", opt=requires(scopes=("apikeys:read",)), summary="List API keys (no secrets)")
    async def list_keys(
        self,
        tenant_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
    ) -> list[ApiKeyRow]:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            return await store(runtime).list_api_keys(tx, tenant_id)

    @delete(
        "/{key_id:str}",
        status_code=200,
        opt=requires(roles=ADMIN_ROLES, scopes=("apikeys:write",), verified_email=True),
        summary="Revoke an API key",
    )
    async def revoke(
        self,
        request: Request[Any, Any, Any],
        tenant_id: FromPath[UUID],
        key_id: FromPath[str],
        runtime: NamedDependency[Runtime],
    ) -> ApiKeyRow:
        principal = principal_of(request)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            row = await store(runtime).revoke_api_key(
                tx, tenant_id, key_id, f"{principal.kind}:{principal.subject}", "revoked by request"
            )
        if row is None:
            raise Problem(404, "not-found", "Not found", "No such active API key")
        return row


def verification(runtime: Runtime) -> EmailVerification:
    service = runtime.extras["verification"]
    assert isinstance(service, EmailVerification)
    return service


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
        self, data: JSONBody[VerificationToken], runtime: NamedDependency[Runtime]
    ) -> Verified:
        password_hash = None
        if data.password is not None:
            try:
                check_password(data.password)
            except IdentityRuleBroken as exc:
                raise rule_problem(exc) from None
            password_hash = await hash_password(data.password)
        try:
            async with runtime.db.transaction(platform=True) as tx:
                account_id = await verification(runtime).confirm(tx, data.token, password_hash)
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
        runtime: NamedDependency[Runtime],
    ) -> Verified:
        principal = principal_of(request)
        if not (
            principal.is_operator
            or principal.subject == str(account_id)
            or principal.roles & set(ADMIN_ROLES)
        ):
            raise Problem(403, "forbidden", "Not allowed")
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            account = await store(runtime).get_account(tx, account_id)
            if account is None or account.tenant_id != tenant_id:
                raise Problem(404, "not-found", "Not found", "No such account")
            if account.email_verified:
                raise Problem(409, "already-verified", "This address is already verified")
            try:
                await verification(runtime).send(
                    tx, account_id, account.email, enforce_spacing=True
                )
            except TooSoon as exc:
                raise Problem(
                    429,
                    "too-many-verification-emails",
                    "Wait before asking again",
                    headers={"Retry-After": str(int(exc.retry_after) + 1)},
                ) from None
        return Verified(account_id=account_id, email_verified=False)
