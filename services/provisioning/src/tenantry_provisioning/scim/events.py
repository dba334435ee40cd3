"""The directory's events (user.*, group.*), put in provisioning's outbox in the
transaction that changes the directory (`DirectoryEvents.emit`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from tenantry_events.envelope import new_event
from tenantry_events.payloads.provisioning import DirectoryGroup, DirectoryUser
from tenantry_events.storage import PostgresOutbox
from tenantry_provisioning.scim.resources import primary_email


def directory_user(row: Mapping[str, Any]) -> DirectoryUser:
    return DirectoryUser(
        user_id=row["id"],
        user_name=row["user_name"],
        external_id=row["external_id"],
        active=row["active"] is not False,
        display_name=row["display_name"],
        email=primary_email(row),
    )


def directory_group(row: Mapping[str, Any]) -> DirectoryGroup:
    return DirectoryGroup(
        group_id=row["id"], display_name=row["display_name"], external_id=row["external_id"]
    )


@dataclass(frozen=True)
class DirectoryEvents:
    """Where the directory's events go, and what stamps them (built in app.py)."""

    outbox: PostgresOutbox
    source: str  # CloudEvents `source`: provisioning's
    region: str

    async def emit(
        self, tx: asyncpg.Connection, tenant_id: UUID, row: Mapping[str, Any], payload: Any
    ) -> None:
        """The event `payload` about `row` (its id the subject, its version the aggregate
        version), in the transaction `tx` that wrote the row."""
        event = new_event(
            payload,
            tenant_id=tenant_id,
            subject=str(row["id"]),
            aggregate_version=row["version"],
            source=self.source,
            region=self.region,
        )
        await self.outbox.put(tx, [event])
