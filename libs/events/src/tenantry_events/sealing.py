"""Sealing: the personal fields of event payloads, encrypted where events are kept.

The catalog names each event type's personal fields (`EventType.personal`, dotted paths
through nested Structs) and, for events about one person, the field that says who
(`EventType.person`, a UUID: the account id, which is also the SCIM user's id). Before an
event is written to the event store, the outbox and so Kafka, `seal` replaces each personal
field with a sealed string; readers (aggregate folds, consumers) `unseal` it back. Destroy
the key and every retained copy of the field reads as `ERASED` (crypto-shredding, see
../shared/DESIGN.md "Data lifecycle"), while the event still decodes to its payload type.

A sealed value is one string, so a payload's types do not change:

    tnty:sealed:v1:<key>:<base64url(nonce | ciphertext | tag)>

`<key>` names the key it opens with: `t` the tenant's data key, `s.<uuid>` the tenant's data
key and that person's subject key together (HKDF-SHA256 over both, so destroying either
erases it). AES-256-GCM, a random 96-bit nonce; the associated data binds the tenant id, the
event id, the field's path and `<key>`, so a sealed value copied into another event or
field does not open. Pure: key material comes only through the `DataKeys` protocol.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol, TypeVar
from uuid import UUID

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tenantry_events.actors import ACTOR_PERSONAL, Actor
from tenantry_events.catalog import CATALOG, Catalog, EventType
from tenantry_events.envelope import Envelope

SEALED_PREFIX: Final = "tnty:sealed:v1:"
ERASED: Final = "[erased]"  # what a personal field reads as once its key is destroyed
KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12
_TENANT_REF: Final = "t"
_SUBJECT_REF: Final = "s."

Tx = TypeVar("Tx", contravariant=True)


class KeysUnavailable(Exception):
    """The key source cannot answer now (tenancy's key API unreachable, a timeout). Not an
    answer about the key: the caller retries later (a consumer redelivers the record, a
    request fails with 503). Never raised for a destroyed key."""


class UnreadableSeal(ValueError):
    """A sealed value that does not open although its keys exist: altered, truncated, or
    moved from another event or field. Damaged data, not erasure."""


class DataKeys(Protocol[Tx]):
    """Where sealing gets its key material: each tenant's data key and, inside a tenant,
    each person's subject key. Both are 32 random bytes, generated once, never derived
    from anything, never sent in an event or written to an append-only log.

    `subject_id` None asks for the tenant's data key; a subject id asks for that person's
    subject key in that tenant, and only that key (this module combines it with the
    tenant's data key itself: callers never combine keys). A subject id is the person's
    account id (which is also their SCIM user id); it is not a secret.

    Every call runs inside the caller's transaction `tx` (an asyncpg connection in the
    services, `MemoryTx` in unit tests), so an implementation may read or cache a wrapped
    copy in the service's own database in the same unit of work. Calls are frequent (one
    or two per event written or read): an implementation caches unwrapped keys in memory
    for a short time, and forgets a key as soon as it learns it was destroyed.
    """

    async def for_sealing(
        self, tx: Tx, tenant_id: UUID, subject_id: UUID | None = None
    ) -> bytes | None:
        """The key to seal with: 32 bytes, created (and persisted before returning) when
        the tenant, or that subject of the tenant, has none yet. None when that key was
        destroyed (the tenant purged, or the person erased): a destroyed key is never
        created again, and the fields it would seal are written as `ERASED`.
        Raises `KeysUnavailable` when the key source cannot answer."""
        ...

    async def for_opening(
        self, tx: Tx, tenant_id: UUID, subject_id: UUID | None = None
    ) -> bytes | None:
        """The key to open with: the same 32 bytes `for_sealing` gave, or None when it was
        destroyed or never existed (nothing is created here). None makes the fields it
        sealed read as `ERASED`. Raises `KeysUnavailable` when the key source cannot
        answer (never None for "unreachable": None means the data is gone)."""
        ...


async def seal(
    envelope: Envelope[Any], keys: DataKeys[Tx], tx: Tx, *, catalog: Catalog = CATALOG
) -> Envelope[Any]:
    """The envelope with each personal field of its payload, and its actor's IP and user
    agent, sealed. Idempotent: a field already sealed for this event and place stays as it
    is; `None` stays `None`."""
    event_type = catalog.by_name(envelope.type)
    fields = _personal_strings(event_type, envelope.payload)
    if fields:
        subject_id = person_of(event_type, envelope.payload)
        envelope = _with_fields(envelope, await _sealed(envelope, fields, subject_id, keys, tx))
    actor = envelope.actor
    actor_fields = _actor_strings(actor)
    if actor is not None and actor_fields:
        sealed = await _sealed(envelope, actor_fields, actor.person(), keys, tx)
        envelope = _with_actor_fields(envelope, sealed)
    return envelope


async def _sealed(
    envelope: Envelope[Any],
    fields: dict[str, str],
    subject_id: UUID | None,
    keys: DataKeys[Tx],
    tx: Tx,
) -> dict[str, str]:
    """The sealed value of each field that is not sealed yet (`ERASED` for all of them
    when a key they need was destroyed)."""
    ref = _key_ref(subject_id)
    tenant_key = await keys.for_sealing(tx, envelope.tenant_id)
    subject_key = await keys.for_sealing(tx, envelope.tenant_id, subject_id) if subject_id else None
    if tenant_key is None or (subject_id is not None and subject_key is None):
        return dict.fromkeys(fields, ERASED)
    cipher = _cipher(tenant_key, subject_id, subject_key)
    sealed: dict[str, str] = {}
    for path, value in fields.items():
        if value.startswith(SEALED_PREFIX) and _opens(cipher, envelope, path, ref, value):
            continue  # sealed already (a text that only looks sealed is sealed like any)
        nonce = os.urandom(_NONCE_BYTES)
        box = cipher.encrypt(nonce, value.encode(), _associated(envelope, path, ref))
        sealed[path] = f"{SEALED_PREFIX}{ref}:{_b64(nonce + box)}"
    return sealed


async def unseal(
    envelope: Envelope[Any], keys: DataKeys[Tx], tx: Tx, *, catalog: Catalog = CATALOG
) -> Envelope[Any]:
    """The envelope with each sealed personal field (its payload's and its actor's) opened,
    or `ERASED` where its key was destroyed. Plaintext (events recorded before sealing)
    passes through. A sealed value that does not open with existing keys raises
    `UnreadableSeal`."""
    event_type = catalog.by_name(envelope.type)
    payload_fields = _personal_strings(event_type, envelope.payload)
    envelope = _with_fields(envelope, await _opened(envelope, payload_fields, keys, tx))
    actor_fields = _actor_strings(envelope.actor)
    return _with_actor_fields(envelope, await _opened(envelope, actor_fields, keys, tx))


async def _opened(
    envelope: Envelope[Any], fields: dict[str, str], keys: DataKeys[Tx], tx: Tx
) -> dict[str, str]:
    ciphers: dict[str, AESGCM | None] = {}  # one key lookup per key named in the event
    opened: dict[str, str] = {}
    for path, value in fields.items():
        if not value.startswith(SEALED_PREFIX):
            continue
        ref, box = _parse(value)
        if ref not in ciphers:
            ciphers[ref] = await _opening_cipher(keys, tx, envelope.tenant_id, ref)
        cipher = ciphers[ref]
        opened[path] = ERASED if cipher is None else _open(cipher, envelope, path, ref, box)
    return opened


async def seal_all(
    events: Sequence[Envelope[Any]], keys: DataKeys[Tx] | None, tx: Tx
) -> list[Envelope[Any]]:
    """`seal` each event; with no keys (a store built without them) they stay as they are."""
    return await _each(seal, events, keys, tx)


async def unseal_all(
    events: Sequence[Envelope[Any]], keys: DataKeys[Tx] | None, tx: Tx
) -> list[Envelope[Any]]:
    """`unseal` each event; with no keys they stay as they are (sealed fields unread)."""
    return await _each(unseal, events, keys, tx)


async def _each(
    step: Callable[[Envelope[Any], DataKeys[Tx], Tx], Awaitable[Envelope[Any]]],
    events: Sequence[Envelope[Any]],
    keys: DataKeys[Tx] | None,
    tx: Tx,
) -> list[Envelope[Any]]:
    if keys is None:
        return list(events)
    return [await step(e, keys, tx) for e in events]


def person_of(event_type: EventType, payload: msgspec.Struct) -> UUID | None:
    """The person an event is about (its `person` field), or None: sealed with the tenant's
    data key alone."""
    if event_type.person is None:
        return None
    value = _get(payload, event_type.person)
    return value if isinstance(value, UUID) else None


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and value.startswith(SEALED_PREFIX)


# --------------------------------------------------------------------------- internals


def _personal_strings(event_type: EventType, payload: msgspec.Struct) -> dict[str, str]:
    """The personal fields that hold a value (a missing parent Struct or None is skipped)."""
    found: dict[str, str] = {}
    for path in event_type.personal:
        value = _get(payload, path)
        if isinstance(value, str):
            found[path] = value
    return found


def _actor_strings(actor: Actor | None) -> dict[str, str]:
    """The actor's personal fields that hold a value, by path in the envelope ("actor.ip"),
    which is also their associated data: a sealed IP does not open as a payload field."""
    if actor is None:
        return {}
    found: dict[str, str] = {}
    for name in ACTOR_PERSONAL:
        value = getattr(actor, name)
        if isinstance(value, str):
            found[f"actor.{name}"] = value
    return found


def _with_actor_fields(envelope: Envelope[Any], values: dict[str, str]) -> Envelope[Any]:
    if not values or envelope.actor is None:
        return envelope
    actor = msgspec.structs.replace(
        envelope.actor, **{path.removeprefix("actor."): v for path, v in values.items()}
    )
    return msgspec.structs.replace(envelope, actor=actor)


def _get(payload: msgspec.Struct, path: str) -> object:
    current: object = payload
    for part in path.split("."):
        if current is None:
            return None
        current = getattr(current, part)
    return current


def _with_fields(envelope: Envelope[Any], values: dict[str, str]) -> Envelope[Any]:
    if not values:
        return envelope
    payload = envelope.payload
    for path, value in values.items():
        payload = _replaced(payload, path.split("."), value)
    return msgspec.structs.replace(envelope, payload=payload)


def _replaced(struct: msgspec.Struct, parts: list[str], value: str) -> msgspec.Struct:
    head, rest = parts[0], parts[1:]
    new = value if not rest else _replaced(getattr(struct, head), rest, value)
    return msgspec.structs.replace(struct, **{head: new})


def _key_ref(subject_id: UUID | None) -> str:
    return _TENANT_REF if subject_id is None else f"{_SUBJECT_REF}{subject_id}"


def _subject_of_ref(ref: str) -> UUID | None:
    if ref == _TENANT_REF:
        return None
    if ref.startswith(_SUBJECT_REF):
        try:
            return UUID(ref[len(_SUBJECT_REF) :])
        except ValueError:
            pass
    raise UnreadableSeal(f"unknown key reference {ref!r}")


@functools.lru_cache(maxsize=4096)
def _cipher(tenant_key: bytes, subject_id: UUID | None, subject_key: bytes | None) -> AESGCM:
    """The field cipher of a key pair, derived once: HKDF and the AES key schedule cost
    four times the decryption of a short field. Keyed by the key bytes themselves, so a
    destroyed key (which DataKeys no longer returns) is never reached again; evicted by use."""
    return AESGCM(_field_key(tenant_key, subject_id, subject_key))


def _field_key(tenant_key: bytes, subject_id: UUID | None, subject_key: bytes | None) -> bytes:
    """The AES key of a field: HKDF-SHA256 over the tenant's data key, and the subject key
    too for an event about a person (distinct `info` per subject and per kind)."""
    for key in (tenant_key, subject_key):
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes, not {len(key)}")
    if subject_id is None:
        material, info = tenant_key, b"tnty:sealed:v1:t"
    else:
        assert subject_key is not None
        material, info = tenant_key + subject_key, b"tnty:sealed:v1:s." + subject_id.bytes
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(material)


async def _opening_cipher(keys: DataKeys[Tx], tx: Tx, tenant_id: UUID, ref: str) -> AESGCM | None:
    subject_id = _subject_of_ref(ref)
    tenant_key = await keys.for_opening(tx, tenant_id)
    if tenant_key is None:
        return None
    subject_key = None
    if subject_id is not None:
        subject_key = await keys.for_opening(tx, tenant_id, subject_id)
        if subject_key is None:
            return None
    return _cipher(tenant_key, subject_id, subject_key)


def _associated(envelope: Envelope[Any], path: str, ref: str) -> bytes:
    return f"{envelope.tenant_id}|{envelope.id}|{path}|{ref}".encode()


def _parse(value: str) -> tuple[str, bytes]:
    ref, sep, encoded = value[len(SEALED_PREFIX) :].rpartition(":")
    try:
        box = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError) as exc:
        raise UnreadableSeal("a sealed value that is not base64url") from exc
    if not sep or len(box) < _NONCE_BYTES + 16:
        raise UnreadableSeal("a sealed value too short to be one")
    return ref, box


def _open(cipher: AESGCM, envelope: Envelope[Any], path: str, ref: str, box: bytes) -> str:
    try:
        plain = cipher.decrypt(
            box[:_NONCE_BYTES], box[_NONCE_BYTES:], _associated(envelope, path, ref)
        )
    except InvalidTag:
        raise UnreadableSeal(
            f"{path} of event {envelope.id} does not open (altered or moved)"
        ) from None
    return plain.decode()


def _opens(cipher: AESGCM, envelope: Envelope[Any], path: str, ref: str, value: str) -> bool:
    try:
        found_ref, box = _parse(value)
        if found_ref != ref:
            return False
        _open(cipher, envelope, path, ref, box)
    except UnreadableSeal:
        return False
    return True


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
