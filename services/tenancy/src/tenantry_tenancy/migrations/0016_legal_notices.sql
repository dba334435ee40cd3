-- Notices of changes to the data processing terms (issue 19 §2, legal_notices.py): what
-- the operator announced (global: no tenant), and per tenant when it was told and whether
-- it objected. No foreign key from the tenant rows to the notice: a tenant's rows move to
-- another region without the platform's notices (tenantry_service.move).
CREATE TABLE legal_notices (
    notice_id      uuid        PRIMARY KEY,
    kind           text        NOT NULL,
    summary        text        NOT NULL,
    changes        jsonb       NOT NULL,
    document       text,
    version        text,
    published_at   timestamptz NOT NULL,
    effective_at   timestamptz NOT NULL,
    published_by   text        NOT NULL,
    actor          jsonb,       -- who published it: kind, id, request id (no address)
    fanned_out_at  timestamptz  -- every tenant of the time was told
);
CREATE INDEX legal_notices_fanning_out ON legal_notices (published_at)
    WHERE fanned_out_at IS NULL;
GRANT SELECT, INSERT, UPDATE ON legal_notices TO {app_role};

CREATE TABLE legal_notice_tenants (
    notice_id         uuid        NOT NULL,
    tenant_id         uuid        NOT NULL,
    notified_at       timestamptz NOT NULL,
    objected_at       timestamptz,
    objection_reason  text,
    objected_by       text,
    PRIMARY KEY (notice_id, tenant_id)
);
CREATE INDEX legal_notice_tenants_by_tenant ON legal_notice_tenants (tenant_id, notified_at);

CREATE POLICY tenant_scope ON legal_notice_tenants
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE legal_notice_tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE legal_notice_tenants FORCE ROW LEVEL SECURITY;
GRANT SELECT, INSERT, UPDATE, DELETE ON legal_notice_tenants TO {app_role};
