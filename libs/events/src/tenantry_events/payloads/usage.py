"""Usage reports: how much of a quantity limit a tenant uses, counted by the service that
holds the things (identity: seats and API keys; webhooks: endpoints), for tenancy."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from tenantry_events.catalog import event

CountedResource = Literal["seats", "api_keys", "webhook_endpoints"]


@event("usage.reported", owner="identity, webhooks", public=False)
class UsageReported(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's absolute usage of one quantity limit, counted in the owning service's own
    rows (identity: active accounts as `seats`, unrevoked keys as `api_keys`; webhooks:
    `webhook_endpoints`). Sent whenever the count may have changed and again by each
    owner's periodic reconciliation. `version` grows with every report of one tenant and
    resource, numbered in the order the counts were taken, so tenancy keeps the highest:
    the order of arrival and duplicates do not matter."""

    resource: CountedResource
    count: int
    version: int
    counted_at: datetime
