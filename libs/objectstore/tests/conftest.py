"""The S3 server of this test run: a fresh SeaweedFS, started on first use, stopped at the
end (tenantry_testkit.seaweedfs)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from tenantry_objectstore import S3Config, S3Store
from tenantry_testkit.seaweedfs import S3Server, seaweedfs_server

# The contract's asserts are in a helper module: have pytest explain their failures too.
pytest.register_assert_rewrite("libs.objectstore.tests.contracts")

MiB = 1024 * 1024
CONTRACT_BUCKET = "tenantry-contract"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    with seaweedfs_server() as server:
        yield server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def contract_s3_store(s3_server: S3Server) -> AsyncIterator[S3Store]:
    config = S3Config(
        bucket=CONTRACT_BUCKET,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        endpoint=s3_server.endpoint,
        region=s3_server.region,
        part_size=5 * MiB,  # S3's minimum: the failure tests break uploads past two parts
        create_bucket=True,
    )
    async with S3Store.open(config) as store:
        yield store
