"""Notices of changes to the data processing terms (issue 19 §2; docs/legal/README.md,
"Changes and objections"): the rules, without I/O.

The operator announces a change: sub-processors added, removed or changed, or a new
version of the DPA. Every tenant that exists then is told (legal.subprocessor_changed,
delivered by webhook and mailed to subscribed owners and admins), and the change takes
effect after the notice period (the DPA's clause on sub-processors; 30 days unless the
deployment says otherwise). Until then an owner or admin may object for the tenant, once.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Final, Literal

import msgspec

from tenantry_events.payloads.tenancy import SubprocessorChange
from tenantry_tenancy.agreements import Version
from tenantry_tenancy.domain import DomainError

NoticeKind = Literal["subprocessors", "document"]
CHANGES: Final = ("added", "removed", "changed")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
MAX_CHANGES: Final = 50


class NoticeRefused(DomainError):
    def __init__(self, status: int, slug: str, detail: str) -> None:
        super().__init__(slug, detail, status)


class NoticeTerms(msgspec.Struct, frozen=True, kw_only=True):
    kind: NoticeKind
    summary: str
    changes: list[SubprocessorChange]
    document: str | None
    version: str | None
    published_at: datetime
    effective_at: datetime


def notice_terms(
    *,
    kind: NoticeKind,
    summary: str,
    changes: list[SubprocessorChange],
    document: str | None,
    version: str | None,
    notice_days: int,
    now: datetime,
    published: list[Version],
) -> NoticeTerms:
    """The notice as announced, or NoticeRefused (422) saying what is wrong."""
    summary = summary.strip()
    if not summary:
        raise NoticeRefused(422, "invalid-notice", "summary: say what changes, in a sentence")
    if not 1 <= notice_days <= 365:
        raise NoticeRefused(422, "invalid-notice", "notice_days: 1 to 365")
    if len(changes) > MAX_CHANGES:
        raise NoticeRefused(422, "invalid-notice", f"changes: at most {MAX_CHANGES}")
    for n, change in enumerate(changes):
        if change.change not in CHANGES:
            raise NoticeRefused(
                422, "invalid-notice", f"changes[{n}].change: one of {', '.join(CHANGES)}"
            )
        if not change.name.strip():
            raise NoticeRefused(422, "invalid-notice", f"changes[{n}].name: the sub-processor")
        if change.country and not _COUNTRY.match(change.country):
            raise NoticeRefused(
                422, "invalid-notice", f"changes[{n}].country: an ISO 3166-1 alpha-2 code"
            )
    if kind == "subprocessors":
        if not changes:
            raise NoticeRefused(422, "invalid-notice", "changes: name what changes")
        if document is not None or version is not None:
            raise NoticeRefused(
                422, "invalid-notice", "document and version are for kind 'document'"
            )
    else:
        known = {(v.document, v.version) for v in published}
        if (document, version) not in known:
            raise NoticeRefused(
                422,
                "unknown-version",
                f"{document!r} version {version!r} is not published (GET /v1/legal/documents)",
            )
    return NoticeTerms(
        kind=kind,
        summary=summary,
        changes=changes,
        document=document,
        version=version,
        published_at=now,
        effective_at=now + timedelta(days=notice_days),
    )


def check_objection(
    *, effective_at: datetime, objected_at: datetime | None, reason: str, now: datetime
) -> str:
    """The objection's reason, trimmed, or NoticeRefused: only within the notice period,
    once per tenant, with a reason."""
    if objected_at is not None:
        raise NoticeRefused(409, "already-objected", "The tenant objected to this notice already")
    if now >= effective_at:
        raise NoticeRefused(
            409,
            "notice-period-over",
            f"The change took effect at {effective_at.isoformat()}: objections are closed",
        )
    reason = reason.strip()
    if not reason:
        raise NoticeRefused(422, "invalid-objection", "reason: say why the tenant objects")
    return reason
