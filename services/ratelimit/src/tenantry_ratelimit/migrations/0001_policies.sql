-- Rate policies owned by the ratelimit service. The plan's request rate itself comes from
-- tenancy (tenant.limits_changed, projected into tenant_limits); these tables hold what
-- ratelimit adds: more policies per plan (a sustained rate, per route class), per-tenant
-- overrides, per-API-key policies, and the in-flight cap. Each change is resolved per
-- tenant and published as ratelimit.policies_changed with a growing version.
CREATE TABLE plan_rate_policies (
    plan_id        text        PRIMARY KEY,
    policies       jsonb       NOT NULL DEFAULT '[]',
    max_in_flight  integer,
    updated_by     text        NOT NULL DEFAULT 'seed',
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Seeds, for operators to change (PUT /v1/rate-plans/{plan_id}): an hourly budget under
-- the per-second rate (the per-second burst alone would let a script run at full speed
-- all day), and Stripe-like in-flight caps.
INSERT INTO plan_rate_policies (plan_id, policies, max_in_flight) VALUES
  ('free', '[{"name": "hourly", "limit": 20000, "period_seconds": 3600, "burst": 2000}]', 10),
  ('team', '[{"name": "hourly", "limit": 100000, "period_seconds": 3600, "burst": 10000}]', 20),
  ('business', '[{"name": "hourly", "limit": 500000, "period_seconds": 3600, "burst": 50000}]', 50),
  ('enterprise', '[]', 100);

CREATE TABLE tenant_rate_policies (
    tenant_id      uuid        PRIMARY KEY,
    policies       jsonb       NOT NULL DEFAULT '[]',
    max_in_flight  integer,
    updated_by     text        NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE key_rate_policies (
    tenant_id      uuid        NOT NULL,
    api_key_id     text        NOT NULL,
    policies       jsonb       NOT NULL,
    updated_by     text        NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, api_key_id)
);

CREATE TABLE rate_policy_versions (
    tenant_id  uuid    PRIMARY KEY,
    version    bigint  NOT NULL
);

GRANT SELECT, INSERT, UPDATE ON plan_rate_policies TO {app_role};
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_rate_policies, key_rate_policies TO {app_role};
GRANT SELECT, INSERT, UPDATE ON rate_policy_versions TO {app_role};

-- Row-level security, the second wall (see identity's 0003): a tenant's overrides are
-- visible only in a transaction scoped to it, or in platform work.
CREATE POLICY tenant_scope ON tenant_rate_policies
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE tenant_rate_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_rate_policies FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_scope ON key_rate_policies
    USING (tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid
           OR current_setting('app.platform', true) = 'on');
ALTER TABLE key_rate_policies ENABLE ROW LEVEL SECURITY;
ALTER TABLE key_rate_policies FORCE ROW LEVEL SECURITY;
