"""Every foreign key of every service's database has an index on its referencing columns.
Deleting a referenced row (and a tenant's purge deletes every row of the tenant) checks
the referencing table for each deleted row; without such an index each check is a full
scan, and a purge grows with the product of the two tables' sizes."""

from __future__ import annotations

import asyncpg
import pytest

from tenantry_testkit.stack import Stack

from .conftest import SERVICES


@pytest.mark.parametrize("service", SERVICES)
async def test_every_foreign_key_has_an_index_on_its_referencing_columns(
    stack: Stack, service: str
) -> None:
    conn = await asyncpg.connect(stack.owner_dsn(stack.service_database(service)))
    try:
        keys = await conn.fetch(
            """SELECT conrelid::regclass::text AS child, conname, conkey::int2[] AS columns
               FROM pg_constraint
               WHERE contype = 'f' AND connamespace = 'public'::regnamespace"""
        )
        indexes = await conn.fetch(
            """SELECT indrelid::regclass::text AS tab,
                      string_to_array(indkey::text, ' ')::int2[] AS columns
               FROM pg_index"""
        )
    finally:
        await conn.close()
    unindexed = [
        f"{key['child']}.{key['conname']}"
        for key in keys
        if not any(
            index["tab"] == key["child"]
            and sorted(index["columns"][: len(key["columns"])]) == sorted(key["columns"])
            for index in indexes
        )
    ]
    assert unindexed == []
