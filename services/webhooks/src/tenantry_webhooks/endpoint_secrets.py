"""Endpoint signing secrets at rest: sealed with the master key (AES-GCM), each bound to its
endpoint by the associated data, so a sealed secret copied into another endpoint's row does
not open there."""

from __future__ import annotations

from dataclasses import dataclass

from tenantry_credentials.crypto import SecretBox

SECRET_CONTEXT = "webhooks.endpoint_secret"  # noqa: S105  (AES-GCM associated data)


@dataclass(frozen=True)
class EndpointSecrets:
    box: SecretBox
    context: str = SECRET_CONTEXT

    def seal(self, endpoint_id: str, secret: str) -> bytes:
        return self.box.encrypt(secret.encode(), f"{self.context}:{endpoint_id}")

    def unseal(self, endpoint_id: str, sealed: bytes) -> str:
        return self.box.decrypt(sealed, f"{self.context}:{endpoint_id}").decode()
