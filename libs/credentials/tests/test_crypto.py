from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantry_credentials.crypto import DecryptionFailed, SecretBox

BOX = SecretBox(os.urandom(32))


@given(st.binary(max_size=2000), st.text(max_size=40))
def test_round_trip(plaintext: bytes, context: str) -> None:
    assert BOX.decrypt(BOX.encrypt(plaintext, context), context) == plaintext


def test_wrong_context_key_or_tampering_fails() -> None:
    blob = BOX.encrypt(b"secret", "row:1")
    assert b"secret" not in blob
    with pytest.raises(DecryptionFailed):
        BOX.decrypt(blob, "row:2")
    with pytest.raises(DecryptionFailed):
        SecretBox(os.urandom(32)).decrypt(blob, "row:1")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionFailed):
        BOX.decrypt(tampered, "row:1")
    with pytest.raises(ValueError, match="base64"):
        SecretBox.from_base64("not base64!")
