"""A service's share of a tenant's export (issue 17 §1: GDPR Art. 15 and 20).

tenancy asks with `tenant.export_requested` (an export id, a key prefix, and a person's
account id for a per-person export). Each service declares what it exports as
`ExportSource`s in its ServiceSpec; the worker answers the request by writing one NDJSON
file per source to object storage under `{prefix}{service}/{file}` (one JSON object per
line, UTF-8, "\\n"), streamed from Postgres through a cursor straight into the store, which
computes the sha256 and size as the bytes go by, so memory stays bounded whatever the
tenant's size. It then reports the files (or why it could not write them) with ONE
`tenant.export_part`, put in the outbox in the handler's transaction: the inbox mark and
the report commit together.

Consistency: every source is read in one REPEATABLE READ, read-only transaction of its
own (the consumer's transaction has already run statements, too late to raise its
isolation), scoped to the tenant like every other (`app.tenant_id`, RLS): the files are
one snapshot of the service's rows.

Idempotent: a redelivered request rewrites the same keys (a put replaces the object
whole) and answers again; a worker killed mid-export never committed its inbox mark, so
the redelivery starts the part over.

Failures: the database or the object store being unavailable is transient: raised, so
the record is redelivered later (tenantry_events.consumer). Anything else (a bug, a key
the store refuses) ends the part with `error`: tenancy fails the export with a reason
instead of the request bouncing forever. The reason names the file and the exception's
type only (it travels on to tenant.export_failed, a public event); the log has the rest.

A per-person export (`subject_account_id` set) writes only the sources declared
`per_person`, each keeping that person's rows; the others have no rows of a person of
their own and are left out (a part with no files is a complete answer)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as S3ConnectionError

from tenantry_events.envelope import Envelope, new_event
from tenantry_events.faults import is_transient_db_error
from tenantry_events.payloads.tenancy import ExportFile, TenantExportPart, TenantExportRequested
from tenantry_events.pg import Database
from tenantry_events.storage import PostgresOutbox
from tenantry_objectstore import ObjectStore, open_object_store
from tenantry_platform.settings import ServiceSettings

log = logging.getLogger("tenantry.export")

EXPORT_REQUESTED = "tenant.export_requested"
NDJSON = "application/x-ndjson"
# Rows fetched per round trip of the cursor, and bytes gathered before handing a chunk to
# the store: both bound the memory of an export, whatever the tenant's size.
ROWS_PER_FETCH = 200
CHUNK_BYTES = 256 * 1024
# S3 answers that mean "later", not "never".
_S3_RETRY_CODES = frozenset({"SlowDown", "RequestTimeout", "ServiceUnavailable", "InternalError"})

Row = Mapping[str, Any]


@dataclass(frozen=True)
class ExportScope:
    """Whose data an export is: the tenant, or one person of it."""

    tenant_id: UUID
    subject_account_id: UUID | None
    settings: ServiceSettings


Renderer = Callable[[Row, ExportScope], Mapping[str, Any]]


def as_stored(row: Row, scope: ExportScope) -> Mapping[str, Any]:
    """The row as the query selected it: the query names the exported columns."""
    return row


@dataclass(frozen=True)
class ExportSource:
    """One NDJSON file of a service's share of an export.

    file: its name under the service's folder, e.g. "accounts.ndjson".
    schema: what each line is, e.g. "tenantry.identity.account/v1" or a SCIM URN.
    query: the rows, one line each. $1 is the tenant's id; for a `per_person` source $2 is
      the person's account id or NULL (the whole tenant), and the query keeps only that
      person's rows when it is set. Select only what the customer may see: never a secret
      or a hash (tests/test_export_parts.py looks for them).
    render: a row into the line's JSON object (default: the row as selected).
    per_person: the source has rows of one person (their account, their keys); False:
      it is written for a whole-tenant export only.
    """

    file: str
    schema: str
    query: str
    render: Renderer = as_stored
    per_person: bool = False


# For a move's export: the sources of every table of the tenant, read from the schema
# through the connection (tenantry_service.move.MoveShare.sources).
MoveSources = Callable[[asyncpg.Connection, UUID], Awaitable[Sequence[ExportSource]]]


class ExportFailed(Exception):
    """A source could not be written for a reason retrying will not cure."""


def is_transient_export_error(exc: BaseException) -> bool:
    """The database or the object store is unavailable for now: retry the request later.
    Walks the explicit causes (`raise ... from`), as tenantry_events.faults does."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        if is_transient_db_error(current):
            return True
        if isinstance(current, S3ConnectionError | HTTPClientError):
            return True  # botocore: connection refused or reset, timed out, closed early
        if isinstance(current, ClientError):
            error = current.response.get("Error", {})
            status = current.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if status >= 500 or error.get("Code") in _S3_RETRY_CODES:
                return True
        current = current.__cause__
    return False


class WorkerObjectStore:
    """The worker's one object store, opened on first use (an S3 client and its bucket
    check) and kept for the life of the process; `aclose` when the worker stops."""

    def __init__(self, settings: ServiceSettings) -> None:
        self._settings = settings
        self._exits = contextlib.AsyncExitStack()
        self._store: ObjectStore | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> ObjectStore:
        async with self._lock:
            if self._store is None:
                self._store = await self._exits.enter_async_context(
                    open_object_store(self._settings)
                )
            return self._store

    async def aclose(self) -> None:
        async with self._lock:
            self._store = None
            await self._exits.aclose()


_OBJECT_STORE = "export_object_store"  # (tenancy's api keeps its own as "object_store")


