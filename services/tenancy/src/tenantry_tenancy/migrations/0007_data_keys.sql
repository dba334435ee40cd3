-- Crypto-shredding keys (docs/data-keys.md): each tenant's data key and each person's
-- subject key, generated here and wrapped with the region's key-encryption key (the
-- master key, TENANTRY_MASTER_KEY): a dump of this table alone opens nothing.
-- Destroying a key deletes its wrapped material (NULL) and keeps the row, saying when: a
-- destroyed key is never recreated, so what it sealed stays unreadable for good.
CREATE TABLE tenant_data_keys (
    tenant_id     uuid        PRIMARY KEY,
    wrapped_key   bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    CHECK ((wrapped_key IS NULL) = (destroyed_at IS NOT NULL))
);

-- `subject_id` is the person inside the tenant (their account id, which is also their
-- SCIM user id): the key that seals what events say about them, destroyed to erase them
-- (GDPR Art. 17) while the tenant lives on.
CREATE TABLE subject_data_keys (
    tenant_id     uuid        NOT NULL,
    subject_id    uuid        NOT NULL,
    wrapped_key   bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    destroyed_at  timestamptz,
    PRIMARY KEY (tenant_id, subject_id),
    CHECK ((wrapped_key IS NULL) = (destroyed_at IS NOT NULL))
);

-- No DELETE: a key is destroyed by an UPDATE that keeps the row as its tombstone. No
-- row-level security: keys are read inside the caller's own transaction (sealing an event
-- as it is written), whatever its scope; every query names its tenant_id.
GRANT SELECT, INSERT, UPDATE ON tenant_data_keys, subject_data_keys TO {app_role};

