-- A tenant moved here from another region (issue 18 §7): each service records, in the
-- transaction that inserts the tenant's rows, that it imported its share of the move and
-- how many rows per table (tenantry_service.move). A repeated import answers from it.
CREATE TABLE tenant_imports (
    tenant_id    uuid        NOT NULL,
    move_id      uuid        NOT NULL,
    tables       jsonb       NOT NULL,  -- [{"table": ..., "rows": n}]
    imported_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, move_id)
);
ALTER TABLE tenant_imports ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_imports FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON tenant_imports
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
GRANT SELECT, INSERT ON tenant_imports TO {app_role};
