"""Envelope encryption for secrets that must be read back (signing keys, webhook secrets,
SSO client secrets): each secret gets its own data key (AES-256-GCM), and the data key is
wrapped with the master key from the environment (TENANTRY_MASTER_KEY, base64 of 32 bytes).
Rotating the master key means re-wrapping data keys, never re-encrypting the data.

Layout: b"v1" | 12-byte nonce | wrapped data key (48 bytes) | 12-byte nonce | ciphertext.
`context` (e.g. "identity.signing_key:<kid>") is bound as associated data, so a ciphertext
moved to another row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = b"v1"


class DecryptionFailed(Exception):
    pass


class SecretBox:
    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._kek = AESGCM(master_key)

    @classmethod
    def from_base64(cls, value: str) -> SecretBox:
        try:
            return cls(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ValueError("TENANTRY_MASTER_KEY must be base64 of 32 random bytes") from exc

    @classmethod
    def derived(cls, secret: str, purpose: bytes) -> SecretBox:
        """A box whose key is derived from a shared secret (HKDF-SHA256), one per purpose:
        two processes holding the secret open each other's boxes, and a box of one purpose
        opens nothing of another."""
        if not secret:
            raise ValueError("no secret to derive the key from")
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose)
        return cls(key.derive(secret.encode()))

    def encrypt(self, plaintext: bytes, context: str) -> bytes:
        aad = context.encode()
        data_key = AESGCM.generate_key(bit_length=256)
        kek_nonce, nonce = os.urandom(12), os.urandom(12)
        wrapped = self._kek.encrypt(kek_nonce, data_key, aad)
        return (
            VERSION + kek_nonce + wrapped + nonce + AESGCM(data_key).encrypt(nonce, plaintext, aad)
        )

    def decrypt(self, blob: bytes, context: str) -> bytes:
        aad = context.encode()
        if blob[:2] != VERSION or len(blob) < 2 + 12 + 48 + 12 + 16:
            raise DecryptionFailed("unknown ciphertext format")
        kek_nonce, wrapped = blob[2:14], blob[14:62]
        nonce, ciphertext = blob[62:74], blob[74:]
        try:
            data_key = self._kek.decrypt(kek_nonce, wrapped, aad)
            return AESGCM(data_key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise DecryptionFailed("wrong key or context, or tampered ciphertext") from None
