"""Object storage for large blobs (export archives), streamed both ways: a local directory
(`make up`) or an S3-compatible API (production). See docs/object-storage.md."""

from tenantry_objectstore.factory import open_object_store, s3_config
from tenantry_objectstore.local import LocalDirectoryStore
from tenantry_objectstore.s3 import S3Config, S3Store
from tenantry_objectstore.store import (
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    StoredObject,
    check_key,
    check_prefix,
)

__all__ = [
    "InvalidKey",
    "LocalDirectoryStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "S3Config",
    "S3Store",
    "StoredObject",
    "check_key",
    "check_prefix",
    "open_object_store",
    "s3_config",
]
