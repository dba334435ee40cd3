"""identity's share of a tenant's export (tenantry_service.export): who the tenant's people
are, the keys and sessions they hold, and how they sign in.

Never exported: password hashes, API key hashes, refresh and verification token hashes,
SSO connection secrets (the encrypted `secrets` column: OIDC client secrets, SP private
keys) and pending logins. Per person: their account, the API keys they own, their
sessions (refresh token families), their SSO identities and SSO sessions, their notice
subscriptions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenantry_service.export import ExportScope, ExportSource, Row

# Every query runs in a transaction scoped to the tenant (RLS forced on these tables);
# each also names the tenant, as every query of the service does.
ACCOUNTS = ExportSource(
    file="accounts.ndjson",
    schema="tenantry.identity.account/v1",
    query="""SELECT account_id AS id, email, role, status, email_verified, created_at,
                    version
             FROM accounts
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR account_id = $2)
             ORDER BY account_id""",
    per_person=True,
)

API_KEYS = ExportSource(
    file="api_keys.ndjson",
    schema="tenantry.identity.api_key/v1",
    query="""SELECT key_id AS id, name, display_prefix AS prefix, kind, scopes,
                    owner_account_id, created_by, created_at, last_used_at, expires_at,
                    revoked_at
             FROM api_keys
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR owner_account_id = $2)
             ORDER BY key_id""",
    per_person=True,
)

# One row per refresh token issued (each rotation issues one); a family is one sign-in.
SESSIONS = ExportSource(
    file="sessions.ndjson",
    schema="tenantry.identity.session/v1",
    query="""SELECT r.family_id AS session_id, r.account_id, r.issued_at, r.expires_at,
                    r.used_at, r.revoked_at
             FROM refresh_tokens r JOIN accounts a ON a.account_id = r.account_id
             WHERE a.tenant_id = $1 AND ($2::uuid IS NULL OR r.account_id = $2)
             ORDER BY r.family_id, r.issued_at""",
    per_person=True,
)

# Keys of a connection's stored configuration that are never exported, whatever a future
# connection kind stores there (secrets live in the encrypted `secrets` column today).
_SECRET_MARKERS = ("secret", "private", "password")


def connection_line(row: Row, scope: ExportScope) -> Mapping[str, Any]:
    line = dict(row)
    config: Mapping[str, Any] = line.pop("config") or {}
    line["config"] = {
        key: value
        for key, value in config.items()
        if not any(marker in key.lower() for marker in _SECRET_MARKERS)
    }
    return line


SSO_CONNECTIONS = ExportSource(
    file="sso_connections.ndjson",
    schema="tenantry.identity.sso_connection/v1",
    query="""SELECT connection_id AS id, kind, name, enabled, allow_idp_initiated, config,
                    attribute_mapping, metadata_fetched_at, metadata_error, version,
                    created_at, updated_at
             FROM sso_connections WHERE tenant_id = $1 ORDER BY connection_id""",
    render=connection_line,
)

SSO_DOMAINS = ExportSource(
    file="sso_domains.ndjson",
    schema="tenantry.identity.sso_domain/v1",
    query="""SELECT domain, connection_id, verified_at, last_checked_at, last_error,
                    created_at
             FROM sso_domains WHERE tenant_id = $1 ORDER BY domain""",
)

SSO_IDENTITIES = ExportSource(
    file="sso_identities.ndjson",
    schema="tenantry.identity.sso_identity/v1",
    query="""SELECT connection_id, subject, account_id, profile, first_login_at,
                    last_login_at
             FROM sso_identities
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR account_id = $2)
             ORDER BY connection_id, subject""",
    per_person=True,
)

# An SSO session is the IdP's side of a session (its session index, for single logout).
SSO_SESSIONS = ExportSource(
    file="sso_sessions.ndjson",
    schema="tenantry.identity.sso_session/v1",
    query="""SELECT s.family_id AS session_id, s.connection_id, s.subject, s.session_index,
                    s.created_at
             FROM sso_sessions s
             WHERE s.tenant_id = $1
               AND ($2::uuid IS NULL OR EXISTS (
                   SELECT 1 FROM refresh_tokens r
                   WHERE r.family_id = s.family_id AND r.account_id = $2))
             ORDER BY s.family_id""",
    per_person=True,
)

# Refused SSO sign-ins (an admin's troubleshooting log): the IdP subject, not an account.
SSO_LOGIN_FAILURES = ExportSource(
    file="sso_login_failures.ndjson",
    schema="tenantry.identity.sso_login_failure/v1",
    query="""SELECT failure_id AS id, connection_id, code, detail, subject, at
             FROM sso_login_failures WHERE tenant_id = $1 ORDER BY at, failure_id""",
)

# Which kinds of notice each person opted in to (legal-notices: the DPA's announcements).
NOTICE_SUBSCRIPTIONS = ExportSource(
    file="notice_subscriptions.ndjson",
    schema="tenantry.identity.notice_subscription/v1",
    query="""SELECT account_id, topic, subscribed_at
             FROM notice_subscriptions
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR account_id = $2)
             ORDER BY account_id, topic""",
    per_person=True,
)

IDENTITY_EXPORTS = (
    ACCOUNTS,
    API_KEYS,
    SESSIONS,
    SSO_CONNECTIONS,
    SSO_DOMAINS,
    SSO_IDENTITIES,
    SSO_SESSIONS,
    SSO_LOGIN_FAILURES,
    NOTICE_SUBSCRIPTIONS,
)
