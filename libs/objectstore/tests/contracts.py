"""Abstract contract tests for `ObjectStore`: each backend subclasses the contract, provides
a `store` fixture and says how to find what a failed upload may have left behind; the
tests then run against it unchanged.

Each test works under its own key prefix (`ns`), so backends may share a bucket.
"""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TypeVar

import pytest

from tenantry_objectstore import (
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StoredObject,
)

MiB = 1024 * 1024
LARGE = 40 * MiB
CHUNK = 64 * 1024

HOSTILE_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "a/../../outside",
    "a/./b",
    "a//b",
    "a/",
    "./a",
    ".hidden",
    "a/.tmp-123",
    "a\x00b",
    "a\\..\\b",
    "a b",
    "caf\u00e9",
    "a\nb",
    "x" * 256,
    "/".join(["a"] * 600),
]
# Refused as keys, but fine as prefixes: "" lists everything, "a/" is a folder's start.
VALID_PREFIXES = frozenset({"", "a/"})


class UploadBroke(Exception):
    """Raised by a chunk iterator to break an upload half way."""


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


class LargeStream:
    """`size` bytes in CHUNK pieces, made as they are asked for (never held whole); the
    sha256 of what was yielded is kept for comparison."""

    def __init__(self, size: int, *, fail_after: int | None = None) -> None:
        self.size = size
        self.fail_after = fail_after
        self.sent = 0
        self._sha256 = hashlib.sha256()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seed = hashlib.sha256(b"tenantry").digest()
        while self.sent < self.size:
            if self.fail_after is not None and self.sent >= self.fail_after:
                raise UploadBroke(f"broken after {self.sent} bytes")
            # Varied bytes (a counter through sha256), so that no layer can compress them.
            block = hashlib.sha256(seed + self.sent.to_bytes(8, "big")).digest()
            chunk = (block * (CHUNK // len(block)))[: self.size - self.sent]
            self._sha256.update(chunk)
            self.sent += len(chunk)
            yield chunk


async def read_all(store: ObjectStore, key: str) -> bytes:
    async with aclosing(store.get(key)) as chunks:
        return b"".join([chunk async for chunk in chunks])


T = TypeVar("T")


async def peak_memory(action: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """What the awaitable the action returns gives, and the peak of Python allocations
    (every thread) while it ran, above what was allocated before."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        result = await action()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base


class ObjectStoreContract:
    """Subclasses provide the `store` and `ns` fixtures and `leftovers`."""

    async def leftovers(self, store: ObjectStore, ns: str) -> list[str]:
        """Everything the backend holds under the prefix, objects or not (temporary files,
        pending multipart uploads)."""
        raise NotImplementedError

    async def test_round_trip(self, store: ObjectStore, ns: str) -> None:
        key = f"{ns}exports/part.ndjson"
        stored = await store.put(
            key, chunks_of(b'{"a":1}\n', b'{"b":2}\n'), content_type="application/x-ndjson"
        )
        expected = b'{"a":1}\n{"b":2}\n'
        assert stored == StoredObject(
            key=key, bytes=len(expected), sha256=hashlib.sha256(expected).hexdigest()
        )
        assert await read_all(store, key) == expected
        assert await store.stat(key) == ObjectInfo(key=key, bytes=len(expected))

    async def test_empty_object(self, store: ObjectStore, ns: str) -> None:
        key = f"{ns}empty"
        stored = await store.put(key, chunks_of(), content_type="application/octet-stream")
        assert stored == StoredObject(key=key, bytes=0, sha256=hashlib.sha256().hexdigest())
        assert await read_all(store, key) == b""
        assert await store.stat(key) == ObjectInfo(key=key, bytes=0)

    async def test_large_object_streams_with_bounded_memory(
        self, store: ObjectStore, ns: str
    ) -> None:
        key = f"{ns}large.bin"
        stream = LargeStream(LARGE)
        stored, put_peak = await peak_memory(
            lambda: store.put(key, stream, content_type="application/octet-stream")
        )
        assert stored == StoredObject(key=key, bytes=LARGE, sha256=stream.sha256)
        # Bounded: a write buffer, or one multipart part (5 MiB in these tests), not 40 MiB.
        assert put_peak < LARGE / 4, f"put peaked at {put_peak / MiB:.1f} MiB"

        async def read_back() -> tuple[int, str]:
            digest, size = hashlib.sha256(), 0
            async with aclosing(store.get(key)) as chunks:
                async for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
            return size, digest.hexdigest()

        read, get_peak = await peak_memory(read_back)
        assert read == (LARGE, stream.sha256)
        assert get_peak < LARGE / 8, f"get peaked at {get_peak / MiB:.1f} MiB"
        assert await store.stat(key) == ObjectInfo(key=key, bytes=LARGE)

    async def test_missing_key(self, store: ObjectStore, ns: str) -> None:
        key = f"{ns}never-written"
        with pytest.raises(ObjectNotFound) as info:
            await read_all(store, key)
        assert info.value.key == key
        assert key in str(info.value)
        assert await store.stat(key) is None
        await store.delete(key)  # deleting what is not there is not an error
        assert await store.list(ns) == []

    async def test_overwrite_replaces_the_object_whole(self, store: ObjectStore, ns: str) -> None:
        key = f"{ns}manifest.json"
        await store.put(key, chunks_of(b"first version, longer"), content_type="text/plain")
        second = await store.put(key, chunks_of(b"second"), content_type="text/plain")
        assert second.bytes == 6
        assert await read_all(store, key) == b"second"
        assert await store.list(ns) == [ObjectInfo(key=key, bytes=6)]

    async def test_a_failed_upload_leaves_nothing(self, store: ObjectStore, ns: str) -> None:
        # Broken after 12 MiB: past two 5 MiB parts, so S3 has a multipart upload going.
        key = f"{ns}broken.zip"
        with pytest.raises(UploadBroke):
            await store.put(
                key, LargeStream(LARGE, fail_after=12 * MiB), content_type="application/zip"
            )
        assert await store.stat(key) is None
        assert await store.list(ns) == []
        assert await self.leftovers(store, ns) == []

    async def test_a_failed_overwrite_keeps_the_old_object(
        self, store: ObjectStore, ns: str
    ) -> None:
        key = f"{ns}kept.zip"
        await store.put(key, chunks_of(b"the old archive"), content_type="application/zip")
        with pytest.raises(UploadBroke):
            await store.put(
                key, LargeStream(LARGE, fail_after=11 * MiB), content_type="application/zip"
            )
        assert await read_all(store, key) == b"the old archive"
        assert await self.leftovers(store, ns) == [key]

    async def test_a_cancelled_upload_leaves_nothing(self, store: ObjectStore, ns: str) -> None:
        key = f"{ns}cancelled.zip"
        reached = asyncio.Event()

        async def stalls_after_11_mib() -> AsyncIterator[bytes]:
            async for chunk in LargeStream(11 * MiB):
                yield chunk
            reached.set()
            await asyncio.Event().wait()  # the task is cancelled here

        task = asyncio.create_task(
            store.put(key, stalls_after_11_mib(), content_type="application/zip")
        )
        await asyncio.wait_for(reached.wait(), timeout=120)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.stat(key) is None
        assert await self.leftovers(store, ns) == []

    async def test_list_and_delete_prefix(self, store: ObjectStore, ns: str) -> None:
        keys = [f"{ns}a/1", f"{ns}a/2", f"{ns}a10/x", f"{ns}b"]
        for n, key in enumerate(keys):
            await store.put(key, chunks_of(b"x" * n), content_type="text/plain")
        assert await store.list(ns) == [ObjectInfo(key=k, bytes=n) for n, k in enumerate(keys)]
        assert [o.key for o in await store.list(f"{ns}a/")] == keys[:2]
        # A string prefix, as S3's: "a" matches "a/..." and "a10/...".
        assert [o.key for o in await store.list(f"{ns}a")] == keys[:3]
        assert await store.list(f"{ns}c") == []
        assert await store.delete_prefix(f"{ns}a/") == 2
        assert [o.key for o in await store.list(ns)] == keys[2:]
        await store.delete(f"{ns}b")
        assert [o.key for o in await store.list(ns)] == [f"{ns}a10/x"]
        assert await store.delete_prefix(ns) == 1
        assert await store.delete_prefix(ns) == 0
        assert await store.list(ns) == []
        assert await self.leftovers(store, ns) == []

    @pytest.mark.parametrize("key", HOSTILE_KEYS)
    async def test_hostile_keys_are_refused_before_any_io(
        self, store: ObjectStore, ns: str, key: str
    ) -> None:
        consumed = False

        async def watched() -> AsyncIterator[bytes]:
            nonlocal consumed
            consumed = True
            yield b"payload"

        with pytest.raises(InvalidKey):
            await store.put(key, watched(), content_type="text/plain")
        assert not consumed
        with pytest.raises(InvalidKey):
            await read_all(store, key)
        with pytest.raises(InvalidKey):
            await store.stat(key)
        with pytest.raises(InvalidKey):
            await store.delete(key)
        if key not in VALID_PREFIXES:
            with pytest.raises(InvalidKey):
                await store.list(key)
            with pytest.raises(InvalidKey):
                await store.delete_prefix(key)
        with pytest.raises(InvalidKey):
            await store.delete_prefix("")  # every object: refused
        assert await self.leftovers(store, ns) == []
