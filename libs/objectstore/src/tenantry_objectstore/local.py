"""The embedded store of `make up`: one file per object under a root directory.

A key maps to the path of the same name under the root (the key rules in `store` keep it
inside). An object is written to a temporary file beside its final path (a name starting
with ".", which no key can have), fsynced, then renamed over the key, and the directory
fsynced: after a crash the key holds the old object or the new one, never a part. A crash
can leave a `.tmp-*` file behind: `list` never shows one, and one no writer holds may be
removed at any time (each is named for its writer, never reused).

On a file system a key cannot be both an object and the folder of others ("a" and "a/b"):
`put` refuses the second with `ObjectStoreError` (S3 allows both).

Blocking file work runs in threads; writes are gathered into `WRITE_BUFFER` bytes first so
that small chunks (an NDJSON line each) do not cost a thread hop each.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterable
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

from tenantry_objectstore.store import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
    StoredObject,
    StreamDigest,
    check_key,
    check_prefix,
)

WRITE_BUFFER = 1024 * 1024
READ_CHUNK = 1024 * 1024
_TEMP_PREFIX = ".tmp-"


class LocalDirectoryStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalDirectoryStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> StoredObject:
        # The content type is not kept: a file has none, and readers know what they stored.
        path = self._path(key)
        temp, file = await asyncio.to_thread(_create_temp, self.root, path)
        digest = StreamDigest()
        try:
            pending = bytearray()
            async for chunk in chunks:
                digest.update(chunk)
                pending += chunk
                if len(pending) >= WRITE_BUFFER:
                    await asyncio.to_thread(file.write, pending)
                    pending = bytearray()
            await asyncio.to_thread(_finish, file, pending)
            try:
                await asyncio.to_thread(os.replace, temp, path)
            except IsADirectoryError:
                raise ObjectStoreError(
                    f"object key {key!r} names a folder of other keys in {self.root}"
                ) from None
        except BaseException:
            # Cancellation included: the temporary file goes, the key keeps what it had.
            await asyncio.shield(asyncio.to_thread(_discard, file, temp))
            raise
        await asyncio.to_thread(_fsync_directory, path.parent)
        return digest.stored(key)

    async def get(self, key: str) -> AsyncGenerator[bytes, None]:
        path = self._path(key)
        try:
            file = await asyncio.to_thread(path.open, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        try:
            while chunk := await asyncio.to_thread(file.read, READ_CHUNK):
                yield chunk
        finally:
            file.close()

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            info = await asyncio.to_thread(path.stat)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not S_ISREG(info.st_mode):
            return None  # a folder: a prefix of other keys, not an object
        return ObjectInfo(key=key, bytes=info.st_size)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, self._path(key))

    async def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix, allow_empty=False)
        doomed = await self.list(prefix)
        for item in doomed:
            await asyncio.to_thread(self._delete, self._path(item.key))
        return len(doomed)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        check_prefix(prefix, allow_empty=True)
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> builtins.list[ObjectInfo]:
        # Walk only the folder the prefix's whole segments name.
        folder, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*folder.split("/")) if folder else self.root
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            here = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue  # a temporary file, never an object
                key = name if here == "." else f"{here}/{name}"
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                        size = (Path(dirpath) / name).stat().st_size
                        found.append(ObjectInfo(key=key, bytes=size))
        found.sort(key=lambda item: item.key)
        return found

    def _delete(self, path: Path) -> None:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # a folder of other keys, not an object
        # Folders left empty go too, up to (not including) the root; one still in use by a
        # concurrent put or holding other keys stays (rmdir refuses a non-empty folder).
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


def _create_temp(root: Path, path: Path) -> tuple[Path, BinaryIO]:
    """A new temporary file beside `path`, its folders made as needed."""
    for _ in range(5):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            # On a file system a key cannot be both an object and a folder of others.
            raise ObjectStoreError(
                f"a folder of {path.relative_to(root).as_posix()!r} is an object in {root}"
            ) from None
        temp = path.parent / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            return temp, temp.open("xb")
        except FileNotFoundError:
            continue  # a delete removed the folder as it emptied: make it again
    raise ObjectStoreError(f"could not create a temporary file in {path.parent}")


def _finish(file: BinaryIO, pending: bytes | bytearray) -> None:
    try:
        file.write(pending)
        file.flush()
        os.fsync(file.fileno())
    finally:
        file.close()


def _discard(file: BinaryIO, temp: Path) -> None:
    file.close()
    temp.unlink(missing_ok=True)


def _fsync_directory(folder: Path) -> None:
    """Make a rename in the folder durable (POSIX: the rename is in the folder's entry)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
