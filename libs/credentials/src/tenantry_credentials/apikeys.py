"""The API key format: recognisable by secret scanners, checkable offline.

    tnty_live_<region>_<32 base62 chars: 190 random bits><6 base62 chars: CRC32 checksum>

`tnty_` marks a Tenantry key, `live`/`test` its environment, `<region>` the region that
issued it and keeps its tenant (docs/residency.md): any region can send the request to the
key's home region (307) without a lookup. The checksum covers everything before it, so it
lets the pipeline reject a mistyped or made-up key without a database lookup (as GitHub's
token format does), and a key whose region was edited to name another region fails it
there. Keys issued before regions (`tnty_live_<secret><checksum>`) name none: they belong
to the region that issued them. Only the SHA-256 of the whole key is stored; lookups are
by that hash.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import zlib
from typing import Literal

PREFIX = "tnty_"
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SECRET_LENGTH = 32  # 32 base62 chars = 190 bits of randomness
CHECKSUM_LENGTH = 6
Environment = Literal["live", "test"]
_SECRET = rf"[0-9A-Za-z]{{{SECRET_LENGTH + CHECKSUM_LENGTH}}}"
# environment, region (optional: keys issued before regions have none), secret + checksum
_SHAPE = re.compile(rf"^tnty_(live|test)_(?:([a-z][a-z0-9-]{{0,15}})_)?({_SECRET})$")


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate(environment: Environment = "live", region: str | None = None) -> str:
    secret = "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LENGTH))
    body = f"{PREFIX}{environment}_" + (f"{region}_" if region else "") + secret
    if not _SHAPE.match(body + "0" * CHECKSUM_LENGTH):
        raise ValueError(f"not a region id: {region!r}")
    return body + _checksum(body)


def looks_like_api_key(token: str) -> bool:
    """The prefix says "API key" (as opposed to an access token)."""
    return token.startswith(PREFIX)


def is_well_formed(key: str) -> bool:
    match = _SHAPE.match(key)
    if not match:
        return False
    body, checksum = key[:-CHECKSUM_LENGTH], key[-CHECKSUM_LENGTH:]
    return secrets.compare_digest(_checksum(body), checksum)


def region_of(key: str) -> str | None:
    """The region a well-formed key names (None for keys issued before regions). Check
    `is_well_formed` first: the region of a made-up key means nothing."""
    match = _SHAPE.match(key)
    return match.group(2) if match else None


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def display_prefix(key: str) -> str:
    """What lists show: enough to recognise the key, useless to an attacker (the
    environment, the region and 6 of the 190 random bits' characters)."""
    match = _SHAPE.match(key)
    secret_at = match.start(3) if match else len(PREFIX) + 5
    return key[: secret_at + 6]
