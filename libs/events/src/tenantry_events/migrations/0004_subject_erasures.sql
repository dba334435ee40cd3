-- One person's erasure inside a live tenant (issue 17, GDPR Art. 17): each service deletes
-- or anonymizes its rows of the person and records that it did (tenantry_service.erasure).
-- Written in the erasure's transaction with the subject.erased_by outbox row; a
-- redelivered request is answered from it. Ids and counts only, no personal data; a purge
-- of the tenant deletes it with the tenant's other rows.
CREATE TABLE subject_erasures (
    tenant_id     uuid        NOT NULL,
    subject_id    uuid        NOT NULL,
    erasure_id    uuid        NOT NULL,
    tables        jsonb       NOT NULL,   -- [{"table": ..., "rows": n}]
    completed_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, subject_id)
);
GRANT SELECT, INSERT ON subject_erasures TO {app_role};
