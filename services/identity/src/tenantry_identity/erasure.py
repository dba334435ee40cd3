"""identity's share of erasing one person (tenantry_service.erasure; docs/lifecycle.md
"Erasing one person").

The account row stays, anonymized, rather than deleted: its id is named by rows that stay
(the person's revoked API keys, tenancy's audit trail, other services' projections, the
account's own event stream, which a deleted row would have `verify-state --rebuild`
recreate). Its email becomes a placeholder built from the id alone (nothing of the person;
unique, as the per-tenant email index needs; domain.erased_email, which the account's
fold gives too, so `verify-state` finds the row as its stream says), its password hash
goes, and it is disabled through the aggregate, which records account.disabled: every
service refuses the person's unexpired tokens, the seat is freed (usage.reported
follows), and each personal API key is revoked with apikey.revoked, so all five services
stop accepting it.

Deleted: sessions (refresh tokens), email verification links, IdP links and what hangs on
them (SSO sessions, one-time codes, the login failure log's entries about the person), and
the person's notice subscriptions.
Sign-ins leave no row of their own beyond these.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from tenantry_events.payloads.tenancy import PurgedRows
from tenantry_identity.domain import erased_email
from tenantry_identity.store import IdentityStore
from tenantry_service.erasure import ErasureRules, ErasureStatement, ErasureStep
from tenantry_service.purge import _deleted as _affected  # a command status's row count
from tenantry_service.runtime import Runtime

ERASED_BY = "system:erasure"

# The person's IdP subjects, per connection (before their links go).
_IDP_SUBJECTS = (
    "SELECT connection_id, subject FROM sso_identities WHERE tenant_id = $1 AND account_id = $2"
)

IDENTITY_ERASURE_STATEMENTS = (
    ErasureStatement(
        "sso_login_failures",
        f"""DELETE FROM sso_login_failures
            WHERE tenant_id = $1 AND (connection_id, subject) IN ({_IDP_SUBJECTS})""",
    ),
    ErasureStatement(
        "sso_sessions",
        f"""DELETE FROM sso_sessions
            WHERE tenant_id = $1 AND (connection_id, subject) IN ({_IDP_SUBJECTS})""",
    ),
    ErasureStatement("sso_codes", "DELETE FROM sso_codes WHERE tenant_id = $1 AND account_id = $2"),
    ErasureStatement(
        "sso_identities", "DELETE FROM sso_identities WHERE tenant_id = $1 AND account_id = $2"
    ),
    ErasureStatement(
        "notice_subscriptions",
        "DELETE FROM notice_subscriptions WHERE tenant_id = $1 AND account_id = $2",
    ),
    # No tenant_id of their own: the account, looked up in the tenant, says whose they are.
    ErasureStatement(
        "refresh_tokens",
        """DELETE FROM refresh_tokens WHERE account_id =
               (SELECT account_id FROM accounts WHERE tenant_id = $1 AND account_id = $2)""",
    ),
    ErasureStatement(
        "email_verifications",
        """DELETE FROM email_verifications WHERE account_id =
               (SELECT account_id FROM accounts WHERE tenant_id = $1 AND account_id = $2)""",
    ),
)


def disabling_the_account(runtime: Runtime) -> ErasureStep:
    """The step that disables the account and revokes its personal API keys, with their
    events (IdentityStore.disable_account)."""
    store = IdentityStore(
        runtime.events,
        outbox=runtime.outbox,
        source=runtime.source,
        region=runtime.settings.region,
    )

    async def disable(
        tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID
    ) -> list[PurgedRows]:
        live_keys = await tx.fetchval(
            """SELECT count(*) FROM api_keys
               WHERE tenant_id = $1 AND owner_account_id = $2 AND revoked_at IS NULL""",
            tenant_id,
            subject_id,
        )
        disabled = await store.disable_account(
            tx, tenant_id, subject_id, disabled_by=ERASED_BY, reason="erased (GDPR Art. 17)"
        )
        # A disabled account's personal keys were revoked when it was disabled.
        revoked = live_keys if disabled is not None else 0
        anonymized = await tx.execute(
            """UPDATE accounts SET email = $3, password_hash = NULL
               WHERE tenant_id = $1 AND account_id = $2""",
            tenant_id,
            subject_id,
            erased_email(subject_id),
        )
        return [
            PurgedRows(table="api_keys", rows=revoked),
            PurgedRows(table="accounts", rows=_affected(anonymized)),
        ]

    return disable


IDENTITY_ERASURE = ErasureRules(
    statements=IDENTITY_ERASURE_STATEMENTS, steps=(disabling_the_account,)
)
