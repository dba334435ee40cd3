"""Password hashing: argon2id, off the event loop, and as slow for an unknown user as for a
known one (a sign-in must not tell which addresses have accounts)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

HASHER = PasswordHasher()  # argon2id, library defaults (RFC 9106 second recommendation)
_DUMMY_HASH = HASHER.hash("a password nobody has, to spend the same time on unknown users")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(HASHER.hash, password)


async def password_matches(stored: str | None, password: str) -> bool:
    try:
        return await asyncio.to_thread(HASHER.verify, stored or _DUMMY_HASH, password) and bool(
            stored
        )
    except (VerificationError, InvalidHashError):
        return False
