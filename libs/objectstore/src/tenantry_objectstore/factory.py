"""The store a process uses, chosen by its settings (TENANTRY_OBJECT_STORE and friends)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tenantry_objectstore.local import LocalDirectoryStore
from tenantry_objectstore.s3 import S3Config, S3Store
from tenantry_objectstore.store import ObjectStore
from tenantry_platform.settings import ServiceSettings


def s3_config(settings: ServiceSettings) -> S3Config:
    return S3Config(
        bucket=settings.s3_bucket,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        endpoint=settings.s3_endpoint,
        region=settings.s3_region,
        part_size=settings.s3_part_size_bytes,
        create_bucket=settings.s3_create_bucket,
    )


@asynccontextmanager
async def open_object_store(settings: ServiceSettings) -> AsyncIterator[ObjectStore]:
    """The configured store, open for the block (S3: its HTTP client, its bucket checked)."""
    if settings.object_store == "s3":
        async with S3Store.open(s3_config(settings)) as store:
            yield store
    else:
        yield LocalDirectoryStore(settings.object_store_dir)
