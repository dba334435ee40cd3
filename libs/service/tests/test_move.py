"""A service's share of a tenant's move (tenantry_service.move), between two real Postgres
databases: every row of the tenant out of one (as the export writes it) and into the
other, with the values and types Postgres gave them, sequences renumbered without
collisions (and the foreign keys that point at them following), secrets sealed for the
trip and sealed again with the new database's key, the neighbour's rows left behind,
and a repeated import that writes nothing twice."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest
import pytest_asyncio
from uuid_utils.compat import uuid4

from tenantry_credentials.crypto import DecryptionFailed, SecretBox
from tenantry_objectstore import LocalDirectoryStore
from tenantry_platform.settings import ServiceSettings
from tenantry_service.export import ExportScope, LineCount, ndjson_lines
from tenantry_service.move import NOT_MOVED, MoveRefused, MoveShare, Resealed, transfer_box
from tenantry_testkit.fixtures import (
    ScratchDatabase,
    create_scratch_database,
    drop_scratch_database,
)
from tenantry_testkit.stack import Stack

PARCELS = """
CREATE TABLE parcels (
    id        bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    label     text NOT NULL,
    tags      text[] NOT NULL DEFAULT '{}',
    meta      jsonb,
    sent_at   timestamptz,
    weight    numeric(10, 3),
    secret    bytea,
    code      text GENERATED ALWAYS AS (upper(label)) STORED
);
CREATE TABLE scans (
    scan_id   bigserial PRIMARY KEY,
    parcel_id bigint NOT NULL REFERENCES parcels ON DELETE CASCADE,
    tenant_id uuid NOT NULL,
    at        timestamptz NOT NULL
);
DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['parcels', 'scans'] LOOP
        EXECUTE format($p$CREATE POLICY tenant_scope ON %I USING (
            tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid)$p$, t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
    END LOOP;
END $$;
GRANT SELECT, INSERT ON parcels, scans TO {app_role};
GRANT USAGE ON SEQUENCE parcels_id_seq, scans_scan_id_seq TO {app_role};
"""
SECRET_OF = Resealed("parcels", "secret", lambda row: f"parcel:{row['label']}")
SHARED = "the-regions-shared-secret"


def master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def settings(key: str) -> ServiceSettings:
    return ServiceSettings(
        database_url="", kafka_bootstrap="", master_key=key, directory_secret=SHARED
    )


async def with_parcels(stack: Stack) -> ScratchDatabase:
    scratch = await create_scratch_database(stack, prefix="mv")
    owner = await asyncpg.connect(scratch.owner_dsn)
    try:
        await owner.execute(PARCELS.replace("{app_role}", stack.app_role))
    finally:
        await owner.close()
    return scratch


@pytest_asyncio.fixture
async def regions(stack: Stack) -> AsyncIterator[tuple[ScratchDatabase, ScratchDatabase]]:
    old, new = await with_parcels(stack), await with_parcels(stack)
    try:
        yield old, new
    finally:
        await drop_scratch_database(stack, old)
        await drop_scratch_database(stack, new)


async def put_parcels(
    db: ScratchDatabase, tenant_id: UUID, box: SecretBox, labels: list[str]
) -> None:
    async with db.db.transaction(tenant_id=tenant_id) as tx:
        for n, label in enumerate(labels):
            parcel = await tx.fetchval(
                """INSERT INTO parcels (tenant_id, label, tags, meta, sent_at, weight, secret)
                   VALUES ($1, $2, $3, $4::jsonb, now() - make_interval(days => $5), $6, $7)
                   RETURNING id""",
                tenant_id,
                label,
                [label, "ünïcode", 'quo"te'],
                msgspec.json.encode({"n": n, "nested": {"label": label}}).decode(),
                n,
                f"{n}.125",
                box.encrypt(f"secret of {label}".encode(), f"parcel:{label}"),
            )
            for _ in range(n + 1):
                await tx.execute(
                    "INSERT INTO scans (parcel_id, tenant_id, at) VALUES ($1, $2, now())",
                    parcel,
                    tenant_id,
                )
        await tx.execute(
            """INSERT INTO data_key_copies (tenant_id, subject_id, wrapped_key)
               VALUES ($1, NULL, '\\x00')""",
            tenant_id,
        )


async def exported(
    db: ScratchDatabase,
    share: MoveShare,
    store: LocalDirectoryStore,
    tenant_id: UUID,
    move_id: UUID,
) -> dict[str, str]:
    """What a move's export writes: one file per table, from one snapshot."""
    scope = ExportScope(tenant_id=tenant_id, subject_account_id=None, settings=share.settings)
    files = {}
    async with db.db.transaction(tenant_id=tenant_id) as tx:
        for source in await share.sources(tx, move_id):
            key = f"moves/{move_id}/{source.file}"
            lines = ndjson_lines(tx, source, scope, LineCount())
            await store.put(key, lines, content_type="application/x-ndjson")
            files[source.file.removesuffix(".ndjson")] = key
    return files


async def parcels_of(db: ScratchDatabase, tenant_id: UUID) -> list[dict[str, Any]]:
    async with db.db.transaction(tenant_id=tenant_id) as tx:
        rows = await tx.fetch(
            """SELECT p.id, p.label, p.tags, p.meta, p.sent_at, p.weight, p.secret, p.code,
                      (SELECT count(*) FROM scans s WHERE s.parcel_id = p.id) AS scans
               FROM parcels p ORDER BY p.id"""
        )
    return [dict(r) for r in rows]


async def test_a_share_moves_whole_and_only_the_tenants(
    regions: tuple[ScratchDatabase, ScratchDatabase], tmp_path: Path
) -> None:
    old_db, new_db = regions
    old_key, new_key = master_key(), master_key()
    old_box, new_box = SecretBox.from_base64(old_key), SecretBox.from_base64(new_key)
    tenant, neighbour, resident = (UUID(str(uuid4())) for _ in range(3))
    await put_parcels(old_db, tenant, old_box, ["a", "b", "c", "d"])
    await put_parcels(old_db, neighbour, old_box, ["neighbour"])
    # The new database has rows already: its sequences are past the numbers moving in.
    await put_parcels(new_db, resident, new_box, ["r1", "r2", "r3", "r4", "r5", "r6"])
    before = await parcels_of(old_db, tenant)

    store = LocalDirectoryStore(tmp_path)
    move_id = UUID(str(uuid4()))
    old_share = MoveShare(
        service="test", db=old_db.db, settings=settings(old_key), resealed=[SECRET_OF]
    )
    files = await exported(old_db, old_share, store, tenant, move_id)
    assert set(files) >= {"parcels", "scans"}
    assert not set(files) & set(NOT_MOVED), "data_key_copies and the like stay behind"

    # On the way, the secret is sealed for the trip: neither region's key opens it.
    parcel_lines = b"".join([c async for c in store.get(files["parcels"])]).splitlines()
    travelling = bytes.fromhex(msgspec.json.decode(parcel_lines[0])["secret"][2:])
    for box in (old_box, new_box):
        with pytest.raises(DecryptionFailed):
            box.decrypt(travelling, "parcel:a")
    assert transfer_box(SHARED, move_id).decrypt(travelling, "parcel:a") == b"secret of a"

    new_share = MoveShare(
        service="test", db=new_db.db, settings=settings(new_key), resealed=[SECRET_OF]
    )
    counts = {c.table: c.rows for c in await new_share.run(store, tenant, move_id, files)}
    assert counts["parcels"] == 4
    assert counts["scans"] == 1 + 2 + 3 + 4

    after = await parcels_of(new_db, tenant)
    residents = await parcels_of(new_db, resident)
    # Same rows, same values and types; the generated column computed again.
    strip = ("id", "secret")
    assert [{k: v for k, v in r.items() if k not in strip} for r in after] == [
        {k: v for k, v in r.items() if k not in strip} for r in before
    ]
    # Fresh numbers from the new sequence, in the same order, none a resident's.
    assert [r["id"] for r in after] == sorted(r["id"] for r in after)
    assert min(r["id"] for r in after) > max(r["id"] for r in residents)
    # The secret opens with the new region's key only, bound as before.
    for row in after:
        label = row["label"]
        assert new_box.decrypt(row["secret"], f"parcel:{label}") == f"secret of {label}".encode()
        with pytest.raises(DecryptionFailed):
            old_box.decrypt(row["secret"], f"parcel:{label}")
    # Nothing of the neighbour, and the data key copy stayed behind.
    assert await parcels_of(new_db, neighbour) == []
    async with new_db.db.transaction(platform=True) as tx:
        assert not await tx.fetchval(
            "SELECT count(*) FROM data_key_copies WHERE tenant_id = $1", tenant
        )

    # Again (a driver retrying after a crash): the same answer, nothing written twice.
    again = {c.table: c.rows for c in await new_share.run(store, tenant, move_id, files)}
    assert again == counts
    assert await parcels_of(new_db, tenant) == after


async def test_a_row_of_another_tenant_is_refused_and_nothing_is_written(
    regions: tuple[ScratchDatabase, ScratchDatabase], tmp_path: Path
) -> None:
    old_db, new_db = regions
    key = master_key()
    box = SecretBox.from_base64(key)
    tenant, other = UUID(str(uuid4())), UUID(str(uuid4()))
    await put_parcels(old_db, tenant, box, ["mine"])
    await put_parcels(old_db, other, box, ["theirs"])
    store = LocalDirectoryStore(tmp_path)
    move_id = UUID(str(uuid4()))
    share = MoveShare(service="test", db=old_db.db, settings=settings(key), resealed=[SECRET_OF])
    files = await exported(old_db, share, store, tenant, move_id)
    # The other tenant's export of scans, passed off as this tenant's.
    files["scans"] = (await exported(old_db, share, store, other, UUID(str(uuid4()))))["scans"]

    importer = MoveShare(service="test", db=new_db.db, settings=settings(key), resealed=[SECRET_OF])
    with pytest.raises(MoveRefused, match="another tenant"):
        await importer.run(store, tenant, move_id, files)
    assert await parcels_of(new_db, tenant) == []
    assert await importer.imported(tenant, move_id) is None


async def test_a_file_for_no_table_is_refused(
    regions: tuple[ScratchDatabase, ScratchDatabase], tmp_path: Path
) -> None:
    _, new_db = regions
    share = MoveShare(service="test", db=new_db.db, settings=settings(master_key()))
    with pytest.raises(MoveRefused, match="no table"):
        await share.run(
            LocalDirectoryStore(tmp_path), UUID(str(uuid4())), UUID(str(uuid4())), {"nope": "x"}
        )
