-- Offboarding and the purge saga (issue 17; DESIGN.md "Data lifecycle").

-- The tenant aggregate's offboarding, folded from its stream like the rest of the row.
ALTER TABLE tenants
    ADD COLUMN previous_status        text,
    ADD COLUMN offboarding_started_at timestamptz,
    ADD COLUMN purge_at               timestamptz,
    ADD COLUMN certificate_id         uuid,
    ADD COLUMN purge_id               uuid;
CREATE INDEX tenants_purge_due_idx ON tenants (purge_at) WHERE purge_at IS NOT NULL;

-- The grace period is a plan limit (days): 30 by default, 90 on enterprise.
UPDATE plans SET limits = limits || jsonb_build_object(
    'offboarding_grace_days', CASE plan_id WHEN 'enterprise' THEN 90 ELSE 30 END);

-- Reminders sent before a purge, each once (a restarted scheduler does not resend).
CREATE TABLE offboarding_reminders (
    tenant_id  uuid        NOT NULL,
    purge_at   timestamptz NOT NULL,
    days       integer     NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, purge_at, days)
);

-- The purge saga: one row per purge, each service's report (tenant.purged_by) as it
-- arrives, and the signed certificate once all have reported. Kept after the purge (it
-- holds counts and dates, no personal data): with tenant_tombstones, it is what remains.
CREATE TABLE purges (
    purge_id      uuid        PRIMARY KEY,
    tenant_id     uuid        NOT NULL UNIQUE,
    requested_at  timestamptz NOT NULL,
    early         boolean     NOT NULL,
    reports       jsonb       NOT NULL DEFAULT '{}',
    last_sent_at  timestamptz NOT NULL,          -- the request is re-sent while reports lack
    completed_at  timestamptz,
    certificate   jsonb,
    certificate_jws text
);
CREATE INDEX purges_open_idx ON purges (last_sent_at) WHERE completed_at IS NULL;

CREATE TABLE tenant_tombstones (
    tenant_id              uuid        PRIMARY KEY,
    home_region            text        NOT NULL,
    created_at             timestamptz NOT NULL,
    offboarding_started_at timestamptz,
    purged_at              timestamptz NOT NULL,
    purge_id               uuid        NOT NULL,
    certificate_id         uuid        NOT NULL UNIQUE
);

-- A purged tenant's slug is not given to anyone else until the quarantine ends (so links
-- and SSO configurations pointing at it cannot be taken over at once).
CREATE TABLE slug_quarantine (
    slug        text        PRIMARY KEY,
    tenant_id   uuid        NOT NULL,
    released_at timestamptz NOT NULL
);

-- Tenancy's Ed25519 key that signs deletion certificates and export manifests, encrypted
-- with the master key; the public half is served at /.well-known/jwks.json.
CREATE TABLE document_signing_keys (
    kid         text        PRIMARY KEY,
    private_jwk bytea       NOT NULL,
    public_jwk  jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

GRANT SELECT, INSERT, UPDATE, DELETE ON tenants TO {app_role};
GRANT SELECT, INSERT, DELETE ON offboarding_reminders TO {app_role};
GRANT SELECT, INSERT, UPDATE ON purges, tenant_tombstones TO {app_role};
GRANT SELECT, INSERT, DELETE ON slug_quarantine TO {app_role};
GRANT SELECT, INSERT ON document_signing_keys TO {app_role};
