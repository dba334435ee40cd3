-- Usage against each quantity limit, counted from other services' events (account.*,
-- apikey.*), never by querying them. Shown to tenant admins and checked on downgrades.
CREATE TABLE tenant_usage (
    tenant_id          uuid    PRIMARY KEY,
    seats              integer NOT NULL DEFAULT 0,
    api_keys           integer NOT NULL DEFAULT 0,
    webhook_endpoints  integer NOT NULL DEFAULT 0
);
GRANT SELECT, INSERT, UPDATE ON tenant_usage TO {app_role};
