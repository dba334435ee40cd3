"""What only the S3 backend has: multipart uploads, the bucket check, the credentials."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from tenantry_objectstore import ObjectInfo, ObjectStoreError, S3Config, S3Store
from tenantry_testkit.seaweedfs import S3Server

from .contracts import LargeStream, MiB, chunks_of


def config(server: S3Server, **overrides: object) -> S3Config:
    values: dict[str, object] = {
        "bucket": "tenantry-contract",
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "endpoint": server.endpoint,
        "region": server.region,
        "part_size": 5 * MiB,
        "create_bucket": True,
    }
    values.update(overrides)
    return S3Config(**values)  # type: ignore[arg-type]


async def test_a_stream_past_one_part_goes_as_a_multipart_upload(
    contract_s3_store: S3Store,
) -> None:
    store, ns = contract_s3_store, f"t-{uuid.uuid4().hex[:12]}/"
    key = f"{ns}multipart.bin"
    seen_pending: list[list[str]] = []

    async def watched() -> AsyncIterator[bytes]:
        async for chunk in LargeStream(12 * MiB):
            yield chunk
        seen_pending.append(await store.pending_uploads(ns))  # two parts sent by now

    stored = await store.put(key, watched(), content_type="application/zip")
    assert seen_pending == [[key]]
    assert stored.bytes == 12 * MiB
    assert await store.pending_uploads(ns) == []
    assert await store.stat(key) == ObjectInfo(key=key, bytes=12 * MiB)
    assert await store.delete_prefix(ns) == 1


async def test_list_and_delete_prefix_page_through_many_keys(s3_server: S3Server) -> None:
    ns = f"t-{uuid.uuid4().hex[:12]}/"
    async with S3Store.open(config(s3_server)) as store:
        store.page_size = 2  # five keys: three pages
        keys = [f"{ns}{n}" for n in range(5)]
        for key in keys:
            await store.put(key, chunks_of(key.encode()), content_type="text/plain")
        assert [item.key for item in await store.list(ns)] == keys
        assert await store.delete_prefix(ns) == 5
        assert await store.list(ns) == []


async def test_a_missing_bucket_is_made_only_when_allowed(s3_server: S3Server) -> None:
    bucket = f"tenantry-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ObjectStoreError, match=f"bucket '{bucket}' does not exist"):
        async with S3Store.open(config(s3_server, bucket=bucket, create_bucket=False)):
            pass
    async with S3Store.open(config(s3_server, bucket=bucket, create_bucket=True)) as store:
        assert await store.list("") == []
    # Made once, it is simply used (created again would be an error on some servers).
    async with S3Store.open(config(s3_server, bucket=bucket, create_bucket=True)) as store:
        assert await store.list("") == []


async def test_wrong_credentials_fail_clearly(s3_server: S3Server) -> None:
    with pytest.raises(ObjectStoreError, match="credentials"):
        async with S3Store.open(config(s3_server, secret_key="not-the-secret")):
            pass


async def test_an_unreachable_server_fails_clearly(s3_server: S3Server) -> None:
    with pytest.raises(ObjectStoreError, match="cannot reach"):
        async with S3Store.open(config(s3_server, endpoint="http://127.0.0.1:9")):
            pass


def test_settings_below_s3s_limits_are_refused(s3_server: S3Server) -> None:
    with pytest.raises(ObjectStoreError, match="5 MiB"):
        config(s3_server, part_size=5 * MiB - 1)
    with pytest.raises(ObjectStoreError, match="no bucket"):
        config(s3_server, bucket="")


def test_the_secret_never_shows_in_a_repr(s3_server: S3Server) -> None:
    shown = repr(config(s3_server, secret_key="s3cr3t-value"))
    assert "s3cr3t-value" not in shown
    assert s3_server.access_key in shown
