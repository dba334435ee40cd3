"""The store a process gets from its settings (TENANTRY_OBJECT_STORE ...)."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import pytest

from tenantry_objectstore import LocalDirectoryStore, S3Store, open_object_store
from tenantry_platform.settings import ServiceSettings, SettingsError, load_settings
from tenantry_testkit.seaweedfs import S3Server

from .contracts import chunks_of

BASE = {
    "TENANTRY_DATABASE_URL": "postgresql://unused@127.0.0.1/unused",
    "TENANTRY_KAFKA_BOOTSTRAP": "127.0.0.1:1",
}


async def test_local_by_default(tmp_path: Path) -> None:
    settings = load_settings(
        ServiceSettings, {**BASE, "TENANTRY_OBJECT_STORE_DIR": str(tmp_path / "o")}
    )
    assert settings.object_store == "local"
    async with open_object_store(settings) as store:
        assert isinstance(store, LocalDirectoryStore)
        await store.put("a/b", chunks_of(b"local"), content_type="text/plain")
    assert (tmp_path / "o" / "a" / "b").read_bytes() == b"local"


async def test_s3_from_settings(s3_server: S3Server) -> None:
    settings = load_settings(
        ServiceSettings,
        {
            **BASE,
            "TENANTRY_OBJECT_STORE": "s3",
            "TENANTRY_S3_ENDPOINT": s3_server.endpoint,
            "TENANTRY_S3_BUCKET": "tenantry-factory",
            "TENANTRY_S3_REGION": s3_server.region,
            "TENANTRY_S3_ACCESS_KEY": s3_server.access_key,
            "TENANTRY_S3_SECRET_KEY": s3_server.secret_key,
            "TENANTRY_S3_CREATE_BUCKET": "true",
        },
    )
    assert s3_server.secret_key not in repr(settings)
    assert "s3_secret_key=***" in repr(settings)
    async with open_object_store(settings) as store:
        assert isinstance(store, S3Store)
        assert store.part_size == 8 * 1024 * 1024
        await store.put("a/b", chunks_of(b"remote"), content_type="text/plain")
        async with aclosing(store.get("a/b")) as chunks:
            assert b"".join([c async for c in chunks]) == b"remote"
        assert await store.delete_prefix("a/") == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TENANTRY_OBJECT_STORE", "gcs"), ("TENANTRY_S3_PART_SIZE_BYTES", str(5 * 1024 * 1024 - 1))],
)
def test_bad_settings_stop_the_process_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(ServiceSettings, {**BASE, variable: value})


def test_the_master_key_is_masked_too() -> None:
    settings = load_settings(ServiceSettings, {**BASE, "TENANTRY_MASTER_KEY": "c2VjcmV0"})
    assert "c2VjcmV0" not in repr(settings)
    assert "master_key=***" in repr(settings)
