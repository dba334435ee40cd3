-- Plans as data, and the operator's per-tenant overrides.
CREATE TABLE plans (
    plan_id     text        PRIMARY KEY,
    name        text        NOT NULL,
    rank        integer     NOT NULL,          -- order for "plans that would allow it"
    limits      jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenant_limit_overrides (
    tenant_id   uuid        NOT NULL REFERENCES tenants (tenant_id),
    limit_name  text        NOT NULL,
    value       jsonb,                          -- null: unlimited (quantities)
    set_by      text        NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, limit_name)
);

ALTER TABLE tenants ADD COLUMN limits_version integer NOT NULL DEFAULT 0;

INSERT INTO plans (plan_id, name, rank, limits) VALUES
  ('free', 'Free', 0, '{"sso": false, "scim": false, "data_export": false, "seats": 3,
    "webhook_endpoints": 1, "api_keys": 2, "requests_per_second": 5, "burst": 10}'),
  ('team', 'Team', 1, '{"sso": false, "scim": false, "data_export": true, "seats": 25,
    "webhook_endpoints": 5, "api_keys": 10, "requests_per_second": 25, "burst": 50}'),
  ('business', 'Business', 2, '{"sso": true, "scim": true, "data_export": true, "seats": 250,
    "webhook_endpoints": 25, "api_keys": 50, "requests_per_second": 100, "burst": 200}'),
  ('enterprise', 'Enterprise', 3, '{"sso": true, "scim": true, "data_export": true,
    "seats": null, "webhook_endpoints": 100, "api_keys": 200, "requests_per_second": 500,
    "burst": 1000}');

GRANT SELECT ON plans TO {app_role};
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_limit_overrides TO {app_role};
