-- A tenant's acceptances of legal documents (issue 19 §2, agreements.py): who accepted
-- which version of the DPA for the tenant, in what capacity, when, from which address,
-- and the SHA-256 of the exact text. Append-only: a new version is a new acceptance.
-- Deleted with the tenant (the purge); kept while the tenant lives, as the record of the
-- contract (GDPR Art. 17(3)(e)).
CREATE TABLE agreement_acceptances (
    acceptance_id  uuid        PRIMARY KEY,
    tenant_id      uuid        NOT NULL,
    document       text        NOT NULL,
    version        text        NOT NULL,
    sha256         text        NOT NULL,
    name           text        NOT NULL,
    title          text        NOT NULL,
    email          text        NOT NULL,
    ip             text,
    accepted_by    text        NOT NULL,
    accepted_at    timestamptz NOT NULL
);
CREATE INDEX agreement_acceptances_by_tenant
    ON agreement_acceptances (tenant_id, accepted_at DESC);

CREATE POLICY tenant_scope ON agreement_acceptances
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE agreement_acceptances ENABLE ROW LEVEL SECURITY;
ALTER TABLE agreement_acceptances FORCE ROW LEVEL SECURITY;
GRANT SELECT, INSERT ON agreement_acceptances TO {app_role};
