-- Enterprise SSO. A connection is an event-sourced aggregate (sso.connection_changed) whose
-- state row is written with its events; everything else here is operational: pending
-- login requests, the assertion replay cache, one-time codes, the failure log.

CREATE TABLE sso_connections (
    connection_id        uuid        PRIMARY KEY,
    tenant_id            uuid        NOT NULL,
    kind                 text        NOT NULL CHECK (kind IN ('saml', 'oidc')),
    name                 text        NOT NULL,
    enabled              boolean     NOT NULL,
    allow_idp_initiated  boolean     NOT NULL DEFAULT false,
    config               jsonb       NOT NULL,   -- kind-specific, nothing secret in it
    secrets              bytea,                  -- AES-GCM envelope: SP key / client secret
    attribute_mapping    jsonb       NOT NULL,
    metadata_fetched_at  timestamptz,            -- SAML metadata URL: last good fetch
    metadata_error       text,                   -- ... and the last failure, if any
    version              integer     NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sso_connections_tenant_idx ON sso_connections (tenant_id, created_at);

-- Email domains a tenant claims; routing uses only verified ones, and a verified domain
-- belongs to one tenant (the partial unique index).
CREATE TABLE sso_domains (
    tenant_id        uuid        NOT NULL,
    domain           text        NOT NULL,
    connection_id    uuid        REFERENCES sso_connections (connection_id) ON DELETE SET NULL,
    challenge_token  text        NOT NULL,   -- published in DNS by design: not a secret
    verified_at      timestamptz,
    last_checked_at  timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, domain)
);
CREATE UNIQUE INDEX sso_domains_verified_once ON sso_domains (domain) WHERE verified_at IS NOT NULL;

-- Logins we started: a SAML AuthnRequest ID or an OIDC state (their SHA-256), so a
-- response that answers anything else is refused. Used once.
CREATE TABLE sso_login_requests (
    request_sha256  bytea       PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    connection_id   uuid        NOT NULL REFERENCES sso_connections (connection_id) ON DELETE CASCADE,
    redirect_uri    text        NOT NULL,
    client_state    text,
    secrets         bytea,      -- OIDC nonce and PKCE verifier, AES-GCM envelope
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);
CREATE INDEX sso_login_requests_expiry_idx ON sso_login_requests (expires_at);

-- SAML assertion ids seen, kept until the assertion's NotOnOrAfter: the second use of an
-- assertion is a replay.
CREATE TABLE sso_seen_assertions (
    connection_id  uuid        NOT NULL,
    assertion_id   text        NOT NULL,
    tenant_id      uuid        NOT NULL,
    expires_at     timestamptz NOT NULL,
    PRIMARY KEY (connection_id, assertion_id)
);
CREATE INDEX sso_seen_assertions_expiry_idx ON sso_seen_assertions (expires_at);

-- Which IdP subject is which account, with the profile last mapped from it.
CREATE TABLE sso_identities (
    connection_id   uuid        NOT NULL REFERENCES sso_connections (connection_id) ON DELETE CASCADE,
    subject         text        NOT NULL,
    tenant_id       uuid        NOT NULL,
    account_id      uuid        NOT NULL REFERENCES accounts (account_id),
    profile         jsonb       NOT NULL,
    first_login_at  timestamptz NOT NULL DEFAULT now(),
    last_login_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, subject)
);
CREATE INDEX sso_identities_account_idx ON sso_identities (account_id);

-- One-time codes handed to the SaaS product's redirect URI (WorkOS style), exchanged once
-- within a minute by its backend for the profile and tokens. Only the hash is kept.
CREATE TABLE sso_codes (
    code_sha256     bytea       PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    connection_id   uuid        NOT NULL,
    account_id      uuid        NOT NULL REFERENCES accounts (account_id),
    subject         text        NOT NULL,
    session_index   text,
    redirect_uri    text        NOT NULL,
    profile         jsonb       NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);

-- Sessions opened through a connection, so an IdP's single logout can end them.
CREATE TABLE sso_sessions (
    family_id       uuid        PRIMARY KEY,
    tenant_id       uuid        NOT NULL,
    connection_id   uuid        NOT NULL,
    subject         text        NOT NULL,
    session_index   text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sso_sessions_subject_idx ON sso_sessions (connection_id, subject);

-- Why logins failed, for the tenant admin (the user only sees a short reason).
CREATE TABLE sso_login_failures (
    failure_id     uuid        PRIMARY KEY,   -- UUIDv7: newest last
    tenant_id      uuid        NOT NULL,
    connection_id  uuid        NOT NULL REFERENCES sso_connections (connection_id) ON DELETE CASCADE,
    code           text        NOT NULL,
    detail         text        NOT NULL,
    subject        text,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sso_login_failures_connection_idx ON sso_login_failures (connection_id, failure_id);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['sso_connections', 'sso_domains', 'sso_login_requests',
                             'sso_seen_assertions', 'sso_identities', 'sso_codes',
                             'sso_sessions', 'sso_login_failures'] LOOP
        EXECUTE format($p$CREATE POLICY tenant_scope ON %I
            USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
                   OR current_setting('app.platform', true) = 'on')$p$, t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    END LOOP;
END $$;

GRANT SELECT, INSERT, UPDATE, DELETE ON sso_connections, sso_domains, sso_login_requests,
    sso_seen_assertions, sso_identities, sso_codes, sso_sessions, sso_login_failures
    TO {app_role};

-- Accounts may now change role (SSO group mapping); names live in sso_identities.profile.
