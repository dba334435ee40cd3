-- Email verification links: only the SHA-256 of the token is kept; single use, expiring.
CREATE TABLE email_verifications (
    token_sha256  bytea       PRIMARY KEY,
    account_id    uuid        NOT NULL REFERENCES accounts (account_id),
    email         text        NOT NULL,
    created_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL,
    used_at       timestamptz
);
CREATE INDEX email_verifications_account_idx ON email_verifications (account_id, created_at);
GRANT SELECT, INSERT, UPDATE ON email_verifications TO {app_role};
