"""A service's share of moving a tenant to another region (issue 18 §7): its rows out of
the old region's database, and into the new region's.

Out: the move is an export (tenantry_service.export) whose request carries a `move_id`.
Instead of the customer's files, each service writes one NDJSON file per table with the
tenant's rows, every column, as Postgres renders the row (`to_jsonb`), so the import can
hand the same text back to Postgres (`jsonb_populate_recordset`) and get the same values
and types. Which tables: every table with a `tenant_id` column, found by introspection
like the purge's, but those named in NOT_MOVED with why. Tables without the column are
never moved (the purge's classification says what they hold: sessions, the outbox, the
idempotency keys).

Secrets stay sealed on the way. A column a service encrypts with its master key (SSO
client secrets, webhook signing secrets, tenancy's wrapped data keys) is declared as
`Resealed`: on the way out it is opened with the old region's key and sealed again with
the move's transfer key; on the way in, the other way round. The transfer key is derived
from the secret every region shares (`TENANTRY_DIRECTORY_SECRET`) and the move's id, so
the archive in object storage and on the wire holds no secret anyone without both opens.
Tenancy's wrapped data keys travel the same way, so the sealed personal fields of the
tenant's event streams open in the new region.

In: one transaction per service, tables in foreign-key order, scoped to the tenant (row-
level security refuses a row of another tenant; the code refuses it first). Columns fed
by a sequence (a delivery's number) are renumbered from the new region's sequence, in the
same order, and the columns that reference them follow. The transaction also writes
`tenant_imports` (the move id and the counts): a repeated import answers those counts and
writes nothing, so the driver may retry after any failure.
"""

from __future__ import annotations

import binascii
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tenantry_credentials.crypto import DecryptionFailed, SecretBox
from tenantry_events.payloads.tenancy import PurgedRows
from tenantry_events.pg import Database
from tenantry_objectstore import ObjectStore
from tenantry_platform.settings import ServiceSettings
from tenantry_service.export import ExportScope, ExportSource, Row
from tenantry_service.purge import PURGE_RECORD, Schema, read_schema

log = logging.getLogger("tenantry.move")

MOVE_SCHEMA = "tenantry.move.row/v1"  # each line: one row, as Postgres's to_jsonb renders it
IMPORT_RECORD = "tenant_imports"
# Rows inserted per statement: a batch is one JSON array parameter.
ROWS_PER_INSERT = 500

# Tables with a tenant_id column whose rows stay behind, each with why.
NOT_MOVED: Mapping[str, str] = {
    "data_key_copies": "a service's copies of the data key, wrapped with its own master key: "
    "the new region's services fetch the moved key from their tenancy",
    "directory_replica": "every region's replica of the directory already has the tenant",
    "directory_pending": "tenancy's queue to the directory: the move switches the directory",
    "inbox": "ids of events consumed from the old region's topics",
    "exports": "export jobs: their archives stay in the old region's object store and go "
    "with its purge",
    "export_links": "download links to those archives",
    "tenant_moves": "each region keeps its own record of the move",
    IMPORT_RECORD: "the import's own record, written by the import",
    PURGE_RECORD: "a purge's tombstone",
    # Credentials name their region (keys in their prefix, tokens in their issuer) and
    # end with the move, as sessions do; the tenant issues new ones in the new region.
    "api_keys": "API keys (SCIM tokens included) name their region: issued again after a move",
    "api_key_projection": "the projection of those keys",
    "key_rate_policies": "rate policies of those keys",
    "sso_sessions": "the IdP side of sessions, which end with the move",
    "sso_login_requests": "sign-ins in flight (minutes long), which end with the move",
    "sso_codes": "authorization codes in flight (a minute long), which end with the move",
}


@dataclass(frozen=True)
class Resealed:
    """A column encrypted with the service's master key (SecretBox), and the context its
    ciphertext is bound to, computed from the row (as to_jsonb renders it)."""

    table: str
    column: str
    context: Callable[[Mapping[str, Any]], str]


class MoveRefused(Exception):
    """A share cannot be moved as it is (a row of another tenant, an unknown table, a
    secret that does not open): retrying will not help."""


def transfer_box(shared_secret: str, move_id: UUID) -> SecretBox:
    """The key secrets travel under during one move, which both regions derive."""
    return SecretBox.derived(shared_secret, b"tenantry:tenant-move:v1:" + move_id.bytes)


