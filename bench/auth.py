"""Authentication on the running services: what it adds to a request, and how long a revoked
API key keeps working.

`auth`: sequential requests to one service (identity) over one keep-alive connection,
the variants interleaved round-robin (the starting variant rotates every round) so that
drift of the host's load reaches all of them alike:

- GET /healthz: the baseline. A `public_probe` route: it skips the pipeline middleware, so
  it is the cost of HTTP, the ASGI stack (request id, telemetry) and a trivial route;
- GET /v1/whoami without a credential: the pipeline runs and refuses (401 problem+json)
  before any credential check; a second reference;
- GET /v1/whoami with the operator's access token (Ed25519 JWT verified against the cached
  JWKS, no database read), with a tenant user's access token (the same, plus the
  account_projection read that refuses disabled users), and with an API key (sha256, then
  the api_key_projection read, plus the in-memory usage note).

Added latency is the difference of the medians (of the p99s) against /healthz, not a
percentile of per-request differences.

`revoke`: KEYS times, create an API key on identity and wait until all five services accept
it (GET /v1/whoami -> 200), then DELETE it and poll /v1/whoami with it on the five services
concurrently (one task per service, a request every POLL_INTERVAL) until each answers 401.
A service's time runs from the DELETE's response to the 401 response that proves the
refusal, so it overstates by up to one poll request plus the sleep; the poll latency is
reported (a baseline: the resolution of the measurement). The path measured: identity's
transaction (api_keys UPDATE, event + outbox, NOTIFY) -> identity worker's relay -> Kafka
`apikey.revoked` -> each service's worker (EventConsumer: inbox + api_key_projection
upsert, commit) -> the next request's projection read. The same again with light background
traffic (BACKGROUND_WORKERS posters creating tenants on tenancy at about BACKGROUND_RATE/s
in all), whose `tenant.created` events the four projecting workers consume alongside.

`propagation()` is written to be reused for other "write on one service, refused by all
five" paths (tenant suspension).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
from uuid_utils.compat import uuid4

from bench.common import BenchResult, Context, Row, median, now, p99
from tenantry_testkit.fixtures import operator_token

SERVICES = ("tenancy", "identity", "provisioning", "webhooks", "ratelimit")
AUTH_SERVICE = "identity"
WARMUP = 50  # rounds of every variant, not timed
REQUESTS = 600  # timed requests per variant
KEYS = 30  # revocations per phase
POLL_INTERVAL = 0.002
DEADLINE = 10.0  # per key and service; a key still accepted after it counts as missing
BACKGROUND_WORKERS = 2
BACKGROUND_RATE = 25.0  # tenants/s over all background workers
HTTP_TIMEOUT = 10.0
SLOW = 0.2  # a revocation slower than this to reach a service is reported (~6x the median)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def _expect(response: httpx.Response, status: int, what: str) -> dict[str, Any]:
    if response.status_code != status:
        raise RuntimeError(f"{what}: HTTP {response.status_code}: {response.text[:300]}")
    body: dict[str, Any] = response.json()
    return body


async def _post(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
) -> httpx.Response:
    """POST, retried while the service answers 503: a tenant-scoped write waits until the
    service has projected the new tenant's plan limits (503 limits-unknown)."""
    deadline = now() + DEADLINE
    while True:
        response = await client.post(url, json=body, headers=headers)
        if response.status_code != 503 or now() > deadline:
            return response
        await asyncio.sleep(0.02)


async def _new_tenant(
    client: httpx.AsyncClient, stack_url: str, operator: str, tag: str, plan: str = "team"
) -> UUID:
    slug = f"bench-{tag}-{uuid4().hex[:10]}"
    response = await client.post(
        f"{stack_url}/v1/tenants",
        json={"name": f"Bench {slug}", "slug": slug, "plan": plan},
        headers=bearer(operator),
    )
    return UUID(_expect(response, 201, "POST /v1/tenants")["tenant_id"])


async def _new_key(
    client: httpx.AsyncClient, identity: str, operator: str, tenant_id: UUID
) -> tuple[str, str]:
    """(secret, key_id) of a new API key of the tenant."""
    response = await _post(
        client,
        f"{identity}/v1/tenants/{tenant_id}/api-keys",
        {"name": "bench", "scopes": ["tenant:read"]},
        bearer(operator),
    )
    body = _expect(response, 201, "POST /v1/tenants/{tid}/api-keys")
    return body["key"], body["api_key"]["key_id"]


