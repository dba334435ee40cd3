from __future__ import annotations

from datetime import timedelta

from tenantry_platform.settings import ServiceSettings
from tenantry_webhooks.domain import RetrySchedule


class WebhooksSettings(ServiceSettings, frozen=True, kw_only=True):
    master_key: str  # required here: endpoint signing secrets are encrypted with it
    # Outbound requests to customer URLs (the SSRF guard refuses private, loopback and
    # other special addresses). The allow-list is for self-hosting and for tests on
    # loopback; empty by default. Plain http only if allowed.
    webhook_allow_networks: str = ""  # comma-separated CIDRs
    webhook_allow_http: bool = False
    webhook_connect_timeout_seconds: float = 5.0
    webhook_timeout_seconds: float = 15.0
    webhook_max_response_bytes: int = 20_000
    # Svix's schedule after the immediate first attempt: 5 s, 5 min, 30 min, 2 h, 5 h,
    # 10 h, 10 h (seconds), with +-20 % jitter.
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_retry_jitter: float = 0.2
    # A claimed delivery not recorded within timeout + margin was lost (its dispatcher
    # died): it goes out again, with the same webhook-id.
    webhook_lease_margin_seconds: float = 30.0
    webhook_concurrency: int = 64
    webhook_per_endpoint_concurrency: int = 4
    webhook_per_tenant_concurrency: int = (
        16  # of the 64: one tenant's dead endpoints can't take all
    )
    webhook_auto_disable_days: float = 5.0
    webhook_secret_grace_hours: float = 24.0  # how long a rotated-out secret still signs
    webhook_payload_retention_days: float = 30.0

    def schedule(self) -> RetrySchedule:
        return RetrySchedule.parse(self.webhook_retry_schedule, jitter=self.webhook_retry_jitter)

    @property
    def auto_disable_after(self) -> timedelta:
        return timedelta(days=self.webhook_auto_disable_days)

    @property
    def secret_grace(self) -> timedelta:
        return timedelta(hours=self.webhook_secret_grace_hours)

    def allow_networks(self) -> list[str]:
        return [n.strip() for n in self.webhook_allow_networks.split(",") if n.strip()]