def moved_tables(schema: Schema) -> list[str]:
    """The tables a move carries, parents before the tables that reference them."""
    return list(reversed(schema.deletion_order(keep=NOT_MOVED.keys())))


def _reseal(
    line: dict[str, Any], rules: Sequence[Resealed], opener: SecretBox, sealer: SecretBox
) -> dict[str, Any]:
    for rule in rules:
        value = line.get(rule.column)
        if value is None:
            continue
        context = rule.context(line)
        try:
            plain = opener.decrypt(bytes.fromhex(str(value).removeprefix("\\x")), context)
        except (DecryptionFailed, ValueError, binascii.Error) as exc:
            raise MoveRefused(f"{rule.table}.{rule.column} does not open") from exc
        line[rule.column] = "\\x" + sealer.encrypt(plain, context).hex()
    return line


def move_sources(
    schema: Schema, resealed: Sequence[Resealed], own: SecretBox | None, transfer: SecretBox
) -> list[ExportSource]:
    """One source per moved table: every row of the tenant, every column."""
    sources = []
    for table in moved_tables(schema):
        rules = [r for r in resealed if r.table == table]
        if rules and own is None:
            raise MoveRefused(f"{table} holds secrets and the service has no master key")

        def render(row: Row, scope: ExportScope, rules: list[Resealed] = rules) -> dict[str, Any]:
            line: dict[str, Any] = msgspec.json.decode(row["line"])
            return _reseal(line, rules, own, transfer) if rules and own else line

        sources.append(
            ExportSource(
                file=f"{table}.ndjson",
                schema=MOVE_SCHEMA,
                # The table name comes from the catalog, never from input.
                query=f"SELECT to_jsonb(t)::text AS line FROM {table} t WHERE t.tenant_id = $1",
                render=render,
            )
        )
    return sources


@dataclass(frozen=True)
class _Columns:
    insertable: list[str]  # not generated
    numbered: dict[str, str]  # column -> its sequence
    references: dict[str, tuple[str, str]]  # column -> (parent table, parent column)


async def _columns(conn: asyncpg.Connection, table: str) -> _Columns:
    rows = await conn.fetch(
        """SELECT a.attname AS name, a.attgenerated <> '' AS generated,
                  pg_get_serial_sequence($1::text, a.attname) AS sequence
           FROM pg_attribute a
           WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
           ORDER BY a.attnum""",
        table,
    )
    references = await conn.fetch(
        """SELECT child.attname AS col, parent_table.relname AS parent, parent.attname AS pcol
           FROM pg_constraint f
           JOIN pg_class parent_table ON parent_table.oid = f.confrelid
           JOIN pg_attribute child ON child.attrelid = f.conrelid AND child.attnum = f.conkey[1]
           JOIN pg_attribute parent ON parent.attrelid = f.confrelid
                                   AND parent.attnum = f.confkey[1]
           WHERE f.contype = 'f' AND f.conrelid = $1::regclass AND cardinality(f.conkey) = 1""",
        table,
    )
    return _Columns(
        insertable=[r["name"] for r in rows if not r["generated"]],
        numbered={r["name"]: r["sequence"] for r in rows if r["sequence"]},
        references={r["col"]: (r["parent"], r["pcol"]) for r in references},
    )


async def _lines(store: ObjectStore, key: str) -> AsyncIterator[dict[str, Any]]:
    pending = b""
    async for chunk in store.get(key):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line:
                yield msgspec.json.decode(line)
    if pending.strip():
        yield msgspec.json.decode(pending)


