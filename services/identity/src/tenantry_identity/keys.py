"""Signing keys: one active key signs; retired keys stay published in the JWKS for one
access-token lifetime so tokens they signed keep verifying (rotation without downtime)."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from joserfc.jwk import OKPKey
from uuid_utils.compat import uuid7

from tenantry_credentials.crypto import SecretBox
from tenantry_credentials.tokens import new_signing_key
from tenantry_events.pg import Database


class SigningKeys:
    def __init__(self, db: Database, box: SecretBox, *, token_ttl: timedelta) -> None:
        self._store = SigningKeyStore(db)
        self._box = box
        self._token_ttl = token_ttl
        self._active: OKPKey | None = None
        self._loaded_at = 0.0

    async def active(self) -> OKPKey:
        # Re-read now and then: another api process may have rotated.
        if self._active is None or time.monotonic() - self._loaded_at > 60:
            found = await self._store.active()
            if found is None:
                return await self.rotate()
            self._active = self._load(*found)
            self._loaded_at = time.monotonic()
        return self._active

    def _load(self, kid: str, blob: bytes) -> OKPKey:
        document = json.loads(self._box.decrypt(blob, f"identity.signing_key:{kid}"))
        return OKPKey.import_key(document)

    async def rotate(self) -> OKPKey:
        """Make a new active key; the old one retires but stays in the JWKS for a while."""
        kid = f"k-{uuid7().hex[:16]}"
        key = new_signing_key(kid)
        private = json.dumps(key.as_dict(private=True)).encode()
        await self._store.make_active(
            kid,
            private_jwk=self._box.encrypt(private, f"identity.signing_key:{kid}"),
            public_jwk=key.as_dict(private=False),
        )
        self._active = key
        self._loaded_at = time.monotonic()
        return key

    async def jwks(self) -> dict[str, Any]:
        return {"keys": await self._store.published(self._token_ttl * 2)}


class SigningKeyStore:
    """The token signing keys (platform-wide: no tenant, no events). The private half is
    stored encrypted by the caller."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def active(self) -> tuple[str, bytes] | None:
        """The active key's id and encrypted private JWK (the newest, should two exist)."""
        row = await self._db.pool.fetchrow(
            "SELECT kid, private_jwk FROM signing_keys WHERE state = 'active'"
            " ORDER BY created_at DESC LIMIT 1"
        )
        return (row["kid"], row["private_jwk"]) if row else None

    async def make_active(
        self, kid: str, *, private_jwk: bytes, public_jwk: dict[str, Any]
    ) -> None:
        """Store a new key as the active one; the previous one retires (rotations wait for
        each other)."""
        async with self._db.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(hashtext('identity.signing_keys'))")
            await tx.execute(
                "UPDATE signing_keys SET state = 'retired', retired_at = now()"
                " WHERE state = 'active'"
            )
            await tx.execute(
                """INSERT INTO signing_keys (kid, private_jwk, public_jwk, state)
                   VALUES ($1, $2, $3, 'active')""",
                kid,
                private_jwk,
                public_jwk,
            )

    async def published(self, retired_within: timedelta) -> list[dict[str, Any]]:
        """The public JWKs to publish: the active key and those retired within the window,
        newest first."""
        rows = await self._db.pool.fetch(
            """SELECT public_jwk FROM signing_keys
               WHERE state = 'active' OR retired_at > now() - $1::interval
               ORDER BY created_at DESC""",
            retired_within,
        )
        return [r["public_jwk"] for r in rows]
