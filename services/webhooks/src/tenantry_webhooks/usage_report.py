"""webhooks reports its endpoint count to tenancy (usage.reported; see
tenantry_projections.usage_reports).

Creating and deleting an endpoint write no event of their own, so the route reports in the
same transaction as the change (`report_endpoints`): the count and the change commit
together, or neither does. The worker's sweep repairs anything else.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg

from tenantry_projections.usage_reports import Counted, ReconcileSettings, UsageReporter
from tenantry_service.runtime import Runtime
from tenantry_webhooks.store import ENDPOINT_USAGE_SQL

COUNTED = (Counted("webhook_endpoints", ENDPOINT_USAGE_SQL),)


def usage_reporter(runtime: Runtime) -> UsageReporter:
    return UsageReporter(
        runtime.outbox, COUNTED, source=runtime.source, region=runtime.settings.region
    )


async def report_endpoints(runtime: Runtime, tx: asyncpg.Connection, tenant_id: UUID) -> None:
    """Call in the transaction that created or deleted one of the tenant's endpoints."""
    await usage_reporter(runtime).report(tx, tenant_id, "webhook_endpoints")


async def reconcile_usage(runtime: Runtime, stop: asyncio.Event) -> None:
    await usage_reporter(runtime).reconcile_forever(runtime.db, ReconcileSettings.from_env(), stop)
