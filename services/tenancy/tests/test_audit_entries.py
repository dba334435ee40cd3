"""The audit log's rules (audit/entries.py): what an entry says of an event, the canonical
record a customer can reproduce, and the hash chain that detects a changed, removed or
reordered entry."""

from __future__ import annotations

import hashlib
import json
from uuid import UUID

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from uuid_utils.compat import uuid4

import tenantry_events.payloads  # noqa: F401  (registers the catalog)
from tenantry_events.actors import Actor, acting_as
from tenantry_events.envelope import Envelope, new_event
from tenantry_events.payloads.tenancy import TenantState, TenantSuspended
from tenantry_tenancy.audit.entries import (
    GENESIS,
    NOT_AUDITED,
    actor_of,
    canonical,
    is_audited,
    next_hash,
    record_of,
    verify_chain,
)

TENANT = UUID("0190c0de-0000-7000-8000-000000000001")
STATE = TenantState(name="Acme", slug="acme", status="suspended", plan="team", home_region="us")


def suspended(reason: str, actor: Actor | None = None) -> Envelope[TenantSuspended]:
    with acting_as(actor):
        return new_event(
            TenantSuspended(tenant=STATE, reason=reason, by="operator"),
            tenant_id=TENANT,
            subject=f"tenant/{TENANT}",
            aggregate_version=1,
            source="/tenantry/tests",
            region="local",
        )


def chained(reasons: list[str]) -> list[tuple[int, bytes, bytes, bytes]]:
    links = []
    prev = GENESIS
    for seq, reason in enumerate(reasons, start=1):
        record = canonical(record_of(suspended(reason), seq))
        digest = next_hash(prev, record)
        links.append((seq, record, prev, digest))
        prev = digest
    return links


reasons = st.lists(st.text(max_size=40), min_size=2, max_size=12)


@given(reasons)
@settings(max_examples=60, deadline=None)
def test_an_untouched_chain_verifies(texts: list[str]) -> None:
    assert verify_chain(chained(texts), GENESIS) is None


@given(reasons, st.data())
@settings(max_examples=100, deadline=None)
def test_a_changed_record_is_detected_where_it_changed(
    texts: list[str], data: st.DataObject
) -> None:
    links = chained(texts)
    at = data.draw(st.integers(0, len(links) - 1))
    seq, record, prev, digest = links[at]
    position = data.draw(st.integers(0, len(record) - 1))
    changed = bytearray(record)
    changed[position] ^= data.draw(st.integers(1, 255))
    links[at] = (seq, bytes(changed), prev, digest)
    found = verify_chain(links, GENESIS)
    assert found is not None
    assert found.seq == seq


@given(reasons, st.data())
@settings(max_examples=60, deadline=None)
def test_a_removed_entry_is_detected(texts: list[str], data: st.DataObject) -> None:
    links = chained(texts)
    head = (links[-1][0], links[-1][3])
    at = data.draw(st.integers(0, len(links) - 1))
    del links[at]
    assert verify_chain(links, GENESIS, head) is not None
    if at < len(links):
        assert verify_chain(links, GENESIS) is not None, "a gap shows without the head"


def test_the_head_is_checked_when_given() -> None:
    links = chained(["a", "b"])
    assert verify_chain(links, GENESIS, (2, links[-1][3])) is None
    assert verify_chain(links, GENESIS, (3, links[-1][3])) is not None
    assert verify_chain([], GENESIS, (0, GENESIS)) is None


def test_a_rewritten_chain_verifies_only_against_its_own_hashes() -> None:
    """What a hash chain cannot show on its own: someone who rewrites every later hash too
    makes a consistent chain, which is why a customer keeps a head hash (docs/audit.md)."""
    original = chained(["a", "b", "c"])
    rewritten = chained(["a", "B", "c"])
    assert verify_chain(rewritten, GENESIS) is None
    assert rewritten[-1][3] != original[-1][3], "the head a customer kept no longer matches"


def test_retention_leaves_a_chain_that_verifies_from_its_anchor() -> None:
    links = chained(["a", "b", "c", "d"])
    anchor = links[1][3]
    assert verify_chain(links[2:], anchor) is None
    assert verify_chain(links[2:], GENESIS) is not None


@given(st.text(), st.text(max_size=30))
@settings(max_examples=100, deadline=None)
def test_the_record_is_what_a_customers_json_gives(reason: str, agent: str) -> None:
    """Anyone can rebuild the bytes: Python's json with sorted keys and no spaces."""
    actor = Actor(kind="api_key", id="key_1", request_id="r", ip="127.0.0.1", user_agent=agent)
    record = canonical(record_of(suspended(reason, actor), 7))
    again = json.dumps(
        json.loads(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()
    assert again == record
    assert hashlib.sha256(GENESIS + record).digest() == next_hash(GENESIS, record)


def test_who_did_it() -> None:
    assert actor_of(suspended("x")).kind == "system"
    key = Actor(kind="scim", id="key_2", ip="127.0.0.1")
    assert actor_of(suspended("x", key)).kind == "scim"
    assert actor_of(suspended("x", key)).id == "key_2"

    class SignedIn(msgspec.Struct, frozen=True):
        account_id: UUID

    account = uuid4()
    anonymous = msgspec.structs.replace(
        suspended("x", Actor(kind="anonymous", ip="127.0.0.2")),
        payload=SignedIn(account),
    )
    who = actor_of(anonymous)
    assert (who.kind, who.id, who.ip) == ("user", str(account), "127.0.0.2")


def test_bookkeeping_between_services_is_not_audited() -> None:
    assert not is_audited("apikey.used")
    assert not is_audited("audit.recorded"), "the log's own stream would feed itself"
    assert is_audited("tenant.suspended")
    assert "usage.reported" in NOT_AUDITED


def test_the_record_names_action_target_and_outcome() -> None:
    record = record_of(suspended("late payment"), 3)
    assert record.action == "tenant.suspended"
    assert (record.target.type, record.target.id) == ("tenant", f"tenant/{TENANT}")
    assert record.outcome == "success"
    assert record.details["reason"] == "late payment"
