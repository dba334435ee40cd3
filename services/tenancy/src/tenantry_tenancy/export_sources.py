"""tenancy's share of a tenant's export (tenantry_service.export): the tenant itself, its
audit trail (the tenant's stream: what changed, when, by whom and why), the operator's
overrides of its plan's limits, its usage counts and the exports made before.

The audit trail is read from the event store's envelopes; their sealed personal fields
(the owner's email in tenant.created) are left out rather than shown sealed: the owner's
account, with its email, is in identity's share.

Per person: the audit entries that person made (`by` names their account).
"""

from __future__ import annotations

from tenantry_service.export import ExportSource

TENANT = ExportSource(
    file="tenant.ndjson",
    schema="tenantry.tenancy.tenant/v1",
    query="""SELECT tenant_id, name, slug, status, plan, home_region, created_at, updated_at,
                    previous_status, purge_at
             FROM tenants WHERE tenant_id = $1""",
)

AUDIT_TRAIL = ExportSource(
    file="audit_trail.ndjson",
    schema="tenantry.tenancy.audit_entry/v1",
    query="""SELECT version, event_type AS type, occurred_at,
                    envelope->'payload'->'tenant'->>'status' AS status,
                    envelope->'payload'->>'reason' AS reason,
                    COALESCE(envelope->'payload'->>'by',
                             envelope->'payload'->>'created_by') AS by
             FROM events
             WHERE tenant_id = $1 AND stream_id = 'tenant-' || $1::text
               AND ($2::uuid IS NULL
                    OR COALESCE(envelope->'payload'->>'by',
                                envelope->'payload'->>'created_by') LIKE '%' || $2::text)
             ORDER BY version""",
    per_person=True,
)

LIMIT_OVERRIDES = ExportSource(
    file="limit_overrides.ndjson",
    schema="tenantry.tenancy.limit_override/v1",
    query="""SELECT limit_name, value, set_by, set_at FROM tenant_limit_overrides
             WHERE tenant_id = $1 ORDER BY limit_name""",
)

USAGE = ExportSource(
    file="usage.ndjson",
    schema="tenantry.tenancy.usage/v1",
    query="SELECT * FROM tenant_usage WHERE tenant_id = $1",
)

PAST_EXPORTS = ExportSource(
    file="exports.ndjson",
    schema="tenantry.tenancy.export/v1",
    query="""SELECT export_id, subject_account_id, requested_by, requested_at, status,
                    failure, records, archive_bytes, completed_at, expires_at
             FROM exports WHERE tenant_id = $1 ORDER BY requested_at""",
)

# The customer-facing audit log (tenantry_tenancy.audit), with its chain: `record` is the
# text hashed (personal fields sealed, as the chain holds them); docs/audit.md says how
# to verify it.
AUDIT_LOG = ExportSource(
    file="audit_log.ndjson",
    schema="tenantry.tenancy.audit_log_entry/v1",
    query="""SELECT seq, event_id, occurred_at, recorded_at, action, outcome, actor_kind,
                    actor_id, target_type, target_id, request_id, record,
                    encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash
             FROM audit_entries WHERE tenant_id = $1 ORDER BY seq""",
)

TENANCY_EXPORTS = (TENANT, AUDIT_TRAIL, AUDIT_LOG, LIMIT_OVERRIDES, USAGE, PAST_EXPORTS)
