-- Tenant facts waiting to reach the global directory (directory/sync.py, docs/residency.md):
-- written in the same transaction as the change (a tenant's state row, a purge's end, a
-- slug's release), pushed by the worker, deleted once the directory has them. One row per
-- tenant: a newer change overwrites a pending one. Routing facts only, nothing personal.
CREATE TABLE directory_pending (
    tenant_id  uuid        PRIMARY KEY,
    facts      jsonb       NOT NULL,
    queued_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE POLICY tenant_scope ON directory_pending
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE directory_pending ENABLE ROW LEVEL SECURITY;
ALTER TABLE directory_pending FORCE ROW LEVEL SECURITY;

GRANT SELECT, INSERT, UPDATE, DELETE ON directory_pending TO {app_role};

-- Every tenant this region had before the directory existed is queued once (as the
-- platform: the row-level security above binds the owner role too).
SELECT set_config('app.platform', 'on', true);
INSERT INTO directory_pending (tenant_id, facts)
SELECT tenant_id,
       jsonb_build_object('tenant_id', tenant_id, 'home_region', home_region,
                          'status', status, 'slug', slug)
FROM tenants;
