-- Usage is now set from the owners' usage.reported (absolute counts), no longer summed from
-- account.* and apikey.* deltas: each counter keeps the version of the report it came from,
-- and a report older than that is ignored. Counters counted from deltas (version 0) give
-- way to the first report.
ALTER TABLE tenant_usage
    ADD COLUMN seats_version              bigint NOT NULL DEFAULT 0,
    ADD COLUMN api_keys_version           bigint NOT NULL DEFAULT 0,
    ADD COLUMN webhook_endpoints_version  bigint NOT NULL DEFAULT 0;
COMMENT ON TABLE tenant_usage IS
    'Usage against each quantity limit, as its owner last reported it (usage.reported).';
