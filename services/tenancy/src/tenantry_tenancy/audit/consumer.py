"""The audit log's consumer and retention: every audited event of the suite becomes an
entry in its tenant's chain (in the worker's transaction for that event, so an entry is
written exactly once per event, whichever lane carries it), and `audit.recorded` goes to
the outbox in the same transaction for the tenant's SIEM webhooks."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.catalog import CATALOG, Catalog
from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.tenancy import AuditActorView, AuditRecorded
from tenantry_events.pg import Database
from tenantry_events.sealing import DataKeys, seal
from tenantry_events.storage import PostgresOutbox
from tenantry_platform.clock import Clock, utc
from tenantry_tenancy.audit.entries import AuditRecord, attributed, is_audited
from tenantry_tenancy.audit.store import AuditStore, StoredEntry
from tenantry_tenancy.store import PlanStore

log = logging.getLogger("tenantry.tenancy.audit")


class AuditRecorder:
    def __init__(
        self,
        store: AuditStore,
        outbox: PostgresOutbox,
        *,
        source: str,
        region: str,
        clock: Clock,
        stream: bool = True,
    ) -> None:
        self._store = store
        self._outbox = outbox
        self._source = source
        self._region = region
        self._clock = clock
        self._stream = stream

    def handlers(self, catalog: Catalog = CATALOG) -> dict[str, Handler[asyncpg.Connection]]:
        return {t.name: self.record for t in catalog if is_audited(t.name)}

    async def record(self, tx: asyncpg.Connection, event: Envelope[Any]) -> None:
        # The consumer opened the event's personal fields; the log keeps them sealed, so
        # that erasing the person or purging the tenant erases them here too.
        event = attributed(event)
        sealed = await seal(event, self._keys(), tx)
        appended = await self._store.append(tx, sealed, utc(self._clock))
        if appended is None or not self._stream:
            return
        record, stored = appended
        await self._outbox.put(tx, [self._recorded(event, record, stored)])

    def _keys(self) -> DataKeys[asyncpg.Connection]:
        keys = self._outbox.keys
        if keys is None:
            raise RuntimeError("the audit log needs tenancy's data keys")
        return keys

    def _recorded(
        self, event: Envelope[Any], record: AuditRecord, stored: StoredEntry
    ) -> Envelope[AuditRecorded]:
        event_type = CATALOG.by_name(event.type)
        personal = {path.split(".", 1)[0] for path in event_type.personal}
        details = {k: v for k, v in msgspec.to_builtins(event.payload).items() if k not in personal}
        actor = event.actor
        return new_event(
            AuditRecorded(
                entry_id=record.event_id,
                seq=record.seq,
                action=record.action,
                outcome=record.outcome,
                occurred_at=record.occurred_at,
                actor=AuditActorView(
                    kind=record.actor.kind,
                    id=record.actor.id,
                    request_id=record.actor.request_id,
                    ip=actor.ip if actor else None,
                    user_agent=actor.user_agent if actor else None,
                ),
                actor_account_id=actor.person() if actor else None,
                target_type=record.target.type,
                target_id=record.target.id,
                details=details,
                record=stored.record,
                prev_hash=stored.prev_hash.hex(),
                hash=stored.hash.hex(),
            ),
            tenant_id=event.tenant_id,
            subject=record.event_id,
            aggregate_version=0,
            source=self._source,
            region=self._region,
        )


class AuditRetention:
    """Removes what each tenant's plan no longer keeps (`audit_retention_days`), oldest
    first, a batch per tenant per pass."""

    def __init__(self, db: Database, store: AuditStore, plans: PlanStore, clock: Clock) -> None:
        self._db = db
        self._store = store
        self._plans = plans
        self._clock = clock

    async def run_once(self) -> int:
        async with self._db.transaction(platform=True) as tx:
            tenants = await self._store.tenants(tx)
        return sum([await self.prune_tenant(tenant_id) for tenant_id in tenants])

    async def prune_tenant(self, tenant_id: UUID) -> int:
        """One tenant's share of a pass: how many entries it removed."""
        async with self._db.transaction(tenant_id=tenant_id) as tx:
            view = await self._plans.view(tx, tenant_id)
            if view is None:
                return 0
            before = utc(self._clock) - timedelta(days=view.limits.audit_retention_days)
            return await self._store.prune(tx, tenant_id, before)
