"""identity reports seats and API keys to tenancy (usage.reported; see
tenantry_projections.usage_reports).

Every change to either count already writes an event in the changing transaction
(account.created, account.disabled, account.enabled, apikey.created, apikey.revoked), so
the worker reports from those: in the consumer's transaction, after the change committed,
once per event (the inbox), whichever path made it (invite, SCIM, JIT, an admin, the
tenant's owner). Nothing on the request path waits for it. The sweep repairs the rest.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.usage import CountedResource
from tenantry_identity.store import API_KEYS_IN_USE, SEATS_IN_USE
from tenantry_projections.usage_reports import Counted, ReconcileSettings, UsageReporter
from tenantry_service.runtime import Runtime

COUNTED = (Counted("seats", SEATS_IN_USE), Counted("api_keys", API_KEYS_IN_USE))

CHANGES: dict[str, CountedResource] = {
    "account.created": "seats",
    "account.disabled": "seats",
    "account.enabled": "seats",
    "apikey.created": "api_keys",
    "apikey.revoked": "api_keys",
}


def usage_reporter(runtime: Runtime) -> UsageReporter:
    return UsageReporter(
        runtime.outbox, COUNTED, source=runtime.source, region=runtime.settings.region
    )


def usage_report_handlers(runtime: Runtime) -> dict[str, Handler[asyncpg.Connection]]:
    reporter = usage_reporter(runtime)

    def reporting(resource: CountedResource) -> Handler[asyncpg.Connection]:
        async def report(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
            await reporter.report(tx, event.tenant_id, resource)

        return report

    return {name: reporting(resource) for name, resource in CHANGES.items()}


async def reconcile_usage(runtime: Runtime, stop: asyncio.Event) -> None:
    await usage_reporter(runtime).reconcile_forever(runtime.db, ReconcileSettings.from_env(), stop)
