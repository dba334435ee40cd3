"""The actor of an event (actors.py): carried from the context into the envelope, through
both encodings, and its IP and user agent sealed like personal payload fields."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st
from uuid_utils.compat import uuid4

from tenantry_events.actors import Actor, acting_as, current_actor, identify, request_actor
from tenantry_events.envelope import decode_envelope, encode_envelope
from tenantry_events.kafka_codec import from_record, to_record
from tenantry_events.memory import MemoryDataKeys
from tenantry_events.sealing import ERASED, UnreadableSeal, is_sealed, seal, unseal

from .contracts import note, ping


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_events_made_in_an_actors_context_name_it_and_others_name_no_one() -> None:
    actor = Actor(kind="api_key", id="key_1", request_id="r-1", ip="127.0.0.9")
    with acting_as(actor):
        assert current_actor() == actor
        inside = ping(1)
    assert current_actor() is None
    assert inside.actor == actor
    assert ping(2).actor is None


def test_a_long_user_agent_is_cut_and_empty_values_are_dropped() -> None:
    actor = request_actor("user", "u", request_id=None, ip="", user_agent="x" * 5000)
    assert actor.ip is None
    assert actor.user_agent is not None
    assert len(actor.user_agent) == 512
    assert request_actor("system", None, request_id=None, ip=None, user_agent="").user_agent is None


@given(
    ip=st.text(min_size=1, max_size=60),
    agent=st.none() | st.text(min_size=1, max_size=400),
    kind=st.sampled_from(["user", "api_key", "operator", "scim"]),
)
@settings(max_examples=100, deadline=None)
def test_the_actor_round_trips_sealed_through_both_encodings(
    ip: str, agent: str | None, kind: Any
) -> None:
    async def check() -> None:
        keys = MemoryDataKeys()
        actor = Actor(kind=kind, id=str(uuid4()), request_id="r", ip=ip, user_agent=agent)
        with acting_as(actor):
            plain = note("hello", tenant_id=uuid4())
        sealed = await seal(plain, keys, None)
        assert sealed.actor is not None
        assert is_sealed(sealed.actor.ip)
        assert sealed.actor.ip != ip
        assert (sealed.actor.user_agent is None) == (agent is None)
        assert sealed.actor.id == actor.id
        assert sealed.actor.kind == kind
        assert decode_envelope(encode_envelope(sealed)) == sealed
        record = to_record(sealed)
        assert from_record(record.headers, record.value) == sealed
        assert await unseal(sealed, keys, None) == plain
        assert await seal(sealed, keys, None) == sealed, "sealing is idempotent"

    run(check())


def test_a_users_ip_is_erased_with_the_person_and_a_keys_with_the_tenant() -> None:
    async def check() -> None:
        keys = MemoryDataKeys()
        tenant, person = uuid4(), uuid4()
        with acting_as(Actor(kind="user", id=str(person), ip="127.0.0.7", user_agent="ua")):
            by_user = await seal(note("a", tenant_id=tenant), keys, None)
        with acting_as(Actor(kind="api_key", id="key_9", ip="127.0.0.8")):
            by_key = await seal(note("b", tenant_id=tenant), keys, None)
        keys.destroy(tenant, person)
        opened = await unseal(by_user, keys, None)
        assert opened.actor is not None
        assert (opened.actor.ip, opened.actor.user_agent) == (ERASED, ERASED)
        assert opened.payload.text == "a", "the person's key seals the actor, not the payload"
        still = await unseal(by_key, keys, None)
        assert still.actor is not None
        assert still.actor.ip == "127.0.0.8"
        keys.destroy(tenant)
        gone = await unseal(by_key, keys, None)
        assert gone.actor is not None
        assert gone.actor.ip == ERASED

    run(check())


def test_a_sealed_ip_moved_into_the_user_agent_does_not_open() -> None:
    async def check() -> None:
        keys = MemoryDataKeys()
        with acting_as(Actor(kind="api_key", id="k", ip="127.0.0.1", user_agent="curl")):
            sealed = await seal(note("x", tenant_id=uuid4()), keys, None)
        assert sealed.actor is not None
        swapped = msgspec.structs.replace(
            sealed, actor=msgspec.structs.replace(sealed.actor, user_agent=sealed.actor.ip)
        )
        try:
            await unseal(swapped, keys, None)
        except UnreadableSeal:
            return
        raise AssertionError("a sealed value opened in another field")

    run(check())


def test_a_sign_in_names_an_anonymous_actor_and_no_other() -> None:
    with acting_as(Actor(kind="anonymous", ip="127.0.0.3")):
        identify("user", "acc_1")
        named = current_actor()
        assert named is not None
        assert (named.kind, named.id, named.ip) == ("user", "acc_1", "127.0.0.3")
    with acting_as(Actor(kind="api_key", id="key_1")):
        identify("user", "acc_1")
        kept = current_actor()
        assert kept is not None
        assert (kept.kind, kept.id) == ("api_key", "key_1")
    identify("user", "acc_1")  # outside any request: nothing to name
    assert current_actor() is None