def worker_object_store(extras: dict[str, object], settings: ServiceSettings) -> WorkerObjectStore:
    """The process's store handle, kept in the runtime's extras (one per worker)."""
    existing = extras.get(_OBJECT_STORE)
    if isinstance(existing, WorkerObjectStore):
        return existing
    handle = WorkerObjectStore(settings)
    extras[_OBJECT_STORE] = handle
    return handle


async def close_object_store(extras: dict[str, object]) -> None:
    """Close the worker's store if an export opened it (worker shutdown)."""
    handle = extras.pop(_OBJECT_STORE, None)
    if isinstance(handle, WorkerObjectStore):
        await handle.aclose()


class LineCount:
    """How many lines `ndjson_lines` has produced so far (read once the store is done)."""

    def __init__(self) -> None:
        self.records = 0


_encoder = msgspec.json.Encoder()


async def ndjson_lines(
    conn: asyncpg.Connection, source: ExportSource, scope: ExportScope, count: LineCount
) -> AsyncIterator[bytes]:
    """The source's rows as NDJSON, in chunks of about CHUNK_BYTES, counted as they go."""
    args: tuple[Any, ...] = (scope.tenant_id,)
    if source.per_person:
        args = (scope.tenant_id, scope.subject_account_id)
    chunk = bytearray()
    async for row in conn.cursor(source.query, *args, prefetch=ROWS_PER_FETCH):
        _encoder.encode_into(source.render(dict(row), scope), chunk, -1)
        chunk += b"\n"
        count.records += 1
        if len(chunk) >= CHUNK_BYTES:
            yield bytes(chunk)
            chunk.clear()
    if chunk:
        yield bytes(chunk)


class TenantExporter:
    """The `tenant.export_requested` handler of one service."""

    def __init__(
        self,
        *,
        service: str,
        sources: Sequence[ExportSource],
        db: Database,
        store: WorkerObjectStore,
        settings: ServiceSettings,
        outbox: PostgresOutbox,
        source: str,
        moving: MoveSources | None = None,
    ) -> None:
        names = [s.file for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"{service}: two export sources write the same file: {names}")
        self._moving = moving
        self._service = service
        self._sources = tuple(sources)
        self._db = db
        self._store = store
        self._settings = settings
        self._outbox = outbox
        self._source = source

    async def handle(
        self, tx: asyncpg.Connection, envelope: Envelope[TenantExportRequested]
    ) -> None:
        request = envelope.payload
        scope = ExportScope(
            tenant_id=envelope.tenant_id,
            subject_account_id=request.subject_account_id,
            settings=self._settings,
        )
        try:
            part = TenantExportPart(
                export_id=request.export_id,
                service=self._service,
                files=await self.write(request.prefix, scope, move_id=request.move_id),
            )
        except ExportFailed as failure:
            part = TenantExportPart(
                export_id=request.export_id, service=self._service, files=[], error=str(failure)
            )
        await self._outbox.put(
            tx,
            [
                new_event(
                    part,
                    tenant_id=envelope.tenant_id,
                    subject=f"tenant/{envelope.tenant_id}",
                    aggregate_version=0,
                    source=self._source,
                    region=self._settings.region,
                )
            ],
        )

    async def write(
        self, prefix: str, scope: ExportScope, *, move_id: UUID | None = None
    ) -> list[ExportFile]:
        """Every source of the scope, in one snapshot (for a move: every table of the
        tenant, tenantry_service.move); `ExportFailed` names the file that could not be
        written; a transient failure is raised as it is."""
        sources = [s for s in self._sources if s.per_person or scope.subject_account_id is None]
        files: list[ExportFile] = []
        current = "the object store"
        try:
            store = await self._store.get()
            async with (
                self._db.pool.acquire() as proxy,
                proxy.transaction(isolation="repeatable_read", readonly=True),
            ):
                # Stores are typed against Connection; the pool's proxy forwards every call.
                conn: asyncpg.Connection = proxy  # type: ignore[assignment]
                await conn.execute(
                    "SELECT set_config('app.tenant_id', $1, true)", str(scope.tenant_id)
                )
                if move_id is not None:
                    if self._moving is None:
                        raise ExportFailed(f"{self._service} cannot write a move's share")
                    sources = list(await self._moving(conn, move_id))
                for source in sources:
                    current = f"{self._service}/{source.file}"
                    files.append(await self._write_file(conn, store, prefix, source, scope))
        except Exception as exc:
            if is_transient_export_error(exc):
                raise
            log.exception("export of tenant %s: %s could not be written", scope.tenant_id, current)
            raise ExportFailed(f"{current} could not be written ({type(exc).__name__})") from exc
        log.info(
            "exported tenant %s%s: %d files, %d records",
            scope.tenant_id,
            f" (account {scope.subject_account_id})" if scope.subject_account_id else "",
            len(files),
            sum(f.records for f in files),
        )
        return files

    async def _write_file(
        self,
        conn: asyncpg.Connection,
        store: ObjectStore,
        prefix: str,
        source: ExportSource,
        scope: ExportScope,
    ) -> ExportFile:
        name = f"{self._service}/{source.file}"
        count = LineCount()
        stored = await store.put(
            f"{prefix}{name}", ndjson_lines(conn, source, scope, count), content_type=NDJSON
        )
        return ExportFile(
            name=name,
            schema=source.schema,
            records=count.records,
            bytes=stored.bytes,
            sha256=stored.sha256,
            object_key=stored.key,
        )