async def _user_token(
    client: httpx.AsyncClient, identity: str, operator: str, tenant_id: UUID
) -> str:
    email, password = f"bench-{uuid4().hex[:10]}@example.com", "bench horse battery staple"
    made = await _post(
        client,
        f"{identity}/v1/tenants/{tenant_id}/accounts",
        {"email": email, "password": password, "role": "admin"},
        bearer(operator),
    )
    _expect(made, 201, "POST /v1/tenants/{tid}/accounts")
    session = await client.post(
        f"{identity}/v1/sessions",
        json={"email": email, "password": password, "tenant_id": str(tenant_id)},
    )
    token: str = _expect(session, 201, "POST /v1/sessions")["access_token"]
    return token


# --------------------------------------------------------------------------- propagation


async def propagation(
    client: httpx.AsyncClient,
    urls: dict[str, str],
    headers: dict[str, str],
    done: Callable[[int], bool],
    since: float,
    *,
    poll_latencies: list[float] | None = None,
    deadline: float = DEADLINE,
) -> dict[str, float | None]:
    """Poll every url (one task each, sequential requests POLL_INTERVAL apart) until its
    status satisfies `done`; seconds from `since` to the response that did, per key of
    `urls` (None: not within `deadline`)."""

    async def one(url: str) -> float | None:
        stop = since + deadline
        while now() < stop:
            t0 = now()
            with contextlib.suppress(httpx.TransportError):
                response = await client.get(url, headers=headers)
                t1 = now()
                if poll_latencies is not None:
                    poll_latencies.append(t1 - t0)
                if done(response.status_code):
                    return t1 - since
            await asyncio.sleep(POLL_INTERVAL)
        return None

    names = list(urls)
    times = await asyncio.gather(*(one(urls[n]) for n in names))
    return dict(zip(names, times, strict=True))


def _slow(times_ms: dict[str, float | None]) -> bool:
    return any(v is None or v > SLOW * 1000 for v in times_ms.values())


def _describe_slow(times_ms: dict[str, float | None]) -> str:
    """'1843 ms: identity 1843; the other four 74-120 ms' (slow services named)."""
    late = {s: v for s, v in times_ms.items() if v is None or v > SLOW * 1000}
    fast = [v for s, v in times_ms.items() if s not in late and v is not None]
    worst = max((v for v in late.values() if v is not None), default=None)
    head = "never" if None in late.values() else f"{worst:.0f} ms"
    named = ", ".join(f"{s} {'never' if v is None else f'{v:.0f}'}" for s, v in late.items())
    rest = f"; the other {len(fast)} {min(fast):.0f}-{max(fast):.0f} ms" if fast else ""
    return f"{head}: {named}{rest}"


def _slowest(times: dict[str, float | None]) -> float | None:
    values = list(times.values())
    return None if any(v is None for v in values) else max(v for v in values if v is not None)


# --------------------------------------------------------------------------- auth


def _added_ms(stat: Callable[[list[float]], float | None], row: Row, base: Row) -> float | None:
    value, reference = stat(row.latencies), stat(base.latencies)
    return None if value is None or reference is None else (value - reference) * 1000


