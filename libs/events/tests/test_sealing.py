"""Sealing of personal fields (sealing.py), checked against a reference that knows what each
field should read as: its plaintext while both keys exist, ERASED once either is destroyed."""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from uuid import UUID

import msgspec
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from uuid_utils.compat import uuid4

from tenantry_events.envelope import Envelope, decode_envelope, encode_envelope
from tenantry_events.kafka_codec import from_record, to_record
from tenantry_events.memory import MemoryDataKeys
from tenantry_events.sealing import (
    ERASED,
    SEALED_PREFIX,
    KeysUnavailable,
    UnreadableSeal,
    is_sealed,
    seal,
    unseal,
)

from .contracts import ContractPerson, ContractProfile, note, person

texts = st.text(max_size=300) | st.text(min_size=2000, max_size=5000)
names = st.none() | texts


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def sealed_person(
    keys: MemoryDataKeys, email: str, name: str | None, tenant: UUID, account: UUID
) -> tuple[Envelope[ContractPerson], Envelope[ContractPerson]]:
    plain = person(email, name, tenant_id=tenant, account_id=account)
    return plain, await seal(plain, keys, None)


@given(email=texts, name=names)
@settings(max_examples=200, deadline=None)
def test_round_trip_of_any_text(email: str, name: str | None) -> None:
    async def check() -> None:
        keys = MemoryDataKeys()
        plain, sealed = await sealed_person(keys, email, name, uuid4(), uuid4())
        assert is_sealed(sealed.payload.email)
        assert sealed.payload.profile is not None
        assert (sealed.payload.profile.name is None) == (name is None)
        # Both encodings carry the sealed values, and still decode to the payload type.
        assert decode_envelope(encode_envelope(sealed)) == sealed
        record = to_record(sealed)
        assert from_record(record.headers, record.value) == sealed
        assert await unseal(sealed, keys, None) == plain
        assert await seal(sealed, keys, None) == sealed, "sealing is idempotent"

    run(check())


@given(email=st.text(min_size=4, max_size=200), name=st.text(min_size=4, max_size=200))
@settings(max_examples=200, deadline=None)
def test_sealed_output_never_contains_the_plaintext(email: str, name: str) -> None:
    async def check() -> None:
        account = uuid4()
        plain, sealed = await sealed_person(MemoryDataKeys(), email, name, uuid4(), account)
        # The event without its personal fields' ciphertext: a plaintext such as "name" or
        # "tnty" may be there.
        frame = f"{SEALED_PREFIX}s.{account}:"
        blank = msgspec.structs.replace(
            plain.payload, email=frame, profile=ContractProfile(name=frame, city="Lyon")
        )
        skeleton = encode_envelope(msgspec.structs.replace(plain, payload=blank)).decode()
        encoded = encode_envelope(sealed).decode()
        value = to_record(sealed).value.decode()
        for plaintext in (email, name):
            json_form = msgspec.json.encode(plaintext).decode()[1:-1]  # as escaped in JSON
            assume(json_form not in skeleton)
            assert json_form not in encoded
            assert json_form not in value

    run(check())


