-- What servicekit keeps in every service's database.

-- Idempotency-Key records for POSTs (kept 24 h). `scope` separates credentials, so two
-- callers using the same key never see each other's responses.
CREATE TABLE idempotency_keys (
    scope        text        NOT NULL,
    key          text        NOT NULL,
    fingerprint  text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('started', 'done')),
    status       integer,
    headers      jsonb,
    body         bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    locked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);

-- Every service's local view of tenants, fed by tenant.* events, so a request is
-- authorised without a synchronous call to tenancy. Highest aggregate version wins.
CREATE TABLE tenant_projection (
    tenant_id    uuid        PRIMARY KEY,
    name         text        NOT NULL,
    slug         text        NOT NULL,
    status       text        NOT NULL,
    plan         text        NOT NULL,
    home_region  text        NOT NULL,
    version      integer     NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO {app_role};
GRANT SELECT, INSERT, UPDATE ON tenant_projection TO {app_role};