class MoveShare:
    """One service's share of a moving tenant: the sources its export writes in the old
    region, and their import in the new one."""

    def __init__(
        self,
        *,
        service: str,
        db: Database,
        settings: ServiceSettings,
        resealed: Sequence[Resealed] = (),
    ) -> None:
        self.service = service
        self.settings = settings
        self._db = db
        self._resealed = tuple(resealed)
        self._own = SecretBox.from_base64(settings.master_key) if settings.master_key else None
        self._shared_secret = settings.directory_secret

    async def sources(self, conn: asyncpg.Connection, move_id: UUID) -> list[ExportSource]:
        """What the export of a move writes (tenantry_service.export.MoveSources)."""
        transfer = transfer_box(self._shared_secret, move_id)
        return move_sources(await read_schema(conn), self._resealed, self._own, transfer)

    async def imported(self, tenant_id: UUID, move_id: UUID) -> list[PurgedRows] | None:
        async with self._db.transaction(tenant_id=tenant_id) as tx:
            return await self._recorded(tx, tenant_id, move_id)

    async def _recorded(
        self, tx: asyncpg.Connection, tenant_id: UUID, move_id: UUID
    ) -> list[PurgedRows] | None:
        tables = await tx.fetchval(
            "SELECT tables FROM tenant_imports WHERE tenant_id = $1 AND move_id = $2",
            tenant_id,
            move_id,
        )
        return None if tables is None else msgspec.convert(tables, list[PurgedRows])

    async def run(
        self, store: ObjectStore, tenant_id: UUID, move_id: UUID, files: Mapping[str, str]
    ) -> list[PurgedRows]:
        """Import `files` (table name -> object key); the counts per table. Idempotent."""
        transfer = transfer_box(self._shared_secret, move_id)
        async with self._db.transaction(tenant_id=tenant_id) as tx:
            if (done := await self._recorded(tx, tenant_id, move_id)) is not None:
                return done
            schema = await read_schema(tx)
            order = moved_tables(schema)
            if unknown := sorted(set(files) - set(order)):
                raise MoveRefused(f"{self.service}: no table to import {', '.join(unknown)}")
            if any(r.table in files for r in self._resealed) and self._own is None:
                raise MoveRefused(f"{self.service}: secrets to import and no master key")
            renumbered: dict[tuple[str, str], dict[int, int]] = {}
            counts: list[PurgedRows] = []
            for table in order:
                if table in files:
                    rows = await self._import_table(
                        tx, store, table, files[table], tenant_id, transfer, renumbered
                    )
                    counts.append(PurgedRows(table=table, rows=rows))
            await tx.execute(
                """INSERT INTO tenant_imports (tenant_id, move_id, tables)
                   VALUES ($1, $2, $3::jsonb)""",
                tenant_id,
                move_id,
                msgspec.to_builtins(counts),
            )
        log.info(
            "imported tenant %s (move %s): %d rows in %d tables",
            tenant_id,
            move_id,
            sum(c.rows for c in counts),
            len(counts),
        )
        return counts

    async def _import_table(
        self,
        tx: asyncpg.Connection,
        store: ObjectStore,
        table: str,
        key: str,
        tenant_id: UUID,
        transfer: SecretBox,
        renumbered: dict[tuple[str, str], dict[int, int]],
    ) -> int:
        columns = await _columns(tx, table)
        # Numbers from the old region's sequences would collide with the new region's:
        # each gets a fresh one, in the same order, before any row goes in.
        for column, sequence in columns.numbered.items():
            old = sorted({int(line[column]) async for line in _lines(store, key)})
            fresh = await tx.fetch(
                "SELECT nextval($1::regclass) AS n FROM generate_series(1, $2)", sequence, len(old)
            )
            renumbered[(table, column)] = dict(zip(old, sorted(r["n"] for r in fresh), strict=True))
        rules = [r for r in self._resealed if r.table == table]
        names = ", ".join(f'"{c}"' for c in columns.insertable)
        insert = (
            f"INSERT INTO {table} ({names}) SELECT {names} "
            f"FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb)"
        )
        batch: list[dict[str, Any]] = []
        count = 0
        async for line in _lines(store, key):
            if line.get("tenant_id") != str(tenant_id):
                raise MoveRefused(f"{table}: a row of another tenant")
            for column in columns.numbered:
                line[column] = renumbered[(table, column)][int(line[column])]
            for column, parent in columns.references.items():
                mapping = renumbered.get(parent)
                if mapping is not None and line.get(column) is not None:
                    line[column] = mapping[int(line[column])]
            if rules and self._own is not None:
                line = _reseal(line, rules, transfer, self._own)
            batch.append(line)
            if len(batch) >= ROWS_PER_INSERT:
                await tx.execute(insert, batch)
                count += len(batch)
                batch.clear()
        if batch:
            await tx.execute(insert, batch)
            count += len(batch)
        return count
