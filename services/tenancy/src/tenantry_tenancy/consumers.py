"""What tenancy does with events (the worker's consumers, beside the standard projections):
usage reports, and the reports of the purge and export sagas.

Usage against each quantity limit, as the services that hold the things report it:
identity reports `seats` and `api_keys`, webhooks `webhook_endpoints`, each an absolute
count with a version that grows per tenant and resource (usage.reported; see
tenantry_projections.usage_reports). A counter takes a report only if its version is higher
than the one it holds, so reports may arrive in any order, twice, or late, and the counter
still ends at the owner's newest count. tenancy counts nothing itself: a delta missed once
(an event type nobody counted) stayed wrong forever; a report is repaired by the next one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.tenancy import TenantExportPart, TenantPurgedBy
from tenantry_events.payloads.usage import UsageReported
from tenantry_objectstore.factory import open_object_store
from tenantry_platform.settings import ServiceSettings
from tenantry_tenancy.documents import DocumentSigner
from tenantry_tenancy.export_store import ExportStore
from tenantry_tenancy.purges import PurgeStore
from tenantry_tenancy.store import record_usage


async def _on_usage_reported(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    payload: UsageReported = event.payload
    await record_usage(tx, event.tenant_id, payload.resource, payload.count, payload.version)


def purge_report_handler(
    purges: PurgeStore, signer: DocumentSigner, settings: ServiceSettings, *, quarantine: timedelta
) -> Handler[asyncpg.Connection]:
    """The purge saga's collector: keep each service's report; the one that completes the
    set turns the tenant into its tombstone and issues the certificate (purges.py). The
    tenant's objects (export archives and parts, written by every service under
    exports/<tenant>/) go first: a crash after that and before the commit only means the
    redelivered report deletes nothing more."""

    async def on_purged_by(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        report: TenantPurgedBy = event.payload
        if await purges.record_report(tx, event.tenant_id, report):
            async with open_object_store(settings) as objects:
                await objects.delete_prefix(f"exports/{event.tenant_id}/")
            await purges.conclude(
                tx,
                event.tenant_id,
                report.purge_id,
                now=datetime.now(UTC),
                quarantine=quarantine,
                sign=signer.sign,
            )

    return on_purged_by


def export_consumers(exports: ExportStore) -> dict[str, Handler[asyncpg.Connection]]:
    """The export saga's collector: each service's part lands on its job (the worker
    assembles the archive once all are in; export_worker.py)."""

    async def on_export_part(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        part: TenantExportPart = event.payload
        await exports.record_part(tx, event.tenant_id, part, datetime.now(UTC))

    return {"tenant.export_part": on_export_part}


def usage_consumers() -> dict[str, Handler[asyncpg.Connection]]:
    return {"usage.reported": _on_usage_reported}


def purge_consumers(
    purges: PurgeStore, signer: DocumentSigner, settings: ServiceSettings, *, quarantine: timedelta
) -> dict[str, Handler[asyncpg.Connection]]:
    return {
        "tenant.purged_by": purge_report_handler(purges, signer, settings, quarantine=quarantine)
    }
