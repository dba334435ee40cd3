"""ratelimit's share of a tenant's export (tenantry_service.export): the rate policies set
for the tenant (its overrides of its plan's) and for each of its API keys. The plan's own
policies are the platform's catalog, not the tenant's data.

Per person: nothing (no row here is a person's; a per-person export writes no file)."""

from __future__ import annotations

from tenantry_service.export import ExportSource

TENANT_POLICIES = ExportSource(
    file="tenant_policies.ndjson",
    schema="tenantry.ratelimit.tenant_policies/v1",
    query="""SELECT tenant_id, policies, max_in_flight, updated_by, updated_at
             FROM tenant_rate_policies WHERE tenant_id = $1""",
)

KEY_POLICIES = ExportSource(
    file="key_policies.ndjson",
    schema="tenantry.ratelimit.key_policies/v1",
    query="""SELECT api_key_id, policies, updated_by, updated_at
             FROM key_rate_policies WHERE tenant_id = $1 ORDER BY api_key_id""",
)

RATELIMIT_EXPORTS = (TENANT_POLICIES, KEY_POLICIES)
