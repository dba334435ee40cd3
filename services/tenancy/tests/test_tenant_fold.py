"""The tenant aggregate rebuilt from its stream (pure): any sequence of commands, the
refused ones included, records a stream whose fold is the state the commands produced."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from uuid_utils.compat import uuid4

from tenantry_events.aggregates import UnfoldableStream, fold
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.tenancy import TenantLimitsChanged
from tenantry_tenancy.domain import DomainError, Tenant, TenantChange

from .test_plans_rules import FREE

PLANS = ["free", "team", "business", "enterprise"]


def recorded(tenant_id: UUID, payload: msgspec.Struct, version: int) -> Envelope[Any]:
    """The envelope the repository wraps a command's event in."""
    return new_event(
        payload,
        tenant_id=tenant_id,
        subject=str(tenant_id),
        aggregate_version=version,
        source="/tenantry/tenancy",
        region="local",
    )


NOW = datetime(2026, 12, 1, tzinfo=UTC)
GRACE = timedelta(days=30)

command = st.one_of(
    st.tuples(st.just("suspend"), st.sampled_from(["unpaid", "abuse", "  "])),
    st.tuples(st.just("reactivate"), st.sampled_from(["paid", "appeal", ""])),
    st.tuples(st.just("change_plan"), st.sampled_from(PLANS)),
    st.tuples(st.just("start_offboarding"), st.sampled_from(["contract ended", " "])),
    st.tuples(st.just("cancel_offboarding"), st.sampled_from(["stayed", ""])),
    # "due": at purge_at, by the scheduler; "early": before it, by an operator.
    st.tuples(st.just("request_purge"), st.sampled_from(["due", "early", "too soon"])),
)


@dataclass
class Model:
    """An independent model of the lifecycle rules, to know what must be refused."""

    status: str = "active"
    plan: str = "free"
    previous: str | None = None
    purging: bool = False

    def allows(self, name: str, argument: str) -> bool:
        reason = bool(argument.strip())
        offboarding = self.status == "offboarding" and not self.purging
        return {
            "suspend": self.status == "active" and reason,
            "reactivate": self.status == "suspended" and reason,
            "change_plan": self.status == "active" and argument != self.plan,
            "start_offboarding": self.status in ("active", "suspended") and reason,
            "cancel_offboarding": offboarding and reason,
            "request_purge": offboarding and argument != "too soon",
        }[name]

    def after(self, name: str, argument: str) -> None:
        if name == "suspend":
            self.status = "suspended"
        elif name == "reactivate":
            self.status = "active"
        elif name == "change_plan":
            self.plan = argument
        elif name == "start_offboarding":
            self.previous, self.status = self.status, "offboarding"
        elif name == "cancel_offboarding":
            assert self.previous is not None
            self.status, self.previous = self.previous, None
        elif name == "request_purge":
            self.purging = True


def run(tenant: Tenant, name: str, argument: str) -> TenantChange:
    if name == "change_plan":
        return tenant.change_plan(argument, by="op")
    if name == "start_offboarding":
        return tenant.start_offboarding(
            now=NOW, grace=GRACE, certificate_id=uuid4(), reason=argument, by="op"
        )
    if name == "request_purge":
        when = NOW + GRACE if argument == "due" else NOW
        return tenant.request_purge(
            now=when, purge_id=uuid4(), reason="r", by="op", early=argument == "early"
        )
    command: Any = getattr(tenant, name)
    change: TenantChange = command(reason=argument, by="op")
    return change


@given(plan=st.sampled_from(PLANS), commands=st.lists(command, max_size=25))
def test_any_command_sequence_folds_to_the_state_the_commands_produced(
    plan: str, commands: list[tuple[str, str]]
) -> None:
    tenant_id = uuid4()
    created = Tenant.create(
        tenant_id, name=" Acme ", slug="acme", plan=plan, home_region="eu", created_by="op"
    )
    stream = [recorded(tenant_id, created, 1)]
    tenant = Tenant.start(stream[0])
    model = Model(plan=plan)
    for name, argument in commands:
        allowed = model.allows(name, argument)
        try:
            change = run(tenant, name, argument)
        except DomainError:
            assert not allowed, (name, argument, model)
            continue
        assert allowed, (name, argument, model)
        stream.append(recorded(tenant_id, change, tenant.version + 1))
        model.after(name, argument)
        folded = fold(Tenant.start, stream)
        assert folded is not None
        tenant = folded
        # An event that carries the tenant's state carries the state the fold reached.
        carried = getattr(change, "tenant", None)
        assert carried is None or carried == tenant.state

        assert tenant.state.status == model.status
        assert tenant.state.plan == model.plan
        assert tenant.status == ("purging" if model.purging else model.status)
        off = tenant.offboarding
        assert (off.previous_status if off else None) == model.previous
    assert (tenant.state.name, tenant.state.slug, tenant.state.home_region) == (
        "Acme",
        "acme",
        "eu",
    )
    assert tenant.version == len(stream)


def test_a_tenant_stream_starts_with_its_creation_and_knows_only_tenant_events() -> None:
    tenant_id = uuid4()
    created = Tenant.create(
        tenant_id, name="A", slug="a", plan="free", home_region="eu", created_by="op"
    )
    tenant = Tenant.start(recorded(tenant_id, created, 1))
    suspended = recorded(tenant_id, tenant.suspend(reason="unpaid", by="op"), 1)
    with pytest.raises(UnfoldableStream, match=r"starts with tenant\.created"):
        Tenant.start(suspended)
    notice = TenantLimitsChanged(plan="free", limits=FREE, limits_version=1, plans=[])
    with pytest.raises(UnfoldableStream, match=r"cannot apply tenant\.limits_changed"):
        tenant.apply(recorded(tenant_id, notice, 2))
