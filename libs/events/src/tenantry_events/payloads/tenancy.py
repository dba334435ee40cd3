"""Events owned by the tenancy service.

Each tenant event carries the tenant's full current state (status, plan, region,
aggregate version on the envelope), so a projection applying "highest version wins"
ends right whatever the arrival order across topics.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec

from tenantry_events.catalog import event

TenantStatus = Literal["active", "suspended", "offboarding", "purged"]


class TenantState(msgspec.Struct, frozen=True, kw_only=True):
    """The part of a tenant every service projects."""

    name: str
    slug: str
    status: TenantStatus
    plan: str
    home_region: str


@event("tenant.created", owner="tenancy", public=True, personal=("owner_email",))
class TenantCreated(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant was created; it starts active on its plan in its home region."""

    tenant: TenantState
    created_by: str
    # identity creates the owner's account from it and mails the invitation.
    owner_email: str | None = None


@event("tenant.suspended", owner="tenancy", public=True)
class TenantSuspended(msgspec.Struct, frozen=True, kw_only=True):
    """An operator suspended the tenant: every service refuses its requests."""

    tenant: TenantState
    reason: str
    by: str


@event("tenant.reactivated", owner="tenancy", public=True)
class TenantReactivated(msgspec.Struct, frozen=True, kw_only=True):
    """An operator lifted a suspension: access is restored."""

    tenant: TenantState
    reason: str
    by: str


@event("tenant.moved", owner="tenancy", public=True)
class TenantMoved(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant moved to another region (its home region is `tenant.home_region` now):
    its data was copied there and is erased in `from_region`. Its status is what it was
    before the move. API keys, SCIM tokens and sessions of the old region have ended."""

    tenant: TenantState
    from_region: str
    move_id: UUID
    by: str


@event(
    "tenant.agreement_accepted",
    owner="tenancy",
    public=True,
    personal=("name", "title", "email", "ip"),
)
class TenantAgreementAccepted(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant admin or owner accepted a version of a legal document (the DPA) for the
    tenant: who, in what capacity, when, from where, and the hash of the exact text."""

    acceptance_id: UUID
    document: str  # "dpa"
    version: str
    sha256: str
    name: str
    title: str
    email: str
    ip: str | None
    accepted_by: str  # the principal: "user:<account id>"
    accepted_at: datetime


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's resolved limits. Three kinds: feature switches (bool), quantities (int,
    None = unlimited) and rates (requests per second with a burst)."""

    sso: bool
    scim: bool
    data_export: bool
    seats: int | None
    webhook_endpoints: int | None
    api_keys: int | None
    requests_per_second: float
    burst: int
    # Days between the start of offboarding and the purge (a duration, in whole days).
    offboarding_grace_days: int = 30
    # Days the tenant's audit log keeps an entry (tenantry_tenancy.audit).
    audit_retention_days: int = 90


class PlanOffer(msgspec.Struct, frozen=True, kw_only=True):
    plan_id: str
    rank: int
    limits: Limits


@event("tenant.limits_changed", owner="tenancy", public=True)
class TenantLimitsChanged(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant's effective limits (plan plus overrides) changed. `limits_version` grows
    with every change, so a projection keeps the highest. `plans` lists every plan, so the
    service that refuses a creation can name the plan that would allow it."""

    plan: str
    limits: Limits
    limits_version: int
    plans: list[PlanOffer]


