"""Postgres edge of SSO: connections (state rows written with their events), domains
(each change with its sso.domain_changed), pending logins, the replay cache, one-time codes,
SSO sessions and the failure log."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg
import msgspec
from uuid_utils.compat import uuid7

from tenantry_events.envelope import new_event
from tenantry_events.payloads.identity import (
    SsoConnectionChanged,
    SsoDomainChanged,
    SsoMetadataRefreshed,
)
from tenantry_events.state_check import AggregateKind, update_row
from tenantry_identity.sso.domain import SsoConnection
from tenantry_identity.store import EventsOfIdentity


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


CONNECTION_STREAM = "sso-connection-"  # + connection_id


def connection_stream(connection_id: UUID) -> str:
    return f"{CONNECTION_STREAM}{connection_id}"


class ConnectionRow(msgspec.Struct, frozen=True, kw_only=True):
    connection_id: UUID
    tenant_id: UUID
    kind: str
    name: str
    enabled: bool
    allow_idp_initiated: bool
    config: dict[str, Any]
    attribute_mapping: dict[str, Any]
    metadata_fetched_at: datetime | None
    metadata_error: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class DomainRow(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    domain: str
    connection_id: UUID | None
    challenge_token: str
    verified_at: datetime | None
    last_checked_at: datetime | None
    last_error: str | None
    created_at: datetime


class PendingLogin(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    connection_id: UUID
    redirect_uri: str
    client_state: str | None
    secrets: bytes | None


class IssuedCode(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    connection_id: UUID
    account_id: UUID
    subject: str
    session_index: str | None
    redirect_uri: str
    profile: dict[str, Any]


class FailureRow(msgspec.Struct, frozen=True, kw_only=True):
    failure_id: UUID
    connection_id: UUID
    code: str
    detail: str
    subject: str | None
    at: datetime


_CONNECTION = (
    "connection_id, tenant_id, kind, name, enabled, allow_idp_initiated, config,"
    " attribute_mapping, metadata_fetched_at, metadata_error, version, created_at, updated_at"
)
_DOMAIN = (
    "tenant_id, domain, connection_id, challenge_token, verified_at, last_checked_at,"
    " last_error, created_at"
)


class DomainTaken(Exception):
    """Another tenant verified this domain first."""


_PENDING = "tenant_id, connection_id, redirect_uri, client_state, secrets"


def _storable(text: str) -> str:
    """Text from a hostile message as Postgres stores it (it refuses NUL characters)."""
    return text.replace("\x00", "\\x00")


def _pending(row: asyncpg.Record | None) -> PendingLogin | None:
    if row is None:
        return None
    data = dict(row)
    data["secrets"] = bytes(data["secrets"]) if data["secrets"] is not None else None
    return PendingLogin(**data)


DomainChange = Literal["claimed", "released", "routed", "verified", "check_failed"]


class SsoStore(EventsOfIdentity):
    # ------------------------------------------------------------------ connections
    async def _changed(
        self, tx: asyncpg.Connection, row: ConnectionRow, change: str, by: str, version: int
    ) -> None:
        payload = SsoConnectionChanged(
            connection_id=row.connection_id,
            kind=row.kind,  # type: ignore[arg-type]
            name=row.name,
            enabled=row.enabled,
            change=change,  # type: ignore[arg-type]
            changed_by=by,
        )
        event = new_event(
            payload,
            tenant_id=row.tenant_id,
            subject=str(row.connection_id),
            aggregate_version=version,
            source=self._source,
            region=self._region,
        )
        await self._events.append(tx, connection_stream(row.connection_id), version - 1, [event])

    async def create_connection(
        self,
        tx: asyncpg.Connection,
        *,
        tenant_id: UUID,
        kind: str,
        name: str,
        enabled: bool,
        allow_idp_initiated: bool,
        config: dict[str, Any],
        secrets: bytes | None,
        attribute_mapping: dict[str, Any],
        created_by: str,
        connection_id: UUID | None = None,
    ) -> ConnectionRow:
        row = await tx.fetchrow(
            f"""INSERT INTO sso_connections (connection_id, tenant_id, kind, name, enabled,
                    allow_idp_initiated, config, secrets, attribute_mapping, metadata_fetched_at,
                    version)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9,
                        CASE WHEN $7::jsonb ? 'metadata_url' THEN now() END, 1)
                RETURNING {_CONNECTION}""",
            connection_id or uuid7(),
            tenant_id,
            kind,
            name,
            enabled,
            allow_idp_initiated,
            config,
            secrets,
            attribute_mapping,
        )
        assert row is not None
        connection = ConnectionRow(**dict(row))
        await self._changed(tx, connection, "created", created_by, 1)
        return connection

    async def update_connection(
        self,
        tx: asyncpg.Connection,
        connection: ConnectionRow,
        *,
        changed_by: str,
        secrets: bytes | None = None,
        **changes: Any,
    ) -> ConnectionRow:
        """Write `changes` (column=value) with the event; optimistic on `version` (the
        event store's unique (stream, version) refuses a concurrent writer)."""
        columns = [c for c in changes if c in _CONNECTION.replace(" ", "").split(",")]
        sets = [f"{c} = ${i}" for i, c in enumerate(columns, start=3)]
        values = [changes[c] for c in columns]
        if secrets is not None:
            sets.append(f"secrets = ${len(values) + 3}")
            values.append(secrets)
        row = await tx.fetchrow(
            f"""UPDATE sso_connections SET {
                ", ".join([*sets, "version = version + 1", "updated_at = now()"])
            }
                WHERE connection_id = $1 AND version = $2 RETURNING {_CONNECTION}""",
            connection.connection_id,
            connection.version,
            *values,
        )
        if row is None:
            raise asyncpg.SerializationError("the connection changed meanwhile")
        updated = ConnectionRow(**dict(row))
        await self._changed(tx, updated, "updated", changed_by, updated.version)
        return updated

    async def delete_connection(
        self, tx: asyncpg.Connection, connection: ConnectionRow, *, deleted_by: str
    ) -> None:
        await tx.execute(
            "DELETE FROM sso_connections WHERE connection_id = $1", connection.connection_id
        )
        await self._changed(tx, connection, "deleted", deleted_by, connection.version + 1)

    async def get_connection(
        self, tx: asyncpg.Connection, connection_id: UUID
    ) -> ConnectionRow | None:
        row = await tx.fetchrow(
            f"SELECT {_CONNECTION} FROM sso_connections WHERE connection_id = $1", connection_id
        )
        return ConnectionRow(**dict(row)) if row else None

    async def connection_secrets(self, tx: asyncpg.Connection, connection_id: UUID) -> bytes | None:
        value = await tx.fetchval(
            "SELECT secrets FROM sso_connections WHERE connection_id = $1", connection_id
        )
        return bytes(value) if value is not None else None

    async def list_connections(
        self, tx: asyncpg.Connection, tenant_id: UUID
    ) -> list[ConnectionRow]:
        rows = await tx.fetch(
            f"""SELECT {_CONNECTION} FROM sso_connections WHERE tenant_id = $1
                ORDER BY created_at, connection_id""",
            tenant_id,
        )
        return [ConnectionRow(**dict(r)) for r in rows]

    async def connections_due_for_metadata(
        self, tx: asyncpg.Connection, older_than: datetime, limit: int = 50
    ) -> list[ConnectionRow]:
        """SAML connections with a metadata URL whose last fetch is older than the cutoff
        (platform work: every tenant's)."""
        rows = await tx.fetch(
            f"""SELECT {_CONNECTION} FROM sso_connections
                WHERE kind = 'saml' AND config ? 'metadata_url'
                  AND config->>'metadata_url' IS NOT NULL
                  AND coalesce(metadata_fetched_at, '-infinity') < $1
                ORDER BY metadata_fetched_at NULLS FIRST LIMIT $2""",
            older_than,
            limit,
        )
        return [ConnectionRow(**dict(r)) for r in rows]

    async def record_metadata_error(
        self, tx: asyncpg.Connection, connection_id: UUID, error: str
    ) -> None:
        """A failed refresh keeps the last good settings; the error is shown to admins, and
        the next attempt waits for the next round."""
        await tx.execute(
            """UPDATE sso_connections SET metadata_error = $2, metadata_fetched_at = now()
               WHERE connection_id = $1""",
            connection_id,
            error[:500],
        )

    async def metadata_refreshed(
        self,
        tx: asyncpg.Connection,
        row: ConnectionRow,
        outcome: Literal["updated", "unchanged", "failed"],
        error: str | None = None,
    ) -> None:
        """An admin's refresh of the connection's metadata, whatever it found."""
        payload = SsoMetadataRefreshed(
            connection_id=row.connection_id,
            outcome=outcome,
            error=error[:500] if error is not None else None,
        )
        await self.record(tx, payload, tenant_id=row.tenant_id, subject=str(row.connection_id))

    async def record_metadata_fresh(self, tx: asyncpg.Connection, connection_id: UUID) -> None:
        """A refresh found the IdP's metadata unchanged: only when, and that it worked."""
        await tx.execute(
            """UPDATE sso_connections SET metadata_fetched_at = now(), metadata_error = NULL
               WHERE connection_id = $1""",
            connection_id,
        )

    # ------------------------------------------------------------------ tenants
    async def tenant_status(self, tx: asyncpg.Connection, tenant_id: UUID) -> str | None:
        """The tenant's lifecycle state in identity's projection (None: not known yet)."""
        status = await tx.fetchval(
            "SELECT status FROM tenant_projection WHERE tenant_id = $1", tenant_id
        )
        return str(status) if status is not None else None

    # ------------------------------------------------------------------ domains
    async def domain_changed(
        self, tx: asyncpg.Connection, row: DomainRow, change: DomainChange
    ) -> None:
        """sso.domain_changed: the domain's state after `change` (a release: before)."""
        payload = SsoDomainChanged(
            domain=row.domain,
            change=change,
            connection_id=row.connection_id,
            verified=row.verified_at is not None,
        )
        await self.record(tx, payload, tenant_id=row.tenant_id, subject=row.domain)

    async def add_domain(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        domain: str,
        token: str,
        connection_id: UUID | None,
    ) -> DomainRow | None:
        """None if the tenant already claims it."""
        row = await tx.fetchrow(
            f"""INSERT INTO sso_domains (tenant_id, domain, connection_id, challenge_token)
                VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING {_DOMAIN}""",
            tenant_id,
            domain,
            connection_id,
            token,
        )
        if row is None:
            return None
        claimed = DomainRow(**dict(row))
        await self.domain_changed(tx, claimed, "claimed")
        return claimed

    async def get_domain(
        self, tx: asyncpg.Connection, tenant_id: UUID, domain: str
    ) -> DomainRow | None:
        row = await tx.fetchrow(
            f"SELECT {_DOMAIN} FROM sso_domains WHERE tenant_id = $1 AND domain = $2",
            tenant_id,
            domain,
        )
        return DomainRow(**dict(row)) if row else None

    async def list_domains(self, tx: asyncpg.Connection, tenant_id: UUID) -> list[DomainRow]:
        rows = await tx.fetch(
            f"SELECT {_DOMAIN} FROM sso_domains WHERE tenant_id = $1 ORDER BY domain", tenant_id
        )
        return [DomainRow(**dict(r)) for r in rows]

    async def record_check(
        self,
        tx: asyncpg.Connection,
        tenant_id: UUID,
        domain: str,
        *,
        verified: bool,
        error: str | None,
    ) -> DomainRow:
        try:
            async with tx.transaction():
                row = await tx.fetchrow(
                    f"""UPDATE sso_domains SET last_checked_at = now(), last_error = $3,
                            verified_at = CASE WHEN $4 THEN coalesce(verified_at, now())
                                               ELSE verified_at END
                        WHERE tenant_id = $1 AND domain = $2 RETURNING {_DOMAIN}""",
                    tenant_id,
                    domain,
                    error,
                    verified,
                )
        except asyncpg.UniqueViolationError:
            raise DomainTaken(domain) from None
        assert row is not None
        checked = DomainRow(**dict(row))
        await self.domain_changed(tx, checked, "verified" if verified else "check_failed")
        return checked

    async def set_domain_connection(
        self, tx: asyncpg.Connection, tenant_id: UUID, domain: str, connection_id: UUID | None
    ) -> DomainRow | None:
        row = await tx.fetchrow(
            f"""UPDATE sso_domains SET connection_id = $3 WHERE tenant_id = $1 AND domain = $2
                RETURNING {_DOMAIN}""",
            tenant_id,
            domain,
            connection_id,
        )
        if row is None:
            return None
        routed = DomainRow(**dict(row))
        await self.domain_changed(tx, routed, "routed")
        return routed

    async def delete_domain(self, tx: asyncpg.Connection, tenant_id: UUID, domain: str) -> bool:
        row = await tx.fetchrow(
            f"DELETE FROM sso_domains WHERE tenant_id = $1 AND domain = $2 RETURNING {_DOMAIN}",
            tenant_id,
            domain,
        )
        if row is None:
            return False
        await self.domain_changed(tx, DomainRow(**dict(row)), "released")
        return True

    async def verified_domain(self, tx: asyncpg.Connection, domain: str) -> DomainRow | None:
        """Home realm discovery (platform work: the tenant is what we are looking for)."""
        row = await tx.fetchrow(
            f"SELECT {_DOMAIN} FROM sso_domains WHERE domain = $1 AND verified_at IS NOT NULL",
            domain,
        )
        return DomainRow(**dict(row)) if row else None

    async def verified_domain_names(self, tx: asyncpg.Connection, tenant_id: UUID) -> set[str]:
        rows = await tx.fetch(
            "SELECT domain FROM sso_domains WHERE tenant_id = $1 AND verified_at IS NOT NULL",
            tenant_id,
        )
        return {r["domain"] for r in rows}

    # ------------------------------------------------------------------ pending logins
    async def save_login_request(
        self,
        tx: asyncpg.Connection,
        key: str,
        *,
        tenant_id: UUID,
        connection_id: UUID,
        redirect_uri: str,
        client_state: str | None,
        secrets: bytes | None,
        expires_at: datetime,
    ) -> None:
        await tx.execute(
            """INSERT INTO sso_login_requests (request_sha256, tenant_id, connection_id,
                   redirect_uri, client_state, secrets, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            digest(key),
            tenant_id,
            connection_id,
            redirect_uri,
            client_state,
            secrets,
            expires_at,
        )

    async def find_login_request(
        self, tx: asyncpg.Connection, key: str, now: datetime
    ) -> PendingLogin | None:
        """The pending login `key` names, left pending (nothing an unvalidated answer
        says may end it); None if unknown, used or expired."""
        row = await tx.fetchrow(
            f"""SELECT {_PENDING} FROM sso_login_requests
               WHERE request_sha256 = $1 AND used_at IS NULL AND expires_at > $2""",
            digest(key),
            now,
        )
        return _pending(row)

    async def take_login_request(
        self, tx: asyncpg.Connection, key: str, now: datetime
    ) -> PendingLogin | None:
        """The pending login `key` names, marked used; None if unknown, used or expired.
        Of two transactions taking one request, the second waits for the first's row
        lock and then finds it used: only one answer can be accepted."""
        row = await tx.fetchrow(
            f"""UPDATE sso_login_requests SET used_at = $2
               WHERE request_sha256 = $1 AND used_at IS NULL AND expires_at > $2
               RETURNING {_PENDING}""",
            digest(key),
            now,
        )
        return _pending(row)

    async def remember_assertion(
        self,
        tx: asyncpg.Connection,
        connection_id: UUID,
        assertion_id: str,
        tenant_id: UUID,
        expires_at: datetime,
    ) -> bool:
        """False if this assertion was seen before (a replay)."""
        result = await tx.execute(
            """INSERT INTO sso_seen_assertions (connection_id, assertion_id, tenant_id, expires_at)
               VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            connection_id,
            assertion_id,
            tenant_id,
            expires_at,
        )
        return bool(result.endswith(" 1"))

    async def purge_expired(
        self, tx: asyncpg.Connection, now: datetime, keep: timedelta = timedelta(days=30)
    ) -> int:
        """Drop what can no longer be used (platform work, the worker's sweep): expired
        logins, replay-cache entries and codes; failures older than `keep`; SSO sessions
        whose refresh family holds no live token any more (refresh rotation keeps a
        session alive past any fixed age, so its age alone says nothing)."""
        total = 0
        for table in ("sso_login_requests", "sso_seen_assertions", "sso_codes"):
            result = await tx.execute(f"DELETE FROM {table} WHERE expires_at < $1", now)
            total += int(result.split()[-1])
        result = await tx.execute("DELETE FROM sso_login_failures WHERE at < $1", now - keep)
        total += int(result.split()[-1])
        result = await tx.execute(
            """DELETE FROM sso_sessions s
               WHERE s.created_at < $1
                 AND NOT EXISTS (SELECT 1 FROM refresh_tokens r
                                 WHERE r.family_id = s.family_id AND r.revoked_at IS NULL
                                   AND r.used_at IS NULL AND r.expires_at > $2)""",
            now - timedelta(hours=1),
            now,
        )
        total += int(result.split()[-1])
        return total

    # ------------------------------------------------------------------ identities
    async def identity_account(
        self, tx: asyncpg.Connection, connection_id: UUID, subject: str
    ) -> UUID | None:
        value = await tx.fetchval(
            "SELECT account_id FROM sso_identities WHERE connection_id = $1 AND subject = $2",
            connection_id,
            subject,
        )
        return value if isinstance(value, UUID) else None

    async def link_identity(
        self,
        tx: asyncpg.Connection,
        *,
        connection_id: UUID,
        subject: str,
        tenant_id: UUID,
        account_id: UUID,
        profile: dict[str, Any],
    ) -> None:
        await tx.execute(
            """INSERT INTO sso_identities (connection_id, subject, tenant_id, account_id, profile)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (connection_id, subject) DO UPDATE
               SET account_id = EXCLUDED.account_id, profile = EXCLUDED.profile,
                   last_login_at = now()""",
            connection_id,
            subject,
            tenant_id,
            account_id,
            profile,
        )

    # ------------------------------------------------------------------ codes and sessions
    async def save_code(
        self, tx: asyncpg.Connection, code: str, issued: IssuedCode, expires_at: datetime
    ) -> None:
        await tx.execute(
            """INSERT INTO sso_codes (code_sha256, tenant_id, connection_id, account_id, subject,
                   session_index, redirect_uri, profile, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            digest(code),
            issued.tenant_id,
            issued.connection_id,
            issued.account_id,
            issued.subject,
            issued.session_index,
            issued.redirect_uri,
            issued.profile,
            expires_at,
        )

    async def take_code(
        self, tx: asyncpg.Connection, code: str, now: datetime
    ) -> IssuedCode | None:
        row = await tx.fetchrow(
            """UPDATE sso_codes SET used_at = $2
               WHERE code_sha256 = $1 AND used_at IS NULL AND expires_at > $2
               RETURNING tenant_id, connection_id, account_id, subject, session_index,
                         redirect_uri, profile""",
            digest(code),
            now,
        )
        return IssuedCode(**dict(row)) if row else None

    async def record_session(
        self,
        tx: asyncpg.Connection,
        family_id: UUID,
        issued: IssuedCode,
    ) -> None:
        await tx.execute(
            """INSERT INTO sso_sessions (family_id, tenant_id, connection_id, subject,
                   session_index)
               VALUES ($1, $2, $3, $4, $5)""",
            family_id,
            issued.tenant_id,
            issued.connection_id,
            issued.subject,
            issued.session_index,
        )

    async def session_families(
        self,
        tx: asyncpg.Connection,
        connection_id: UUID,
        subject: str,
        session_indexes: list[str],
    ) -> list[UUID]:
        """Sessions a LogoutRequest names: the subject's, narrowed to the session indexes
        when it gives any."""
        rows = await tx.fetch(
            """SELECT family_id FROM sso_sessions WHERE connection_id = $1 AND subject = $2
                 AND (cardinality($3::text[]) = 0 OR session_index = ANY($3::text[]))""",
            connection_id,
            subject,
            session_indexes,
        )
        return [r["family_id"] for r in rows]

    async def session_of_family(
        self, tx: asyncpg.Connection, family_id: UUID
    ) -> tuple[UUID, str, str | None] | None:
        row = await tx.fetchrow(
            "SELECT connection_id, subject, session_index FROM sso_sessions WHERE family_id = $1",
            family_id,
        )
        return (row["connection_id"], row["subject"], row["session_index"]) if row else None

    # ------------------------------------------------------------------ failures
    async def record_failure(
        self,
        tx: asyncpg.Connection,
        *,
        tenant_id: UUID,
        connection_id: UUID,
        code: str,
        detail: str,
        subject: str | None,
    ) -> None:
        await tx.execute(
            """INSERT INTO sso_login_failures (failure_id, tenant_id, connection_id, code, detail,
                   subject)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            uuid7(),
            tenant_id,
            connection_id,
            code,
            _storable(detail)[:2000],
            _storable(subject)[:500] if subject else None,
        )

    async def list_failures(
        self,
        tx: asyncpg.Connection,
        connection_id: UUID,
        *,
        before: UUID | None,
        limit: int,
    ) -> list[FailureRow]:
        """Newest first; `before` continues from a previous page."""
        rows = await tx.fetch(
            """SELECT failure_id, connection_id, code, detail, subject, at
               FROM sso_login_failures
               WHERE connection_id = $1 AND ($2::uuid IS NULL OR failure_id < $2)
               ORDER BY failure_id DESC LIMIT $3""",
            connection_id,
            before,
            limit,
        )
        return [FailureRow(**dict(r)) for r in rows]


# ---------------------------------------------------------------- state rows and their streams
# How `tenantry-identity verify-state` reads, lists and rebuilds connection rows
# (sso.domain.SsoConnection). Only what the events carry can be rebuilt: a row that is
# missing cannot be made again (its IdP settings and secrets are in no event).


async def read_connection(tx: asyncpg.Connection, stream_id: str) -> SsoConnection | None:
    row = await tx.fetchrow(
        """SELECT connection_id, tenant_id, kind, name, enabled, false AS deleted, version
           FROM sso_connections WHERE connection_id = $1 FOR UPDATE""",
        UUID(stream_id.removeprefix(CONNECTION_STREAM)),
    )
    return SsoConnection(**dict(row)) if row is not None else None


async def rebuild_connection(
    tx: asyncpg.Connection, stream_id: str, connection: SsoConnection | None
) -> None:
    connection_id = UUID(stream_id.removeprefix(CONNECTION_STREAM))
    if connection is None:  # deleted by its last event (or never created: no events)
        await tx.execute("DELETE FROM sso_connections WHERE connection_id = $1", connection_id)
        return
    await update_row(
        tx,
        stream_id,
        "its IdP settings are lost",
        """UPDATE sso_connections SET kind = $2, name = $3, enabled = $4, version = $5
           WHERE connection_id = $1 AND tenant_id = $6""",
        connection_id,
        connection.kind,
        connection.name,
        connection.enabled,
        connection.version,
        connection.tenant_id,
    )


async def connection_row_streams(tx: asyncpg.Connection) -> list[str]:
    rows = await tx.fetch("SELECT connection_id FROM sso_connections")
    return [connection_stream(r["connection_id"]) for r in rows]


SSO_CONNECTIONS: AggregateKind[SsoConnection, asyncpg.Connection] = AggregateKind(
    name="sso connection",
    stream_prefix=CONNECTION_STREAM,
    start=SsoConnection.start,
    read_row=read_connection,
    write_row=rebuild_connection,
    row_streams=connection_row_streams,
    keeps_row=SsoConnection.keeps_row,
)
