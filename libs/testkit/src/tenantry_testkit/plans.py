"""Plan limits for tests that need a tenant's resolved limits without tenancy."""

from __future__ import annotations

from tenantry_events.payloads.tenancy import Limits

# The free plan as shipped (tenancy's migrations): one webhook endpoint, a slow rate.
FREE_LIMITS = Limits(
    sso=False,
    scim=False,
    data_export=False,
    seats=3,
    webhook_endpoints=1,
    api_keys=2,
    requests_per_second=20,
    burst=40,
)
