"""HTTP edge of the audit log (docs/audit.md).

    GET /v1/tenants/{tenant_id}/audit-events          entries, filtered, cursor-paged (JSON),
                                                      or every match as NDJSON or CSV
    GET /v1/tenants/{tenant_id}/audit-events/chain    the chain's head and retention anchor

Readers: the tenant's owners and admins, API keys with `audit:read`, operators. Personal
fields (the actor's IP and user agent, the payload's personal fields) are opened for the
reader, or read "[erased]" once the person or the tenant was erased; `chain.record` keeps
them sealed, as hashed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, Parameter
from litestar.response import Stream

from tenantry_events.actors import ACTOR_KINDS, Actor
from tenantry_events.catalog import CATALOG
from tenantry_events.envelope import Envelope
from tenantry_events.pg import Database
from tenantry_events.sealing import DataKeys, unseal
from tenantry_http.auth import requires
from tenantry_http.pagination import clamp_limit, decode_cursor, encode_cursor
from tenantry_http.problems import Problem
from tenantry_service.runtime import Runtime
from tenantry_tenancy.audit.entries import REDACTED, AuditRecord
from tenantry_tenancy.audit.store import AuditFilter, AuditStore, StoredEntry
from tenantry_tenancy.documents import DocumentSigner

READERS = requires(roles=("owner", "admin"), scopes=("audit:read",))
_EXPORT_BATCH: Final = 500
_MAX_FILTER: Final = 200
NDJSON: Final = "application/x-ndjson"
CSV: Final = "text/csv; charset=utf-8"
CSV_COLUMNS: Final = (
    "seq",
    "id",
    "occurred_at",
    "recorded_at",
    "action",
    "outcome",
    "actor_kind",
    "actor_id",
    "actor_ip",
    "actor_user_agent",
    "request_id",
    "target_type",
    "target_id",
    "region",
    "details",
    "prev_hash",
    "hash",
    "record",
)
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


class ActorView(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    id: str | None
    request_id: str | None
    ip: str | None
    user_agent: str | None


class TargetView(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    id: str


class ChainLink(msgspec.Struct, frozen=True, kw_only=True):
    prev_hash: str
    hash: str
    record: str  # the exact text hashed: sha256(bytes.fromhex(prev_hash) + record.encode())


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str  # the audited event's id
    seq: int  # the entry's place in the tenant's chain
    occurred_at: str
    recorded_at: str
    action: str
    outcome: str
    actor: ActorView
    target: TargetView
    region: str
    details: dict[str, Any]
    chain: ChainLink


class AuditPage(msgspec.Struct, frozen=True, kw_only=True):
    data: list[AuditEvent]
    next_cursor: str | None = None


class ChainView(msgspec.Struct, frozen=True, kw_only=True):
    head_seq: int
    head_hash: str
    # Retention removed entries 1..pruned_through_seq; the first kept entry's prev_hash is
    # anchor_hash (all zeros while nothing was removed).
    pruned_through_seq: int
    anchor_hash: str
    # The same, signed by the region's document key (a compact JWS; verify it with
    # /.well-known/document-jwks.json): proof of what the platform said the head was.
    signed: str


class AuditController(Controller):
    path = "/tenants/{tenant_id:uuid}/audit-events"
    tags = ["audit"]

    @get(
        "/",
        opt=READERS,
        summary="The tenant's audit log: who did what, filtered and paged, or exported",
    )
    async def entries(
        self,
        tenant_id: FromPath[UUID],
        runtime: NamedDependency[Runtime],
        db: NamedDependency[Database],
        actor_id: str | None = None,
        actor_kind: str | None = None,
        action: str | None = None,
        target_id: str | None = None,
        target_type: str | None = None,
        outcome: str | None = None,
        request_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        order: Literal["asc", "desc"] = "desc",
        format_: Annotated[Literal["json", "ndjson", "csv"], Parameter(query="format")] = "json",
        cursor: str | None = None,
        limit: int | None = None,
    ) -> Response[AuditPage] | Stream:
        """Newest first unless `order=asc`. `action` is an event type, or a prefix ending
        in `.` or `*` (`sso.*`). `request_id` finds what one request did (its
        X-Request-Id). `since` is inclusive, `until` exclusive. `format=ndjson`
        or `csv` streams every matching entry (no paging) in the order asked; verify the
        chain over an `order=asc` export (docs/audit.md)."""
        where = _filter(
            actor_id=actor_id,
            actor_kind=actor_kind,
            action=action,
            target_id=target_id,
            target_type=target_type,
            outcome=outcome,
            request_id=request_id,
            since=since,
            until=until,
        )
        descending = order == "desc"
        keys = _keys(runtime)
        store = AuditStore()
        if format_ != "json":
            if cursor is not None or limit is not None:
                raise Problem(
                    400,
                    "invalid-parameter",
                    "An export is not paged",
                    "format=ndjson and format=csv stream every match; leave out cursor and limit",
                )
            rows = _exported(db, store, keys, tenant_id, where, descending)
            body = _ndjson(rows) if format_ == "ndjson" else _csv(rows)
            filename = f"audit-{tenant_id}.{'ndjson' if format_ == 'ndjson' else 'csv'}"
            return Stream(
                body,
                media_type=NDJSON if format_ == "ndjson" else CSV,
                headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            )
        size = clamp_limit(limit)
        after = _cursor_seq(cursor)
        async with db.transaction(tenant_id=tenant_id) as tx:
            stored = await store.query(
                tx, tenant_id, where, after=after, descending=descending, limit=size + 1
            )
            data = [await opened(tx, keys, s) for s in stored[:size]]
        more = len(stored) > size and bool(data)
        return Response(
            AuditPage(data=data, next_cursor=encode_cursor([data[-1].seq]) if more else None)
        )

    @get("/chain", opt=READERS, summary="The audit chain's head and retention anchor, signed")
    async def chain(
        self,
        tenant_id: FromPath[UUID],
        db: NamedDependency[Database],
        document_signer: NamedDependency[DocumentSigner],
    ) -> ChainView:
        """The newest entry's seq and hash (keep it, or its signed form: a later read that
        does not extend it shows the log was rewritten), and where retention cut the
        chain."""
        async with db.transaction(tenant_id=tenant_id) as tx:
            state = await AuditStore().chain(tx, tenant_id)
        claims = {
            "typ": "tenantry.audit-chain-head",
            "tenant_id": str(tenant_id),
            "head_seq": state.head_seq,
            "head_hash": state.head_hash.hex(),
            "pruned_through_seq": state.pruned_through_seq,
            "anchor_hash": state.pruned_through_hash.hex(),
            "iat": int(datetime.now(UTC).timestamp()),
        }
        return ChainView(
            head_seq=state.head_seq,
            head_hash=state.head_hash.hex(),
            pruned_through_seq=state.pruned_through_seq,
            anchor_hash=state.pruned_through_hash.hex(),
            signed=await document_signer.sign(claims),
        )


async def opened(
    tx: asyncpg.Connection, keys: DataKeys[asyncpg.Connection], stored: StoredEntry
) -> AuditEvent:
    """The entry as its reader sees it: personal fields opened (or "[erased]")."""
    record = msgspec.json.decode(stored.record, type=AuditRecord)
    actor, details = record.actor, record.details
    try:
        event_type = CATALOG.by_name(record.action)
        payload = msgspec.convert(
            {**dict.fromkeys(REDACTED.get(record.action, ()), ""), **record.details},
            event_type.payload,
            strict=False,
        )
    except (LookupError, msgspec.ValidationError):
        payload = None  # a type this release no longer knows: shown as recorded
    if payload is not None:
        envelope = await unseal(
            Envelope(
                id=UUID(record.event_id),
                type=record.action,
                source="",
                tenant_id=UUID(record.tenant_id),
                subject=record.target.id,
                aggregate_version=0,
                occurred_at=datetime.fromisoformat(record.occurred_at),
                schema_version=event_type.version,
                region=record.region,
                actor=Actor(
                    kind=actor.kind,
                    id=actor.id,
                    request_id=actor.request_id,
                    ip=actor.ip,
                    user_agent=actor.user_agent,
                ),
                payload=payload,
            ),
            keys,
            tx,
        )
        details = {
            k: v
            for k, v in msgspec.to_builtins(envelope.payload).items()
            if k not in REDACTED.get(record.action, ())
        }
        if envelope.actor is not None:
            actor = msgspec.structs.replace(
                actor, ip=envelope.actor.ip, user_agent=envelope.actor.user_agent
            )
    return AuditEvent(
        id=record.event_id,
        seq=record.seq,
        occurred_at=record.occurred_at,
        recorded_at=stored.recorded_at.isoformat(timespec="microseconds"),
        action=record.action,
        outcome=record.outcome,
        actor=ActorView(
            kind=actor.kind,
            id=actor.id,
            request_id=actor.request_id,
            ip=actor.ip,
            user_agent=actor.user_agent,
        ),
        target=TargetView(type=record.target.type, id=record.target.id),
        region=record.region,
        details=details,
        chain=ChainLink(
            prev_hash=stored.prev_hash.hex(), hash=stored.hash.hex(), record=stored.record
        ),
    )


def _filter(**given: Any) -> AuditFilter:
    for name, value in given.items():
        if isinstance(value, str) and not 0 < len(value) <= _MAX_FILTER:
            raise Problem(400, "invalid-parameter", f"{name} must be 1 to {_MAX_FILTER} characters")
    if given["actor_kind"] is not None and given["actor_kind"] not in ACTOR_KINDS:
        raise Problem(400, "invalid-parameter", f"actor_kind is one of: {', '.join(ACTOR_KINDS)}")
    if given["outcome"] is not None and given["outcome"] not in ("success", "failure"):
        raise Problem(400, "invalid-parameter", "outcome is success or failure")
    since, until = given["since"], given["until"]
    for name, moment in (("since", since), ("until", until)):
        if moment is not None and moment.tzinfo is None:
            raise Problem(
                400, "invalid-parameter", f"{name} needs a time zone (2026-12-07T10:00:00Z)"
            )
    if since is not None and until is not None and since >= until:
        raise Problem(400, "invalid-parameter", "since must be before until")
    return AuditFilter(**given)


def _cursor_seq(cursor: str | None) -> int | None:
    key = decode_cursor(cursor)
    if key is None:
        return None
    if len(key) != 1 or not isinstance(key[0], int) or isinstance(key[0], bool):
        raise Problem(400, "invalid-cursor", "The cursor is not valid")
    return int(key[0])


def _keys(runtime: Runtime) -> DataKeys[asyncpg.Connection]:
    keys = runtime.outbox.keys
    if keys is None:
        raise RuntimeError("the audit log needs tenancy's data keys")
    return keys


async def _exported(
    db: Database,
    store: AuditStore,
    keys: DataKeys[asyncpg.Connection],
    tenant_id: UUID,
    where: AuditFilter,
    descending: bool,
) -> AsyncIterator[AuditEvent]:
    """Every match, a batch per transaction (a long export holds no transaction open)."""
    after: int | None = None
    while True:
        async with db.transaction(tenant_id=tenant_id) as tx:
            batch = await store.query(
                tx, tenant_id, where, after=after, descending=descending, limit=_EXPORT_BATCH
            )
            events = [await opened(tx, keys, s) for s in batch]
        for event in events:
            yield event
        if len(batch) < _EXPORT_BATCH:
            return
        after = batch[-1].seq


async def _ndjson(rows: AsyncIterator[AuditEvent]) -> AsyncIterator[bytes]:
    async for row in rows:
        yield msgspec.json.encode(row) + b"\n"


async def _csv(rows: AsyncIterator[AuditEvent]) -> AsyncIterator[bytes]:
    yield _csv_line(CSV_COLUMNS)
    async for row in rows:
        yield _csv_line(
            (
                str(row.seq),
                row.id,
                row.occurred_at,
                row.recorded_at,
                row.action,
                row.outcome,
                row.actor.kind,
                row.actor.id or "",
                row.actor.ip or "",
                row.actor.user_agent or "",
                row.actor.request_id or "",
                row.target.type,
                row.target.id,
                row.region,
                json.dumps(row.details, sort_keys=True, ensure_ascii=False),
                row.chain.prev_hash,
                row.chain.hash,
                row.chain.record,
            )
        )


def _csv_line(values: tuple[str, ...]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow([_cell(v) for v in values])
    return buffer.getvalue().encode()


def _cell(value: str) -> str:
    """A cell a spreadsheet does not run as a formula (OWASP CSV injection): a value that
    starts like one gets a leading apostrophe. `record` starts with "{", so it stays exact."""
    return f"'{value}" if value.startswith(_FORMULA_START) else value