@event("tenant.plan_changed", owner="tenancy", public=True)
class TenantPlanChanged(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant moved to another plan (an owner's self-service change or an operator's)."""

    tenant: TenantState
    previous_plan: str
    by: str


# ------------------------------------------------------------------ data lifecycle
# Offboarding, purge and export (DESIGN.md "Data lifecycle", issue 17). Purge and export
# are sagas: tenancy requests, each service does its own share and reports, tenancy
# concludes. The per-service reports are internal; the milestones are public.


@event("tenant.offboarding_started", owner="tenancy", public=True)
class TenantOffboardingStarted(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant is leaving: during the grace period its admins may sign in, read and
    export; everything else is refused. At `purge_at` every service erases its data."""

    tenant: TenantState
    previous_status: TenantStatus
    purge_at: datetime
    reason: str
    by: str
    # Where the signed deletion certificate will be, once the purge is done.
    certificate_id: UUID
    # Set when the tenant moved to that region: what leaves is this region's copy only.
    moved_to: str | None = None


@event("tenant.offboarding_cancelled", owner="tenancy", public=True)
class TenantOffboardingCancelled(msgspec.Struct, frozen=True, kw_only=True):
    """Offboarding was called off during the grace period; the tenant is back in the state
    it left (active or suspended)."""

    tenant: TenantState
    reason: str
    by: str


@event("tenant.offboarding_reminder", owner="tenancy", public=False)
class TenantOffboardingReminder(msgspec.Struct, frozen=True, kw_only=True):
    """The purge is `days_left` days away (sent at T-7 and T-1); identity mails the
    tenant's owners and admins."""

    purge_at: datetime
    days_left: int


@event("tenant.purge_requested", owner="tenancy", public=False)
class TenantPurgeRequested(msgspec.Struct, frozen=True, kw_only=True):
    """Every service is to delete all of the tenant's rows and keys and answer with
    tenant.purged_by. Redelivery is harmless: a service answers with the report it made."""

    purge_id: UUID
    early: bool  # an operator purged before the grace period ended
    reason: str
    by: str


class PurgedRows(msgspec.Struct, frozen=True, kw_only=True):
    table: str
    rows: int


@event(
    "tenant.purged_by", owner="identity, provisioning, ratelimit, tenancy, webhooks", public=False
)
class TenantPurgedBy(msgspec.Struct, frozen=True, kw_only=True):
    """One service erased its share of the tenant: what it deleted, table by table (counts
    only), and whether it destroyed its copy of the tenant's data key."""

    purge_id: UUID
    service: str
    tables: list[PurgedRows]
    redis_keys: int
    key_destroyed: bool
    completed_at: datetime


@event("tenant.purged", owner="tenancy", public=False)
class TenantPurged(msgspec.Struct, frozen=True, kw_only=True):
    """Every service reported its purge: the tenant is a tombstone, and a deletion
    certificate was issued."""

    tenant: TenantState
    purge_id: UUID
    certificate_id: UUID


class ExportFile(msgspec.Struct, frozen=True, kw_only=True):
    """One NDJSON file of an export, as its service wrote it to object storage."""

    name: str  # e.g. "identity/accounts.ndjson"
    schema: str  # what each line is, e.g. "tenantry.identity.account/v1" or a SCIM URN
    records: int
    bytes: int
    sha256: str
    object_key: str


@event("tenant.export_requested", owner="tenancy", public=False)
class TenantExportRequested(msgspec.Struct, frozen=True, kw_only=True):
    """Each service is to write its share of the tenant's data (or of one person's,
    when `subject_account_id` is set) under `prefix` and answer with tenant.export_part.
    With `move_id`, the share is every row of the tenant, for its move to another region
    (tenantry_service.move)."""

    export_id: UUID
    prefix: str
    requested_by: str
    subject_account_id: UUID | None = None
    move_id: UUID | None = None


@event(
    "tenant.export_part", owner="identity, provisioning, ratelimit, tenancy, webhooks", public=False
)
class TenantExportPart(msgspec.Struct, frozen=True, kw_only=True):
    """One service's share of an export: its files, or why it could not write them."""

    export_id: UUID
    service: str
    files: list[ExportFile]
    error: str | None = None


@event("tenant.export_completed", owner="tenancy", public=True)
class TenantExportCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """The tenant's export archive is ready; download it through the export resource
    (GET /v1/tenants/{tenant_id}/exports/{export_id}) until `expires_at`."""

    export_id: UUID
    bytes: int
    records: int
    expires_at: datetime
    requested_by: str


@event("tenant.export_link", owner="tenancy", public=True, opt_in=True)
class TenantExportLink(msgspec.Struct, frozen=True, kw_only=True):
    """A download link of a completed export was made, revoked, or used to download the
    archive (`change`: "created" | "revoked" | "downloaded"; the subject is the link).
    Never carries the link's token. Opt-in: the audit log records every one; an endpoint
    receives them only when its filter names `tenant.export_link`."""

    export_id: UUID
    link_id: UUID
    change: str
    expires_at: datetime | None = None
    uses_left: int | None = None


@event("tenant.export_failed", owner="tenancy", public=True)
class TenantExportFailed(msgspec.Struct, frozen=True, kw_only=True):
    """The export could not be made; `reason` says which part failed and why."""

    export_id: UUID
    reason: str
    requested_by: str


# ------------------------------------------------------------------ erasing one person
# GDPR Art. 17 inside a live tenant: tenancy destroys the person's subject key (so what
# events said of them reads as erased everywhere) and asks every service to delete or
# anonymize its rows of them; each answers, tenancy records the erasure as done.


@event("subject.erasure_requested", owner="tenancy", public=False)
class SubjectErasureRequested(msgspec.Struct, frozen=True, kw_only=True):
    """Every service is to erase what it holds of one person (their account id, which is
    also their SCIM user id) and forget its copy of their subject key, then answer with
    subject.erased_by. Redelivery is harmless: a service answers with what it did."""

    erasure_id: UUID
    subject_id: UUID
    by: str


@event(
    "subject.erased_by", owner="identity, provisioning, ratelimit, tenancy, webhooks", public=False
)
class SubjectErasedBy(msgspec.Struct, frozen=True, kw_only=True):
    """One service erased what it held of the person: counts per table."""

    erasure_id: UUID
    subject_id: UUID
    service: str
    tables: list[PurgedRows]
    completed_at: datetime


@event("subject.erased", owner="tenancy", public=True)
class SubjectErased(msgspec.Struct, frozen=True, kw_only=True):
    """Every service erased the person; what events said of them reads as "[erased]"."""

    erasure_id: UUID
    subject_id: UUID
    completed_at: datetime


class AuditActorView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    kind: str  # user | api_key | scim | sso | operator | system | anonymous
    id: str | None = None
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None


@event(
    "audit.recorded",
    owner="tenancy",
    public=True,
    opt_in=True,
    personal=("actor.ip", "actor.user_agent"),
    person="actor_account_id",
)
class AuditRecorded(msgspec.Struct, frozen=True, kw_only=True):
    """An entry was added to the tenant's audit log (GET /v1/tenants/{tenant_id}/audit-events):
    who did what to which target, when, with the entry's place in the tenant's hash chain.
    Opt-in: a webhook endpoint receives it only when its filter names `audit.recorded`,
    for streaming the log to a SIEM. `details` is the audited event's payload without its
    personal fields (read those from the API); `record` is the exact text hashed into the
    chain, so `sha256(bytes.fromhex(prev_hash) + record.encode())` is `hash`
    (docs/audit.md)."""

    entry_id: str  # the audited event's id
    seq: int
    action: str
    outcome: str
    occurred_at: str
    actor: AuditActorView
    actor_account_id: UUID | None = None  # the person acting, when a user: their key seals
    target_type: str
    target_id: str
    details: dict[str, Any]
    record: str
    prev_hash: str
    hash: str


class SubprocessorChange(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    change: str  # "added" | "removed" | "changed"
    purpose: str = ""
    country: str = ""  # ISO 3166-1 alpha-2 where it processes data
    transfer_mechanism: str = ""  # e.g. "SCCs Module 3" for a processor outside the EEA


@event("legal.subprocessor_changed", owner="tenancy", public=True)
class LegalSubprocessorChanged(msgspec.Struct, frozen=True, kw_only=True):
    """The platform announced a change to the tenant's data processing terms: a
    sub-processor added, removed or changed, or a new version of the DPA (`kind`
    "subprocessors" or "document"). It takes effect at `effective_at`, after the notice
    period; until then an owner or admin may object for the tenant
    (POST /v1/tenants/{tenant_id}/legal/notices/{notice_id}/objection). Sent to every
    tenant that existed when it was published; identity mails the owners and admins who
    subscribed to legal notices."""

    notice_id: UUID
    kind: str  # "subprocessors" | "document"
    summary: str
    changes: list[SubprocessorChange]
    document: str | None = None  # for "document": which one, and its new version
    version: str | None = None
    published_at: datetime
    effective_at: datetime


@event("tenant.legal_objection", owner="tenancy", public=True)
class TenantLegalObjection(msgspec.Struct, frozen=True, kw_only=True):
    """An owner or admin objected, for the tenant, to an announced change of its data
    processing terms (legal.subprocessor_changed) within its notice period. The platform
    follows up under the DPA (the change may not apply to this tenant, or the tenant may
    end the contract)."""

    notice_id: UUID
    reason: str
    objected_by: str  # "user:<account id>"
