"""The region's document key: an Ed25519 key that signs what Tenantry hands a customer as
proof (deletion certificates, export manifests). Its public half is served at tenancy's
/.well-known/document-jwks.json, so anyone can verify a document offline with a JOSE library.

The private half is stored encrypted with the master key. One key per region, made on
first use (two processes racing to make it agree on the first one stored).
"""

from __future__ import annotations

import json
from typing import Any

from joserfc.jwk import OKPKey
from uuid_utils.compat import uuid7

from tenantry_credentials.crypto import SecretBox
from tenantry_credentials.tokens import new_signing_key, sign
from tenantry_events.pg import Database


class DocumentSigner:
    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box
        self._key: OKPKey | None = None

    async def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS (a JWT, alg Ed25519, `kid` in the header) of the claims."""
        return sign(claims, await self._active())

    async def jwks(self) -> dict[str, Any]:
        await self._active()  # a verifier asking before any document was signed gets it
        rows = await self._db.pool.fetch(
            "SELECT public_jwk FROM document_signing_keys ORDER BY created_at DESC"
        )
        return {"keys": [dict(r["public_jwk"]) for r in rows]}

    async def _active(self) -> OKPKey:
        if self._key is not None:
            return self._key
        kid = f"doc-{uuid7().hex[:16]}"
        fresh = new_signing_key(kid)
        async with self._db.transaction(platform=True) as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(hashtext('tenancy.document_key'))")
            row = await tx.fetchrow(
                "SELECT kid, private_jwk FROM document_signing_keys"
                " ORDER BY created_at DESC LIMIT 1"
            )
            if row is None:
                private = json.dumps(fresh.as_dict(private=True)).encode()
                await tx.execute(
                    """INSERT INTO document_signing_keys (kid, private_jwk, public_jwk)
                       VALUES ($1, $2, $3)""",
                    kid,
                    self._box.encrypt(private, _context(kid)),
                    fresh.as_dict(private=False),
                )
                self._key = fresh
            else:
                document = self._box.decrypt(row["private_jwk"], _context(row["kid"]))
                self._key = OKPKey.import_key(json.loads(document))
        return self._key


def _context(kid: str) -> str:
    return f"tenancy.document_key:{kid}"
