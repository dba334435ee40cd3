"""Both backends run the same contract (contracts.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tenantry_objectstore import LocalDirectoryStore, S3Store

from .contracts import ObjectStoreContract


class TestLocalDirectoryStore(ObjectStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalDirectoryStore:
        return LocalDirectoryStore(tmp_path / "objects")

    @pytest.fixture
    def ns(self) -> str:
        return f"t-{uuid.uuid4().hex[:12]}/"

    async def leftovers(self, store: LocalDirectoryStore, ns: str) -> list[str]:  # type: ignore[override]
        # Every file, temporary ones included, anywhere under the root.
        return sorted(
            (Path(folder) / name).relative_to(store.root).as_posix()
            for folder, _, names in os.walk(store.root)
            for name in names
        )


class TestS3Store(ObjectStoreContract):
    @pytest.fixture
    def store(self, contract_s3_store: S3Store) -> S3Store:
        return contract_s3_store

    @pytest.fixture
    def ns(self) -> str:
        return f"t-{uuid.uuid4().hex[:12]}/"

    async def leftovers(self, store: S3Store, ns: str) -> list[str]:  # type: ignore[override]
        objects = [item.key for item in await store.list(ns)]
        return sorted(objects + await store.pending_uploads(ns))
