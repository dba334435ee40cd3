"""The global directory's wire protocol: what it holds, and how regions talk to it.

The directory (hosted by tenancy in one region, in a database of its own) holds only
non-personal routing facts: a tenant's id, slug, home region and status, its verified
email domains and its SSO connection ids. No name, no email address, no user: nothing a
region may not share with another (docs/residency.md says why each fact is not personal).

Regions talk to it over HTTP, authenticated by the deployment's directory secret:
- claims: `POST /internal/v1/directory/claims` takes a slug, an email domain or an SSO
  connection id for a tenant (`DELETE .../claims/{kind}/{value}` gives it back),
  atomically across every region: one wins, the others get 409. A claim names the
  tenant's home region and is the first fact the directory records of a tenant.
- facts: `PUT /internal/v1/directory/tenants/{id}` records the tenant's current facts
  (its home region's tenancy pushes them after each change); a fact set without a slug
  releases the slug (the end of offboarding's quarantine).
- the change feed: `GET /internal/v1/directory/changes?after=<cursor>&limit=<n>` lists the
  facts recorded after the cursor, in the order they were recorded. Every record takes the
  next number of one sequence under a lock, so numbers follow commit order and a reader
  that remembers the last number it saw misses nothing. A replica keeps that cursor.
- lookups: `GET /internal/v1/directory/tenants/{id}` and
  `GET /internal/v1/directory/claims/{kind}/{value}` (whose domain or connection is it),
  for what a replica does not know yet.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol
from uuid import UUID

import msgspec

AUTH_SCHEME = "Tenantry-Directory"  # Authorization: Tenantry-Directory <secret>
BASE_PATH = "/internal/v1/directory"
ClaimKind = Literal["slug", "domain", "connection"]
Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=63)]


class TenantFacts(msgspec.Struct, frozen=True, kw_only=True):
    """One tenant's routing facts, as recorded at `seq` (the feed position)."""

    tenant_id: UUID
    home_region: str
    status: str
    slug: str | None = None  # None once released (or never claimed)
    domains: list[str] = []
    connection_ids: list[UUID] = []
    seq: int = 0


# The columns of a fact set, in the directory's table and in every replica's.
FACT_COLUMNS = "tenant_id, home_region, status, slug, domains, connection_ids, seq"


class Row(Protocol):
    """A database row read by column name (an asyncpg Record)."""

    def __getitem__(self, key: str) -> Any: ...


def facts_from_row(row: Row) -> TenantFacts:
    """A fact set from a row of FACT_COLUMNS (the directory's or a replica's)."""
    return TenantFacts(
        tenant_id=row["tenant_id"],
        home_region=row["home_region"],
        status=row["status"],
        slug=row["slug"],
        domains=list(row["domains"]),
        connection_ids=list(row["connection_ids"]),
        seq=row["seq"],
    )


class FeedPage(msgspec.Struct, frozen=True, kw_only=True):
    facts: list[TenantFacts]
    # The cursor to ask with next; `complete` when this page reached the feed's end.
    next_after: int
    complete: bool


class ClaimRequest(msgspec.Struct, frozen=True, kw_only=True):
    kind: ClaimKind
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    tenant_id: UUID
    home_region: str
    status: str = "active"


def normalised(kind: ClaimKind, value: str) -> str:
    """How a claimed value is compared: domains and connection ids without case."""
    return value if kind == "slug" else value.strip().lower()


class ClaimAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """`granted`: the value is this tenant's now (or already was: a claim is idempotent
    for its tenant). Otherwise `held_by_region` says where it is taken."""

    granted: bool
    held_by_region: str | None = None


class DirectoryUnavailable(Exception):
    """The directory region did not answer: claims fail closed (503 + Retry-After)."""

    retry_after_seconds = 5


class HomeRegionMismatch(Exception):
    """A write about a tenant names a region it does not live in: facts pushed by a region
    it has moved away from, or a switch whose `from_region` is stale."""

    def __init__(self, tenant_id: UUID, home_region: str) -> None:
        self.tenant_id, self.home_region = tenant_id, home_region
        super().__init__(f"tenant {tenant_id} lives in region {home_region}")


class ClaimTaken(Exception):
    def __init__(self, kind: ClaimKind, value: str, region: str | None) -> None:
        self.kind, self.value, self.region = kind, value, region
        super().__init__(f"{kind} {value!r} is taken" + (f" in region {region}" if region else ""))


class Directory(Protocol):
    """The directory as a region sees it: tenancy in the directory region holds it
    (tenantry_tenancy.directory.store), every other caller reaches it over HTTP
    (tenantry_regions.client.DirectoryClient). Both raise DirectoryUnavailable when it
    cannot answer."""

    async def claim(self, request: ClaimRequest) -> ClaimAnswer: ...

    async def release(self, kind: ClaimKind, value: str, tenant_id: UUID) -> bool: ...

    async def record(self, facts: TenantFacts) -> TenantFacts:
        """Raises HomeRegionMismatch when the facts name a region the tenant left."""
        ...

    async def move(self, tenant_id: UUID, from_region: str, to_region: str) -> TenantFacts:
        """The switch of a moving tenant's home region; HomeRegionMismatch when it does not
        live in `from_region` (a repeated switch), LookupError when unknown."""
        ...

    async def changes(self, after: int, limit: int) -> FeedPage: ...

    async def lookup(self, tenant_id: UUID) -> TenantFacts | None: ...

    async def holder(self, kind: ClaimKind, value: str) -> TenantFacts | None:
        """The facts of the tenant holding a slug, domain or connection id."""
        ...
