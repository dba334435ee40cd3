-- This service's copies of the crypto-shredding keys it has used (docs/data-keys.md): each
-- tenant's data key (subject_id NULL) and each person's subject key, as fetched from
-- tenancy's internal key API and wrapped again with this service's own master key. A
-- restart reads them here instead of asking tenancy. A purge deletes the tenant's rows
-- (every row with its tenant_id), after which the key is gone from this service.
CREATE TABLE data_key_copies (
    tenant_id    uuid        NOT NULL,
    subject_id   uuid,
    wrapped_key  bytea       NOT NULL,
    fetched_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (tenant_id, subject_id)
);
GRANT SELECT, INSERT, DELETE ON data_key_copies TO {app_role};
