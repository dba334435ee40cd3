"""identity's export renders an SSO connection's stored configuration without any key
named like a secret, whatever a future connection kind stores there (today's secrets live
in the encrypted `secrets` column, which no export query selects)."""

from __future__ import annotations

from uuid import uuid4

from tenantry_identity.export import SSO_CONNECTIONS, connection_line
from tenantry_platform.settings import ServiceSettings
from tenantry_service.export import ExportScope


def test_a_connections_secret_looking_config_keys_are_left_out() -> None:
    scope = ExportScope(
        tenant_id=uuid4(),
        subject_account_id=None,
        settings=ServiceSettings(database_url="", kafka_bootstrap=""),
    )
    row = {
        "id": uuid4(),
        "kind": "oidc",
        "config": {
            "issuer": "https://idp.example",
            "client_id": "cid",
            "client_secret": "s1",
            "SP_Private_Key": "s2",
            "bind_password": "s3",
            "sp_cert": "-----BEGIN CERTIFICATE-----",
        },
    }
    line = connection_line(row, scope)
    assert line["config"] == {
        "issuer": "https://idp.example",
        "client_id": "cid",
        "sp_cert": "-----BEGIN CERTIFICATE-----",
    }
    assert line["kind"] == "oidc"
    assert "secrets" not in SSO_CONNECTIONS.query
