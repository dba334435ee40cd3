"""The event catalog: every event type declared once, with its payload, owner and visibility.

The catalog is the single source for topic names (one topic per event type), for the
JSON Schemas and the AsyncAPI document under docs/events/, and for decoding: a consumer
looks the payload type up here by the CloudEvents `type`.

It also says which payload fields are personal data (`personal`: dotted paths such as
`user.email`), declared once here and shown in the published schemas as `x-personal`: the
fields a tenant's data key is to encrypt so that destroying the key erases them from every
retained copy (crypto-shredding, ../shared/DESIGN.md "Data lifecycle"). Events about one
person also name the field that says who (`person`, a UUID: the account id, which is also the
SCIM user's id): their personal fields are sealed with that person's subject key as well, so
erasing the person (Art. 17) erases them in a live tenant (sealing.py).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import msgspec

PayloadT = TypeVar("PayloadT", bound=type[msgspec.Struct])


@dataclass(frozen=True, slots=True)
class EventType:
    """One kind of event. `name` is both the CloudEvents type and the Kafka topic."""

    name: str
    payload: type[msgspec.Struct]
    owner: str
    public: bool
    version: int
    description: str
    personal: tuple[str, ...] = ()  # dotted paths of the payload's personal fields
    person: str | None = None  # dotted path of the UUID of the person the event is about
    # Opt-in public events reach a webhook endpoint only when it names them in its filter:
    # an endpoint that takes "every event" does not get them (audit.recorded doubles the
    # traffic of every action, so a customer asks for it).
    opt_in: bool = False

    @property
    def topic(self) -> str:
        return self.name


def field_type(payload: type[msgspec.Struct], path: str) -> Any:
    """The type of the payload field at a dotted path (through nested Structs, optional or
    not); ValueError when the path names no field."""
    current: Any = payload
    for part in path.split("."):
        struct = struct_in(current)
        hints = typing.get_type_hints(struct) if struct is not None else {}
        if part not in hints or part not in getattr(struct, "__struct_fields__", ()):
            raise ValueError(f"{payload.__name__} has no field {path!r}")
        current = hints[part]
    return current


def struct_in(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct type an annotation is, or holds as `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
                return arg
    return None


class UnknownEventType(LookupError):
    """An event whose type the catalog does not declare."""


class Catalog:
    def __init__(self) -> None:
        self._by_name: dict[str, EventType] = {}
        self._by_payload: dict[type[msgspec.Struct], EventType] = {}

    def register(self, event_type: EventType) -> None:
        if event_type.name in self._by_name:
            raise ValueError(f"event type {event_type.name!r} is declared twice")
        if event_type.payload in self._by_payload:
            raise ValueError(f"payload {event_type.payload.__name__} is used by two event types")
        for path in event_type.personal:
            # Sealing puts a string in its place, so a personal field is text.
            if field_type(event_type.payload, path) not in (str, str | None):
                raise ValueError(f"personal field {event_type.name} {path} is not a string")
        person = event_type.person
        if person is not None and field_type(event_type.payload, person) not in (UUID, UUID | None):
            raise ValueError(f"person field {event_type.name} {person} is not a UUID")
        self._by_name[event_type.name] = event_type
        self._by_payload[event_type.payload] = event_type

    def by_name(self, name: str) -> EventType:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownEventType(name) from None

    def by_payload(self, payload_type: type[msgspec.Struct]) -> EventType:
        try:
            return self._by_payload[payload_type]
        except KeyError:
            raise UnknownEventType(payload_type.__name__) from None

    def __iter__(self) -> Iterator[EventType]:
        return iter(sorted(self._by_name.values(), key=lambda e: e.name))

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def topics(self) -> list[str]:
        return [e.topic for e in self]

    def json_schema(self, name: str) -> dict[str, Any]:
        """JSON Schema (2020-12) of one event type's payload, components inlined under $defs."""
        event_type = self.by_name(name)
        (schema,), components = msgspec.json.schema_components(
            [event_type.payload], ref_template="#/$defs/{name}"
        )
        document: dict[str, Any] = {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": f"https://tenantry.dev/events/{event_type.name}/v{event_type.version}.json",
            "title": event_type.name,
            "description": event_type.description,
            "x-owner": event_type.owner,
            "x-public": event_type.public,
            "x-version": event_type.version,
            **({"x-personal": list(event_type.personal)} if event_type.personal else {}),
            **({"x-person": event_type.person} if event_type.person else {}),
            **schema,
        }
        if components:
            document["$defs"] = components
        return document


CATALOG = Catalog()


def event(
    name: str,
    *,
    owner: str,
    public: bool,
    version: int = 1,
    description: str = "",
    personal: tuple[str, ...] = (),
    person: str | None = None,
    opt_in: bool = False,
) -> Callable[[PayloadT], PayloadT]:
    """Class decorator that declares a payload Struct as the payload of event type `name`;
    `personal` names its fields that are personal data (dotted paths into nested Structs),
    `person` the UUID field of the person the event is about, if it is about one."""

    def declare(payload: PayloadT) -> PayloadT:
        CATALOG.register(
            EventType(
                name=name,
                payload=payload,
                owner=owner,
                public=public,
                version=version,
                description=description or (payload.__doc__ or "").strip(),
                personal=personal,
                person=person,
                opt_in=opt_in,
            )
        )
        return payload

    return declare


def dead_letter_topic(consumer_group: str) -> str:
    """Where a consumer group parks the messages it cannot process."""
    return f"dlt.{consumer_group}"


def load_all() -> Catalog:
    """Import every payload module so the catalog is complete, and return it."""
    from tenantry_events import payloads  # noqa: F401  (import registers the types)

    return CATALOG
