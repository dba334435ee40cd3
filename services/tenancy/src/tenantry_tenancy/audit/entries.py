"""The audit log's rules (pure): which events are audit entries, what an entry says, and
the hash chain that makes a tenant's log tamper-evident.

An audit entry is a view of one event the suite already emits (no second write path):
the event says what happened (its type is the action, its subject the target), and its
envelope says who did it (`Envelope.actor`, set by the request pipeline and carried by
consumers; tenantry_events.actors), from where, and in which request.

Each entry is kept as a *record*: canonical JSON (sorted keys, no spaces) of what it says,
with personal fields (the actor's IP and user agent, the payload's personal fields) in
their sealed form. Entries of one tenant form a chain:

    hash(n) = SHA-256( hash(n-1) || record(n) )        hash(0) = 32 zero bytes

so changing or deleting an entry changes every later hash, and a customer holding any
later hash (from an export, their SIEM, or `audit.recorded` webhooks) detects it. Erasing
a person or purging keys leaves the chain intact: the records hold ciphertext, and only
what it opens to becomes "[erased]" (docs/audit.md, "Verifying the chain").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Final, Literal

import msgspec

from tenantry_events.actors import Actor, ActorKind
from tenantry_events.envelope import Envelope

GENESIS: Final = bytes(32)
RECORD_VERSION: Final = 1
Outcome = Literal["success", "failure"]

# Events that are bookkeeping between services, not anyone's action: they would bury the
# actions in noise (apikey.used is one per key per flush), or repeat what an audited event
# already says (a purge's reports, an export's parts). audit.recorded is the log's own
# stream.
NOT_AUDITED: Final = frozenset(
    {
        "apikey.used",
        "usage.reported",
        "tenant.export_part",
        "tenant.purged_by",
        "subject.erased_by",
        "tenant.offboarding_reminder",
        "tenant.purged",
        "ratelimit.policies_changed",  # resolved from a plan or an override, each audited
        "audit.recorded",
    }
)
# Payload fields an entry leaves out: credential digests that services need to verify a
# key, but that a reader of the log has no use for (and should not be able to test
# guesses against).
REDACTED: Final = {"apikey.created": frozenset({"key_sha256"})}
# Events that record a refusal rather than a change.
FAILURES: Final = frozenset({"user.sign_in_failed"})
# Payload fields that name the account an anonymous request signed in as (a sign-in route
# has no principal: it learns who from the credentials it checks).
_SIGNED_IN_AS: Final = ("account_id",)


class AuditActor(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    kind: ActorKind
    id: str | None = None
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None


class AuditTarget(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    id: str


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What one entry says: the exact content of its link in the chain."""

    v: int
    seq: int
    event_id: str
    tenant_id: str
    region: str
    occurred_at: str  # ISO 8601, UTC, microseconds
    action: str
    outcome: Outcome
    actor: AuditActor
    target: AuditTarget
    details: dict[str, Any]  # the event's payload (personal fields sealed)


def is_audited(event_type: str) -> bool:
    return event_type not in NOT_AUDITED


def target_type(event_type: str) -> str:
    """The kind of thing an event is about: its type's first part ("sso.connection_changed"
    is about an "sso" thing, named by the event's subject). Specific where the first part
    is too broad."""
    return _TARGET_TYPES.get(event_type, event_type.split(".", 1)[0])


_TARGET_TYPES: Final = {
    "sso.connection_changed": "sso_connection",
    "sso.domain_changed": "sso_domain",
    "webhook.endpoint_changed": "webhook_endpoint",
    "webhook.endpoint_disabled": "webhook_endpoint",
    "webhook.messages_replayed": "webhook_endpoint",
    "webhook.message_expunged": "webhook_message",
    "user.signed_in": "account",
    "user.sign_in_failed": "account",
    "user.email_verified": "account",
    "user.jit_provisioned": "account",
    "user.sso_authenticated": "account",
    "account.verification_sent": "account",
    "sso.metadata_refreshed": "sso_connection",
    "session.started": "session",
    "session.refreshed": "session",
    "session.ended": "session",
    "apikey.created": "api_key",
    "apikey.revoked": "api_key",
    "tenant.agreement_accepted": "agreement",
    "tenant.export_link": "export_link",
    "tenant.export_requested": "export",
    "tenant.export_completed": "export",
    "tenant.export_failed": "export",
    "subject.erasure_requested": "person",
    "subject.erased": "person",
    "ratelimit.overrides_changed": "rate_policy",
    "tenant.limits_changed": "tenant",
}


