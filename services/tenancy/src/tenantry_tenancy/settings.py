from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import msgspec

from tenantry_platform.settings import ServiceSettings


class TenancySettings(ServiceSettings, frozen=True, kw_only=True):
    master_key: str  # required here: the region's document key is encrypted with it
    # The lifecycle scheduler (lifecycle.py): how often it looks for due purges and
    # reminders, and after how long a purge still missing reports is asked for again.
    lifecycle_scan_seconds: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    purge_resend_seconds: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    # Exports (export_worker.py): how often the worker looks for work, after how long a
    # silent service is asked again for its part, and how long an archive is kept.
    export_scan_seconds: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    # How often the worker looks for moves to take a step further (move_driver.py); a move
    # waiting on the other region backs off from this up to five minutes.
    move_scan_seconds: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    # The audit log (tenantry_tenancy.audit): how often retention prunes what plans no
    # longer keep, and whether each entry is also sent as audit.recorded (an opt-in
    # webhook event; off only for a deployment that never streams to a SIEM).
    audit_retention_scan_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    audit_stream: bool = True
    # What a tenant's rendering of the DPA fills in (docs/legal; the chart's `legal:`).
    legal_processor_name: str = ""
    legal_processor_address: str = ""
    legal_service_name: str = ""
    legal_governing_law: str = ""
    legal_notice_days: Annotated[int, msgspec.Meta(ge=1, le=365)] = 30
    # How often the worker tells the next tenants of an announced change (legal_notices).
    legal_notice_scan_seconds: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    legal_breach_notice_hours: Annotated[int, msgspec.Meta(ge=1, le=72)] = 48
    export_resend_seconds: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    export_keep_days: Annotated[float, msgspec.Meta(gt=0)] = 7.0
    # How long a purged tenant's slug stays unavailable to new tenants.
    slug_quarantine_days: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    # The global directory's own database (docs/residency.md), in the region hosting it
    # only: the app role's URL and the owner's (migrations). Required there, unused
    # elsewhere.
    directory_database_url: str = ""
    directory_migration_database_url: str = ""
    # A claim whose tenant's facts never arrive within this long is given back (a create
    # that failed after claiming its slug, its release lost with a crashed process).
    directory_claim_grace_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0

    @property
    def slug_quarantine(self) -> timedelta:
        return timedelta(days=self.slug_quarantine_days)

    @property
    def export_resend_after(self) -> timedelta:
        return timedelta(seconds=self.export_resend_seconds)

    @property
    def export_keep(self) -> timedelta:
        return timedelta(days=self.export_keep_days)

    @property
    def purge_resend_after(self) -> timedelta:
        return timedelta(seconds=self.purge_resend_seconds)
