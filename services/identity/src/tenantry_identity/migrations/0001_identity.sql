-- Identity's own tables. Accounts and API keys are event-sourced aggregates whose state
-- rows are written in the same transaction as their events; signing keys and refresh
-- tokens are operational rows.

CREATE TABLE signing_keys (
    kid            text        PRIMARY KEY,
    private_jwk    bytea       NOT NULL,          -- AES-GCM envelope (servicekit.crypto)
    public_jwk     jsonb       NOT NULL,
    state          text        NOT NULL CHECK (state IN ('active', 'retired')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz
);

CREATE TABLE accounts (
    account_id     uuid        PRIMARY KEY,
    tenant_id      uuid,                          -- NULL for platform operators
    email          text        NOT NULL,
    role           text        NOT NULL CHECK (role IN ('operator', 'owner', 'admin', 'member')),
    status         text        NOT NULL CHECK (status IN ('active', 'disabled')),
    email_verified boolean     NOT NULL DEFAULT false,
    password_hash  text,                          -- argon2id; NULL until a password is set
    version        integer     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'operator') = (tenant_id IS NULL))
);
-- Email is unique per tenant, case-insensitively (and once among operators).
CREATE UNIQUE INDEX accounts_email_per_tenant
    ON accounts (coalesce(tenant_id, '00000000-0000-0000-0000-000000000000'::uuid), lower(email));

CREATE TABLE refresh_tokens (
    token_sha256   bytea       PRIMARY KEY,
    family_id      uuid        NOT NULL,
    account_id     uuid        NOT NULL REFERENCES accounts (account_id),
    issued_at      timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    revoked_at     timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

CREATE TABLE api_keys (
    key_id            text        PRIMARY KEY,
    tenant_id         uuid        NOT NULL,
    key_sha256        bytea       NOT NULL UNIQUE,
    display_prefix    text        NOT NULL,
    name              text        NOT NULL,
    kind              text        NOT NULL CHECK (kind IN ('service', 'personal')),
    owner_account_id  uuid,
    scopes            text[]      NOT NULL,
    expires_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    created_by        text        NOT NULL,
    revoked_at        timestamptz,
    last_used_at      timestamptz,
    version           integer     NOT NULL
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at, key_id);

GRANT SELECT, INSERT, UPDATE ON signing_keys, accounts, refresh_tokens, api_keys TO {app_role};
