from __future__ import annotations

from tenantry_platform.settings import ServiceSettings


class IdentitySettings(ServiceSettings, frozen=True, kw_only=True):
    master_key: str  # required here: signing keys are encrypted with it
    bootstrap_secret: str = ""  # creates the first operator; empty disables bootstrap
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # Where verification links point: the SaaS product's page, or identity's own page.
    email_verification_url: str = ""

    # ---- SSO
    # Where browsers and IdPs reach identity (SAML entity ids, ACS and callback URLs are
    # built from it); defaults to identity's service URL.
    sso_public_url: str = ""
    # The SaaS product's callback URLs a login may return to (comma-separated, exact match).
    sso_redirect_uris: str = ""
    # The product's backend presents it to exchange a one-time code; empty disables SSO
    # code exchange. Compared in constant time; kept in the environment like the master key.
    sso_client_secret: str = ""
    # Outbound requests to IdPs (metadata, discovery, JWKS, tokens): the SSRF guard refuses
    # private and loopback addresses unless allow-listed (self-hosted IdPs; tests).
    sso_allow_networks: str = ""
    sso_allow_http: bool = False
    sso_fetch_timeout_seconds: float = 10.0
    sso_max_document_bytes: int = 1_000_000  # metadata, discovery, JWKS, token responses
    sso_metadata_refresh_seconds: float = 3600.0
    sso_login_ttl_seconds: float = 600.0  # a started login must finish within this
    sso_code_ttl_seconds: float = 60.0
    sso_clock_skew_seconds: int = 120  # SAML validity windows and OIDC token times
    sso_jwks_ttl_seconds: float = 3600.0
    # An unknown key id refetches the JWKS at most this often (a forged kid cannot make us
    # hammer the IdP; a real rotation is picked up on the next login after it).
    sso_jwks_min_refetch_seconds: float = 10.0
    # DNS servers for domain verification ("127.0.0.1:5353,[::1]:53"); empty: the system's.
    sso_dns_nameservers: str = ""
    sso_dns_timeout_seconds: float = 5.0

    def verification_url(self) -> str:
        return self.email_verification_url or (
            f"{self.service_url('identity')}/v1/email-verifications/confirm"
        )

    def public_url(self) -> str:
        return (self.sso_public_url or self.service_url("identity")).rstrip("/")

    def redirect_uris(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.sso_redirect_uris.split(",") if u.strip())

    def sso_networks(self) -> list[str]:
        return [n.strip() for n in self.sso_allow_networks.split(",") if n.strip()]

    def dns_nameservers(self) -> list[str]:
        return [n.strip() for n in self.sso_dns_nameservers.split(",") if n.strip()]
