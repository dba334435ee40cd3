"""What a service process holds at run time, built once from its settings."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from uuid import UUID

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from redis.asyncio import Redis

from tenantry_credentials.key_usage import KeyUsage
from tenantry_events.pg import Database
from tenantry_events.storage import PostgresEventStore, PostgresInbox, PostgresOutbox
from tenantry_platform.settings import ServiceSettings
from tenantry_regions.regions import RegionMap
from tenantry_service.data_keys import ServiceDataKeys

S = TypeVar("S", bound=ServiceSettings)


class RuntimeDataKeys(Protocol):
    """The process's crypto-shredding keys: DataKeys (tenantry_events.sealing) over this
    service's database connections, and closable. ServiceDataKeys in every service but
    tenancy, which keeps the keys and reads its own table (tenantry_tenancy.data_keys)."""

    async def for_sealing(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID | None = None
    ) -> bytes | None: ...

    async def for_opening(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID | None = None
    ) -> bytes | None: ...

    async def forget(self, tx: asyncpg.Connection, tenant_id: UUID) -> None:
        """A purge step: this process and service no longer hold the tenant's keys."""
        ...

    async def forget_subject(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID
    ) -> None:
        """An erasure step: this process and service no longer hold the person's key."""
        ...

    async def aclose(self) -> None: ...


# How a service that keeps its keys otherwise builds them (tenancy): from its database
# and settings, connecting to nothing yet.
DataKeysFactory = Callable[[Database, ServiceSettings], RuntimeDataKeys]


class KafkaProbe:
    """Readiness check for Kafka: a metadata round trip, cached briefly so probes are cheap."""

    def __init__(self, bootstrap: str, *, cache_seconds: float = 2.0) -> None:
        self._bootstrap = bootstrap
        self._cache_seconds = cache_seconds
        self._admin: AIOKafkaAdminClient | None = None
        self._last: tuple[float, bool] = (0.0, False)
        self._lock = asyncio.Lock()

    async def ok(self) -> bool:
        async with self._lock:
            checked_at, result = self._last
            if time.monotonic() - checked_at < self._cache_seconds:
                return result
            result = await self._check()
            self._last = (time.monotonic(), result)
            return result

    async def _check(self) -> bool:
        try:
            if self._admin is None:
                admin = AIOKafkaAdminClient(
                    bootstrap_servers=self._bootstrap, request_timeout_ms=3000
                )
                await asyncio.wait_for(admin.start(), timeout=3)
                self._admin = admin
            await asyncio.wait_for(self._admin.describe_cluster(), timeout=3)
        except Exception:
            await self.close()
            return False
        return True

    async def close(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            with contextlib.suppress(Exception):  # closing a broken client is best effort
                await admin.close()


@dataclass
class Runtime:
    service: str
    settings: ServiceSettings
    db: Database
    outbox: PostgresOutbox
    events: PostgresEventStore
    inbox: PostgresInbox
    kafka: KafkaProbe
    key_usage: KeyUsage
    redis: Redis
    # Seals and opens events' personal fields: the outbox and event store hold them
    # (runtime.outbox.keys), consumers open with them (docs/data-keys.md).
    data_keys: RuntimeDataKeys
    # The deployment's regions (docs/residency.md): checked at build, so a bad
    # TENANTRY_REGIONS stops the process before it serves anything.
    regions: RegionMap
    extras: dict[str, object] = field(default_factory=dict)

    def settings_as(self, settings_type: type[S]) -> S:
        """The settings as the service's own type (its SPEC.settings_cls loaded them)."""
        if not isinstance(self.settings, settings_type):
            raise TypeError(f"{self.service}'s settings are not {settings_type.__name__}")
        return self.settings

    @property
    def source(self) -> str:
        """CloudEvents `source` of everything this service emits."""
        return f"/tenantry/{self.service}"

    @classmethod
    def build(
        cls, service: str, settings: ServiceSettings, *, data_keys: DataKeysFactory | None = None
    ) -> Runtime:
        """Builds without connecting. `data_keys`: how this service gets its keys, when not
        from tenancy's key API (ServiceDataKeys, the default)."""
        db = Database(settings.database_url, max_size=settings.db_pool_size)
        keys = (
            data_keys(db, settings)
            if data_keys is not None
            else ServiceDataKeys.from_settings(service, settings)
        )
        outbox = PostgresOutbox(db, keys=keys)
        usage = KeyUsage(
            db,
            outbox,
            service=service,
            region=settings.region,
            interval=settings.apikey_usage_flush_seconds,
        )
        return cls(
            service=service,
            settings=settings,
            db=db,
            outbox=outbox,
            events=PostgresEventStore(outbox, stored_headers=settings.outbox_stored_headers),
            inbox=PostgresInbox(),
            kafka=KafkaProbe(settings.kafka_bootstrap),
            key_usage=usage,
            data_keys=keys,
            regions=RegionMap.from_settings(settings),
            # Connects on first use; short timeouts, since a slow Redis must not slow
            # requests down (the rate limiter falls back to local limits instead).
            redis=Redis.from_url(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_seconds,
                socket_connect_timeout=settings.redis_timeout_seconds,
                max_connections=64,
            ),
        )
