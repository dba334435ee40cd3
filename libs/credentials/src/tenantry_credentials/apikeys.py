"""The API key format: recognisable by secret scanners, checkable offline.

    tnty_live_<32 base62 chars: 190 random bits><6 base62 chars: CRC32 checksum>

`tnty_` marks a Tenantry key, `live`/`test` its environment. The checksum lets the
pipeline reject a mistyped or made-up key without a database lookup (as GitHub's token
format does). Only the SHA-256 of the whole key is stored; lookups are by that hash.
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
_SHAPE = re.compile(rf"^tnty_(live|test)_([0-9A-Za-z]{{{SECRET_LENGTH + CHECKSUM_LENGTH}}})$")


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def generate(environment: Environment = "live") -> str:
    secret = "".join(secrets.choice(ALPHABET) for _ in range(SECRET_LENGTH))
    body = f"{PREFIX}{environment}_{secret}"
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


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def display_prefix(key: str) -> str:
    """What lists show: enough to recognise the key, useless to an attacker."""
    return key[: len(PREFIX) + 5 + 6]
