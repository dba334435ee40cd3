"""The crypto-shredding keys as a service other than tenancy holds them (docs/data-keys.md).

Tenancy generates and keeps every tenant's data key and every person's subject key. A
service fetches a key from tenancy's internal key API the first time it needs it, keeps a
copy in its own database (`data_key_copies`, wrapped with its own master key), and keeps
unwrapped keys in memory for a minute. After a restart it reads its copy, not tenancy.
Keys never travel in an event: the key API is the only way between tenancy and a service,
and it answers keys wrapped again for the trip with a key derived from the deployment's
internal API secret, so a logged or captured body holds no key.

Outcomes are kept apart on purpose: a key (bytes); a destroyed key (tenancy answered 410:
None, and the fields it sealed read as erased); and "cannot tell now" (tenancy down, a
timeout, a 5xx: `KeysUnavailable`, retried by the caller, never mistaken for erasure).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Final
from uuid import UUID

import asyncpg
import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from tenantry_credentials.crypto import DecryptionFailed, SecretBox
from tenantry_events.sealing import KEY_BYTES, KeysUnavailable
from tenantry_platform.settings import ServiceSettings
from tenantry_resilience import RetryBudget
from tenantry_resilience.retry_budget import record_first_attempt, stop_when_budget_exhausted

log = logging.getLogger("tenantry.data_keys")

INTERNAL_AUTH_SCHEME: Final = "Tenantry-Internal"  # Authorization: Tenantry-Internal <secret>
CALLER_HEADER: Final = "X-Tenantry-Service"  # who asks (for tenancy's log; not a credential)
KEY_API_PREFIX: Final = "/internal/v1/tenants"
CACHE_TTL_SECONDS: Final = 60.0
CACHE_MAX_ENTRIES: Final = 10_000


class KeyDestroyed(Exception):
    """The key existed and was destroyed: what it sealed is unreadable for good."""


def key_api_path(tenant_id: UUID, subject_id: UUID | None = None) -> str:
    """The key API's URL of a tenant's data key, or of one person's subject key."""
    if subject_id is None:
        return f"{KEY_API_PREFIX}/{tenant_id}/data-key"
    return f"{KEY_API_PREFIX}/{tenant_id}/subjects/{subject_id}/data-key"


def transport_box(internal_api_secret: str) -> SecretBox:
    """The box keys travel in between tenancy and a service: its key is derived from the
    deployment's internal API secret (HKDF-SHA256), which both ends hold."""
    if not internal_api_secret:
        raise ValueError("TENANTRY_INTERNAL_API_SECRET is not set")
    return SecretBox.derived(internal_api_secret, b"tenantry:data-key-transport:v1")


def transport_context(tenant_id: UUID, subject_id: UUID | None) -> str:
    """Binds a key in transit to the key it is (an answer for another tenant or person
    does not open)."""
    return f"data-key-transport:{tenant_id}:{subject_id or 'tenant'}"


