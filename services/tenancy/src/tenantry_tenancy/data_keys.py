"""Tenancy's key store: every tenant's data key and every person's subject key, the keys
that crypto-shredding destroys (docs/data-keys.md).

A key is 32 random bytes, generated here and nowhere else, and stored only wrapped with
the region's key-encryption key (the master key, through SecretBox; the wrapping binds the
tenant and subject, so a wrapped key copied to another row does not open). Destroying a
key deletes the wrapped material and keeps the row as a tombstone, so a destroyed key is
never made again: asking for it raises KeyDestroyed.

Keys never travel in events: the other services fetch theirs from the internal key API
(internal_api.py); tenancy's own event store reads this table (`TenancyDataKeys`).
"""

from __future__ import annotations

import os
from uuid import UUID

import asyncpg

from tenantry_credentials.crypto import DecryptionFailed, SecretBox
from tenantry_events.pg import Database
from tenantry_events.sealing import KEY_BYTES, KeysUnavailable
from tenantry_platform.clock import Clock, SystemClock, utc
from tenantry_platform.settings import ServiceSettings
from tenantry_service.data_keys import CachedDataKeys, KeyCache, KeyDestroyed

NIL_UUID = UUID(int=0)
# The live keys of each table after a (tenant_id, subject_id) position, in that order; a
# tenant's data key stands at subject NIL_UUID.
_LIVE_KEYS = {
    "tenant_data_keys": (
        "SELECT tenant_id, $2::uuid AS subject_id, wrapped_key FROM tenant_data_keys"
        " WHERE wrapped_key IS NOT NULL AND tenant_id > $1 ORDER BY tenant_id LIMIT $3"
    ),
    "subject_data_keys": (
        "SELECT tenant_id, subject_id, wrapped_key FROM subject_data_keys"
        " WHERE wrapped_key IS NOT NULL AND (tenant_id, subject_id) > ($1, $2)"
        " ORDER BY tenant_id, subject_id LIMIT $3"
    ),
}


def generate_data_key() -> bytes:
    return os.urandom(KEY_BYTES)


def key_context(tenant_id: UUID, subject_id: UUID | None = None) -> str:
    """What a wrapped key is bound to (SecretBox's associated data)."""
    if subject_id is None:
        return f"tenancy.tenant_data_key:{tenant_id}"
    return f"tenancy.subject_data_key:{tenant_id}:{subject_id}"


