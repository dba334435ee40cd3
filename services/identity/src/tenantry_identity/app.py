"""Wiring of the identity service: the one place that puts domain, store and edges together."""

from __future__ import annotations

from datetime import timedelta

from tenantry_identity.api import AccountsController, ApiKeysController, SessionsController, jwks
from tenantry_identity.keys import SigningKeys
from tenantry_identity.settings import IdentitySettings
from tenantry_servicekit.app import ServiceSpec
from tenantry_servicekit.crypto import SecretBox
from tenantry_servicekit.projections import standard_projections
from tenantry_servicekit.runtime import Runtime


async def start_signing_keys(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, IdentitySettings)
    keys = SigningKeys(
        runtime.db,
        SecretBox.from_base64(settings.master_key),
        token_ttl=timedelta(seconds=settings.access_token_ttl_seconds),
    )
    await keys.active()  # creates the first key on a new database
    runtime.extras["signing_keys"] = keys


SPEC = ServiceSpec(
    name="identity",
    description=(
        "Login accounts, SSO connections, sessions and tokens, API keys, email verification."
    ),
    route_handlers=[SessionsController, AccountsController, ApiKeysController],
    root_route_handlers=[jwks],
    consumer_handlers=standard_projections(),
    migration_packages=["tenantry_identity"],
    settings_cls=IdentitySettings,
    on_startup=[start_signing_keys],
)
