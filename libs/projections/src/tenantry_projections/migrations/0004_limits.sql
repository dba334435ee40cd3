-- Every service's view of each tenant's effective limits (tenant.limits_changed), so the
-- service that creates a thing enforces its limit from its own store.
CREATE TABLE tenant_limits (
    tenant_id       uuid        PRIMARY KEY,
    plan            text        NOT NULL,
    limits          jsonb       NOT NULL,
    plans           jsonb       NOT NULL,
    limits_version  integer     NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON tenant_limits TO {app_role};