async def run_auth(ctx: Context) -> BenchResult:
    stack = ctx.stack
    base = stack.service_url(AUTH_SERVICE)
    result = BenchResult(
        "auth",
        f"added latency of authentication, sequential GETs on {AUTH_SERVICE} (running services)",
        "requests",
        params={
            "service": AUTH_SERVICE,
            "requests_per_variant": REQUESTS,
            "warmup_rounds": WARMUP,
            "order": "round-robin, starting variant rotated every round",
        },
    )
    operator = await operator_token(stack)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as setup:
        # Enterprise (1000 requests/s): the sequential run sends about 400/s as the tenant,
        # more than team's 50/s; the figures are authentication's, not refusals'.
        tenant_id = await _new_tenant(
            setup, stack.service_url("tenancy"), operator, "auth", plan="enterprise"
        )
        user = await _user_token(setup, base, operator, tenant_id)
        key, _ = await _new_key(setup, base, operator, tenant_id)
        # The key is usable once identity's worker has projected apikey.created.
        accepted = await propagation(
            setup, {AUTH_SERVICE: f"{base}/v1/whoami"}, bearer(key), lambda s: s == 200, now()
        )
        if accepted[AUTH_SERVICE] is None:
            raise RuntimeError(f"the new API key was not accepted by {AUTH_SERVICE}")

    # (label, path, headers, expected status, principal kind, baseline)
    variants: list[tuple[str, str, dict[str, str], int, str | None, bool]] = [
        ("GET /healthz (no pipeline)", "/healthz", {}, 200, None, True),
        ("GET /v1/whoami, no credential (401)", "/v1/whoami", {}, 401, None, True),
        ("GET /v1/whoami, operator token", "/v1/whoami", bearer(operator), 200, "operator", False),
        ("GET /v1/whoami, tenant user token", "/v1/whoami", bearer(user), 200, "user", False),
        ("GET /v1/whoami, API key", "/v1/whoami", bearer(key), 200, "api_key", False),
    ]
    rows = [Row(label, "request -> response", baseline=b) for label, *_, b in variants]
    async with httpx.AsyncClient(base_url=base, timeout=HTTP_TIMEOUT) as client:
        for label, path, headers, status, kind, _ in variants:
            body = _expect(await client.get(path, headers=headers), status, label)
            if kind is not None and body.get("kind") != kind:
                raise RuntimeError(f"{label}: principal kind {body.get('kind')!r}, not {kind}")
        t_start = now()
        for i in range(WARMUP + REQUESTS):
            for j in range(len(variants)):
                k = (i + j) % len(variants)
                label, path, headers, status, _, _ = variants[k]
                t0 = now()
                response = await client.get(path, headers=headers)
                elapsed = now() - t0
                if response.status_code != status:
                    raise RuntimeError(f"{label}: HTTP {response.status_code}: {response.text}")
                if i >= WARMUP:
                    rows[k].latencies.append(elapsed)
        wall = now() - t_start
    for row in rows:
        row.count = len(row.latencies)
    result.rows += rows
    result.params["wall_s_all_variants"] = wall

    health, refused = rows[0], rows[1]
    for row in rows[1:]:
        name = row.label.removeprefix("GET /v1/whoami, ")
        added_median = _added_ms(median, row, health)
        added_p99 = _added_ms(p99, row, health)
        row.extra["added_median_ms_over_healthz"] = added_median
        row.extra["added_p99_ms_over_healthz"] = added_p99
        result.ratios[f"{name}: added median ms over /healthz"] = added_median
        result.ratios[f"{name}: added p99 ms over /healthz"] = added_p99
        if row is not refused:
            row.extra["added_median_ms_over_no_credential"] = _added_ms(median, row, refused)
    result.notes.append(
        "added = difference of the medians (p99s) of the variants, not a percentile of "
        "per-request differences; /healthz skips the pipeline middleware entirely"
    )
    result.notes.append(
        "creates one tenant (slug bench-auth-*), one account and one API key; they stay"
    )
    return result


# --------------------------------------------------------------------------- revoke


async def _background(
    client: httpx.AsyncClient, tenancy: str, operator: str, stop: asyncio.Event, posted: list[float]
) -> None:
    """One poster: tenants on tenancy at BACKGROUND_RATE / BACKGROUND_WORKERS per second."""
    period = BACKGROUND_WORKERS / BACKGROUND_RATE
    next_at = now()
    while not stop.is_set():
        t0 = now()
        await _new_tenant(client, tenancy, operator, "bg")  # an error ends the run
        posted.append(now() - t0)
        next_at += period
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - now()))


async def _revocations(
    client: httpx.AsyncClient,
    urls: dict[str, str],
    identity: str,
    operator: str,
    tenant_id: UUID,
    prefix: str,
) -> tuple[list[Row], dict[str, int]]:
    create = Row(f"{prefix}create -> accepted by all five", "key created -> last 200")
    delete = Row(f"{prefix}DELETE api-key (revoke call)", "request -> response", baseline=True)
    polls = Row(f"{prefix}poll GET /v1/whoami (5 at once)", "request -> response", baseline=True)
    slowest = Row(f"{prefix}revoked -> refused by all five", "DELETE returned -> last 401")
    per_service = {s: Row(f"{prefix}  refused by {s}", "DELETE returned -> 401") for s in SERVICES}
    missing = dict.fromkeys(["accept", *SERVICES], 0)
    for _ in range(KEYS):
        key, key_id = await _new_key(client, identity, operator, tenant_id)
        created = now()
        accepted = await propagation(client, urls, bearer(key), lambda s: s == 200, created)
        if (all_accepted := _slowest(accepted)) is None:
            missing["accept"] += 1  # not timed; revoked so it counts against no limit
            await client.delete(
                f"{identity}/v1/tenants/{tenant_id}/api-keys/{key_id}", headers=bearer(operator)
            )
            continue
        create.latencies.append(all_accepted)
        t0 = now()
        response = await client.delete(
            f"{identity}/v1/tenants/{tenant_id}/api-keys/{key_id}", headers=bearer(operator)
        )
        returned = now()
        _expect(response, 200, "DELETE /v1/tenants/{tid}/api-keys/{key_id}")
        delete.latencies.append(returned - t0)
        refused = await propagation(
            client,
            urls,
            bearer(key),
            lambda s: s == 401,
            returned,
            poll_latencies=polls.latencies,
        )
        for service, seconds in refused.items():
            if seconds is None:
                missing[service] += 1
            else:
                per_service[service].latencies.append(seconds)
        if (everywhere := _slowest(refused)) is not None:
            slowest.latencies.append(everywhere)
        slowest.extra.setdefault("per_key_ms", []).append(
            {s: None if v is None else round(v * 1000, 2) for s, v in refused.items()}
        )
    rows = [delete, polls, create, slowest, *per_service.values()]
    for row in rows:
        row.count = len(row.latencies)
    return rows, missing


