"""A tenant's state row is the fold of its stream, after every command path of the running
service (real Postgres), and `tenantry-tenancy verify-state` finds a row tampered with in
SQL and rebuilds it from the events (a real process on a scratch database)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from uuid import UUID

import asyncpg
import httpx
import pytest_asyncio
from uuid_utils.compat import uuid4

from tenantry_events.pg import Database
from tenantry_events.state_check import check_one
from tenantry_events.storage import PostgresEventStore, PostgresOutbox
from tenantry_tenancy.domain import Tenant
from tenantry_tenancy.store import TENANTS, TenantRepository
from tenantry_testkit.fixtures import ScratchDatabase, running_service_db
from tenantry_testkit.stack import Stack


@pytest_asyncio.fixture
async def stack_tenancy_db(stack: Stack) -> AsyncIterator[Database]:
    async with running_service_db(stack, "tenancy") as db:
        yield db


async def test_every_command_path_leaves_the_row_equal_to_the_fold_of_the_stream(
    stack: Stack, operator_headers: dict[str, str], stack_tenancy_db: Database
) -> None:
    events = PostgresEventStore(PostgresOutbox(stack_tenancy_db))

    async with httpx.AsyncClient(
        base_url=stack.service_url("tenancy"), headers=operator_headers, timeout=30
    ) as client:
        made = await client.post(
            "/v1/tenants", json={"name": "Fold", "slug": f"fold-{uuid4().hex[:10]}", "plan": "team"}
        )
        assert made.status_code == 201, made.text
        tenant_id = UUID(made.json()["tenant_id"])
        tenant = f"/v1/tenants/{tenant_id}"
        team = next(p for p in (await client.get("/v1/plans")).json() if p["plan_id"] == "team")
        # Each command path, the refused ones too (they must record nothing), in an order
        # that makes each one legal or not as its name says.
        paths = [
            ("suspend", "POST", f"{tenant}/suspend", {"reason": "unpaid"}, 200),
            ("suspend a suspended tenant", "POST", f"{tenant}/suspend", {"reason": "x"}, 409),
            ("change a suspended tenant's plan", "POST", f"{tenant}/plan", {"plan": "free"}, 409),
            ("reactivate", "POST", f"{tenant}/reactivate", {"reason": "paid"}, 200),
            ("reactivate an active tenant", "POST", f"{tenant}/reactivate", {"reason": "x"}, 409),
            ("override limits", "POST", f"{tenant}/limit-overrides", {"seats": 40}, 200),
            ("clear an override", "DELETE", f"{tenant}/limit-overrides/seats", None, 200),
            # The plan's own definition, unchanged: its tenants' limits are re-published.
            ("redefine the plan", "PUT", "/v1/plans/team", team["limits"], 200),
            ("change plan", "POST", f"{tenant}/plan", {"plan": "business"}, 200),
            ("change to the same plan", "POST", f"{tenant}/plan", {"plan": "business"}, 409),
            ("cancel an offboarding never started", "DELETE", f"{tenant}/offboarding", None, 409),
            ("offboard", "POST", f"{tenant}/offboarding", {"reason": "contract ended"}, 200),
            ("offboard twice", "POST", f"{tenant}/offboarding", {"reason": "x"}, 409),
            ("suspend an offboarding tenant", "POST", f"{tenant}/suspend", {"reason": "x"}, 409),
            ("cancel offboarding", "DELETE", f"{tenant}/offboarding", None, 200),
            ("purge a tenant not offboarding", "POST", f"{tenant}/purge", {"reason": "x"}, 409),
        ]
        folded = await row_is_fold(stack_tenancy_db, events, tenant_id, "create")
        assert (folded.state.status, folded.state.plan, folded.version) == ("active", "team", 1)
        for name, method, url, body, status in paths:
            response = await client.request(method, url, json=body)
            assert response.status_code == status, (name, response.text)
            await row_is_fold(stack_tenancy_db, events, tenant_id, name)
        history = (await client.get(f"{tenant}/history")).json()

    folded = await row_is_fold(stack_tenancy_db, events, tenant_id, "at the end")
    assert (folded.state.status, folded.state.plan, folded.version) == ("active", "business", 6)
    assert folded.offboarding is None
    assert [h["type"] for h in history] == [
        "tenant.created",
        "tenant.suspended",
        "tenant.reactivated",
        "tenant.plan_changed",
        "tenant.offboarding_started",
        "tenant.offboarding_cancelled",
    ]


async def row_is_fold(
    db: Database, events: PostgresEventStore, tenant_id: UUID, after: str
) -> Tenant:
    async with db.transaction(tenant_id=tenant_id) as tx:
        stream = TenantRepository.stream(tenant_id)
        drift = await check_one(tx, events, TENANTS, stream)
        assert drift is None, f"after {after}: {drift}"
        tenant = await TENANTS.read_row(tx, stream)
    assert tenant is not None
    return tenant


# ---------------------------------------------------------------- verify-state, tampered


def verify_state(stack: Stack, db: ScratchDatabase, *argv: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TENANTRY_")}
    env = {**clean, **stack.service_env("tenancy"), "TENANTRY_DATABASE_URL": db.app_dsn}
    return subprocess.run(
        [sys.executable, "-m", "tenantry_tenancy", "verify-state", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def some_tenants(db: ScratchDatabase) -> list[UUID]:
    """Three tenants made by the real repository: one suspended, one moved to business."""
    repo = TenantRepository(
        PostgresEventStore(PostgresOutbox(db.db)), source="/tenantry/tenancy", region="local"
    )
    ids = [uuid4() for _ in range(3)]
    async with db.db.transaction(platform=True) as tx:
        for n, tenant_id in enumerate(ids):
            created = Tenant.create(
                tenant_id,
                name=f"T{n}",
                slug=f"t{n}",
                plan="team",
                home_region="eu",
                created_by="op",
            )
            await repo.add(tx, tenant_id, created)
        first = await repo.load(tx, ids[0])
        second = await repo.load(tx, ids[1])
        assert first is not None
        assert second is not None
        await repo.record(tx, first, first.suspend(reason="unpaid", by="op"))
        await repo.record(tx, second, second.change_plan("business", by="op"))
    return ids


async def test_a_row_tampered_in_sql_is_reported_and_rebuild_restores_it_idempotently(
    stack: Stack, tenancy_db: ScratchDatabase
) -> None:
    ids = await some_tenants(tenancy_db)
    clean = verify_state(stack, tenancy_db)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 difference(s)" in clean.stdout

    conn = await asyncpg.connect(tenancy_db.owner_dsn)  # the app role may not delete rows
    try:
        await conn.execute(
            "UPDATE tenants SET status = 'active', version = 7 WHERE tenant_id = $1", ids[0]
        )
        await conn.execute("UPDATE tenants SET plan = 'enterprise' WHERE tenant_id = $1", ids[1])
        await conn.execute("DELETE FROM tenants WHERE tenant_id = $1", ids[2])
    finally:
        await conn.close()

    found = verify_state(stack, tenancy_db)
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"tenant tenant-{ids[0]}: differs" in found.stdout
    assert "  state.status: row 'active', events 'suspended'" in found.stdout
    assert "  version: row 7, events 2" in found.stdout
    assert "  state.plan: row 'enterprise', events 'business'" in found.stdout
    assert f"tenant tenant-{ids[2]}: differs\n  row missing, events present" in found.stdout
    assert "3 difference(s), 3 left" in found.stdout

    rebuilt = verify_state(stack, tenancy_db, "--rebuild")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert rebuilt.stdout.count(": rebuilt") == 3
    assert "3 difference(s), 0 left" in rebuilt.stdout
    for again in (verify_state(stack, tenancy_db), verify_state(stack, tenancy_db, "--rebuild")):
        assert again.returncode == 0, again.stdout + again.stderr
        assert "0 difference(s)" in again.stdout
    async with tenancy_db.db.transaction(platform=True) as tx:
        rows = {t: await TENANTS.read_row(tx, TenantRepository.stream(t)) for t in ids}
    assert [(r.state.status, r.state.plan, r.version) for r in rows.values() if r] == [
        ("suspended", "team", 2),
        ("active", "business", 2),
        ("active", "team", 1),
    ]


async def test_a_row_without_events_is_reported_and_not_rebuildable(
    stack: Stack, tenancy_db: ScratchDatabase
) -> None:
    orphan = uuid4()
    async with tenancy_db.db.transaction(platform=True) as tx:
        await tx.execute(
            """INSERT INTO tenants (tenant_id, name, slug, status, plan, home_region, version)
               VALUES ($1, 'Orphan', 'orphan', 'active', 'free', 'eu', 1)""",
            orphan,
        )
    result = verify_state(stack, tenancy_db, "--rebuild")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"tenant tenant-{orphan}: differs\n  row present, events missing" in result.stdout
    assert f"not rebuilt: tenant-{orphan} has a row but no events" in result.stdout


async def test_a_rebuild_that_clashes_on_a_slug_is_reported_and_the_next_one_converges(
    stack: Stack, tenancy_db: ScratchDatabase
) -> None:
    """Tenant `first` (checked first) must get back a slug that, in the rows, another tenant
    holds: it is not rebuilt this time (reported, the command goes on), the other is; the
    next rebuild finds the slug free and finishes."""
    ids = await some_tenants(tenancy_db)
    slugs = {tenant_id: f"t{n}" for n, tenant_id in enumerate(ids)}
    first, second = sorted(ids[:2], key=lambda t: TenantRepository.stream(t))
    conn = await asyncpg.connect(tenancy_db.owner_dsn)
    try:
        await conn.execute("UPDATE tenants SET slug = 'moved' WHERE tenant_id = $1", first)
        await conn.execute(
            "UPDATE tenants SET slug = $2 WHERE tenant_id = $1", second, slugs[first]
        )
    finally:
        await conn.close()

    clash = verify_state(stack, tenancy_db, "--rebuild")
    assert clash.returncode == 1, clash.stdout + clash.stderr
    assert f"not rebuilt: tenant-{first}: another row holds a unique value" in clash.stdout
    assert f"tenant tenant-{second}: rebuilt" in clash.stdout
    assert "2 difference(s), 1 left" in clash.stdout

    converged = verify_state(stack, tenancy_db, "--rebuild")
    assert converged.returncode == 0, converged.stdout + converged.stderr
    assert f"tenant tenant-{first}: rebuilt" in converged.stdout
    async with tenancy_db.db.transaction(platform=True) as tx:
        rows = {t: await TENANTS.read_row(tx, TenantRepository.stream(t)) for t in ids}
    assert {t: r.state.slug for t, r in rows.items() if r} == slugs