class KeyCache:
    """Unwrapped keys in memory, a short while each (bounded, least recently used out
    first). Also remembers a destroyed key as such (`None`), so a replay of a purged
    tenant's events does not ask tenancy for each one."""

    def __init__(
        self, *, ttl_seconds: float = CACHE_TTL_SECONDS, max_entries: int = CACHE_MAX_ENTRIES
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: OrderedDict[tuple[UUID, UUID | None], tuple[float, bytes | None]] = (
            OrderedDict()
        )

    def get(self, tenant_id: UUID, subject_id: UUID | None) -> tuple[bool, bytes | None]:
        """(found, key): a key, or (True, None) for a key known destroyed."""
        entry = self._entries.get((tenant_id, subject_id))
        if entry is None:
            return False, None
        expires, key = entry
        if time.monotonic() >= expires:
            del self._entries[(tenant_id, subject_id)]
            return False, None
        self._entries.move_to_end((tenant_id, subject_id))
        return True, key

    def put(self, tenant_id: UUID, subject_id: UUID | None, key: bytes | None) -> None:
        self._entries[(tenant_id, subject_id)] = (time.monotonic() + self._ttl, key)
        self._entries.move_to_end((tenant_id, subject_id))
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def forget_tenant(self, tenant_id: UUID) -> None:
        """Drops every key of the tenant, and remembers its data key as destroyed."""
        for cached in [k for k in self._entries if k[0] == tenant_id]:
            del self._entries[cached]
        self.put(tenant_id, None, None)

    def __len__(self) -> int:
        return len(self._entries)


class TenancyKeyClient:
    """The caller's side of tenancy's internal key API."""

    def __init__(
        self,
        base_url: str,
        internal_api_secret: str,
        *,
        caller: str,
        timeout: float = 5.0,
        attempts: int = 3,
    ) -> None:
        self._transport = transport_box(internal_api_secret)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            headers={
                "Authorization": f"{INTERNAL_AUTH_SCHEME} {internal_api_secret}",
                CALLER_HEADER: caller,
            },
        )
        self._attempts = attempts
        self._budget = RetryBudget()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(
        self, tenant_id: UUID, subject_id: UUID | None, *, create: bool
    ) -> bytes | None:
        """The key; made first when `create` and there is none. None: there is none (and
        `create` was not asked). Raises KeyDestroyed on 410, KeysUnavailable when tenancy
        cannot answer now (after a few quick retries within the retry budget)."""
        method = "PUT" if create else "GET"
        path = key_api_path(tenant_id, subject_id)
        try:
            async for attempt in AsyncRetrying(
                before=record_first_attempt(self._budget),
                retry=retry_if_exception_type(_TryAgain),
                stop=stop_when_budget_exhausted(self._budget, stop_after_attempt(self._attempts)),
                wait=wait_exponential_jitter(multiplier=0.1, max=1.0, jitter=0.1),
                reraise=True,
            ):
                with attempt:
                    response = await self._request(method, path)
        except _TryAgain as exc:
            raise KeysUnavailable(f"tenancy's key API: {exc}") from None
        if response.status_code == 410:
            raise KeyDestroyed(f"tenancy says the key at {path} was destroyed")
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            # 401 or 403 is a deployment mistake (secrets that differ), not an answer about
            # the key: unavailable, loudly.
            log.error("tenancy's key API refused %s %s: %s", method, path, response.status_code)
            raise KeysUnavailable(f"tenancy's key API answered {response.status_code}")
        return self._unwrapped(response, tenant_id, subject_id)

    async def _request(self, method: str, path: str) -> httpx.Response:
        try:
            response = await self._client.request(method, path)
        except httpx.HTTPError as exc:
            raise _TryAgain(type(exc).__name__) from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise _TryAgain(f"status {response.status_code}")
        return response

    def _unwrapped(
        self, response: httpx.Response, tenant_id: UUID, subject_id: UUID | None
    ) -> bytes:
        try:
            sealed = base64.b64decode(response.json()["key"], validate=True)
            key = self._transport.decrypt(sealed, transport_context(tenant_id, subject_id))
        except (KeyError, ValueError, binascii.Error, DecryptionFailed) as exc:
            # Not the key it should be: never guess, never call it destroyed.
            raise KeysUnavailable(f"tenancy's key API answered no usable key ({exc!r})") from None
        if len(key) != KEY_BYTES:
            raise KeysUnavailable(f"tenancy's key API answered a {len(key)}-byte key")
        return key


class _TryAgain(Exception):
    """A failure worth another attempt (connection, timeout, 5xx, 429)."""


class CachedDataKeys(ABC):
    """DataKeys (tenantry_events.sealing) through a KeyCache: a key (or the news that it
    was destroyed) found by `_look_up` is kept a short while. Subclasses say where keys
    come from."""

    def __init__(self, cache: KeyCache | None = None) -> None:
        self._cache = cache or KeyCache()

    async def for_sealing(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID | None = None
    ) -> bytes | None:
        return await self._key(tx, tenant_id, subject_id, create=True)

    async def for_opening(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID | None = None
    ) -> bytes | None:
        return await self._key(tx, tenant_id, subject_id, create=False)

    async def aclose(self) -> None:  # noqa: B027 (optional to override, not abstract)
        """Closes what the keys are fetched through (nothing, unless a subclass says)."""

    @abstractmethod
    async def _look_up(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID | None, *, create: bool
    ) -> bytes | None:
        """The key (made first when `create`), None when there is none; raises
        KeyDestroyed, or KeysUnavailable when the source cannot answer now."""

    async def _key(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID | None, *, create: bool
    ) -> bytes | None:
        found, cached = self._cache.get(tenant_id, subject_id)
        if found:
            return cached
        try:
            key = await self._look_up(tx, tenant_id, subject_id, create=create)
        except KeyDestroyed:
            self._cache.put(tenant_id, subject_id, None)
            return None
        if key is not None:  # none yet is not cached: it may be made any moment
            self._cache.put(tenant_id, subject_id, key)
        return key


