from __future__ import annotations

from tenantry_servicekit.settings import ServiceSettings


class IdentitySettings(ServiceSettings, frozen=True, kw_only=True):
    master_key: str  # required here: signing keys are encrypted with it
    bootstrap_secret: str = ""  # creates the first operator; empty disables bootstrap
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
