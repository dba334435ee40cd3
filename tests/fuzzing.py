"""What the fuzzing tests share (test_fuzz_openapi.py, test_evil_input.py): a tenant with
one of everything, so path parameters name real rows; every route of every service; a
fingerprint of the tenant's rows; loopback-only request values; and the server's own
traceback for a failed request, read from its log by request id."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import h11
import httpx

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.mailbox import Mailbox, links
from tenantry_testkit.saml_idp import cert_body, make_key_and_cert, pem_of_cert
from tenantry_testkit.stack import REPO, Stack

from .test_identity import bearer, new_tenant
from .test_scim import GROUP, SCIM_JSON, USER

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
PASSWORD = "correct horse battery staple"
# The plan catalogs (tenancy's plans, ratelimit's rate-plans) are global: a fuzzed change
# to a real plan would reach every other test's tenants. Plan routes are driven with a
# plan no tenant is on instead (tenancy answers 404 after decoding the body; ratelimit
# stores policies for it that apply to nobody).
UNUSED_PLAN = "fuzz-unused-plan"
SCIM_PREFIX = "/scim/v2"
# SCIM is mounted outside OpenAPI (RFC 7644 has its own discovery): its routes, by hand.
SCIM_ROUTES: tuple[tuple[str, str], ...] = (
    ("GET", "/Users"),
    ("POST", "/Users"),
    ("POST", "/Users/.search"),
    ("GET", "/Users/{user_id}"),
    ("PUT", "/Users/{user_id}"),
    ("PATCH", "/Users/{user_id}"),
    ("DELETE", "/Users/{user_id}"),
    ("GET", "/Groups"),
    ("POST", "/Groups"),
    ("POST", "/Groups/.search"),
    ("GET", "/Groups/{group_id}"),
    ("PUT", "/Groups/{group_id}"),
    ("PATCH", "/Groups/{group_id}"),
    ("DELETE", "/Groups/{group_id}"),
    ("GET", "/ServiceProviderConfig"),
    ("GET", "/ResourceTypes"),
    ("GET", "/ResourceTypes/{name}"),
    ("GET", "/Schemas"),
    ("GET", "/Schemas/{urn}"),
    ("POST", "/.search"),
    ("POST", "/Bulk"),
)
SCIM_BODY_METHODS = ("POST", "PUT", "PATCH")
_PATH_PARAM = re.compile(r"\{([A-Za-z_]+)(?::[a-z]+)?\}")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


# Tenant-wide changes that would turn the rest of a run into 403s or 429s: sent last.
TAKES_THE_TENANT_AWAY = frozenset(
    {
        ("POST", "/v1/tenants/{tenant_id}/suspend"),
        ("POST", "/v1/tenants/{tenant_id}/plan"),
        ("POST", "/v1/tenants/{tenant_id}/limit-overrides"),
        ("PUT", "/v1/tenants/{tenant_id}/rate-policies"),
    }
)


def run_rank(method: str, path: str) -> int:
    """Reads, then writes, then deletes, then whatever takes the tenant away."""
    if (method, path) in TAKES_THE_TENANT_AWAY:
        return 3
    return {"GET": 0, "DELETE": 2}.get(method, 1)


@dataclass(frozen=True)
class FuzzTenant:
    """A tenant on the enterprise plan (every feature, a rate no fuzzer reaches) with a
    member account, a spare API key, an SSO connection and domain, a webhook endpoint with
    one message, and a SCIM user and group. `values` names them by path parameter (and
    holds the IdP certificate a valid SSO connection body needs)."""

    tenant_id: str
    operator: dict[str, str]
    admin: dict[str, str] | None  # a verified tenant admin's access token, if asked for
    scim: dict[str, str]  # a key with scim:write
    values: dict[str, str]


async def fuzz_tenant(
    stack: Stack, operator_headers: dict[str, str], *, hook_url: str, with_admin: bool
) -> FuzzTenant:
    tenant_id = await new_tenant(stack, operator_headers, "enterprise")
    await known_to(stack, "provisioning", tenant_id)
    tag = uuid4().hex[:10]
    identity = f"{stack.service_url('identity')}/v1/tenants/{tenant_id}"
    webhooks = f"{stack.service_url('webhooks')}/v1/tenants/{tenant_id}/webhooks/endpoints"
    scim = f"{stack.service_url('provisioning')}{SCIM_PREFIX}"
    _, cert = make_key_and_cert("fuzz-idp")
    mailbox = Mailbox(REPO / ".local" / "mail")
    admin_email = f"fuzz-admin-{tag}@example.com"
    async with httpx.AsyncClient(timeout=15, headers=operator_headers) as client:

        async def created(url: str, body: Any, **kwargs: Any) -> dict[str, Any]:
            r = await client.post(url, json=body, **kwargs)
            assert r.status_code in (201, 202), (url, r.status_code, r.text)
            out: dict[str, Any] = r.json()
            return out

        scim_key = (
            await created(f"{identity}/api-keys", {"name": "scim", "scopes": ["scim:write"]})
        )["key"]
        await key_accepted(stack, "provisioning", scim_key)
        member = await created(
            f"{identity}/accounts", {"email": f"fuzz-member-{tag}@example.com", "role": "member"}
        )
        key = await created(f"{identity}/api-keys", {"name": "spare", "scopes": ["tenant:read"]})
        connection = await created(
            f"{identity}/sso/connections",
            {
                "kind": "saml",
                "name": "Fuzz IdP",
                "saml": {
                    "idp_entity_id": "http://127.0.0.1:9/idp",
                    "idp_sso_url": "http://127.0.0.1:9/sso",
                    "idp_certs": [cert_body(pem_of_cert(cert))],
                },
            },
        )
        domain = await created(f"{identity}/sso/domains", {"domain": f"fuzz-{tag}.example"})
        endpoint = await created(webhooks, {"url": hook_url, "event_types": ["account.created"]})
        endpoint_id = endpoint["endpoint"]["endpoint_id"]
        message = await created(f"{webhooks}/{endpoint_id}/test", None)
        scim_headers = {**bearer(scim_key), "Content-Type": SCIM_JSON}
        user = await created(
            f"{scim}/Users",
            {"schemas": [USER], "userName": f"fuzz-{tag}@example.com", "active": True},
            headers=scim_headers,
        )
        group = await created(
            f"{scim}/Groups",
            {"schemas": [GROUP], "displayName": f"fuzz-{tag}", "members": [{"value": user["id"]}]},
            headers=scim_headers,
        )
        admin = None
        if with_admin:
            await created(
                f"{identity}/accounts",
                {"email": admin_email, "role": "admin", "password": PASSWORD},
            )
            (link,) = links(await mailbox.wait_for(admin_email, subject_contains="Verify"))
            confirmed = await client.post(
                f"{stack.service_url('identity')}/v1/email-verifications",
                json={"token": link.split("token=", 1)[1]},
            )
            assert confirmed.status_code == 200, confirmed.text
            session = await created(
                f"{stack.service_url('identity')}/v1/sessions",
                {"email": admin_email, "password": PASSWORD, "tenant_id": tenant_id},
                headers={},
            )
            admin = bearer(session["access_token"])
    return FuzzTenant(
        tenant_id=tenant_id,
        operator=operator_headers,
        admin=admin,
        scim=bearer(scim_key),
        values={
            "tenant_id": tenant_id,
            "account_id": member["account_id"],
            "key_id": key["api_key"]["key_id"],
            "connection_id": connection["id"],
            "domain": domain["domain"],
            "endpoint_id": endpoint_id,
            "message_id": message["message_id"],
            "plan_id": UNUSED_PLAN,
            "limit_name": "seats",
            "user_id": user["id"],
            "group_id": group["id"],
            "name": "User",
            "urn": USER,
            "idp_cert": cert_body(pem_of_cert(cert)),
        },
    )


async def known_to(stack: Stack, service: str, tenant_id: str) -> None:
    """Wait until `service` has the tenant's limits (it refuses the tenant until then)."""
    conn = await asyncpg.connect(stack.owner_dsn(stack.service_database(service)))
    try:
        await eventually(
            lambda: conn.fetchval(
                "SELECT 1 FROM tenant_limits WHERE tenant_id = $1::uuid", tenant_id
            ),
            timeout=30,
            message=f"the tenant's limits known to {service}",
        )
    finally:
        await conn.close()