class DataKeyStore:
    """tenant_data_keys and subject_data_keys (migration 0007). `subject_id` None means
    the tenant's data key, a UUID that person's subject key."""

    def __init__(self, db: Database, kek: SecretBox, *, clock: Clock | None = None) -> None:
        self._db = db
        self._kek = kek
        self._clock = clock or SystemClock()

    async def read(
        self, conn: asyncpg.Connection, tenant_id: UUID, subject_id: UUID | None = None
    ) -> bytes | None:
        """The key, None when it was never made; KeyDestroyed when it was destroyed. Reads
        in the caller's transaction (a subject key of a destroyed tenant is destroyed)."""
        if subject_id is None:
            row = await conn.fetchrow(
                "SELECT wrapped_key, destroyed_at FROM tenant_data_keys WHERE tenant_id = $1",
                tenant_id,
            )
        else:
            row = await conn.fetchrow(
                """
                SELECT s.wrapped_key, coalesce(t.destroyed_at, s.destroyed_at) AS destroyed_at
                FROM subject_data_keys s
                LEFT JOIN tenant_data_keys t ON t.tenant_id = s.tenant_id
                WHERE s.tenant_id = $1 AND s.subject_id = $2
                """,
                tenant_id,
                subject_id,
            )
        if row is None:
            return None
        if row["destroyed_at"] is not None:
            raise KeyDestroyed(_whose(tenant_id, subject_id) + " was destroyed")
        return self._kek.decrypt(bytes(row["wrapped_key"]), key_context(tenant_id, subject_id))

    async def get_or_create(self, tenant_id: UUID, subject_id: UUID | None = None) -> bytes:
        """The key, made first if there is none, committed before it is returned (in a
        transaction of its own: a key handed out is never rolled back with the caller's
        work). Every concurrent first use gets the same key: the inserts race on the
        primary key, the losers' wait for the winner's commit and do nothing, and all read
        the winner's key. KeyDestroyed for a destroyed key (never made again)."""
        async with self._db.transaction() as conn:
            # A subject key needs its tenant's row, held FOR SHARE: destroy_tenant_key
            # (which locks that row to update it) then sees the new subject key and destroys
            # it too, or runs first and this one finds the tenant destroyed.
            await self._insert_new(conn, tenant_id, None)
            if subject_id is not None:
                tenant_destroyed = await conn.fetchval(
                    "SELECT destroyed_at FROM tenant_data_keys WHERE tenant_id = $1 FOR SHARE",
                    tenant_id,
                )
                if tenant_destroyed is not None:
                    raise KeyDestroyed(_whose(tenant_id, None) + " was destroyed")
                await self._insert_new(conn, tenant_id, subject_id)
            key = await self.read(conn, tenant_id, subject_id)
        if key is None:  # the row was just inserted or found in this transaction
            raise AssertionError(f"{_whose(tenant_id, subject_id)} vanished after its insert")
        return key

    async def destroy_tenant_key(self, tenant_id: UUID) -> bool:
        """Destroys the tenant's data key and every subject key of the tenant, for good.
        True when something was destroyed now (False: destroyed before). A tenant that
        never had a key gets a destroyed row all the same, so none is made later."""
        now = utc(self._clock)
        async with self._db.transaction() as conn:
            destroyed = await conn.fetchval(
                """
                INSERT INTO tenant_data_keys (tenant_id, wrapped_key, created_at, destroyed_at)
                VALUES ($1, NULL, $2, $2)
                ON CONFLICT (tenant_id) DO UPDATE
                    SET wrapped_key = NULL, destroyed_at = $2
                    WHERE tenant_data_keys.destroyed_at IS NULL
                RETURNING tenant_id
                """,
                tenant_id,
                now,
            )
            await conn.execute(
                "UPDATE subject_data_keys SET wrapped_key = NULL, destroyed_at = $2"
                " WHERE tenant_id = $1 AND destroyed_at IS NULL",
                tenant_id,
                now,
            )
        return destroyed is not None

    async def destroy_subject_key(self, tenant_id: UUID, subject_id: UUID) -> bool:
        """Destroys one person's key (their erasure inside a live tenant), as
        destroy_tenant_key: a person who never had one gets a destroyed row."""
        async with self._db.transaction() as conn:
            return await self.destroy_subject_key_in(conn, tenant_id, subject_id)

    async def destroy_subject_key_in(
        self, conn: asyncpg.Connection, tenant_id: UUID, subject_id: UUID
    ) -> bool:
        """destroy_subject_key in the caller's transaction (the erasure's: the key goes
        with the request's record, or neither does)."""
        now = utc(self._clock)
        destroyed = await conn.fetchval(
            """
            INSERT INTO subject_data_keys
                (tenant_id, subject_id, wrapped_key, created_at, destroyed_at)
            VALUES ($1, $2, NULL, $3, $3)
            ON CONFLICT (tenant_id, subject_id) DO UPDATE
                SET wrapped_key = NULL, destroyed_at = $3
                WHERE subject_data_keys.destroyed_at IS NULL
            RETURNING tenant_id
            """,
            tenant_id,
            subject_id,
            now,
        )
        return destroyed is not None

    async def rewrap(self, previous: SecretBox, *, batch_size: int = 500) -> int:
        """A KEK rotation: every live key wrapped with `previous` is wrapped again with this
        store's KEK (the new one). The keys themselves do not change, so nothing they sealed
        is touched. A key already under the new KEK is left as it is: a run that stopped
        half-way is run again. Returns how many keys were re-wrapped; DecryptionFailed if a
        key opens with neither KEK."""
        rewrapped = 0
        for table, select in _LIVE_KEYS.items():
            after = (NIL_UUID, NIL_UUID)  # keyset paging: (tenant_id, subject_id) in order
            while True:
                async with self._db.transaction() as conn:
                    rows = await conn.fetch(select, *after, batch_size)
                for row in rows:
                    rewrapped += await self._rewrap_one(table, row, previous)
                if len(rows) < batch_size:
                    break
                after = (rows[-1]["tenant_id"], rows[-1]["subject_id"])
        return rewrapped

    async def _rewrap_one(self, table: str, row: asyncpg.Record, previous: SecretBox) -> int:
        tenant_id, subject_id = row["tenant_id"], row["subject_id"]
        context = key_context(tenant_id, subject_id if table == "subject_data_keys" else None)
        wrapped = bytes(row["wrapped_key"])
        try:
            self._kek.decrypt(wrapped, context)
            return 0  # under the new KEK already
        except DecryptionFailed:
            key = previous.decrypt(wrapped, context)
        rewrapped = self._kek.encrypt(key, context)
        async with self._db.transaction() as conn:
            # Only if the row still holds what was read (not destroyed meanwhile).
            if table == "tenant_data_keys":
                status = await conn.execute(
                    "UPDATE tenant_data_keys SET wrapped_key = $3"
                    " WHERE tenant_id = $1 AND wrapped_key = $2",
                    tenant_id,
                    wrapped,
                    rewrapped,
                )
            else:
                status = await conn.execute(
                    "UPDATE subject_data_keys SET wrapped_key = $4"
                    " WHERE tenant_id = $1 AND subject_id = $2 AND wrapped_key = $3",
                    tenant_id,
                    subject_id,
                    wrapped,
                    rewrapped,
                )
        return 1 if status == "UPDATE 1" else 0

    async def _insert_new(
        self, conn: asyncpg.Connection, tenant_id: UUID, subject_id: UUID | None
    ) -> None:
        wrapped = self._kek.encrypt(generate_data_key(), key_context(tenant_id, subject_id))
        now = utc(self._clock)
        if subject_id is None:
            await conn.execute(
                "INSERT INTO tenant_data_keys (tenant_id, wrapped_key, created_at)"
                " VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO NOTHING",
                tenant_id,
                wrapped,
                now,
            )
        else:
            await conn.execute(
                "INSERT INTO subject_data_keys (tenant_id, subject_id, wrapped_key, created_at)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, subject_id) DO NOTHING",
                tenant_id,
                subject_id,
                wrapped,
                now,
            )


