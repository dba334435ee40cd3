-- Every service's view of each tenant's resolved rate policies (ratelimit.policies_changed),
-- so the rate-limit step of the pipeline decides without asking the ratelimit service.
CREATE TABLE rate_policies (
    tenant_id      uuid        PRIMARY KEY,
    policies       jsonb       NOT NULL,
    key_policies   jsonb       NOT NULL,
    max_in_flight  integer,
    version        bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON rate_policies TO {app_role};
