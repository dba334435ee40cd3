"""HTTP edge of webhooks (under /v1/tenants/{tenant_id}/webhooks): endpoints, their
secrets, the delivery log, resend, recover and test events.

Routes receive the service's settings and its endpoint secrets by name, typed
(`webhooks_settings`, `endpoint_secrets`: app.py provides them)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from uuid_utils.compat import uuid7

from tenantry_events.envelope import new_event
from tenantry_events.payloads.webhooks import (
    WebhookEndpointChanged,
    WebhookMessageExpunged,
    WebhookMessagesReplayed,
)
from tenantry_guardrails.plan_limits import guard_quantity
from tenantry_http.auth import requires
from tenantry_http.pagination import Page, clamp_limit, decode_cursor, page_of
from tenantry_http.problems import Problem
from tenantry_outbound.outbound import BlockedDestination, OutboundPolicy
from tenantry_service.runtime import Runtime
from tenantry_webhooks import store, usage_report
from tenantry_webhooks.domain import (
    MAX_REPLAYED_IDS,
    TEST_EVENT,
    InvalidEndpoint,
    changed_settings,
    new_secret,
    opt_in_event_types,
    public_event_types,
    unreachable_url,
    validate_channels,
    validate_event_types,
    validate_headers,
    validate_url,
    webhook_test_body,
)
from tenantry_webhooks.endpoint_secrets import EndpointSecrets
from tenantry_webhooks.sender import outbound_policy
from tenantry_webhooks.settings import WebhooksSettings
from tenantry_webhooks.store import AttemptRow, DeliveryRow, EndpointFields, EndpointRow, MessageRow

READ = requires(roles=("owner", "admin"), scopes=("webhooks:read",))
WRITE = requires(roles=("owner", "admin"), scopes=("webhooks:write",), verified_email=True)


def not_found(what: str) -> Problem:
    return Problem(404, "not-found", "Not found", f"no such {what} in this tenant")


class EndpointIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    event_types: list[str]
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    channels: list[str] = msgspec.field(default_factory=list)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    enabled: bool = True
    rate_limit_per_second: Annotated[float, msgspec.Meta(gt=0, le=10_000)] | None = None
    fifo: bool = False


class EndpointPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)] | None = None
    event_types: list[str] | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    channels: list[str] | None = None
    headers: dict[str, str] | None = None
    enabled: bool | None = None
    # absent: unchanged; null: no per-endpoint rate any more
    rate_limit_per_second: (
        Annotated[float, msgspec.Meta(gt=0, le=10000)] | msgspec.UnsetType | None
    ) = msgspec.UNSET
    fifo: bool | None = None

    def onto(self, current: EndpointRow) -> EndpointIn:
        """The endpoint as it will be: the fields sent, the others as they are."""
        return EndpointIn(
            url=self.url if self.url is not None else current.url,
            event_types=self.event_types if self.event_types is not None else current.event_types,
            description=self.description if self.description is not None else current.description,
            channels=self.channels if self.channels is not None else current.channels,
            headers=self.headers if self.headers is not None else current.headers,
            enabled=self.enabled if self.enabled is not None else current.enabled,
            rate_limit_per_second=(
                current.rate_limit_per_second
                if self.rate_limit_per_second is msgspec.UNSET
                else self.rate_limit_per_second
            ),
            fifo=self.fifo if self.fifo is not None else current.fifo,
        )


class CreatedEndpoint(msgspec.Struct, kw_only=True):
    endpoint: EndpointRow
    secret: str  # whsec_...: verify signatures with it (readable again at /secret)


class Secret(msgspec.Struct, kw_only=True):
    secret: str


class Recover(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    since: datetime


class Recovered(msgspec.Struct, kw_only=True):
    deliveries: int


class SentTest(msgspec.Struct, kw_only=True):
    message_id: str


class MessageDetail(msgspec.Struct, kw_only=True):
    message: MessageRow
    deliveries: list[DeliveryRow]


class EventTypes(msgspec.Struct, kw_only=True):
    event_types: list[str]


def validated(settings: WebhooksSettings, data: EndpointIn) -> EndpointFields:
    """Everything an endpoint must satisfy to be saved; a 422 names what to fix."""
    try:
        url = validate_url(data.url, allow_http=settings.webhook_allow_http)
        refuse_what_the_guard_refuses(outbound_policy(settings), url)
        return EndpointFields(
            url=url,
            description=data.description,
            event_types=validate_event_types(
                data.event_types, public_event_types(), opt_in_event_types()
            ),
            channels=validate_channels(data.channels),
            headers=validate_headers(data.headers),
            enabled=data.enabled,
            rate_limit_per_second=data.rate_limit_per_second,
            fifo=data.fifo,
        )
    except InvalidEndpoint as exc:
        errors = [{"key": exc.field, "message": str(exc), "source": "body"}] if exc.field else []
        raise Problem(
            422, "invalid-endpoint", "The endpoint is not valid", str(exc), errors=errors
        ) from exc


def refuse_what_the_guard_refuses(policy: OutboundPolicy, url: str) -> None:
    """The connection guard's verdict on everything it can judge without DNS, through its
    own URL and address parsers: a host that is an IP literal it refuses, in any spelling
    ("http://2852039166/", "http://10.1/", "http://[::ffff:10.0.0.1]/"), or a host no
    connection can reach, would fail every delivery; say so now. Names are resolved and
    judged on every connection."""
    try:
        policy.check_without_dns(url)
    except BlockedDestination as refused:
        reason = refused.reason
        if reason == "invalid-url" and refused.__cause__ is not None:
            reason = f"not a valid URL: {refused.__cause__}"
        detail = unreachable_url(url, reason, refused.host, refused.addresses)
        raise InvalidEndpoint(detail, field="url") from refused


async def tell(
    runtime: Runtime,
    tx: asyncpg.Connection,
    tenant_id: UUID,
    subject: str,
    payload: WebhookEndpointChanged | WebhookMessagesReplayed | WebhookMessageExpunged,
) -> None:
    """Append the event of a change a request made, in the change's own transaction (the
    outbox): the change and its event commit together, or neither does. Endpoints keep no
    event stream, so no aggregate version (0, as for webhook.endpoint_disabled)."""
    event = new_event(
        payload,
        tenant_id=tenant_id,
        subject=subject,
        aggregate_version=0,
        source=runtime.source,
        region=runtime.settings.region,
    )
    await runtime.outbox.put(tx, [event])


def endpoint_changed(
    row: EndpointRow,
    change: str,
    *,
    fields: list[str] | None = None,
    previous_secret_expires_at: datetime | None = None,
) -> WebhookEndpointChanged:
    """webhook.endpoint_changed of an endpoint as `row` is after the change (no secret, no
    header value)."""
    return WebhookEndpointChanged(
        endpoint_id=row.endpoint_id,
        change=change,
        url=row.url,
        enabled=row.enabled,
        event_types=list(row.event_types),
        fields=fields or [],
        previous_secret_expires_at=(
            previous_secret_expires_at.isoformat() if previous_secret_expires_at else None
        ),
    )


def replayed(
    endpoint_id: str, kind: str, message_ids: list[str], count: int
) -> WebhookMessagesReplayed:
    return WebhookMessagesReplayed(
        endpoint_id=endpoint_id, kind=kind, message_ids=message_ids, count=count
    )


class EndpointsController(Controller):
    path = "/tenants/{tenant_id:uuid}/webhooks/endpoints"
    tags = ["webhooks"]

    @post("/", status_code=201, opt=WRITE, summary="Create an endpoint")
    async def create(
        self,
        tenant_id: FromPath[UUID],
        data: JSONBody[EndpointIn],
        runtime: NamedDependency[Runtime],
        webhooks_settings: NamedDependency[WebhooksSettings],
        endpoint_secrets: NamedDependency[EndpointSecrets],
    ) -> CreatedEndpoint:
        """Validated on save (URL, address, event types, headers); counted against the
        plan's webhook_endpoints. Returns the signing secret. Honours Idempotency-Key."""
        fields = validated(webhooks_settings, data)
        endpoint_id = f"ep_{uuid7().hex}"
        secret = new_secret()
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            await guard_quantity(tx, tenant_id, "webhook_endpoints", store.ENDPOINT_USAGE_SQL)
            row = await store.insert_endpoint(
                tx, endpoint_id, tenant_id, fields, endpoint_secrets.seal(endpoint_id, secret)
            )
            # tenancy shows usage from the owner's count, reported with the change itself.
            await usage_report.report_endpoints(runtime, tx, tenant_id)
            await tell(runtime, tx, tenant_id, endpoint_id, endpoint_changed(row, "created"))
        return CreatedEndpoint(endpoint=row, secret=secret)

    @get("/", opt=READ, summary="List endpoints")
    async def list_endpoints(
        self,
        tenant_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
        cursor: FromQuery[str | None] = None,
        limit: FromQuery[int | None] = None,
    ) -> Page[EndpointRow]:
        size = clamp_limit(limit)
        after = decode_cursor(cursor)
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            rows = await store.list_endpoints(tx, tenant_id, str(after[0]) if after else None, size)
        return page_of(rows, size, lambda r: [r.endpoint_id])

    @get("/{endpoint_id:str}", opt=READ, summary="Read an endpoint")
    async def read(
        self,
        tenant_id: FromPath[UUID],
        endpoint_id: FromPath[str],
        runtime: NamedDependency[Runtime],
    ) -> EndpointRow:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            row = await store.get_endpoint(tx, tenant_id, endpoint_id)
        if row is None:
            raise not_found("endpoint")
        return row

    @patch("/{endpoint_id:str}", opt=WRITE, summary="Change an endpoint")
    async def change(
        self,
        tenant_id: FromPath[UUID],
        endpoint_id: FromPath[str],
        data: JSONBody[EndpointPatch],
        runtime: NamedDependency[Runtime],
        webhooks_settings: NamedDependency[WebhooksSettings],
    ) -> EndpointRow:
        """Only the fields sent change. Re-enabling a disabled endpoint sends what waited
        for it; `recover` sends again what failed."""
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            current = await store.get_endpoint(tx, tenant_id, endpoint_id, for_update=True)
            if current is None:
                raise not_found("endpoint")
            changed = validated(webhooks_settings, data.onto(current))
            row = await store.update_endpoint(tx, tenant_id, endpoint_id, changed)
            assert row is not None  # locked above
            if row.enabled and not current.enabled:
                await store.notify_due(tx)
            # Only a real change is an event: a PATCH that leaves every setting as it was
            # tells nothing.
            fields = changed_settings(current, changed)
            if fields:
                change = endpoint_changed(row, "updated", fields=fields)
                await tell(runtime, tx, tenant_id, endpoint_id, change)
        return row

    @delete("/{endpoint_id:str}", status_code=204, opt=WRITE, summary="Delete an endpoint")
    async def remove(
        self,
        tenant_id: FromPath[UUID],
        endpoint_id: FromPath[str],
        runtime: NamedDependency[Runtime],
    ) -> None:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            if not await store.delete_endpoint(tx, tenant_id, endpoint_id):
                raise not_found("endpoint")
            await usage_report.report_endpoints(runtime, tx, tenant_id)
            deleted = WebhookEndpointChanged(
                endpoint_id=endpoint_id,
                change="deleted",
                url=None,
                enabled=None,
                event_types=None,
                fields=[],
            )
            await tell(runtime, tx, tenant_id, endpoint_id, deleted)

    @get("/{endpoint_id:str}/secret", opt=WRITE, summary="Read the signing secret")
    async def read_secret(
        self,
        tenant_id: FromPath[UUID],
        endpoint_id: FromPath[str],
        runtime: NamedDependency[Runtime],
        endpoint_secrets: NamedDependency[EndpointSecrets],
    ) -> Secret:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            secrets = await store.secrets_of(tx, tenant_id, endpoint_id)
        if secrets is None:
            raise not_found("endpoint")
        return Secret(secret=endpoint_secrets.unseal(endpoint_id, secrets[0]))

    @post(
        "/{endpoint_id:str}/secret/rotate", status_code=200, opt=WRITE, summary="Rotate the secret"
    )
    async def rotate(
        self,
        tenant_id: FromPath[UUID],
        endpoint_id: FromPath[str],
        runtime: NamedDependency[Runtime],
        webhooks_settings: NamedDependency[WebhooksSettings],
        endpoint_secrets: NamedDependency[EndpointSecrets],
    ) -> Secret:
        """A new secret signs from now on; the old one keeps signing too (a second
        signature) for TENANTRY_WEBHOOK_SECRET_GRACE_HOURS, so receivers can switch."""
        secret = new_secret()
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            expires = await store.rotate_secret(
                tx,
                tenant_id,
                endpoint_id,
                endpoint_secrets.seal(endpoint_id, secret),
                webhooks_settings.secret_grace,
            )
            if expires is None:
                raise not_found("endpoint")
            row = await store.get_endpoint(tx, tenant_id, endpoint_id)
            assert row is not None  # rotated above, in this transaction
            change = endpoint_changed(row, "secret_rotated", previous_secret_expires_at=expires)
            await tell(runtime, tx, tenant_id, endpoint_id, change)
        return Secret(secret=secret)

    @post(
        "/{endpoint_id:str}/test",
        status_code=202,
        opt={**WRITE, "priority": "sheddable"},
        summary="Send a test event",
    )
    async def send_test(
        self,
        tenant_id: FromPath[UUID],
        endpoint_id: FromPath[str],
        runtime: NamedDependency[Runtime],
    ) -> SentTest:
        """A webhook.test message to this endpoint only, signed and retried like any other."""
        message_id = f"msg_{uuid7().hex}"
        body = webhook_test_body(tenant_id, endpoint_id, datetime.now(UTC))
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            if not await store.has_endpoint(tx, tenant_id, endpoint_id):
                raise not_found("endpoint")
            await store.insert_message(
                tx,
                message_id=message_id,
                tenant_id=tenant_id,
                event_id=None,
                event_type=TEST_EVENT,
                channels=[],
                body=body,
            )
            await store.insert_deliveries(tx, tenant_id, message_id, [endpoint_id])
            await store.notify_due(tx)
            await tell(
                runtime, tx, tenant_id, endpoint_id, replayed(endpoint_id, "test", [message_id], 1)
            )
        return SentTest(message_id=message_id)

    @post(
        "/{endpoint_id:str}/recover", status_code=200, opt=WRITE, summary="Recover failed messages"
    )
    async def recover(
        self,
        tenant_id: FromPath[UUID],
        endpoint_id: FromPath[str],
        data: JSONBody[Recover],
        runtime: NamedDependency[Runtime],
    ) -> Recovered:
        """Every delivery to this endpoint that failed since `since` goes out again."""
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            if not await store.has_endpoint(tx, tenant_id, endpoint_id):
                raise not_found("endpoint")
            recovered = await store.recover(
                tx, tenant_id, endpoint_id, data.since, MAX_REPLAYED_IDS
            )
            if recovered.count:
                await store.notify_due(tx)
            # Recorded even when nothing was queued again: the audit log shows who asked.
            event = replayed(endpoint_id, "recover", recovered.message_ids, recovered.count)
            await tell(runtime, tx, tenant_id, endpoint_id, event)
        return Recovered(deliveries=recovered.count)

    @post(
        "/{endpoint_id:str}/messages/{message_id:str}/resend",
        status_code=202,
        opt=WRITE,
        summary="Resend one message",
    )
    async def resend(
        self,
        tenant_id: FromPath[UUID],
        endpoint_id: FromPath[str],
        message_id: FromPath[str],
        runtime: NamedDependency[Runtime],
    ) -> None:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            if not await store.has_endpoint(tx, tenant_id, endpoint_id):
                raise not_found("endpoint")
            if not await store.resend(tx, tenant_id, endpoint_id, message_id):
                raise not_found("message (or its payload was expunged)")
            await store.notify_due(tx)
            await tell(
                runtime,
                tx,
                tenant_id,
                endpoint_id,
                replayed(endpoint_id, "resend", [message_id], 1),
            )

    @get("/{endpoint_id:str}/attempts", opt=READ, summary="Attempts to an endpoint")
    async def endpoint_attempts(
        self,
        tenant_id: FromPath[UUID],
        endpoint_id: FromPath[str],
        runtime: NamedDependency[Runtime],
        cursor: FromQuery[str | None] = None,
        limit: FromQuery[int | None] = None,
    ) -> Page[AttemptRow]:
        """Newest first: status, latency, the start of the response body, next attempt."""
        return await attempts_page(runtime, tenant_id, cursor, limit, endpoint_id=endpoint_id)