def _whose(tenant_id: UUID, subject_id: UUID | None) -> str:
    if subject_id is None:
        return f"the data key of tenant {tenant_id}"
    return f"the subject key of {subject_id} in tenant {tenant_id}"


class TenancyDataKeys(CachedDataKeys):
    """DataKeys (tenantry_events.sealing) for tenancy itself: straight from its own table,
    through a short-lived memory cache. Existing keys are read in the caller's
    transaction; a first use makes the key in a transaction of its own."""

    def __init__(self, store: DataKeyStore | None, cache: KeyCache | None = None) -> None:
        super().__init__(cache)
        self._store = store  # None: no master key configured; every use says so

    @classmethod
    def from_settings(cls, db: Database, settings: ServiceSettings) -> TenancyDataKeys:
        if not settings.master_key:
            return cls(None)
        return cls(DataKeyStore(db, SecretBox.from_base64(settings.master_key)))

    async def destroy_tenant_key(self, tenant_id: UUID) -> bool:
        """Destroys the tenant's keys (store.destroy_tenant_key) and this process's cached
        copies. Other tenancy processes drop theirs within the cache's TTL."""
        destroyed = await self._configured().destroy_tenant_key(tenant_id)
        self._cache.forget_tenant(tenant_id)
        return destroyed

    async def forget(self, tx: asyncpg.Connection, tenant_id: UUID) -> None:
        """A purge step (as ServiceDataKeys.forget): the purge itself deletes the key rows
        and leaves the destroyed marker (purges.py); this drops this process's cached
        copies, so nothing sealed or opened here uses the key again."""
        self._cache.forget_tenant(tenant_id)

    async def destroy_subject_key(self, tenant_id: UUID, subject_id: UUID) -> bool:
        destroyed = await self._configured().destroy_subject_key(tenant_id, subject_id)
        self._cache.put(tenant_id, subject_id, None)
        return destroyed

    async def destroy_subject_key_in(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID
    ) -> bool:
        """Destroys the person's key in the caller's transaction (the erasure's, see
        erasures.py), and this process's cached copy."""
        destroyed = await self._configured().destroy_subject_key_in(tx, tenant_id, subject_id)
        self._cache.put(tenant_id, subject_id, None)
        return destroyed

    async def forget_subject(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID
    ) -> None:
        """An erasure step (as ServiceDataKeys.forget_subject): the erasure's request
        destroyed the key here already; this drops this process's cached copy."""
        self._cache.put(tenant_id, subject_id, None)

    async def _look_up(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID | None, *, create: bool
    ) -> bytes | None:
        store = self._configured()
        key = await store.read(tx, tenant_id, subject_id)
        if key is None and create:
            key = await store.get_or_create(tenant_id, subject_id)
        return key

    def _configured(self) -> DataKeyStore:
        if self._store is None:
            raise KeysUnavailable("TENANTRY_MASTER_KEY is not set: tenancy keeps no keys")
        return self._store
