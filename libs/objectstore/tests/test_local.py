"""What only the local store has: files and folders under a root."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenantry_objectstore import LocalDirectoryStore, ObjectInfo, ObjectStoreError

from .contracts import chunks_of, read_all


def tree(root: Path) -> list[str]:
    """Every file and folder under the root, relative (a test's look at the disk)."""
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))


async def test_a_key_is_not_both_an_object_and_a_folder(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    await store.put("a", chunks_of(b"object"), content_type="text/plain")
    with pytest.raises(ObjectStoreError, match="is an object"):
        await store.put("a/b", chunks_of(b"below"), content_type="text/plain")
    await store.put("c/d", chunks_of(b"below"), content_type="text/plain")
    with pytest.raises(ObjectStoreError, match="folder of other keys"):
        await store.put("c", chunks_of(b"object"), content_type="text/plain")
    assert await store.stat("c") is None  # a folder is not an object
    assert await store.list("") == [ObjectInfo("a", 6), ObjectInfo("c/d", 5)]
    assert tree(tmp_path) == ["a", "c", "c/d"]  # and no temporary file


async def test_what_a_killed_writer_leaves_is_never_seen(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    await store.put("exports/t1/part", chunks_of(b"whole"), content_type="text/plain")
    # A writer killed before its rename leaves only its temporary file.
    (tmp_path / "exports" / "t1" / ".tmp-0123456789abcdef").write_bytes(b"half an obj")
    assert await store.list("") == [ObjectInfo("exports/t1/part", 5)]
    assert await read_all(store, "exports/t1/part") == b"whole"
    assert await store.delete_prefix("exports/") == 1


async def test_folders_go_with_their_last_object(tmp_path: Path) -> None:
    store = LocalDirectoryStore(tmp_path)
    await store.put("x/y/1", chunks_of(b"1"), content_type="text/plain")
    await store.put("x/2", chunks_of(b"2"), content_type="text/plain")
    await store.delete("x/y/1")
    assert tree(tmp_path) == ["x", "x/2"]
    await store.delete("x/2")
    assert tree(tmp_path) == []  # the root stays, empty
