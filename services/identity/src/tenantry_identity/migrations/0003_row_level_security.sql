-- Row-level security, the second wall behind the tenant checks in code: a query sees a
-- tenant's accounts and API keys only inside a transaction scoped to that tenant
-- (Database.transaction(tenant_id=...) sets app.tenant_id), or in platform work
-- (transaction(platform=True) sets app.platform: operator sign-in, verification links).
-- FORCE applies it to the table owner too; services connect as the app role anyway.
CREATE POLICY tenant_scope ON accounts
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE accounts FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_scope ON api_keys
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
