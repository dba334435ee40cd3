"""The directory's events (user.*, group.*), put in provisioning's outbox in the
transaction that changes the directory."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from tenantry_events.envelope import new_event
from tenantry_events.payloads.provisioning import DirectoryGroup, DirectoryUser
from tenantry_provisioning.scim.resources import primary_email
from tenantry_service.runtime import Runtime


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


async def emit(
    runtime: Runtime, tx: asyncpg.Connection, tenant_id: UUID, row: Mapping[str, Any], payload: Any
) -> None:
    event = new_event(
        payload,
        tenant_id=tenant_id,
        subject=str(row["id"]),
        aggregate_version=row["version"],
        source=runtime.source,
        region=runtime.settings.region,
    )
    await runtime.outbox.put(tx, [event])
