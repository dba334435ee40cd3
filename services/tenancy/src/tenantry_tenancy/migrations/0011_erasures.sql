-- Erasing one person inside a live tenant (issue 17, GDPR Art. 17; erasures.py): one row
-- per erasure, each service's report (subject.erased_by) as it arrives. Ids, counts and
-- dates only: who the person was is what is being erased. The request is re-sent while
-- reports lack. A purge of the tenant deletes these rows with the tenant's others.
CREATE TABLE erasures (
    erasure_id    uuid        PRIMARY KEY,
    tenant_id     uuid        NOT NULL,
    subject_id    uuid        NOT NULL,
    requested_by  text        NOT NULL,
    reason        text        NOT NULL,
    requested_at  timestamptz NOT NULL,
    reports       jsonb       NOT NULL DEFAULT '{}',
    last_sent_at  timestamptz NOT NULL,
    completed_at  timestamptz,
    UNIQUE (tenant_id, subject_id)
);
CREATE INDEX erasures_open_idx ON erasures (last_sent_at) WHERE completed_at IS NULL;

CREATE POLICY tenant_scope ON erasures
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE erasures ENABLE ROW LEVEL SECURITY;
ALTER TABLE erasures FORCE ROW LEVEL SECURITY;

GRANT SELECT, INSERT, UPDATE ON erasures TO {app_role};
