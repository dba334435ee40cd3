"""The directory over HTTP: what every region but the directory's own uses to claim, to
record its tenants' facts, and to pull the change feed (tenantry_regions.directory)."""

from __future__ import annotations

from uuid import UUID

import httpx
import msgspec

from tenantry_regions.directory import (
    AUTH_SCHEME,
    BASE_PATH,
    ClaimAnswer,
    ClaimKind,
    ClaimRequest,
    DirectoryUnavailable,
    FeedPage,
    HomeRegionMismatch,
    TenantFacts,
)


class DirectoryClient:
    def __init__(self, base_url: str, secret: str, *, timeout: float = 3.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + BASE_PATH,
            headers={"Authorization": f"{AUTH_SCHEME} {secret}"},
            timeout=timeout,
            # The directory is the deployment's own service at a configured URL, never a
            # customer's: no proxy from the environment, no redirects.
            trust_env=False,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = await self._client.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise DirectoryUnavailable(f"directory unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500 or response.status_code in (401, 403):
            # 401/403: this region's secret is wrong; nothing the caller can fix per request.
            raise DirectoryUnavailable(f"directory answered {response.status_code}")
        return response

    async def claim(self, request: ClaimRequest) -> ClaimAnswer:
        response = await self._send("POST", "/claims", content=msgspec.json.encode(request))
        if response.status_code not in (200, 409):
            raise DirectoryUnavailable(f"claim answered {response.status_code}")
        return msgspec.json.decode(response.content, type=ClaimAnswer)

    async def release(self, kind: ClaimKind, value: str, tenant_id: UUID) -> bool:
        response = await self._send(
            "DELETE", f"/claims/{kind}/{value}", params={"tenant_id": str(tenant_id)}
        )
        return response.status_code == 204

    async def record(self, facts: TenantFacts) -> TenantFacts:
        response = await self._send(
            "PUT", f"/tenants/{facts.tenant_id}", content=msgspec.json.encode(facts)
        )
        return _facts_of_write(response, facts.tenant_id, "record")

    async def move(self, tenant_id: UUID, from_region: str, to_region: str) -> TenantFacts:
        response = await self._send(
            "POST",
            f"/tenants/{tenant_id}/move",
            content=msgspec.json.encode({"from_region": from_region, "to_region": to_region}),
        )
        if response.status_code == 404:
            raise LookupError(f"no tenant {tenant_id} in the directory")
        return _facts_of_write(response, tenant_id, "move")

    async def changes(self, after: int, limit: int) -> FeedPage:
        response = await self._send("GET", "/changes", params={"after": after, "limit": limit})
        if response.status_code != 200:
            raise DirectoryUnavailable(f"feed answered {response.status_code}")
        return msgspec.json.decode(response.content, type=FeedPage)

    async def lookup(self, tenant_id: UUID) -> TenantFacts | None:
        return _facts_or_none(await self._send("GET", f"/tenants/{tenant_id}"))

    async def holder(self, kind: ClaimKind, value: str) -> TenantFacts | None:
        return _facts_or_none(await self._send("GET", f"/claims/{kind}/{value}"))


def _facts_or_none(response: httpx.Response) -> TenantFacts | None:
    """A lookup's answer: the facts, or None when no tenant matches (404)."""
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise DirectoryUnavailable(f"lookup answered {response.status_code}")
    return msgspec.json.decode(response.content, type=TenantFacts)


def _facts_of_write(response: httpx.Response, tenant_id: UUID, what: str) -> TenantFacts:
    if response.status_code == 409:
        problem = msgspec.json.decode(response.content)
        if problem.get("type", "").endswith("home-region-mismatch"):
            raise HomeRegionMismatch(tenant_id, str(problem.get("region")))
    if response.status_code != 200:
        raise DirectoryUnavailable(f"{what} answered {response.status_code}")
    return msgspec.json.decode(response.content, type=TenantFacts)
