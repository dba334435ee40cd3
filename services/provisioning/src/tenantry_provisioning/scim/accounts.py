"""identity's side of provisioning: the account behind each SCIM user.

identity holds the account and the seat (so SCIM, invites and JIT share one seat count
in one database) and cuts access on deprovisioning. provisioning names the account's id
(the saga's intent records it before the call, scim/intents.py), so a retry or a
re-created user reaches the same account, put in the state asked for. The SCIM request's
own key (scope scim:write) is forwarded: identity checks the same credential, for the same
tenant. Creates also carry an Idempotency-Key: a hash of the intent and of what is asked,
always a valid header whatever the userName.

identity's answers become SCIM Errors: a 4xx means identity changed nothing (the caller
drops its intent); a 5xx, a timeout or a request still running under the same key
(409 idempotency-key-in-use) is a retryable 503 with Retry-After, never `uniqueness`.
"""

from __future__ import annotations

import hashlib
from uuid import UUID

import httpx

from tenantry_platform.telemetry import request_id_var
from tenantry_provisioning.domain import ScimError


class IdentityAccounts:
    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def provision(
        self,
        tenant_id: UUID,
        account_id: UUID,
        email: str,
        *,
        active: bool,
        authorization: str,
        intent_id: UUID,
    ) -> UUID:
        """The account `account_id` with this address, created or found, in the state
        `active` asks for."""
        response = await self._call(
            "POST",
            f"/v1/tenants/{tenant_id}/provisioned-accounts",
            authorization,
            json={"email": email, "account_id": str(account_id), "active": active},
            headers={"Idempotency-Key": idempotency_key(intent_id, email, active)},
        )
        return UUID(response.json()["account_id"])

    async def set_active(
        self, tenant_id: UUID, account_id: UUID, active: bool, authorization: str
    ) -> None:
        """Reprovision (enable, within the seat limit) or deprovision; both idempotent."""
        action = "reprovision" if active else "deprovision"
        await self._call(
            "POST",
            f"/v1/tenants/{tenant_id}/provisioned-accounts/{account_id}/{action}",
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
            # The SCIM request's id goes along: identity's events (and their audit entries)
            # name the same request as provisioning's.
            request_id = request_id_var.get()
            traced = {"X-Request-Id": request_id} if request_id else {}
            response = await self._client.request(
                method,
                path,
                json=json,
                headers={"Authorization": authorization, **traced, **(headers or {})},
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
        if response.status_code == 409 and _problem_type(response).endswith(
            "/idempotency-key-in-use"
        ):
            # The same intent is still running in identity (or died holding its key):
            # transient, so the directory retries, and never reads it as a duplicate.
            raise ScimError(
                503,
                "an earlier attempt of this change is still running; retry",
                None,
                {"Retry-After": _retry_after(response).get("Retry-After", "1")},
            )
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


def _problem_type(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("type") or "") if isinstance(body, dict) else ""


def idempotency_key(intent_id: UUID, email: str, active: bool) -> str:
    """64 hex characters: one key per intent and request, never the raw userName (which
    may be long, or not ASCII). A new intent (a re-create) gets a new key, so identity
    never replays an old answer to a new write."""
    digest = hashlib.sha256(f"{intent_id}\n{email}\n{active}".encode()).hexdigest()
    return f"scim-{digest}"


def _retry_after(response: httpx.Response) -> dict[str, str]:
    value = response.headers.get("retry-after")
    return {"Retry-After": value} if value else {}
