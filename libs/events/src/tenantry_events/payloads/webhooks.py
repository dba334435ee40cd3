"""Events owned by the webhooks service.

Besides what Tenantry does on its own (webhook.endpoint_disabled), every change a tenant
makes through the webhooks API is an event, written in the same transaction as the change:
the endpoint's configuration (webhook.endpoint_changed), messages queued again
(webhook.messages_replayed) and payloads deleted early (webhook.message_expunged). None of
them carries a signing secret or the value of a custom header. They are opt-in (an endpoint
receives them only when its filter names them, not through `*`): they are the audit log's
record of the webhook setup, and an endpoint on `*` would otherwise hear of its own test
messages and changes."""

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


@event("webhook.endpoint_changed", owner="webhooks", public=True, opt_in=True)
class WebhookEndpointChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook endpoint was created, updated, deleted or had its signing secret rotated
    through the API (`change`: "created", "updated", "deleted" or "secret_rotated"; the
    subject is the endpoint's id).

    `url`, `enabled` and `event_types` are the endpoint as it is after the change, all null
    once it is deleted. For "updated", `fields` names the settings whose value changed (of
    url, description, event_types, channels, headers, enabled, rate_limit_per_second and
    fifo); an update that leaves every setting as it was is no event. `fields` is empty for
    the other changes. For "secret_rotated", `previous_secret_expires_at` (ISO 8601) is when
    the previous secret stops signing alongside the new one; every rotation is an event.
    Never carries a secret or the value of a custom header. An endpoint that Tenantry
    disables on its own is webhook.endpoint_disabled instead."""

    endpoint_id: str
    change: str  # "created" | "updated" | "deleted" | "secret_rotated"
    url: str | None
    enabled: bool | None
    event_types: list[str] | None
    fields: list[str]
    previous_secret_expires_at: str | None = None  # ISO 8601, for "secret_rotated"


@event("webhook.messages_replayed", owner="webhooks", public=True, opt_in=True)
class WebhookMessagesReplayed(msgspec.Struct, frozen=True, kw_only=True):
    """Messages were queued again for one endpoint on request (the subject is the
    endpoint's id). `kind` says how: "resend" (one message, from a fresh retry schedule),
    "recover" (every failed delivery since a given time) or "test" (a new webhook.test
    message to this endpoint alone). `message_ids` lists the messages queued, at most the
    first 1000 of a recovery; `count` is how many there were in all. Every request is one
    event, a repeated one included, and a recovery that finds nothing to send again too
    (`count` 0: the request is on record)."""

    endpoint_id: str
    kind: str  # "resend" | "recover" | "test"
    message_ids: list[str]
    count: int


@event("webhook.message_expunged", owner="webhooks", public=True, opt_in=True)
class WebhookMessageExpunged(msgspec.Struct, frozen=True, kw_only=True):
    """A message's payload was deleted on request, before retention would have (the subject
    is the message's id; `event_type` is the type of the event it carried). Deliveries of
    it still pending fail, it cannot be resent, and the log of attempts stays. Expunging a
    payload that is already gone changes nothing and is no event; payloads that retention
    removes are not events either."""

    message_id: str
    event_type: str | None
