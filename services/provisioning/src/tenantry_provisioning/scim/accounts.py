"""identity's side of provisioning: the account behind each SCIM user.

identity allocates the account id and the seat (so SCIM, invites and JIT share one seat
count in one database) and cuts access on deprovisioning. The SCIM request's own key
(scope scim:write) is forwarded: identity checks the same credential, for the same tenant.
Creates carry an Idempotency-Key derived from the user, so a retry after a crash between
the two writes never takes a second seat.
"""

from __future__ import annotations

from uuid import UUID

import httpx

from tenantry_provisioning.scim.errors import ScimError


class IdentityAccounts:
    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def provision(
        self, tenant_id: UUID, email: str, authorization: str, idempotency_key: str
    ) -> UUID:
        response = await self._call(
            "POST",
            f"/v1/tenants/{tenant_id}/provisioned-accounts",
            authorization,
            json={"email": email},
            headers={"Idempotency-Key": idempotency_key},
        )
        return UUID(response.json()["account_id"])

    async def deprovision(self, tenant_id: UUID, account_id: UUID, authorization: str) -> None:
        await self._call(
            "POST",
            f"/v1/tenants/{tenant_id}/provisioned-accounts/{account_id}/deprovision",
            authorization,
        )

    async def reprovision(self, tenant_id: UUID, account_id: UUID, authorization: str) -> None:
        await self._call(
            "POST",
            f"/v1/tenants/{tenant_id}/provisioned-accounts/{account_id}/reprovision",
            authorization,
        )

    async def _call(
        self,
        method: str,
        path: str,
        authorization: str,
        *,
        json: object | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = await self._client.request(
                method,
                path,
                json=json,
                headers={"Authorization": authorization, **(headers or {})},
            )
        except httpx.HTTPError as exc:
            raise ScimError(
                503,
                f"identity is unreachable ({type(exc).__name__}); retry",
                None,
                {"Retry-After": "5"},
            ) from exc
        if response.status_code < 300:
            return response
        detail = _detail(response)
        if response.status_code == 409:
            raise ScimError(409, detail, "uniqueness")
        if response.status_code in (400, 422):
            raise ScimError(400, detail, "invalidValue")
        if response.status_code in (401, 403, 404, 429):
            raise ScimError(response.status_code, detail, None, _retry_after(response))
        raise ScimError(
            503, f"identity answered {response.status_code}; retry", None, {"Retry-After": "5"}
        )


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"identity answered {response.status_code}"
    return str(body.get("detail") or body.get("title") or response.status_code)


def _retry_after(response: httpx.Response) -> dict[str, str]:
    value = response.headers.get("retry-after")
    return {"Retry-After": value} if value else {}
