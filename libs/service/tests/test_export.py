"""The NDJSON a service's export writes (tenantry_service.export.ndjson_lines), on a real
Postgres cursor: whatever the rows hold (any Unicode, line and paragraph separators,
quotes, text long enough to span chunks), the output is one line per row, each line
decoding to the rendered row, and every chunk handed to the store ends on a line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uuid_utils.compat import uuid4

from tenantry_platform.settings import ServiceSettings
from tenantry_service.export import (
    CHUNK_BYTES,
    ExportScope,
    ExportSource,
    LineCount,
    Row,
    ndjson_lines,
)
from tenantry_testkit.fixtures import ScratchDatabase
from tenantry_testkit.stack import Stack

THINGS = """
CREATE TABLE things (
    tenant_id uuid NOT NULL, n integer NOT NULL, body text, tags jsonb NOT NULL);
ALTER TABLE things ENABLE ROW LEVEL SECURITY;
ALTER TABLE things FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_scope ON things USING (
    tenant_id = nullif(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT ON things TO {app_role};
"""


def thing_line(row: Row, scope: ExportScope) -> Mapping[str, Any]:
    return {"n": row["n"], "body": row["body"], "tags": row["tags"], "of": scope.tenant_id}


THINGS_SOURCE = ExportSource(
    file="things.ndjson",
    schema="tenantry.test.thing/v1",
    query="SELECT n, body, tags FROM things WHERE tenant_id = $1 ORDER BY n",
    render=thing_line,
)

# Postgres text holds any character but NUL.
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))
bodies = st.one_of(
    st.none(),
    texts,
    # Long enough that a few rows cross CHUNK_BYTES.
    st.builds(lambda t, k: (t or "x") * k, texts, st.integers(1, 40_000)),
)
things = st.lists(st.tuples(bodies, st.lists(texts, max_size=4)), max_size=30)


@pytest_asyncio.fixture
async def things_db(stack: Stack, scratch_db: ScratchDatabase) -> ScratchDatabase:
    owner = await asyncpg.connect(scratch_db.owner_dsn)
    try:
        await owner.execute(THINGS.replace("{app_role}", stack.app_role))
    finally:
        await owner.close()
    return scratch_db


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=things)
async def test_one_line_per_row_whatever_the_rows_hold(
    things_db: ScratchDatabase, rows: list[tuple[str | None, list[str]]]
) -> None:
    tenant_id, neighbour = UUID(str(uuid4())), UUID(str(uuid4()))
    scope = ExportScope(
        tenant_id=tenant_id,
        subject_account_id=None,
        settings=ServiceSettings(database_url="", kafka_bootstrap=""),
    )
    conn = await asyncpg.connect(things_db.app_dsn)
    try:
        await conn.set_type_codec(
            "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )
        transaction = conn.transaction()
        await transaction.start()
        try:
            # A row of another tenant is there too: the tenant scope keeps it out.
            for owner, batch in ((neighbour, [("the neighbour's", [])]), (tenant_id, rows)):
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(owner))
                await conn.executemany(
                    "INSERT INTO things VALUES ($1, $2, $3, $4)",
                    [(owner, n, body, tags) for n, (body, tags) in enumerate(batch)],
                )
            count = LineCount()
            chunks = [c async for c in ndjson_lines(conn, THINGS_SOURCE, scope, count)]
        finally:
            await transaction.rollback()
    finally:
        await conn.close()

    data = b"".join(chunks)
    assert count.records == len(rows)
    assert all(chunk.endswith(b"\n") for chunk in chunks)
    longest = max((len(line) + 1 for line in data.split(b"\n")), default=0)
    assert all(len(chunk) < CHUNK_BYTES + longest for chunk in chunks)
    lines = data.split(b"\n")
    assert lines[-1] == b""
    assert [json.loads(line) for line in lines[:-1]] == [
        {"n": n, "body": body, "tags": tags, "of": str(tenant_id)}
        for n, (body, tags) in enumerate(rows)
    ]
