-- This service's replica of the global directory (tenantry_projections.directory_replica,
-- docs/residency.md): every region's tenants' routing facts (home region, status, slug,
-- verified domains, SSO connection ids), nothing personal. Fed by the directory's change
-- feed, read by the home-region step before any tenant data. No row-level security: the
-- step reads it for a tenant before anyone is authenticated, and no row is tenant data.
CREATE TABLE directory_replica (
    tenant_id      uuid    PRIMARY KEY,
    home_region    text    NOT NULL,
    status         text    NOT NULL,
    slug           text,
    domains        text[]  NOT NULL DEFAULT '{}',
    connection_ids uuid[]  NOT NULL DEFAULT '{}',
    seq            bigint  NOT NULL
);
CREATE INDEX directory_replica_domains_idx ON directory_replica USING gin (domains);
CREATE INDEX directory_replica_connections_idx ON directory_replica USING gin (connection_ids);

-- How far the replica has read the feed, and when a pull last reached its end.
CREATE TABLE directory_replica_cursor (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    seq        bigint      NOT NULL,
    caught_up_at timestamptz
);
INSERT INTO directory_replica_cursor (seq) VALUES (0);
GRANT SELECT, INSERT, UPDATE, DELETE ON directory_replica TO {app_role};
GRANT SELECT, UPDATE ON directory_replica_cursor TO {app_role};