def attributed(envelope: Envelope[Any]) -> Envelope[Any]:
    """The event with an anonymous actor named after the account it signed in as (a
    sign-in route has no principal), before its actor's IP is sealed: sealed with that
    person's key, it is erased with them."""
    actor: Actor | None = envelope.actor
    if actor is None or actor.kind != "anonymous":
        return envelope
    for field in _SIGNED_IN_AS:
        value = getattr(envelope.payload, field, None)
        if value is not None:
            named = msgspec.structs.replace(actor, kind="user", id=str(value))
            return msgspec.structs.replace(envelope, actor=named)
    return envelope


def actor_of(envelope: Envelope[Any]) -> AuditActor:
    """Who did it: the envelope's actor (`attributed`); the system when no request caused
    it (a schedule, a webhook endpoint failing)."""
    actor = attributed(envelope).actor
    if actor is None:
        return AuditActor(kind="system")
    return AuditActor(
        kind=actor.kind,
        id=actor.id,
        request_id=actor.request_id,
        ip=actor.ip,
        user_agent=actor.user_agent,
    )


def record_of(sealed: Envelope[Any], seq: int) -> AuditRecord:
    """The entry for an event whose personal fields are sealed (its stored form)."""
    return AuditRecord(
        v=RECORD_VERSION,
        seq=seq,
        event_id=str(sealed.id),
        tenant_id=str(sealed.tenant_id),
        region=sealed.region,
        occurred_at=iso(sealed.occurred_at),
        action=sealed.type,
        outcome="failure" if sealed.type in FAILURES else "success",
        actor=actor_of(sealed),
        target=AuditTarget(type=target_type(sealed.type), id=sealed.subject),
        details={
            k: v
            for k, v in msgspec.to_builtins(sealed.payload).items()
            if k not in REDACTED.get(sealed.type, ())
        },
    )


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def canonical(record: AuditRecord) -> bytes:
    """The bytes hashed into the chain: JSON with sorted keys and no spaces (what a
    customer's `json.dumps(obj, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False)` gives for the record as served)."""
    return _canonical_json(msgspec.to_builtins(record))


def _canonical_json(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def next_hash(prev: bytes, record: bytes) -> bytes:
    return hashlib.sha256(prev + record).digest()


class ChainBreak(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    reason: str


def verify_chain(
    links: Iterable[tuple[int, bytes, bytes, bytes]],
    anchor: bytes,
    head: tuple[int, bytes] | None = None,
) -> ChainBreak | None:
    """Check (seq, record, prev_hash, hash) links in order, the first link's prev_hash
    against `anchor` (GENESIS, or the hash of the last entry retention removed), and the
    last link against `head` (seq, hash) when given: a chain cannot show on its own that
    its newest entries were cut off. The first break found, or None when all holds."""
    expected_prev = anchor
    expected_seq: int | None = None
    for seq, record, prev, digest in links:
        if expected_seq is not None and seq != expected_seq:
            return ChainBreak(seq=seq, reason=f"entry {expected_seq} is missing")
        if prev != expected_prev:
            return ChainBreak(seq=seq, reason="prev_hash is not the previous entry's hash")
        if next_hash(prev, record) != digest:
            return ChainBreak(seq=seq, reason="hash does not match the record")
        if _seq_in(record) != seq:
            return ChainBreak(seq=seq, reason="the record names another position")
        expected_prev, expected_seq = digest, seq + 1
    if head is not None:
        head_seq, head_hash = head
        ends_early = expected_seq is not None and expected_seq != head_seq + 1
        if ends_early or expected_prev != head_hash:
            return ChainBreak(seq=head_seq, reason="the log ends before the head it should reach")
    return None


def _seq_in(record: bytes) -> int | None:
    try:
        value = msgspec.json.decode(record).get("seq")
    except (msgspec.DecodeError, AttributeError):
        return None
    return value if isinstance(value, int) else None
