-- The tenant aggregate's state table, updated in the same transaction as its events, so
-- reads, lists and ETags are plain indexed SQL.
CREATE TABLE tenants (
    tenant_id    uuid        PRIMARY KEY,
    name         text        NOT NULL,
    slug         text        NOT NULL UNIQUE,
    status       text        NOT NULL,
    plan         text        NOT NULL,
    home_region  text        NOT NULL,
    version      integer     NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenants_created_idx ON tenants (created_at, tenant_id);

GRANT SELECT, INSERT, UPDATE ON tenants TO {app_role};