async def run_revoke(ctx: Context) -> BenchResult:
    stack = ctx.stack
    identity, tenancy = stack.service_url("identity"), stack.service_url("tenancy")
    urls = {s: f"{stack.service_url(s)}/v1/whoami" for s in SERVICES}
    result = BenchResult(
        "revoke",
        "API key revoke call -> refused (401) by all five services (running services)",
        "keys",
        params={
            "keys_per_phase": KEYS,
            "poll_interval_s": POLL_INTERVAL,
            "deadline_s": DEADLINE,
            "background_workers": BACKGROUND_WORKERS,
            "background_target_rate_per_s": BACKGROUND_RATE,
        },
    )
    operator = await operator_token(stack)
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=limits) as client:
        for service, url in urls.items():
            # An unknown key is refused everywhere: proves all five answer before timing.
            probe = await client.get(url, headers=bearer("tnty_live_" + "A" * 38))
            if probe.status_code != 401:
                raise RuntimeError(f"{service} {url}: HTTP {probe.status_code}, expected 401")
        tenant_id = await _new_tenant(client, tenancy, operator, "revoke")

        quiet, quiet_missing = await _revocations(
            client, urls, identity, operator, tenant_id, "quiet: "
        )
        result.rows += quiet

        stop = asyncio.Event()
        posted: list[float] = []
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as bg_client:
            t0 = now()
            posters = [
                asyncio.create_task(_background(bg_client, tenancy, operator, stop, posted))
                for _ in range(BACKGROUND_WORKERS)
            ]
            try:
                busy, busy_missing = await _revocations(
                    client, urls, identity, operator, tenant_id, "busy: "
                )
            finally:
                stop.set()
                ended = await asyncio.gather(*posters, return_exceptions=True)
            bg_wall = now() - t0
            failures = [e for e in ended if isinstance(e, BaseException)]
            if failures:
                raise RuntimeError(f"background traffic failed: {failures[0]!r}")
        result.rows.append(
            Row(
                f"busy: background POST /v1/tenants x{BACKGROUND_WORKERS}",
                "request -> response",
                posted,
                count=len(posted),
                wall=bg_wall,
            )
        )
        result.rows += busy

    for phase in ("quiet", "busy"):
        everywhere = result.row(f"{phase}: revoked -> refused by all five").latencies
        for stat_name, stat in (("p50", median), ("p99", p99)):
            value = stat(everywhere)
            result.ratios[f"{phase}: refused by all five, {stat_name} ms"] = (
                None if value is None else value * 1000
            )
    for phase, missing in (("quiet", quiet_missing), ("busy", busy_missing)):
        result.params[f"{phase}_missing"] = missing
        if any(missing.values()):
            result.notes.append(
                f"ANOMALY ({phase}): not within {DEADLINE:.0f} s: "
                + ", ".join(f"{k} {v}" for k, v in missing.items() if v)
            )
        per_key = result.row(f"{phase}: revoked -> refused by all five").extra.get("per_key_ms", [])
        slow = [_describe_slow(times) for times in per_key if _slow(times)]
        if slow:
            result.notes.append(
                f"ANOMALY ({phase}): {len(slow)}/{KEYS} revocations took > {SLOW * 1000:.0f} ms "
                f"to reach all five: {'; '.join(slow)}. All five late together: the shared "
                "path (identity's relay; ~1 s is its poll interval, docs/benchmarks.md, "
                "anomaly 1); one service late: that service's consumer (on identity: "
                "apikey.used backlog, docs/benchmarks.md, revoke)"
            )
    result.notes.append(
        f"p99 is nearest-rank: with {KEYS} samples it is the slowest revocation; times "
        f"overstate by up to one poll (its latency is the 'poll' row) plus "
        f"{POLL_INTERVAL * 1000:.0f} ms"
    )
    result.notes.append(
        "creates real tenants (slugs bench-revoke-*, bench-bg-*) and revoked API keys in the "
        "local stack; they stay"
    )
    return result
