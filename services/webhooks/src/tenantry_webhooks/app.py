"""Wiring of the webhooks service: the one place that puts domain, store and edges together.

Routes receive what they use by name through Litestar's dependency injection
(`ROUTE_DEPENDENCIES`), typed; the worker's tasks build theirs from the runtime. (The
providers name what they take explicitly: Litestar 3 stops inferring dependencies.)"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from litestar import Router
from litestar.di import NamedDependency, Provide

from tenantry_credentials.crypto import SecretBox
from tenantry_events.consumer import merge_handlers
from tenantry_outbound.outbound import OutboundClient
from tenantry_projections.projections import standard_projections
from tenantry_service.app import ServiceSpec
from tenantry_service.move import Resealed
from tenantry_service.runtime import Runtime
from tenantry_webhooks.api import EndpointsController, MessagesController, event_types
from tenantry_webhooks.consumers import webhooks_consumers
from tenantry_webhooks.dispatcher import Dispatcher, DispatcherSettings
from tenantry_webhooks.endpoint_secrets import SECRET_CONTEXT, EndpointSecrets
from tenantry_webhooks.erasure import WEBHOOKS_ERASURE
from tenantry_webhooks.export import WEBHOOKS_EXPORTS
from tenantry_webhooks.retention import expunge_forever
from tenantry_webhooks.sender import OutboundSender, outbound_policy
from tenantry_webhooks.settings import WebhooksSettings
from tenantry_webhooks.usage_report import reconcile_usage


def settings_of(runtime: NamedDependency[Runtime]) -> WebhooksSettings:
    return runtime.settings_as(WebhooksSettings)


def endpoint_secrets(webhooks_settings: NamedDependency[WebhooksSettings]) -> EndpointSecrets:
    return EndpointSecrets(SecretBox.from_base64(webhooks_settings.master_key))


ROUTE_DEPENDENCIES = {
    "webhooks_settings": Provide(settings_of, sync_to_thread=False),
    "endpoint_secrets": Provide(endpoint_secrets, sync_to_thread=False),
}


def build_dispatcher(runtime: Runtime, client: OutboundClient) -> Dispatcher:
    settings = settings_of(runtime)
    return Dispatcher(
        db=runtime.db,
        listen_dsn=settings.database_url,
        sender=OutboundSender(client),
        box=SecretBox.from_base64(settings.master_key),
        outbox=runtime.outbox,
        schedule=settings.schedule(),
        settings=DispatcherSettings(
            concurrency=settings.webhook_concurrency,
            per_endpoint=settings.webhook_per_endpoint_concurrency,
            per_tenant=settings.webhook_per_tenant_concurrency,
            lease_seconds=settings.webhook_timeout_seconds + settings.webhook_lease_margin_seconds,
            auto_disable_after=settings.auto_disable_after,
        ),
        source=runtime.source,
        region=settings.region,
    )


async def dispatch(runtime: Runtime, stop: asyncio.Event) -> None:
    """The dispatcher, in the worker process."""
    async with OutboundClient(outbound_policy(settings_of(runtime))) as client:
        await build_dispatcher(runtime, client).run(stop)


async def retention(runtime: Runtime, stop: asyncio.Event) -> None:
    """Payload retention (retention.py), in the worker process."""
    keep = timedelta(days=settings_of(runtime).webhook_payload_retention_days)
    await expunge_forever(runtime.db, keep, stop)


SPEC = ServiceSpec(
    name="webhooks",
    description=(
        "Customer endpoints, subscriptions, signing secrets, messages and delivery attempts."
    ),
    route_handlers=[
        Router(
            path="/",
            route_handlers=[EndpointsController, MessagesController, event_types],
            dependencies=ROUTE_DEPENDENCIES,
        )
    ],
    consumer_handlers=merge_handlers(standard_projections(), webhooks_consumers()),
    migration_packages=["tenantry_webhooks"],
    exports=WEBHOOKS_EXPORTS,
    resealed=[
        Resealed("endpoints", column, lambda row: f"{SECRET_CONTEXT}:{row['endpoint_id']}")
        for column in ("secret", "previous_secret")
    ],
    erasure=WEBHOOKS_ERASURE,
    settings_cls=WebhooksSettings,
    worker_tasks=[dispatch, retention, reconcile_usage],
)
