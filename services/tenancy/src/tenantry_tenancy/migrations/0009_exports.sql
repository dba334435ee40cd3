-- Export jobs (issue 17 §1): the saga's state, one row per export, and the download links.
CREATE TABLE exports (
    export_id          uuid        PRIMARY KEY,
    tenant_id          uuid        NOT NULL,
    subject_account_id uuid,                      -- a per-person export (GDPR Art. 15/20)
    requested_by       text        NOT NULL,
    requested_at       timestamptz NOT NULL,
    status             text        NOT NULL,      -- exports.py: ExportStatus
    requests           integer     NOT NULL DEFAULT 1,
    last_sent_at       timestamptz NOT NULL,
    parts              jsonb       NOT NULL DEFAULT '{}',   -- service -> tenant.export_part
    failure            text,
    archive_bytes      bigint,
    archive_sha256     text,
    records            bigint,
    completed_at       timestamptz,
    expires_at         timestamptz
);
CREATE INDEX exports_tenant_idx ON exports (tenant_id, requested_at DESC);
-- One export at a time per tenant.
CREATE UNIQUE INDEX exports_one_open_per_tenant ON exports (tenant_id)
    WHERE status IN ('running', 'assembling');

-- Download links: a random token (only its hash is kept), for one export of one tenant,
-- usable `uses_left` more times until `expires_at`, revocable.
CREATE TABLE export_links (
    link_id      uuid        PRIMARY KEY,
    export_id    uuid        NOT NULL REFERENCES exports (export_id) ON DELETE CASCADE,
    tenant_id    uuid        NOT NULL,
    token_sha256 bytea       NOT NULL UNIQUE,
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    uses_left    integer     NOT NULL,
    revoked_at   timestamptz
);
CREATE INDEX export_links_export_idx ON export_links (export_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON exports, export_links TO {app_role};
