-- The global directory (tenantry_regions.directory, docs/residency.md): its own database,
-- in the one region that hosts it. Non-personal routing facts only; no row-level security,
-- since no row is a tenant's data and every region's replica reads them all.
CREATE SEQUENCE directory_seq;

-- One row per tenant of any region: its current facts, and the feed position (`seq`) at
-- which they were recorded. Every record takes the next seq under one lock, so a replica
-- that reads "seq > my cursor" in order misses nothing.
CREATE TABLE directory_tenants (
    tenant_id      uuid        PRIMARY KEY,
    home_region    text        NOT NULL,
    status         text        NOT NULL,
    slug           text,
    domains        text[]      NOT NULL DEFAULT '{}',
    connection_ids uuid[]      NOT NULL DEFAULT '{}',
    seq            bigint      NOT NULL UNIQUE,
    recorded_at    timestamptz NOT NULL DEFAULT now()
);

-- Unique keys across every region: a slug or an email domain is one tenant's at a time.
CREATE TABLE directory_claims (
    kind       text        NOT NULL CHECK (kind IN ('slug', 'domain')),
    value      text        NOT NULL,
    tenant_id  uuid        NOT NULL REFERENCES directory_tenants (tenant_id),
    claimed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value)
);
CREATE INDEX directory_claims_tenant_idx ON directory_claims (tenant_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON directory_tenants, directory_claims TO {app_role};
GRANT USAGE, SELECT ON SEQUENCE directory_seq TO {app_role};
