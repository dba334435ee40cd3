"""The deployment's regions, as configuration.

Every process knows its own region (TENANTRY_REGION) and the list of all regions of the
deployment (TENANTRY_REGIONS: id, jurisdiction, each service's public base URL), and which
region hosts the global directory (TENANTRY_DIRECTORY_REGION). A deployment of one region
needs none of it: the list is then this region alone, with TENANTRY_SERVICE_URLS as its
URLs, and it hosts its own directory.

The map answers the questions routing asks: is this region id real (home_region is checked
against it: 422 otherwise), where does a request for another region's tenant go (the same
path on that region's URL for the same service: 307), and which region issued an access
token (each region's issuer is its identity service's public URL).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping

import msgspec

from tenantry_platform.settings import ServiceSettings, SettingsError

SERVICES = ("tenancy", "identity", "provisioning", "webhooks", "ratelimit")
REGION_ID = re.compile(r"^[a-z][a-z0-9-]{0,15}$")
UNSPECIFIED = "unspecified"


class Region(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    jurisdiction: str = UNSPECIFIED  # "EU", "US", ...: what the compliance annexes print
    urls: dict[str, str] = {}  # service -> public base URL, no trailing slash

    def url(self, service: str) -> str:
        return self.urls[service]

    @property
    def issuer(self) -> str:
        """The `iss` of the access tokens this region's identity signs."""
        return self.urls["identity"]


class UnknownRegion(ValueError):
    """A region id that is not one of the deployment's regions."""

    def __init__(self, region_id: str, known: Iterable[str]) -> None:
        self.region_id = region_id
        self.known = sorted(known)
        super().__init__(f"unknown region {region_id!r} (one of: {', '.join(self.known)})")


class RegionMap:
    """The deployment's regions and this process's place among them."""

    def __init__(self, own: str, regions: Iterable[Region], *, directory: str = "") -> None:
        self.regions: dict[str, Region] = {}
        for region in regions:
            problem = _region_problem(region)
            if problem:
                raise ValueError(problem)
            if region.id in self.regions:
                raise ValueError(f"region {region.id!r} is listed twice")
            urls = {name: url.rstrip("/") for name, url in region.urls.items()}
            self.regions[region.id] = Region(
                id=region.id, jurisdiction=region.jurisdiction, urls=urls
            )
        if own not in self.regions:
            raise UnknownRegion(own, self.regions)
        self.own = self.regions[own]
        self.directory_region = directory or own
        if self.directory_region not in self.regions:
            raise UnknownRegion(self.directory_region, self.regions)
        issuers = [r.issuer for r in self.regions.values()]
        if len(set(issuers)) != len(issuers):
            raise ValueError("two regions share an identity URL (each region's tokens name it)")
        self._by_issuer = {r.issuer: r.id for r in self.regions.values()}

    @property
    def ids(self) -> list[str]:
        return sorted(self.regions)

    @property
    def hosts_directory(self) -> bool:
        return self.directory_region == self.own.id

    @property
    def is_multi_region(self) -> bool:
        return len(self.regions) > 1

    def require(self, region_id: str) -> Region:
        region = self.regions.get(region_id)
        if region is None:
            raise UnknownRegion(region_id, self.regions)
        return region

    def is_own(self, region_id: str) -> bool:
        return region_id == self.own.id

    def region_of_issuer(self, issuer: str) -> str | None:
        return self._by_issuer.get(issuer.rstrip("/"))

    def redirect_url(self, region_id: str, service: str, path: str, query: str = "") -> str:
        """The same request on another region: its URL for `service`, the same path and
        query (307 keeps the method and body)."""
        base = self.require(region_id).url(service)
        return f"{base}{path}" + (f"?{query}" if query else "")

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> RegionMap:
        """The map from TENANTRY_REGION, TENANTRY_REGIONS, TENANTRY_DIRECTORY_REGION (and
        TENANTRY_SERVICE_URLS for one region); a bad value stops the process, naming it."""
        try:
            if settings.regions.strip():
                regions = msgspec.json.decode(settings.regions, type=list[Region])
            else:
                regions = [Region(id=settings.region, urls=_service_urls(settings.service_urls))]
            return cls(settings.region, regions, directory=settings.directory_region)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise SettingsError(f"TENANTRY_REGIONS / TENANTRY_REGION: {exc}") from exc


def _region_problem(region: Region) -> str:
    if not REGION_ID.match(region.id):
        return f"region id {region.id!r} is not lower-case letters, digits and hyphens"
    missing = [s for s in SERVICES if not region.urls.get(s)]
    if missing:
        return f"region {region.id!r} has no URL for {', '.join(missing)}"
    return ""


def _service_urls(raw: str) -> dict[str, str]:
    urls: Mapping[str, str] = {
        name.strip(): url.strip()
        for item in raw.split(",")
        if "=" in item
        for name, _, url in (item.partition("="),)
    }
    # One region without TENANTRY_SERVICE_URLS (a unit test's settings): placeholders that
    # no redirect can use, since nothing is ever routed to another region.
    return {s: urls.get(s) or f"http://{s}.invalid" for s in SERVICES}


def routable_token(kind: str, region: str) -> str:
    """An opaque one-time secret (refresh token, SSO code) that names its region, so any
    region can send its exchange home: `<kind>_<region>.<256 random bits>`."""
    return f"{kind}_{region}.{secrets.token_urlsafe(32)}"


def region_of_token(kind: str, token: str) -> str | None:
    """The region a routable token names (None for one issued before regions)."""
    head, dot, _ = token.partition(".")
    region = head.removeprefix(f"{kind}_")
    if not dot or region == head or not REGION_ID.match(region):
        return None
    return region
