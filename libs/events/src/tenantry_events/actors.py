"""Who caused an event: the actor a request (or the event a consumer handles) acted as.

The HTTP pipeline sets the actor for the request (`acting_as`); `new_event` copies it into
every envelope the request produces, and a consumer continues the actor of the event it
handles, the way it continues the trace. So an account created by identity's consumer of
`user.provisioned` names the SCIM client that pushed the user. The audit log is built from
these envelopes (tenantry_tenancy.audit): no second write path.

`ip` and `user_agent` are personal data. They are sealed with the event's personal fields
(tenantry_events.sealing): with the person's subject key when the actor is a user of the
tenant, otherwise with the tenant's data key, so erasing the person or purging the tenant
erases them everywhere events are kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Final, Literal
from uuid import UUID

import msgspec

ActorKind = Literal["user", "api_key", "scim", "sso", "operator", "system", "anonymous"]
ACTOR_KINDS: Final[tuple[ActorKind, ...]] = (
    "user",
    "api_key",
    "scim",
    "sso",
    "operator",
    "system",
    "anonymous",
)
# The actor's personal fields, sealed like a payload's (the paths name the envelope's field).
ACTOR_PERSONAL: Final = ("ip", "user_agent")
_MAX_USER_AGENT: Final = 512  # a header is client input: keep what identifies the client


class Actor(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    kind: ActorKind
    id: str | None = None  # account id (user, sso, operator), API key id (api_key, scim)
    request_id: str | None = None
    ip: str | None = None
    user_agent: str | None = None

    def person(self) -> UUID | None:
        """The tenant's person this actor is (a user), whose subject key seals `ip` and
        `user_agent`; None for keys, operators and the system (the tenant's key)."""
        if self.kind not in ("user", "sso") or self.id is None:
            return None
        try:
            return UUID(self.id)
        except ValueError:
            return None


def request_actor(
    kind: ActorKind,
    actor_id: str | None,
    *,
    request_id: str | None,
    ip: str | None,
    user_agent: str | None,
) -> Actor:
    return Actor(
        kind=kind,
        id=actor_id,
        request_id=request_id,
        ip=ip or None,
        user_agent=(user_agent or "")[:_MAX_USER_AGENT] or None,
    )


_current: ContextVar[Actor | None] = ContextVar("tenantry_actor", default=None)


def current_actor() -> Actor | None:
    return _current.get()


@contextmanager
def acting_as(actor: Actor | None) -> Iterator[None]:
    """Events made inside the block name `actor` (None: the system)."""
    token = _current.set(actor)
    try:
        yield
    finally:
        _current.reset(token)


def identify(kind: ActorKind, actor_id: str) -> None:
    """Name the actor of the current request once a public route learns who it is: a
    sign-in route has no principal until it has checked the credentials. Only an anonymous
    actor is named (a principal the pipeline authenticated stays who it is); the events
    made after this in the request, and the IP sealed with them, are that person's."""
    actor = _current.get()
    if actor is not None and actor.kind == "anonymous":
        _current.set(msgspec.structs.replace(actor, kind=kind, id=actor_id))