async def key_accepted(stack: Stack, service: str, key: str) -> None:
    """Wait until `service` has projected the key (only the service that will see it)."""
    async with httpx.AsyncClient(base_url=stack.service_url(service), timeout=10) as client:

        async def accepted() -> bool:
            return (await client.get("/v1/whoami", headers=bearer(key))).status_code == 200

        await eventually(accepted, timeout=30, message=f"the key accepted by {service}")


async def openapi_document(stack: Stack, service: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=15) as client:
        r = await client.get(f"{stack.service_url(service)}/schema/openapi.json")
    assert r.status_code == 200, (service, r.status_code)
    document: dict[str, Any] = r.json()
    return document


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with {name} placeholders
    operation: Mapping[str, Any]  # its OpenAPI operation ({} for SCIM)

    @property
    def is_scim(self) -> bool:
        return self.path.startswith(SCIM_PREFIX)

    @property
    def params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)

    @property
    def query_params(self) -> list[str]:
        if self.is_scim:
            if self.method != "GET" or "{" in self.path:
                return []
            return ["filter", "startIndex", "count", "sortBy", "attributes"]
        parameters = self.operation.get("parameters", [])
        return [p["name"] for p in parameters if p.get("in") == "query"]

    @property
    def takes_body(self) -> bool:
        if self.is_scim:
            return self.method in SCIM_BODY_METHODS
        return "requestBody" in self.operation

    def url(self, base: str, values: Mapping[str, str], **override: str) -> str:
        def value(match: re.Match[str]) -> str:
            return override.get(match.group(1), values.get(match.group(1), str(uuid4())))

        return base + _PATH_PARAM.sub(value, self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def routes_of(document: Mapping[str, Any]) -> list[Route]:
    return [
        Route(method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method.upper() in METHODS
    ]


def scim_routes() -> list[Route]:
    return [Route(method, SCIM_PREFIX + path, {}) for method, path in SCIM_ROUTES]


def loopback_only(value: Any) -> Any:
    """`value` with every URL's host replaced by 127.0.0.1 (port 9, nothing listens): the
    services fetch metadata, discovery documents and webhooks from URLs they are given, and
    tests reach no address but loopback (not even a DNS server's)."""
    if isinstance(value, str):
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:
            return value
        if parts.netloc and host not in _LOOPBACK_HOSTS:
            return urlunsplit(parts._replace(netloc="127.0.0.1:9"))
        return value
    if isinstance(value, dict):
        return {k: loopback_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [loopback_only(v) for v in value]
    return value


# Bookkeeping that background loops change on a timer, whatever requests arrive: the
# usage reconciliation bumps a report version per tenant and resource each round, and the
# inbox marks each event a consumer applied (a key's periodic use report among them).
TIMER_DRIVEN_TABLES = frozenset({"usage_report_versions", "inbox"})


async def tenant_tables(pool: asyncpg.Pool) -> list[str]:
    rows = await pool.fetch(
        """SELECT c.table_name FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
           WHERE c.table_schema = 'public' AND c.column_name = 'tenant_id'
             AND t.table_type = 'BASE TABLE'
           ORDER BY 1"""
    )
    return [r["table_name"] for r in rows if r["table_name"] not in TIMER_DRIVEN_TABLES]


async def tenant_fingerprint(pools: Mapping[str, asyncpg.Pool], tenant_id: str) -> dict[str, str]:
    """Per service and table, the count and a digest of the tenant's rows. A key's
    `last_used_at` is left out: using a key to send a request records that, by design."""
    prints: dict[str, str] = {}
    for service, pool in pools.items():
        for table in await tenant_tables(pool):
            row = await pool.fetchrow(
                f"""SELECT count(*) AS n, md5(coalesce(string_agg(j, ',' ORDER BY j), '')) AS h
                    FROM (SELECT (to_jsonb(r) - 'last_used_at')::text AS j
                          FROM "{table}" r WHERE r.tenant_id::text = $1) rows""",
                tenant_id,
            )
            assert row is not None
            prints[f"{service}.{table}"] = f"{row['n']} rows, {row['h']}"
    return prints


def changed_tables(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    return sorted(
        f"{table}: {before.get(table)} -> {after.get(table)}"
        for table in set(before) | set(after)
        if before.get(table) != after.get(table)
    )


SHED_RETRIES = 3


def shed_delay(status: int, retry_after: str | None) -> float | None:
    """Seconds to wait before sending again if the answer is back-pressure (a 503 with
    Retry-After: admission control shed the request unprocessed, as it does when the
    machine is busy), else None. Capped: the test's budget is minutes, not Retry-After's."""
    if status != 503 or retry_after is None or not retry_after.strip().isdigit():
        return None
    return min(float(retry_after), 2.0)


def server_error(service: str, response: httpx.Response) -> str:
    """What a 5xx said and the exception the service logged for it."""
    trace = server_traceback(service, response.headers.get("x-request-id"))
    return f"{response.text[:160]!r} <- {trace}"


def server_traceback(service: str, request_id: str | None) -> str:
    """The last lines of the exception the service logged for `request_id` (its api log)."""
    if not request_id:
        return "(no request id in the response)"
    log = REPO / ".local" / "log" / f"{service}-api.log"
    found: list[str] = []
    with log.open(errors="replace") as lines:
        for line in lines:
            if request_id not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            trace = entry.get("exc_info") or entry.get("exception") or entry.get("exc") or ""
            if trace:
                tail = [t.strip() for t in str(trace).strip().splitlines()[-3:]]
                found.append(" | ".join(tail))
            elif entry.get("level") in ("error", "critical"):
                found.append(str(entry.get("msg")))
    return "; ".join(found[-2:]) or "(nothing logged for it)"


def failure_report(title: str, failures: Sequence[str], limit: int = 60) -> str:
    distinct = sorted(set(failures))
    shown = "\n".join(f"- {f}" for f in distinct[:limit])
    more = f"\n... and {len(distinct) - limit} more" if len(distinct) > limit else ""
    return f"{title}: {len(distinct)} distinct failures\n{shown}{more}"


async def raw_request(
    base_url: str, method: str, target: str, headers: Mapping[str, str], body: bytes
) -> httpx.Response:
    """One HTTP/1.1 request written as given (httpx refuses URLs over 64 KB, which is
    exactly what the long-URL form needs to send); the answer as an httpx.Response."""
    parts = urlsplit(base_url)
    assert parts.hostname in _LOOPBACK_HOSTS, base_url
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    connection = h11.Connection(our_role=h11.CLIENT)
    fields = [("host", parts.netloc), ("content-length", str(len(body))), *headers.items()]
    try:
        writer.write(connection.send(h11.Request(method=method, target=target, headers=fields)))
        writer.write(connection.send(h11.Data(data=body)) or b"")
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        await writer.drain()
        response: h11.Response | None = None
        content = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                connection.receive_data(await asyncio.wait_for(reader.read(65536), 30))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                content += bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        assert response is not None
        return httpx.Response(
            response.status_code,
            headers=[(k.decode(), v.decode("latin-1")) for k, v in response.headers],
            content=content,
        )
    finally:
        writer.close()