def flip(sealed: str, position: int) -> str:
    """The sealed value with one bit of its ciphertext changed."""
    head, _, encoded = sealed.rpartition(":")
    box = bytearray(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    box[position % len(box)] ^= 1
    return f"{head}:{base64.urlsafe_b64encode(bytes(box)).rstrip(b'=').decode()}"


@given(email=texts, position=st.integers(min_value=0))
@settings(max_examples=100, deadline=None)
def test_altered_ciphertext_does_not_open(email: str, position: int) -> None:
    async def check() -> None:
        keys = MemoryDataKeys()
        _, sealed = await sealed_person(keys, email, "n", uuid4(), uuid4())
        altered = msgspec.structs.replace(
            sealed,
            payload=msgspec.structs.replace(
                sealed.payload, email=flip(sealed.payload.email, position)
            ),
        )
        with pytest.raises(UnreadableSeal):
            await unseal(altered, keys, None)

    run(check())


@given(email=texts, name=texts)
@settings(max_examples=100, deadline=None)
def test_a_sealed_value_moved_to_another_field_or_event_does_not_open(
    email: str, name: str
) -> None:
    async def check() -> None:
        keys, tenant, account = MemoryDataKeys(), uuid4(), uuid4()
        _, sealed = await sealed_person(keys, email, name, tenant, account)
        _, other = await sealed_person(keys, "x", "y", tenant, account)
        assert sealed.payload.profile is not None
        swapped_fields = msgspec.structs.replace(
            sealed.payload,
            email=sealed.payload.profile.name,
            profile=ContractProfile(name=sealed.payload.email, city="Lyon"),
        )
        into_other_event = msgspec.structs.replace(other.payload, email=sealed.payload.email)
        for payload in (swapped_fields, into_other_event):
            envelope = sealed if payload is swapped_fields else other
            with pytest.raises(UnreadableSeal):
                await unseal(msgspec.structs.replace(envelope, payload=payload), keys, None)

    run(check())


def test_a_sealed_value_moved_to_another_tenant_does_not_open() -> None:
    async def check() -> None:
        keys, account = MemoryDataKeys(), uuid4()
        _, sealed = await sealed_person(keys, "ada@x.test", "Ada", uuid4(), account)
        await keys.for_sealing(None, (elsewhere := uuid4()))
        await keys.for_sealing(None, elsewhere, account)
        with pytest.raises(UnreadableSeal):
            await unseal(msgspec.structs.replace(sealed, tenant_id=elsewhere), keys, None)

    run(check())


# One step of the reference scenario: seal an event, or destroy a key.
Step = tuple[str, int, int, str]  # (kind, tenant index, subject index, text)
steps = st.lists(
    st.tuples(
        st.sampled_from(["person", "note", "destroy-tenant", "destroy-subject"]),
        st.integers(0, 2),
        st.integers(0, 3),
        st.text(max_size=40),
    ),
    max_size=30,
)


@given(steps)
@settings(max_examples=150, deadline=None)
def test_reads_match_the_reference_after_any_sequence_of_sealing_and_destruction(
    scenario: list[Step],
) -> None:
    """The reference: a field reads as its plaintext iff the tenant's key and (for an event
    about a person) that person's key were both alive when it was sealed and still are."""

    async def check() -> None:
        keys = MemoryDataKeys()
        tenants = [uuid4() for _ in range(3)]
        subjects = [uuid4() for _ in range(4)]
        dead: set[tuple[UUID, UUID | None]] = set()
        written: list[tuple[Envelope[Any], str, UUID, UUID | None]] = []
        for kind, t, s, text in scenario:
            tenant, subject = tenants[t], subjects[s]
            if kind == "destroy-tenant":
                keys.destroy(tenant)
                dead.add((tenant, None))
            elif kind == "destroy-subject":
                keys.destroy(tenant, subject)
                dead.add((tenant, subject))
            else:
                plain: Envelope[Any] = (
                    person(text, text, tenant_id=tenant, account_id=subject)
                    if kind == "person"
                    else note(text, tenant_id=tenant)
                )
                about = subject if kind == "person" else None
                written.append((await seal(plain, keys, None), text, tenant, about))
        for sealed, text, tenant, about in written:
            expected = (
                ERASED if (tenant, None) in dead or (about and (tenant, about) in dead) else text
            )
            opened = (await unseal(sealed, keys, None)).payload
            if isinstance(opened, ContractPerson):
                assert opened.profile is not None
                assert (opened.email, opened.profile.name) == (expected, expected)
            else:
                assert opened.text == expected

    run(check())


def test_plaintext_recorded_before_sealing_passes_through() -> None:
    plain = person("ada@x.test", None, tenant_id=uuid4(), account_id=uuid4())
    assert run(unseal(plain, MemoryDataKeys(), None)) == plain


def test_a_text_that_only_looks_sealed_is_sealed_like_any_other() -> None:
    async def check() -> None:
        keys = MemoryDataKeys()
        lookalike = f"{SEALED_PREFIX}t:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        plain = note(lookalike, tenant_id=uuid4())
        sealed = await seal(plain, keys, None)
        assert sealed.payload.text != lookalike
        assert await unseal(sealed, keys, None) == plain

    run(check())


def test_an_event_with_no_personal_field_is_left_alone() -> None:
    from .contracts import ping

    class NoKeys(MemoryDataKeys):
        async def for_sealing(self, *args: Any, **kwargs: Any) -> bytes | None:
            raise AssertionError("no key is needed for an event with nothing to seal")

    event = ping(1)
    assert run(seal(event, NoKeys(), None)) is event


def test_an_unreachable_key_source_is_an_error_not_an_erasure() -> None:
    class Down(MemoryDataKeys):
        async def for_opening(self, *args: Any, **kwargs: Any) -> bytes | None:
            raise KeysUnavailable("tenancy unreachable")

    async def check() -> None:
        keys = Down()
        sealed = await seal(note("Ada", tenant_id=uuid4()), keys, None)
        with pytest.raises(KeysUnavailable):
            await unseal(sealed, keys, None)

    run(check())