class ServiceDataKeys(CachedDataKeys):
    """DataKeys (tenantry_events.sealing) for identity, provisioning, webhooks and
    ratelimit: memory, then this service's wrapped copy, then tenancy's key API. Every
    call runs in the caller's transaction `tx`, where the copy is read and written."""

    def __init__(
        self,
        service: str,
        master_key: SecretBox | None,
        tenancy: TenancyKeyClient | None,
        cache: KeyCache | None = None,
    ) -> None:
        # Either may be missing from a process's settings (a unit test's runtime, the
        # OpenAPI export): then the first use says so, as KeysUnavailable, never plaintext.
        super().__init__(cache)
        self._service = service
        self._box = master_key
        self._tenancy = tenancy

    @classmethod
    def from_settings(cls, service: str, settings: ServiceSettings) -> ServiceDataKeys:
        """From TENANTRY_MASTER_KEY, TENANTRY_INTERNAL_API_SECRET and tenancy's URL in
        TENANTRY_SERVICE_URLS. Connects to nothing."""
        master_key = SecretBox.from_base64(settings.master_key) if settings.master_key else None
        tenancy = None
        if settings.internal_api_secret and "tenancy=" in settings.service_urls:
            tenancy = TenancyKeyClient(
                settings.service_url("tenancy"), settings.internal_api_secret, caller=service
            )
        return cls(service, master_key, tenancy)

    async def forget(self, tx: asyncpg.Connection, tenant_id: UUID) -> None:
        """Drops this service's copies of the tenant's keys (data key and subject keys)
        and this process's cached ones: the purge's part of destroying the key (a purge
        step: it runs in the purge's transaction). Other processes of the service drop
        their cached copies within the cache's TTL."""
        await tx.execute("DELETE FROM data_key_copies WHERE tenant_id = $1", tenant_id)
        self._cache.forget_tenant(tenant_id)

    async def forget_subject(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID
    ) -> None:
        """Drops this service's copy of one person's subject key (their erasure)."""
        await tx.execute(
            "DELETE FROM data_key_copies WHERE tenant_id = $1 AND subject_id = $2",
            tenant_id,
            subject_id,
        )
        self._cache.put(tenant_id, subject_id, None)

    async def aclose(self) -> None:
        if self._tenancy is not None:
            await self._tenancy.aclose()

    async def _look_up(
        self, tx: asyncpg.Connection, tenant_id: UUID, subject_id: UUID | None, *, create: bool
    ) -> bytes | None:
        box, tenancy = self._configured()
        context = self._copy_context(tenant_id, subject_id)
        wrapped = await tx.fetchval(
            "SELECT wrapped_key FROM data_key_copies"
            " WHERE tenant_id = $1 AND subject_id IS NOT DISTINCT FROM $2",
            tenant_id,
            subject_id,
        )
        if wrapped is not None:
            return box.decrypt(bytes(wrapped), context)
        key = await tenancy.fetch(tenant_id, subject_id, create=create)
        if key is not None:
            await tx.execute(
                "INSERT INTO data_key_copies (tenant_id, subject_id, wrapped_key)"
                " VALUES ($1, $2, $3) ON CONFLICT (tenant_id, subject_id) DO NOTHING",
                tenant_id,
                subject_id,
                box.encrypt(key, context),
            )
        return key

    def _configured(self) -> tuple[SecretBox, TenancyKeyClient]:
        if self._box is None:
            raise KeysUnavailable("TENANTRY_MASTER_KEY is not set: no copy of a key can be kept")
        if self._tenancy is None:
            raise KeysUnavailable(
                "TENANTRY_INTERNAL_API_SECRET, or tenancy's URL in TENANTRY_SERVICE_URLS, is"
                " not set: tenancy's key API cannot be asked"
            )
        return self._box, self._tenancy

    def _copy_context(self, tenant_id: UUID, subject_id: UUID | None) -> str:
        return f"{self._service}.data_key_copy:{tenant_id}:{subject_id or 'tenant'}"
