"""The tenant aggregate rebuilt from its stream (pure): any sequence of commands, the
refused ones included, records a stream whose fold is the state the commands produced."""

from __future__ import annotations

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


command = st.one_of(
    st.tuples(st.just("suspend"), st.sampled_from(["unpaid", "abuse", "  "])),
    st.tuples(st.just("reactivate"), st.sampled_from(["paid", "appeal", ""])),
    st.tuples(st.just("change_plan"), st.sampled_from(PLANS)),
)


@given(plan=st.sampled_from(PLANS), commands=st.lists(command, max_size=25))
def test_any_command_sequence_folds_to_the_state_the_commands_produced(
    plan: str, commands: list[tuple[str, str]]
) -> None:
    tenant_id = uuid4()
    created = Tenant.create(
        tenant_id, name=" Acme ", slug="acme", plan=plan, home_region="eu", created_by="op"
    )
    stream = [recorded(tenant_id, created, 1)]
    # What the repository's state row holds after each command: the full state the
    # command's event carries (the snapshot projections elsewhere also keep).
    row = Tenant(tenant_id=tenant_id, state=created.tenant, version=1)
    status = "active"  # an independent model of the rules, to know what must be refused
    for name, argument in commands:
        allowed = {
            "suspend": status == "active" and bool(argument.strip()),
            "reactivate": status == "suspended" and bool(argument.strip()),
            "change_plan": status == "active" and argument != row.state.plan,
        }[name]
        try:
            if name == "change_plan":
                change: TenantChange = row.change_plan(argument, by="op")
            else:
                change = getattr(row, name)(reason=argument, by="op")
        except DomainError:
            assert not allowed, (name, argument, row)
            continue
        assert allowed, (name, argument, row)
        stream.append(recorded(tenant_id, change, row.version + 1))
        row = Tenant(tenant_id=tenant_id, state=change.tenant, version=row.version + 1)
        status = {"suspend": "suspended", "reactivate": "active"}.get(name, status)

        assert fold(Tenant.start, stream) == row
    assert row.state.status == status
    assert (row.state.name, row.state.slug, row.state.home_region) == ("Acme", "acme", "eu")
    assert row.version == len(stream)


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
