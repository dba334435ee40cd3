"""The export archive: every service's files, zipped with a manifest signed by the region's
document key and a README of the formats. Built through a temporary file, one chunk at a
time, so memory stays bounded whatever the tenant's size; each part is checked against the
checksum, size and record count its service reported while it is copied in.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import IO, Any

from tenantry_objectstore.store import ObjectNotFound, ObjectStore, StoredObject
from tenantry_tenancy.exports import ExportJob, manifest

CHUNK = 1024 * 1024
Sign = Callable[[dict[str, Any]], Awaitable[str]]


class PartMismatch(Exception):
    """A part's file is not what its service reported (or is gone): the export fails."""


async def assemble(
    job: ExportJob, objects: ObjectStore, sign: Sign, *, region: str, now: datetime
) -> tuple[StoredObject, int]:
    """Write the archive to `job.archive_key`; returns it and its record count."""
    document = manifest(job, created_at=now, region=region)
    with tempfile.TemporaryFile() as spool:
        with zipfile.ZipFile(spool, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as z:
            z.writestr("README.md", README)
            for file in job.files():
                digest, size, lines = hashlib.sha256(), 0, 0
                with z.open(file.name, "w", force_zip64=True) as entry:
                    try:
                        async for chunk in objects.get(file.object_key):
                            entry.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                            lines += chunk.count(b"\n")
                    except ObjectNotFound:
                        raise PartMismatch(f"{file.name} is missing from storage") from None
                found = (digest.hexdigest(), size, lines)
                if found != (file.sha256, file.bytes, file.records):
                    raise PartMismatch(
                        f"{file.name}: reported sha256 {file.sha256[:12]}, {file.bytes} bytes,"
                        f" {file.records} records; stored {found[0][:12]}, {size} bytes,"
                        f" {lines} lines"
                    )
            z.writestr("manifest.json", json.dumps(document, indent=2, sort_keys=True) + "\n")
            z.writestr("manifest.jws", await sign(document) + "\n")
        spool.seek(0)
        stored = await objects.put(job.archive_key, _chunks(spool), content_type="application/zip")
    return stored, int(document["records"])


async def _chunks(spool: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := spool.read(CHUNK):
        yield chunk


README = """\
# Tenantry data export

This archive holds one tenant's data (or one person's, when `subject_account_id` is set in
the manifest) as each Tenantry service keeps it, in the region where the tenant lives.

## Files

- `manifest.json`: what the archive holds. For each file: its `name`, the `schema` each of
  its lines follows, the number of `records` (lines), its size in `bytes` and its `sha256`.
- `manifest.jws`: the same manifest, signed (JWS compact serialization, alg Ed25519, RFC 9864)
  with the region's document key. The keys are published at the region's
  `/.well-known/document-jwks.json` on the tenancy API; the `kid` in the JWS header names the key.
- `<service>/<resource>.ndjson`: newline-delimited JSON, UTF-8, one record per line.
  - `tenancy/`: the tenant, its plan history and audit trail, limits and overrides.
  - `identity/`: accounts, API keys (metadata only, never the key or its hash), SSO
    connections (without client secrets or private keys), sign-in records.
  - `provisioning/`: SCIM users and groups as SCIM 2.0 resources (RFC 7643), one per line.
  - `webhooks/`: endpoints (without signing secrets), messages and delivery attempts still
    within the payload retention period.
  - `ratelimit/`: the tenant's rate-limit policies.

## Verifying the archive

1. Verify `manifest.jws` with a key from the JWKS and check that its payload equals
   `manifest.json`.
2. For each file listed, check its SHA-256 and its line count against the manifest.

Secrets (passwords, key hashes, signing secrets) are never exported.
"""
