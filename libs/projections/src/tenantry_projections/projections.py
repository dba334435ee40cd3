"""The tenant projection every service keeps (see DESIGN.md: "Every service consumes what
it needs to enforce rules locally")."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_events.consumer import Handler
from tenantry_events.envelope import Envelope
from tenantry_events.payloads.identity import (
    AccountCreated,
    AccountDisabled,
    AccountEnabled,
    ApiKeyCreated,
    ApiKeyRevoked,
)
from tenantry_events.payloads.tenancy import (
    TenantCreated,
    TenantMoved,
    TenantOffboardingCancelled,
    TenantOffboardingStarted,
    TenantPlanChanged,
    TenantPurged,
    TenantReactivated,
    TenantState,
    TenantSuspended,
)
from tenantry_events.pg import Database
from tenantry_guardrails.plan_limits import limits_projection_handlers
from tenantry_guardrails.rate_limits import rate_policy_projection_handlers
from tenantry_http.auth import ApiKeyRecord
from tenantry_projections.directory_replica import record_arrival


class ProjectedTenant(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    name: str
    slug: str
    status: str
    plan: str
    home_region: str
    version: int


async def upsert_tenant(
    tx: asyncpg.Connection, tenant_id: UUID, state: TenantState, version: int
) -> None:
    """Highest version wins, so events arriving out of order across topics converge."""
    await tx.execute(
        """INSERT INTO tenant_projection AS p
               (tenant_id, name, slug, status, plan, home_region, version)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (tenant_id) DO UPDATE
               SET name = EXCLUDED.name, slug = EXCLUDED.slug, status = EXCLUDED.status,
                   plan = EXCLUDED.plan, home_region = EXCLUDED.home_region,
                   version = EXCLUDED.version, updated_at = now()
               WHERE p.version < EXCLUDED.version""",
        tenant_id,
        state.name,
        state.slug,
        state.status,
        state.plan,
        state.home_region,
        version,
    )


async def _on_tenant_event(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    """Every tenant.* event carries the full TenantState, so one handler serves them all."""
    payload: (
        TenantCreated
        | TenantSuspended
        | TenantReactivated
        | TenantPlanChanged
        | TenantOffboardingStarted
        | TenantOffboardingCancelled
    ) = event.payload
    await upsert_tenant(tx, event.tenant_id, payload.tenant, event.aggregate_version)


async def _on_tenant_moved(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    """The tenant's state, and this service's replica routing it to its new home at once."""
    payload: TenantMoved = event.payload
    await upsert_tenant(tx, event.tenant_id, payload.tenant, event.aggregate_version)
    await record_arrival(tx, event.tenant_id, payload.tenant.home_region)


async def _on_tenant_purged(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    """The tombstone: the tenant's id and state, without its name and slug (the purge
    erased them, and the slug goes back to the pool after its quarantine)."""
    payload: TenantPurged = event.payload
    tombstone = msgspec.structs.replace(payload.tenant, name="", slug="")
    await upsert_tenant(tx, event.tenant_id, tombstone, event.aggregate_version)


async def _on_purge_requested(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    """`purging` is this projection's own state (never in a payload): from the purge
    request until tenant.purged, nothing of the tenant is admitted. The version is kept,
    so tenant.purged (a later version) still lands, and an older event cannot undo it."""
    await tx.execute(
        """UPDATE tenant_projection
           SET status = 'purging', version = GREATEST(version, $2), updated_at = now()
           WHERE tenant_id = $1 AND status <> 'purged'""",
        event.tenant_id,
        event.aggregate_version,
    )


def tenant_projection_handlers() -> dict[str, Handler[asyncpg.Connection]]:
    carrying_state: dict[str, Handler[asyncpg.Connection]] = {
        name: _on_tenant_event
        for name in (
            "tenant.created",
            "tenant.suspended",
            "tenant.reactivated",
            "tenant.plan_changed",
            "tenant.offboarding_started",
            "tenant.offboarding_cancelled",
        )
    }
    return {
        **carrying_state,
        "tenant.moved": _on_tenant_moved,
        "tenant.purge_requested": _on_purge_requested,
        "tenant.purged": _on_tenant_purged,
    }


class PostgresTenantStatus:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def status(self, tenant_id: UUID) -> str | None:
        value = await self._db.pool.fetchval(
            "SELECT status FROM tenant_projection WHERE tenant_id = $1", tenant_id
        )
        return str(value) if value is not None else None


async def _on_apikey_created(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    payload: ApiKeyCreated = event.payload
    # A revocation may arrive first (another topic): never un-revoke.
    await tx.execute(
        """INSERT INTO api_key_projection
               (key_sha256, key_id, tenant_id, scopes, owner_account_id, expires_at)
           VALUES ($1, $2, $3, $4, $5, $6)
           ON CONFLICT (key_sha256) DO NOTHING""",
        bytes.fromhex(payload.key_sha256),
        payload.key_id,
        event.tenant_id,
        payload.scopes,
        payload.owner_account_id,
        payload.expires_at,
    )


async def _on_apikey_revoked(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    payload: ApiKeyRevoked = event.payload
    await tx.execute(
        """INSERT INTO api_key_projection (key_sha256, key_id, tenant_id, scopes, revoked)
           VALUES ($1, $2, $3, '{}', true)
           ON CONFLICT (key_sha256) DO UPDATE SET revoked = true, updated_at = now()""",
        bytes.fromhex(payload.key_sha256),
        payload.key_id,
        event.tenant_id,
    )


def api_key_projection_handlers() -> dict[str, Handler[asyncpg.Connection]]:
    return {"apikey.created": _on_apikey_created, "apikey.revoked": _on_apikey_revoked}


async def _set_account_status(
    tx: asyncpg.Connection, event: Envelope[Any], account_id: UUID, status: str
) -> None:
    await tx.execute(
        """INSERT INTO account_projection AS p (account_id, tenant_id, status, version)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (account_id) DO UPDATE
               SET status = EXCLUDED.status, version = EXCLUDED.version, updated_at = now()
               WHERE p.version < EXCLUDED.version""",
        account_id,
        event.tenant_id,
        status,
        event.aggregate_version,
    )


async def _on_account_created(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    payload: AccountCreated = event.payload
    await _set_account_status(tx, event, payload.account_id, payload.status)


async def _on_account_disabled(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    payload: AccountDisabled = event.payload
    await _set_account_status(tx, event, payload.account_id, "disabled")


async def _on_account_enabled(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    payload: AccountEnabled = event.payload
    await _set_account_status(tx, event, payload.account_id, "active")


def account_projection_handlers() -> dict[str, Handler[asyncpg.Connection]]:
    return {
        "account.created": _on_account_created,
        "account.disabled": _on_account_disabled,
        "account.enabled": _on_account_enabled,
    }


def standard_projections() -> dict[str, Handler[asyncpg.Connection]]:
    """What every service projects to authorise requests locally."""
    return {
        **tenant_projection_handlers(),
        **api_key_projection_handlers(),
        **account_projection_handlers(),
        **limits_projection_handlers(),
        **rate_policy_projection_handlers(),
    }


class PostgresAccountStatus:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def is_disabled(self, account_id: UUID) -> bool:
        status = await self._db.pool.fetchval(
            "SELECT status FROM account_projection WHERE account_id = $1", account_id
        )
        return bool(status == "disabled")


class PostgresApiKeyLookup:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def by_hash(self, digest: bytes) -> ApiKeyRecord | None:
        row = await self._db.pool.fetchrow(
            """SELECT key_id, tenant_id, scopes, owner_account_id, expires_at, revoked
               FROM api_key_projection WHERE key_sha256 = $1""",
            digest,
        )
        if row is None:
            return None
        return ApiKeyRecord(
            key_id=row["key_id"],
            tenant_id=row["tenant_id"],
            scopes=frozenset(row["scopes"]),
            owner_account_id=row["owner_account_id"],
            expires_at=row["expires_at"],
            revoked=row["revoked"],
        )


async def get_tenant(
    tx: asyncpg.Connection | asyncpg.Pool, tenant_id: UUID
) -> ProjectedTenant | None:
    row = await tx.fetchrow(
        """SELECT tenant_id, name, slug, status, plan, home_region, version
           FROM tenant_projection WHERE tenant_id = $1""",
        tenant_id,
    )
    return ProjectedTenant(**dict(row)) if row else None
