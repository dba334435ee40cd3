from __future__ import annotations

from tenantry_servicekit.settings import ServiceSettings


class IdentitySettings(ServiceSettings, frozen=True, kw_only=True):
    master_key: str  # required here: signing keys are encrypted with it
    bootstrap_secret: str = ""  # creates the first operator; empty disables bootstrap
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # Where verification links point: the SaaS product's page, or identity's own page.
    email_verification_url: str = ""

    def verification_url(self) -> str:
        return self.email_verification_url or (
            f"{self.service_url('identity')}/v1/email-verifications/confirm"
        )
