"""The production store: an S3-compatible API through aiobotocore (AWS's own botocore,
asynchronous), tested against a real SeaweedFS server.

Client settings that matter off AWS (deploy/local/seaweedfs.sh has the field notes): path-
style addressing and SigV4; checksums only where S3 requires them (botocore's default
"when_supported" adds CRC trailers that other S3 servers may refuse).

A stream is sent as a single PUT when it ends within one part, else as a multipart upload
of `part_size` parts (S3's minimum part is 5 MiB). One part is in memory at a time. Any
failure, the caller's iterator raising or the task cancelled included, aborts the upload, so
that no parts are left behind (they would be billed and never seen by `list`).
"""

from __future__ import annotations

import asyncio
import builtins
import io
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from tenantry_objectstore.store import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStoreError,
    StoredObject,
    StreamDigest,
    check_key,
    check_prefix,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger("tenantry.objectstore")

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


@dataclass(frozen=True, slots=True)
class S3Config:
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)  # never in a log line or a traceback's repr
    endpoint: str = ""  # empty: AWS's endpoint for the region
    region: str = "us-east-1"
    part_size: int = DEFAULT_PART_SIZE
    create_bucket: bool = False  # make the bucket when missing (local and tests)

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ObjectStoreError("S3: no bucket configured (TENANTRY_S3_BUCKET)")
        if self.part_size < MIN_PART_SIZE:
            raise ObjectStoreError(f"S3: part size {self.part_size} is below S3's 5 MiB minimum")


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3Store:
    """An `ObjectStore` on one bucket. Open it with `S3Store.open(config)` (it owns the
    HTTP client and closes it), or wrap a client you already hold."""

    def __init__(self, client: S3Client, bucket: str, *, part_size: int = DEFAULT_PART_SIZE):
        self._client = client
        self.bucket = bucket
        self.part_size = part_size
        self.page_size = 1000  # keys per listing page; S3's maximum, DeleteObjects' too

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r})"

    @classmethod
    @asynccontextmanager
    async def open(cls, config: S3Config) -> AsyncIterator[S3Store]:
        client_config = AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10,
            read_timeout=60,
        )
        async with get_session().create_client(
            "s3",
            endpoint_url=config.endpoint or None,
            region_name=config.region,
            aws_access_key_id=config.access_key,
            aws_secret_access_key=config.secret_key,
            config=client_config,
        ) as client:
            store = cls(client, config.bucket, part_size=config.part_size)
            await store.ensure_bucket(create=config.create_bucket)
            yield store

    async def ensure_bucket(self, *, create: bool) -> None:
        """The bucket exists, or is made when `create`; else a clear `ObjectStoreError`."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            code = _error_code(error)
            if code not in _NOT_FOUND:
                raise ObjectStoreError(
                    f"S3: cannot use bucket {self.bucket!r} ({code or error}): "
                    "check the endpoint, credentials and the bucket's policy"
                ) from error
        except BotoCoreError as error:
            raise ObjectStoreError(f"S3: cannot reach the server: {error}") from error
        if not create:
            raise ObjectStoreError(
                f"S3: bucket {self.bucket!r} does not exist: create it, or set "
                "TENANTRY_S3_CREATE_BUCKET=true to let the service make it"
            )
        log.info("S3: creating bucket %s", self.bucket)
        try:
            await self._client.create_bucket(Bucket=self.bucket)
        except ClientError as error:
            if _error_code(error) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise ObjectStoreError(f"S3: cannot create bucket {self.bucket!r}") from error

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> StoredObject:
        check_key(key)
        digest = StreamDigest()
        part = io.BytesIO()
        upload_id: str | None = None
        parts: list[CompletedPartTypeDef] = []
        try:
            async for chunk in chunks:
                digest.update(chunk)
                part.write(chunk)
                if part.tell() >= self.part_size:
                    if upload_id is None:
                        created = await self._client.create_multipart_upload(
                            Bucket=self.bucket, Key=key, ContentType=content_type
                        )
                        upload_id = created["UploadId"]
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, part))
                    part = io.BytesIO()
            if upload_id is None:
                part.seek(0)
                await self._client.put_object(
                    Bucket=self.bucket, Key=key, Body=part, ContentType=content_type
                )
            else:
                if part.tell():
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, part))
                await self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                # Shielded: a cancelled put still aborts its upload.
                await asyncio.shield(self._abort(key, upload_id))
            raise
        return digest.stored(key)

    async def _upload_part(
        self, key: str, upload_id: str, number: int, part: io.BytesIO
    ) -> CompletedPartTypeDef:
        part.seek(0)
        sent = await self._client.upload_part(
            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
        )
        return {"ETag": sent["ETag"], "PartNumber": number}

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except (ClientError, BotoCoreError) as error:
            # The original failure is what the caller needs; this one is for the operator
            # (a bucket lifecycle rule for incomplete uploads is the safety net).
            log.warning("S3: could not abort multipart upload of %s: %s", key, error)

    async def get(self, key: str) -> AsyncGenerator[bytes, None]:
        check_key(key)
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND:
                raise ObjectNotFound(key) from None
            raise
        body = response["Body"]
        try:
            async for chunk in body.iter_chunks(READ_CHUNK):
                yield chunk
        finally:
            body.close()

    async def stat(self, key: str) -> ObjectInfo | None:
        check_key(key)
        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if _error_code(error) in _NOT_FOUND:
                return None
            raise
        return ObjectInfo(key=key, bytes=head["ContentLength"])

    async def delete(self, key: str) -> None:
        check_key(key)
        await self._client.delete_object(Bucket=self.bucket, Key=key)

    async def delete_prefix(self, prefix: str) -> int:
        check_prefix(prefix, allow_empty=False)
        # Page by page (at most 1000 keys each, DeleteObjects' limit too): memory stays
        # bounded however many objects the prefix holds.
        deleted = 0
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.page_size}
        )
        async for page in pages:
            keys = [item["Key"] for item in page.get("Contents", [])]
            if not keys:
                continue
            result = await self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
            if errors := result.get("Errors"):
                raise ObjectStoreError(
                    f"S3: {len(errors)} objects under {prefix!r} were not deleted: {errors[:3]}"
                )
            deleted += len(keys)
        return deleted

    async def list(self, prefix: str) -> list[ObjectInfo]:
        check_prefix(prefix, allow_empty=True)
        found: list[ObjectInfo] = []
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.page_size}
        )
        async for page in pages:
            for item in page.get("Contents", []):
                found.append(ObjectInfo(key=item["Key"], bytes=item["Size"]))
        found.sort(key=lambda item: item.key)
        return found

    async def pending_uploads(self, prefix: str = "") -> builtins.list[str]:
        """Keys with a multipart upload begun and neither completed nor aborted."""
        check_prefix(prefix, allow_empty=True)
        listed = await self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return sorted(upload["Key"] for upload in listed.get("Uploads", []))
