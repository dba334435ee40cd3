-- Every service's view of account status (account.* events), so a disabled user's
-- still-unexpired access token is refused everywhere, not only by identity.
CREATE TABLE account_projection (
    account_id  uuid        PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    status      text        NOT NULL,
    version     integer     NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON account_projection TO {app_role};
