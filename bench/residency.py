"""Data residency on two real regions (issue 18; tenantry_testkit.regions: us hosts the
global directory, eu is a replica region). Runs against the two-region stack, started here
when it does not answer (like the `two_regions` fixture, and stopped again then); the
default stack is not used. Three figures, in one run:

1. the home-region check's cost on a request. The check is the pipeline's `home_region`
   step, present only when TENANTRY_REGIONS lists several regions. Per service, the same
   request for an eu tenant goes to three eu api processes: eu's own (the check on, as the
   stack runs it), an extra process with the same environment (the check on: a control,
   started like the next one) and an extra process with TENANTRY_REGIONS,
   TENANTRY_DIRECTORY_REGION and TENANTRY_DIRECTORY_URL emptied (one region: the step is
   left out). identity: GET /v1/tenants/{id}/api-keys as eu's operator (the step reads the
   tenant in the service's directory replica, one indexed Postgres read); provisioning: SCIM
   GET /scim/v2/Users with an eu API key (no tenant in the path: the step reads the key's
   region from its prefix after its checksum, in memory). Closed loop: IN_FLIGHT requests
   in flight (each level in turn), RawHttp (bench/guardrails.py) with one keep-alive
   connection per request in flight, the processes taken in rounds of REQUESTS/ROUNDS
   requests each, the order rotating every round. Beside it, the step's own work in this
   process, which the host's load blurs less: identity's replica read
   (DirectoryReplica.tenant on eu identity's database) and the key check
   (HomeRegionStep.credential_region).
2. tenant creation in one region -> routable in the other: POST /v1/tenants on us's tenancy
   (us's operator), then, from its response on, GET /v1/tenants/{id}/history on eu's
   tenancy (eu's operator) until it answers 307 to us's tenancy, and, polled alongside,
   eu's webhooks database until directory_replica holds the tenant. Then the same eu -> us.
   The two directions alternate, one tenant at a time, each create after a random pause
   of up to one replica pull period (else the creates lock to one phase of the pulls).
3. claim latency: POST /v1/tenants in us (the directory is in the same process: the claim
   is a local transaction) against the same in eu (the claim is an HTTP call to us), both
   from figure 2; and the directory's claim API called directly as eu calls it
   (tenantry_regions.client.DirectoryClient, POST {us tenancy}/internal/v1/directory/claims),
   against a lookup of the same tenant through the same client (same auth and HTTP, no
   write lock) as the baseline, with the release and the fact record a failed create and
   the facts pusher send.

What a run leaves: the tenants of figures 1 and 2 (slugs bench-res-*) in both regions, and
for each direct claim a tenant id the directory records as purged (its slug released).

Sizes: BENCH_RESIDENCY_REQUESTS (timed requests per process and level),
BENCH_RESIDENCY_IN_FLIGHT (levels, comma-separated), BENCH_RESIDENCY_CREATES (tenants per
direction), BENCH_RESIDENCY_CLAIMS (direct claims).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import asyncpg
import httpx
import msgspec
from uuid_utils.compat import uuid4

from bench.auth import HTTP_TIMEOUT, _added_ms, _expect, bearer
from bench.common import BenchResult, Context, Row, median, now, p99
from bench.guardrails import GENEROUS, RawHttp, _override_policies, _post_patiently, _until
from tenantry_events.pg import Database
from tenantry_projections.directory_replica import DirectoryReplica
from tenantry_regions.client import DirectoryClient
from tenantry_regions.directory import ClaimRequest, TenantFacts
from tenantry_regions.regions import Region as RegionEntry
from tenantry_regions.regions import RegionMap
from tenantry_regions.routing import HomeRegionStep, TenantRouter
from tenantry_testkit.fixtures import operator_token
from tenantry_testkit.regions import Region, running_regions

REQUESTS = int(os.environ.get("BENCH_RESIDENCY_REQUESTS", "600"))
IN_FLIGHT = tuple(
    int(n) for n in os.environ.get("BENCH_RESIDENCY_IN_FLIGHT", "1,8").split(",") if n.strip()
)
CREATES = int(os.environ.get("BENCH_RESIDENCY_CREATES", "20"))
CLAIMS = int(os.environ.get("BENCH_RESIDENCY_CLAIMS", "100"))
ROUNDS = 20
SEED = 18
FLOOR_CALLS = 10_000  # in-process calls of the step's key check
WARMUP = 100  # untimed requests per process and level
RESTARTS_PER_ROUND = 3  # a round interrupted more often than this fails the run
RESTART_GRACE = 120.0  # s: a restarted api (someone else's restart) may take to serve again
SETUP_DEADLINE = 60.0  # s: a new tenant, key or override usable in eu
ROUTE_DEADLINE = 30.0  # s: a new tenant routed / replicated by the other region
POLL_EVERY = 0.005  # s between two polls of the other region (API or replica)
HOME, AWAY = "eu", "us"  # figure 1's region, and the directory's
# Spare loopback ports: eu's services are on 10101-10105, its workers' health on 102xx.
EXTRA_PORTS = {"identity": (10190, 10191), "provisioning": (10192, 10193)}
ON_STACK, ON_EXTRA, OFF_EXTRA = "check on, eu's api", "check on, extra api", "check off, extra api"
# What figure 1 sends: service -> (path template, what the step reads).
CHECKED: dict[str, tuple[str, str]] = {
    "identity": ("/v1/tenants/{tenant_id}/api-keys", "tenant in path: replica read"),
    "provisioning": ("/scim/v2/Users", "API key prefix + checksum, in memory"),
}
SINGLE_REGION = {
    # One region: the step is left out (tenantry_service.residency.home_region_step).
    # TENANTRY_SERVICE_URLS is eu's already; the directory region must then be eu itself.
    "TENANTRY_REGIONS": "",
    "TENANTRY_DIRECTORY_REGION": "",
    "TENANTRY_DIRECTORY_URL": "",
}


@dataclass
class Deployment:
    regions: dict[str, Region]
    operators: dict[str, str]  # region -> its operator's access token

    def url(self, region: str, service: str) -> str:
        return self.regions[region].service_url(service)


# --------------------------------------------------------------------------- 1. the check


def _extra_env(region: Region, service: str, check_on: bool) -> dict[str, str]:
    """What an extra api process needs beyond `regions.sh env` to run as the region's own
    does (the region's shared settings: deploy/local/stack.env's), and the check off."""
    own = region.service_env(service)
    env = {k: v for k, v in region.env.items() if k.startswith("TENANTRY_") and k not in own}
    if not check_on:
        env.update(SINGLE_REGION)
    return env


@contextlib.asynccontextmanager
async def _extra_apis(region: Region) -> AsyncIterator[dict[str, dict[str, str]]]:
    """The extra api processes: service -> {variant: base URL}, the region's own process
    included. Started one after the other: in parallel, on two busy cores, a start took
    longer than the minute stack.extra_api waits for /readyz."""
    urls: dict[str, dict[str, str]] = {s: {ON_STACK: region.service_url(s)} for s in CHECKED}
    with contextlib.ExitStack() as exits:
        for service, (on_port, off_port) in EXTRA_PORTS.items():
            for variant, port in ((ON_EXTRA, on_port), (OFF_EXTRA, off_port)):
                env = _extra_env(region, service, check_on=variant == ON_EXTRA)
                started = region.extra_api(service, port, env)
                urls[service][variant] = await asyncio.to_thread(exits.enter_context, started)
        yield urls


async def _scim_key(client: httpx.AsyncClient, deployment: Deployment, tenant_id: UUID) -> str:
    body = await _post_patiently(
        client,
        f"{deployment.url(HOME, 'identity')}/v1/tenants/{tenant_id}/api-keys",
        {"name": "bench-residency", "scopes": ["scim:write"]},
        deployment.operators[HOME],
    )
    key: str = body["key"]
    return key


async def _replica_home(conn: asyncpg.Connection, tenant_id: UUID) -> str | None:
    """The tenant's home region in a service's replica of the directory (None: not there)."""
    home: str | None = await conn.fetchval(
        "SELECT home_region FROM directory_replica WHERE tenant_id = $1", tenant_id
    )
    return home


async def _closed_loop(
    http: RawHttp, payload: bytes, requests: int, in_flight: int, what: str
) -> tuple[list[float], float]:
    """`requests` requests, `in_flight` at a time: (latencies, wall seconds)."""
    latencies: list[float] = []
    left = requests

    async def loop() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = now()
            status, body = await http.request(payload)
            elapsed = now() - t0
            if status != 200:
                raise RuntimeError(f"{what}: HTTP {status}: {body[:300]!r}")
            latencies.append(elapsed)

    t0 = now()
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    return latencies, now() - t0


async def _check_rows(
    result: BenchResult,
    client: httpx.AsyncClient,
    service: str,
    urls: dict[str, str],
    path: str,
    headers: dict[str, str],
) -> list[Row]:
    """Figure 1 for one service: a row per (in-flight level, process)."""
    rows: list[Row] = []
    per_round = max(1, REQUESTS // ROUNDS)
    for in_flight in IN_FLIGHT:
        level: list[tuple[Row, RawHttp, bytes]] = []
        for variant, url in urls.items():
            http = RawHttp(url, max_connections=in_flight)
            await http.preconnect(in_flight)
            row = Row(
                f"{service} {variant}, {in_flight} in flight",
                "request -> response",
                baseline=variant == OFF_EXTRA,
                extra={"variant": variant, "in_flight": in_flight, "url": url, "path": path},
            )
            level.append((row, http, http.get(path, headers)))
        try:
            for row, http, payload in level:
                await _closed_loop(http, payload, WARMUP, in_flight, row.label)
            for r in range(ROUNDS):
                for k in range(len(level)):
                    row, http, payload = level[(k + r) % len(level)]
                    for attempt in range(RESTARTS_PER_ROUND + 1):
                        try:
                            latencies, wall = await _closed_loop(
                                http, payload, per_round, in_flight, row.label
                            )
                            break
                        except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
                            if attempt == RESTARTS_PER_ROUND:
                                raise
                            await _restarted(result, client, row, path, headers, exc)
                            await _closed_loop(http, payload, WARMUP, in_flight, row.label)
                    row.add(latencies, len(latencies), wall)
        finally:
            for _, http, _ in level:
                await http.aclose()
        rows += [row for row, _, _ in level]
    return rows


async def _restarted(
    result: BenchResult,
    client: httpx.AsyncClient,
    row: Row,
    path: str,
    headers: dict[str, str],
    failure: Exception,
) -> None:
    """A round failed: on the shared regions, most likely the region's own api restarted
    under it (someone's `services.sh restart`). Wait until it serves again; the round is
    then taken again, after a new warm-up, and the interruption noted."""
    url = row.extra["url"]

    async def serves() -> bool:
        with contextlib.suppress(httpx.TransportError):
            return (await client.get(f"{url}{path}", headers=headers)).status_code == 200
        return False

    await _until(serves, f"{url}{path} answering 200 again", RESTART_GRACE)
    result.notes.append(
        f"ANOMALY {row.label}: a round failed ({failure!r:.160}); the process answered "
        "again, the round was taken again after a new warm-up"
    )


async def check_cost(
    result: BenchResult, client: httpx.AsyncClient, deployment: Deployment
) -> None:
    region = deployment.regions[HOME]
    operator = deployment.operators[HOME]
    tenant_id, _ = await create_tenant(client, deployment, HOME, "enterprise")
    key = await _scim_key(client, deployment, tenant_id)
    await _override_policies(client, region, operator, tenant_id, GENEROUS)
    for service in CHECKED:

        async def in_replica(service: str = service) -> bool:
            conn = await asyncpg.connect(region.app_dsn(region.service_database(service)))
            try:
                return await _replica_home(conn, tenant_id) is not None
            finally:
                await conn.close()

        # Else the step asks the directory (a miss in the replica), which is not its cost.
        await _until(in_replica, f"eu's {service} replica holds the tenant", SETUP_DEADLINE)
    await step_floor(result, region, tenant_id, key)
    headers = {
        "identity": bearer(operator),
        "provisioning": bearer(key),
    }
    t0 = now()
    async with _extra_apis(region) as urls:
        result.params["extra_apis_started_in_s"] = now() - t0
        for service, (template, _) in CHECKED.items():
            path = template.format(tenant_id=tenant_id)
            for url in urls[service].values():

                async def serves(url: str = url, service: str = service, path: str = path) -> bool:
                    r = await client.get(f"{url}{path}", headers=headers[service])
                    return r.status_code == 200

                await _until(serves, f"{url}{path} answering 200", SETUP_DEADLINE)
        for service, (template, _) in CHECKED.items():
            path = template.format(tenant_id=tenant_id)
            rows = await _check_rows(result, client, service, urls[service], path, headers[service])
            result.rows += rows
            _check_ratios(result, service, rows)
    result.params["check"] = {
        s: {"request": f"GET {t}", "the step reads": what} for s, (t, what) in CHECKED.items()
    }
    result.params["check_off_overrides"] = SINGLE_REGION
    result.params["extra_ports"] = EXTRA_PORTS


async def step_floor(result: BenchResult, region: Region, tenant_id: UUID, key: str) -> None:
    """What the step itself does, in this process: identity's replica read (the step's
    DirectoryReplica, on eu identity's database, one pooled connection) and the key's
    region check (HomeRegionStep.credential_region: prefix and checksum, no I/O)."""
    db = Database(region.app_dsn(region.service_database("identity")), max_size=1)
    await db.connect()
    replica = DirectoryReplica(db)
    reads = Row("step's work: replica read (identity)", "DirectoryReplica.tenant")
    try:
        for _ in range(WARMUP):
            await replica.tenant(tenant_id)
        for _ in range(REQUESTS):
            t0 = now()
            facts = await replica.tenant(tenant_id)
            reads.latencies.append(now() - t0)
            if facts is None or facts.home_region != HOME:
                raise RuntimeError(f"eu identity's replica: {facts}")
    finally:
        await db.close()
    regions = RegionMap(
        HOME,
        msgspec.json.decode(region.env["TENANTRY_REGIONS"], type=list[RegionEntry]),
        directory=region.env["TENANTRY_DIRECTORY_REGION"],
    )
    unused = DirectoryClient("http://127.0.0.1:9", "")  # a key check never asks it
    step = HomeRegionStep(regions, "provisioning", TenantRouter(replica, unused))
    checks = Row("step's work: key region (provisioning)", "credential_region")
    authorization = f"Bearer {key}"
    for _ in range(FLOOR_CALLS):
        t0 = now()
        named = step.credential_region(authorization)
        checks.latencies.append(now() - t0)
    await unused.aclose()
    if named != HOME:
        raise RuntimeError(f"the key names {named!r}")
    result.rows += [reads, checks]
    # The table's milliseconds round these to 0.00.
    for stat_name, stat in (("median", median), ("p99", p99)):
        value = stat(checks.latencies)
        result.ratios[f"step's work: key region, {stat_name} us"] = (value or 0.0) * 1e6


def _check_ratios(result: BenchResult, service: str, rows: list[Row]) -> None:
    for in_flight in IN_FLIGHT:
        off = _variant(rows, OFF_EXTRA, in_flight)
        for variant in (ON_STACK, ON_EXTRA):
            on = _variant(rows, variant, in_flight)
            name = f"{service}, {in_flight} in flight"
            for stat_name, stat in (("median", median), ("p99", p99)):
                added = _added_ms(stat, on, off)
                result.ratios[f"{name}: added {stat_name} ms, {variant} - off"] = added
            if on.rate and off.rate:
                result.ratios[f"{name}: throughput, {variant} / off"] = on.rate / off.rate


def _variant(rows: list[Row], variant: str, in_flight: int) -> Row:
    return next(
        r for r in rows if r.extra["variant"] == variant and r.extra["in_flight"] == in_flight
    )


# --------------------------------------------------------------------------- 2. routable


async def create_tenant(
    client: httpx.AsyncClient, deployment: Deployment, region: str, plan: str = "free"
) -> tuple[UUID, float]:
    """(tenant id, seconds the POST took) of a new tenant homed in `region`."""
    slug = f"bench-res-{uuid4().hex[:12]}"
    t0 = now()
    response = await client.post(
        f"{deployment.url(region, 'tenancy')}/v1/tenants",
        json={"name": f"Bench {slug}", "slug": slug, "plan": plan, "home_region": region},
        headers=bearer(deployment.operators[region]),
    )
    took = now() - t0
    return UUID(_expect(response, 201, f"POST /v1/tenants in {region}")["tenant_id"]), took


@dataclass
class Routed:
    post: float  # s: the POST in the home region
    routed: float | None  # s: its response -> the other region's first 307 to home
    replicated: float | None  # s: its response -> the other region's webhooks replica has it
    polls: int  # requests to the other region until its 307
    other_answers: list[int]  # statuses before it


async def routable(
    client: httpx.AsyncClient, deployment: Deployment, home: str, other: str
) -> Routed:
    replica_dsn = deployment.regions[other].app_dsn("tenantry_webhooks")
    conn = await asyncpg.connect(replica_dsn)  # before the clock starts
    try:
        tenant_id, post = await create_tenant(client, deployment, home)
        created = now()
        path = f"/v1/tenants/{tenant_id}/history"
        expected = f"{deployment.url(home, 'tenancy')}{path}"
        others: list[int] = []
        polls = 0

        async def first_307() -> float | None:
            nonlocal polls
            while now() - created < ROUTE_DEADLINE:
                polls += 1
                response = await client.get(
                    f"{deployment.url(other, 'tenancy')}{path}",
                    headers=bearer(deployment.operators[other]),
                )
                if response.status_code == 307 and response.headers["location"] == expected:
                    return now() - created
                others.append(response.status_code)
                await asyncio.sleep(POLL_EVERY)
            return None

        async def in_replica() -> float | None:
            while now() - created < ROUTE_DEADLINE:
                found = await _replica_home(conn, tenant_id)
                if found is not None:
                    if found != home:
                        raise RuntimeError(f"{other}'s replica homes {tenant_id} in {found}")
                    return now() - created
                await asyncio.sleep(POLL_EVERY)
            return None

        routed, replicated = await asyncio.gather(first_307(), in_replica())
    finally:
        await conn.close()
    return Routed(post, routed, replicated, polls, others)


async def routing_rows(
    result: BenchResult, client: httpx.AsyncClient, deployment: Deployment, pull_seconds: float
) -> dict[str, list[float]]:
    """Figure 2's rows; returns the POST latencies per home region (figure 3's)."""
    directions = [(AWAY, HOME), (HOME, AWAY)]
    samples: dict[tuple[str, str], list[Routed]] = {d: [] for d in directions}
    jitter = random.Random(SEED)
    for i in range(2 * CREATES):
        home, other = directions[i % 2]
        # Each sample lasts about one pull period: without a random pause the creates would
        # lock to the same phase of the replicas' pulls and sample one lag only.
        await asyncio.sleep(jitter.uniform(0.0, pull_seconds))
        samples[(home, other)].append(await routable(client, deployment, home, other))
    posts: dict[str, list[float]] = {}
    for (home, other), done in samples.items():
        posts[home] = [s.post for s in done]
        for what, values in (
            ("first 307 to home", [s.routed for s in done]),
            ("in webhooks' directory_replica", [s.replicated for s in done]),
        ):
            row = Row(
                f"{home} -> {other}: created -> {what}",
                f"{home}'s 201 -> {other}",
                [v for v in values if v is not None],
            )
            row.extra["never_within_s"] = (ROUTE_DEADLINE, sum(v is None for v in values))
            result.rows.append(row)
            missing = sum(v is None for v in values)
            if missing:
                result.notes.append(
                    f"ANOMALY {home} -> {other}: {missing} of {len(values)} tenants not "
                    f"'{what}' within {ROUTE_DEADLINE:.0f} s"
                )
        polls = [s.polls for s in done]
        before = sorted({status for s in done for status in s.other_answers})
        result.ratios[f"{home} -> {other}: requests until the 307, max"] = max(polls)
        if before:
            result.notes.append(f"{home} -> {other}: answers before the 307: {before}")
    return posts


# --------------------------------------------------------------------------- 3. claims


async def claim_rows(
    result: BenchResult, deployment: Deployment, posts: dict[str, list[float]]
) -> None:
    result.rows += [
        Row(f"POST /v1/tenants in {AWAY} (directory local)", "request -> 201", posts[AWAY],
            baseline=True),
        Row(f"POST /v1/tenants in {HOME} (claim over HTTP to {AWAY})", "request -> 201",
            posts[HOME]),
    ]  # fmt: skip
    result.ratios[f"POST /v1/tenants added median ms, {HOME} - {AWAY}"] = _added_ms(
        median, result.rows[-1], result.rows[-2]
    )
    result.ratios[f"POST /v1/tenants added p99 ms, {HOME} - {AWAY}"] = _added_ms(
        p99, result.rows[-1], result.rows[-2]
    )

    # As eu reaches the directory: its own client, its configured URL and secret.
    region = deployment.regions[HOME]
    directory = DirectoryClient(region.env["TENANTRY_DIRECTORY_URL"], region.directory_secret)
    lookup = Row("directory lookup (GET tenants/{id})", "request -> 200", baseline=True)
    claim = Row("directory claim (POST claims, new slug)", "request -> 200")
    release = Row("directory release (DELETE claims/slug/..)", "request -> 204")
    record = Row("directory record (PUT tenants/{id}, purged)", "request -> 200")
    claimed: list[ClaimRequest] = []
    try:
        await directory.lookup(uuid4())  # the connection, opened untimed
        for _ in range(CLAIMS):
            request = ClaimRequest(
                kind="slug",
                value=f"bench-res-claim-{uuid4().hex[:12]}",
                tenant_id=uuid4(),
                home_region=HOME,
            )
            t0 = now()
            answer = await directory.claim(request)
            claim.latencies.append(now() - t0)
            if not answer.granted:
                raise RuntimeError(f"claim of a new slug refused: {answer}")
            claimed.append(request)
            t0 = now()
            facts = await directory.lookup(request.tenant_id)
            lookup.latencies.append(now() - t0)
            if facts is None or facts.home_region != HOME:
                raise RuntimeError(f"the directory does not hold the claim: {facts}")
    finally:
        # The clean-up: slug released, the made-up tenant recorded purged (the replicas
        # then drop it).
        for request in claimed:
            t0 = now()
            await directory.release("slug", request.value, request.tenant_id)
            release.latencies.append(now() - t0)
            t0 = now()
            await directory.record(
                TenantFacts(tenant_id=request.tenant_id, home_region=HOME, status="purged")
            )
            record.latencies.append(now() - t0)
        await directory.aclose()
    result.rows += [lookup, claim, release, record]
    for stat_name, stat in (("median", median), ("p99", p99)):
        result.ratios[f"directory claim added {stat_name} ms over a lookup"] = _added_ms(
            stat, claim, lookup
        )


# --------------------------------------------------------------------------- the run


async def run(ctx: Context) -> BenchResult:
    result = BenchResult(
        "residency",
        "home-region check cost (on vs off, same run), cross-region routable time, claims",
        "requests",
        params={
            "requests_per_process_and_level": REQUESTS,
            "in_flight_levels": list(IN_FLIGHT),
            "rounds": ROUNDS,
            "warmup_per_process_and_level": WARMUP,
            "creates_per_direction": CREATES,
            "direct_claims": CLAIMS,
            "poll_every_s": POLL_EVERY,
            "client": "figure 1: RawHttp (bench/guardrails.py), one keep-alive connection per "
            "request in flight; figures 2-3: httpx.AsyncClient, sequential",
        },
    )
    # The host's load (1, 5, 15 min), since the regions are shared with whatever else runs.
    result.params["load_average_at_start"] = os.getloadavg()
    with running_regions() as regions:
        operators = {name: await operator_token(region) for name, region in regions.items()}
        deployment = Deployment(regions, operators)
        pull = float(regions[HOME].env.get("TENANTRY_DIRECTORY_PULL_SECONDS", "1.0"))
        result.params["directory_pull_seconds"] = pull
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as client:
            await check_cost(result, client, deployment)
            posts = await routing_rows(result, client, deployment, pull)
        await claim_rows(result, deployment, posts)
    result.params["load_average_at_end"] = os.getloadavg()
    result.notes.append(
        "added = difference of the variants' medians (p99s); 'check on, extra api' is "
        "started like the 'off' one (same age, no other traffic): on - off there is the "
        "step alone; eu's own api also serves whatever else runs on the shared regions"
    )
    return result