async def attempts_page(
    runtime: Runtime,
    tenant_id: UUID,
    cursor: str | None,
    limit: int | None,
    *,
    message_id: str | None = None,
    endpoint_id: str | None = None,
) -> Page[AttemptRow]:
    size = clamp_limit(limit)
    before = decode_cursor(cursor)
    async with runtime.db.transaction(tenant_id=tenant_id) as tx:
        # An empty page would say "no attempts yet" of an id that is no endpoint or message.
        if endpoint_id is not None and not await store.has_endpoint(tx, tenant_id, endpoint_id):
            raise not_found("endpoint")
        if message_id is not None and not await store.has_message(tx, tenant_id, message_id):
            raise not_found("message")
        rows = await store.list_attempts(
            tx,
            tenant_id,
            message_id=message_id,
            endpoint_id=endpoint_id,
            before=int(before[0]) if before else None,
            limit=size,
        )
    return page_of(rows, size, lambda r: [r.attempt_id])


class MessagesController(Controller):
    path = "/tenants/{tenant_id:uuid}/webhooks/messages"
    tags = ["webhooks"]

    @get("/", opt=READ, summary="List messages")
    async def list_messages(
        self,
        tenant_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
        cursor: FromQuery[str | None] = None,
        limit: FromQuery[int | None] = None,
        event_type: FromQuery[str | None] = None,
        since: FromQuery[datetime | None] = None,
    ) -> Page[MessageRow]:
        """Newest first; each message is one event as your endpoints receive it."""
        size = clamp_limit(limit)
        before = decode_cursor(cursor)
        key = (datetime.fromisoformat(before[0]), str(before[1])) if before else None
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            rows = await store.list_messages(
                tx, tenant_id, before=key, limit=size, event_type=event_type, since=since
            )
        return page_of(rows, size, lambda r: [r.created_at.isoformat(), r.message_id])

    @get("/{message_id:str}", opt=READ, summary="Read a message and its deliveries")
    async def read(
        self,
        tenant_id: FromPath[UUID],
        message_id: FromPath[str],
        runtime: NamedDependency[Runtime],
    ) -> MessageDetail:
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            message = await store.get_message(tx, tenant_id, message_id)
            if message is None:
                raise not_found("message")
            deliveries = await store.deliveries_of(tx, tenant_id, message_id)
        return MessageDetail(message=message, deliveries=deliveries)

    @get("/{message_id:str}/attempts", opt=READ, summary="Attempts of a message")
    async def attempts(
        self,
        tenant_id: FromPath[UUID],
        message_id: FromPath[str],
        runtime: NamedDependency[Runtime],
        cursor: FromQuery[str | None] = None,
        limit: FromQuery[int | None] = None,
    ) -> Page[AttemptRow]:
        return await attempts_page(runtime, tenant_id, cursor, limit, message_id=message_id)

    @delete("/{message_id:str}/content", status_code=204, opt=WRITE, summary="Expunge a payload")
    async def expunge(
        self,
        tenant_id: FromPath[UUID],
        message_id: FromPath[str],
        runtime: NamedDependency[Runtime],
    ) -> None:
        """Deletes the message's body now (before retention would); the log of attempts
        stays. It cannot be resent afterwards."""
        async with runtime.db.transaction(tenant_id=tenant_id) as tx:
            event_type = await store.expunge(tx, tenant_id, message_id)
            if event_type is None:
                raise not_found("message with a payload")
            expunged = WebhookMessageExpunged(message_id=message_id, event_type=event_type)
            await tell(runtime, tx, tenant_id, message_id, expunged)


@get("/webhooks/event-types", tags=["webhooks"], summary="Event types you can subscribe to")
async def event_types() -> EventTypes:
    """Every public event type (their JSON Schemas are in docs/events/schemas)."""
    return EventTypes(event_types=public_event_types())
