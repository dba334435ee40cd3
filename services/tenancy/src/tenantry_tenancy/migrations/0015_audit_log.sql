-- The customer-facing audit log (issue 19 §3, tenantry_tenancy.audit): one entry per
-- audited event of the suite, chained per tenant (entries.py). `record` is the exact text
-- hashed into the chain, personal fields sealed; the other columns repeat what the
-- filters need. Deleted with the tenant (the purge), pruned by the plan's retention.
CREATE TABLE audit_entries (
    tenant_id    uuid        NOT NULL,
    seq          bigint      NOT NULL,
    event_id     uuid        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL,
    action       text        NOT NULL,
    outcome      text        NOT NULL,
    actor_kind   text        NOT NULL,
    actor_id     text,
    target_type  text        NOT NULL,
    target_id    text        NOT NULL,
    request_id   text,
    record       text        NOT NULL,
    prev_hash    bytea       NOT NULL,
    hash         bytea       NOT NULL,
    PRIMARY KEY (tenant_id, seq),
    UNIQUE (tenant_id, event_id)
);
CREATE INDEX audit_entries_by_time ON audit_entries (tenant_id, occurred_at);
CREATE INDEX audit_entries_by_action ON audit_entries (tenant_id, action, seq);
CREATE INDEX audit_entries_by_actor ON audit_entries (tenant_id, actor_id, seq);
CREATE INDEX audit_entries_by_target ON audit_entries (tenant_id, target_id, seq);
CREATE INDEX audit_entries_by_request ON audit_entries (tenant_id, request_id);

-- Each tenant's chain head (its row lock orders appends) and what retention removed:
-- the hash of the last removed entry anchors the verification of what is left.
CREATE TABLE audit_chains (
    tenant_id           uuid    PRIMARY KEY,
    head_seq            bigint  NOT NULL,
    head_hash           bytea   NOT NULL,
    pruned_through_seq  bigint  NOT NULL DEFAULT 0,
    pruned_through_hash bytea   NOT NULL
);

CREATE POLICY tenant_scope ON audit_entries
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE audit_entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_entries FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON audit_chains
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE audit_chains ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_chains FORCE ROW LEVEL SECURITY;
GRANT SELECT, INSERT, DELETE ON audit_entries TO {app_role};
GRANT SELECT, INSERT, UPDATE, DELETE ON audit_chains TO {app_role};

-- How long a plan keeps its audit log (a typed limit, "days").
UPDATE plans SET limits = limits || jsonb_build_object(
    'audit_retention_days',
    CASE plan_id WHEN 'free' THEN 7 WHEN 'team' THEN 90 WHEN 'business' THEN 365 ELSE 2555 END);
