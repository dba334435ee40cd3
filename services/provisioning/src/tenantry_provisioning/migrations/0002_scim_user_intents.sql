-- SCIM user writes that cross into identity, as a saga (scim/intents.py).
--
-- A create, a replace that changes `active`, and a delete each write their intent here
-- before calling identity, and remove it in the transaction that writes the directory.
-- An intent that outlives its request (the process died, identity timed out) is finished
-- by the worker once identity's account is in the state the intent asks for (from
-- account_projection), or dropped after a long horizon if it never is; a retry of the
-- same write by the identity provider takes it over. One pending intent per user; a
-- pending create reserves its userName, so the directory write after identity's cannot
-- meet a conflict.
CREATE TABLE scim_user_intents (
    id            uuid        PRIMARY KEY,
    tenant_id     uuid        NOT NULL,
    user_id       uuid        NOT NULL,        -- the account id (allocated here for a create)
    kind          text        NOT NULL CHECK (kind IN ('create', 'replace', 'delete')),
    user_name     text        NOT NULL,
    columns       jsonb,                       -- the scim_users row to write (create, replace)
    base_version  integer,                     -- the row version it applies to (replace, delete)
    active        boolean     NOT NULL,        -- the account state identity is asked for
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX scim_user_intents_user ON scim_user_intents (user_id);
CREATE UNIQUE INDEX scim_user_intents_create ON scim_user_intents (tenant_id, lower(user_name))
    WHERE kind = 'create';
CREATE INDEX scim_user_intents_age ON scim_user_intents (created_at);

-- Which account each userName was given, kept after the user is deleted: a re-created
-- user gets its account back (enabled again) instead of a second account with the same
-- address, which identity would refuse.
CREATE TABLE scim_user_accounts (
    tenant_id   uuid  NOT NULL,
    user_name   text  NOT NULL,
    account_id  uuid  NOT NULL UNIQUE
);
CREATE UNIQUE INDEX scim_user_accounts_name ON scim_user_accounts (tenant_id, lower(user_name));

GRANT SELECT, INSERT, UPDATE, DELETE ON scim_user_intents, scim_user_accounts TO {app_role};

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['scim_user_intents', 'scim_user_accounts'] LOOP
        EXECUTE format($p$CREATE POLICY tenant_scope ON %I
            USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
                   OR current_setting('app.platform', true) = 'on')$p$, t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    END LOOP;
END $$;
