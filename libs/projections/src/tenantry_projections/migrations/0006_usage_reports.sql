-- The last usage.reported version of each tenant and resource this service counts (only
-- services that own a quantity limit write it). Bumping it takes the row lock, so the
-- reports of one tenant and resource are counted one after another, in version order.
CREATE TABLE usage_report_versions (
    tenant_id  uuid   NOT NULL,
    resource   text   NOT NULL,
    version    bigint NOT NULL,
    PRIMARY KEY (tenant_id, resource)
);
GRANT SELECT, INSERT, UPDATE ON usage_report_versions TO {app_role};
