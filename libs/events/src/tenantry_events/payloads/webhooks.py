"""Events owned by the webhooks service."""

from __future__ import annotations

import msgspec

from tenantry_events.catalog import event


@event("webhook.endpoint_disabled", owner="webhooks", public=True)
class WebhookEndpointDisabled(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint stopped receiving messages without anyone asking: it answered 410 Gone,
    or every attempt failed for longer than the auto-disable window. identity mails the
    tenant's admins; re-enable it and recover what failed once it is fixed."""

    endpoint_id: str
    url: str
    reason: str  # "gone" | "failing"
    failing_since: str | None = None  # ISO 8601, for "failing"
