"""The object-storage port: what every backend offers, the key rules, and the digest kept
while an object streams in.

Keys are the same on every backend, so that an object written by the local store could be
written by S3 unchanged: 1 to 1024 characters of segments joined by "/"; each segment 1 to
255 characters of ASCII letters, digits and `. _ - =`, not starting with "." (so neither
"." nor ".." nor a hidden file, and the local store's temporary files, which start with
".", can never be a key). No leading or trailing "/", no empty segment, nothing else: no
NUL, no backslash, no spaces, no non-ASCII. A key that breaks a rule is refused with
`InvalidKey` before any I/O.

Overwriting: `put` on an existing key replaces the object whole. A reader sees the old
object or the new one, never a mix; an upload that fails leaves the old object in place.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass
from typing import Protocol

MAX_KEY_LENGTH = 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9._=-]{0,254}")
_PREFIX_TAIL = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9._=-]{0,254}|")  # a key's start, or ""


class ObjectStoreError(Exception):
    """The store could not do what was asked (configuration, the server, the disk)."""


class InvalidKey(ObjectStoreError, ValueError):
    """A key or prefix outside the rules above; raised before any I/O."""


class ObjectNotFound(ObjectStoreError, KeyError):
    """No object under this key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no object under key {self.key!r}"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What `put` wrote: the sha256 (hex) and size were computed from the bytes as they
    streamed through, so they describe exactly what the store received."""

    key: str
    bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What `stat` and `list` know without reading the object: its key and size. The
    checksum is `put`'s to report (the caller records it, e.g. in an archive manifest)."""

    key: str
    bytes: int


class ObjectStore(Protocol):
    """Streams both ways: memory stays bounded (a chunk, or one multipart part) whatever the
    object's size."""

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, content_type: str
    ) -> StoredObject:
        """Write the object from the chunks; on any failure (the chunks' iterator raising
        included) nothing is left under the key but what was there before."""
        ...

    def get(self, key: str) -> AsyncGenerator[bytes, None]:
        """The object's bytes in chunks; `ObjectNotFound` (on the first iteration) when there
        is none. Iterate it to the end or close it (`contextlib.aclosing`)."""
        ...

    async def stat(self, key: str) -> ObjectInfo | None: ...

    async def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error (deleting twice is fine)."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with the prefix (a plain string prefix, as in
        S3: "exports/t1" also matches "exports/t10/..."; end it with "/" for a folder).
        Returns how many were removed. The empty prefix is refused: it would be everything."""
        ...

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with the prefix, sorted by key ("" lists all)."""
        ...


def check_key(key: str) -> str:
    """The key, if it keeps the rules (module docstring); else `InvalidKey`."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("an object key must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"an object key is at most {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKey(f"object key {key!r}: segment {segment!r} breaks the key rules")
    return key


def check_prefix(prefix: str, *, allow_empty: bool) -> str:
    """A prefix is the start of a valid key: whole segments, then a partial one or ""."""
    if not isinstance(prefix, str):
        raise InvalidKey("a key prefix must be a string")
    if not prefix and not allow_empty:
        raise InvalidKey("the empty prefix (every object) is refused here")
    if len(prefix) > MAX_KEY_LENGTH:
        raise InvalidKey(f"a key prefix is at most {MAX_KEY_LENGTH} characters")
    *whole, tail = prefix.split("/")
    for segment in whole:
        if not _SEGMENT.fullmatch(segment):
            raise InvalidKey(f"key prefix {prefix!r}: segment {segment!r} breaks the key rules")
    if not _PREFIX_TAIL.fullmatch(tail):
        raise InvalidKey(f"key prefix {prefix!r}: {tail!r} cannot start a key segment")
    return prefix


class StreamDigest:
    """The sha256 and byte count of what has streamed through so far."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self.bytes = 0

    def update(self, chunk: bytes) -> None:
        self._sha256.update(chunk)
        self.bytes += len(chunk)

    def stored(self, key: str) -> StoredObject:
        return StoredObject(key=key, bytes=self.bytes, sha256=self._sha256.hexdigest())
