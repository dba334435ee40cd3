"""The export job's rules (pure, no I/O): a saga over the five services, each writing its
own share of the tenant's data (DESIGN.md "Data lifecycle", issue 17 §1).

A job is `running` until every service has reported its part (tenant.export_part), then
`assembling` (the worker zips the parts with a signed manifest), then `completed` until it
expires (`expired`: the archive is deleted). It is `failed`, with a reason, when a part
reports an error, a part's file does not match what its service reported, or a service
has not answered after `MAX_REQUESTS` requests. No state waits forever: every state but
the last two has a way out that the scheduler drives.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from tenantry_events.payloads.tenancy import ExportFile, TenantExportPart
from tenantry_tenancy.domain import PURGE_PARTICIPANTS, DomainError

ExportStatus = Literal["running", "assembling", "completed", "failed", "expired"]
# The services that each write a share of an export: the same five as a purge.
EXPORT_PARTICIPANTS = PURGE_PARTICIPANTS
# How often a silent service is asked for its part before the job fails.
MAX_REQUESTS = 3
FORMAT = "tenantry-export/1"


class ExportRefused(DomainError):
    """An export's rule said no (the domain's error: `slug` and `status` for the edge)."""


@dataclass(frozen=True)
class ExportJob:
    export_id: UUID
    tenant_id: UUID
    subject_account_id: UUID | None
    requested_by: str
    requested_at: datetime
    status: ExportStatus = "running"
    requests: int = 1
    parts: dict[str, TenantExportPart] = field(default_factory=dict)
    failure: str | None = None
    move_id: UUID | None = None  # the export carries a move's shares (every row)

    @property
    def prefix(self) -> str:
        """Where every file of this export lives in object storage."""
        return export_prefix(self.tenant_id, self.export_id)

    @property
    def archive_key(self) -> str:
        return f"{self.prefix}archive.zip"

    @property
    def waiting_for(self) -> list[str]:
        return [s for s in EXPORT_PARTICIPANTS if s not in self.parts]

    def with_part(self, part: TenantExportPart) -> ExportJob:
        """The job after one service's report. The first report of a service counts (a
        redelivery repeats it); a report for a job no longer running changes nothing."""
        if self.status != "running" or part.service in self.parts:
            return self
        if part.service not in EXPORT_PARTICIPANTS:
            return self
        parts = {**self.parts, part.service: part}
        if part.error is not None:
            return replace(
                self, parts=parts, status="failed", failure=f"{part.service}: {part.error}"
            )
        for file in part.files:
            if not file.name.startswith(f"{part.service}/") or not file.object_key.startswith(
                self.prefix
            ):
                return replace(
                    self,
                    parts=parts,
                    status="failed",
                    failure=f"{part.service}: wrote {file.name!r} outside its share",
                )
        status: ExportStatus = "assembling" if len(parts) == len(EXPORT_PARTICIPANTS) else "running"
        return replace(self, parts=parts, status=status)

    def ask_again(self) -> ExportJob:
        """The scheduler found parts missing for too long: ask once more, or give up."""
        if self.status != "running":
            return self
        if self.requests >= MAX_REQUESTS:
            missing = ", ".join(self.waiting_for)
            return replace(
                self,
                status="failed",
                failure=f"no part from {missing} after {self.requests} requests",
            )
        return replace(self, requests=self.requests + 1)

    def files(self) -> list[ExportFile]:
        """Every part's files, in a stable order (service, then file name)."""
        return [
            f
            for service in sorted(self.parts)
            for f in sorted(self.parts[service].files, key=lambda f: f.name)
        ]


def export_prefix(tenant_id: UUID, export_id: UUID) -> str:
    return f"exports/{tenant_id}/{export_id}/"


def manifest(job: ExportJob, *, created_at: datetime, region: str) -> dict[str, Any]:
    """The archive's manifest (manifest.json; signed as manifest.jws): what a customer
    checks the files against. Counts, sizes and checksums, as each service reported them
    and the assembler verified them."""
    files = job.files()
    return {
        "format": FORMAT,
        "export_id": str(job.export_id),
        "tenant_id": str(job.tenant_id),
        "subject_account_id": str(job.subject_account_id) if job.subject_account_id else None,
        "region": region,
        "requested_at": job.requested_at.isoformat(),
        "created_at": created_at.isoformat(),
        "files": [
            {
                "name": f.name,
                "schema": f.schema,
                "records": f.records,
                "bytes": f.bytes,
                "sha256": f.sha256,
            }
            for f in files
        ],
        "records": sum(f.records for f in files),
    }


# ---------------------------------------------------------------- download links


@dataclass(frozen=True)
class LinkTerms:
    """How long a download link lives and how many downloads it allows."""

    ttl: timedelta = timedelta(hours=1)
    uses: int = 3

    def __post_init__(self) -> None:
        if not timedelta(minutes=1) <= self.ttl <= timedelta(days=1):
            raise ExportRefused("invalid-link", "a link lives between 1 minute and 1 day", 400)
        if not 1 <= self.uses <= 20:
            raise ExportRefused("invalid-link", "a link allows 1 to 20 downloads", 400)


def can_link(job: ExportJob, *, archive_expires_at: datetime | None, now: datetime) -> None:
    """Links are made only for a completed export whose archive has not expired."""
    if job.status != "completed" or archive_expires_at is None or archive_expires_at <= now:
        raise ExportRefused(
            "export-not-ready", f"the export is {job.status}: there is nothing to download"
        )
