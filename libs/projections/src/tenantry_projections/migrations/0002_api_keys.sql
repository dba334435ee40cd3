-- Every service's projection of API keys (apikey.* events): enough to authenticate a key
-- locally. Only the SHA-256 of a key is ever stored.
CREATE TABLE api_key_projection (
    key_sha256        bytea       PRIMARY KEY,
    key_id            text        NOT NULL UNIQUE,
    tenant_id         uuid        NOT NULL,
    scopes            text[]      NOT NULL,
    owner_account_id  uuid,
    expires_at        timestamptz,
    revoked           boolean     NOT NULL DEFAULT false,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON api_key_projection TO {app_role};
