"""The catalog is code; its published documents are the contract."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tenantry_events.catalog import Catalog, EventType, field_type, load_all, struct_in
from tenantry_events.compat import breaking_changes
from tenantry_events.docs import asyncapi_document

REPO = Path(__file__).resolve().parents[3]
PUBLISHED = REPO / "docs" / "events" / "schemas"


def published_types() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in PUBLISHED.glob("*.json"))


def test_every_catalogued_type_is_published() -> None:
    """`make docs` was run after adding an event type (its schema is committed)."""
    missing = [
        e.name
        for e in load_all()
        if not e.name.startswith("test.") and not (PUBLISHED / f"{e.name}.json").exists()
    ]
    assert missing == [], f"run `make docs`: no published schema for {missing}"


@pytest.mark.parametrize("name", published_types())
def test_no_change_breaks_a_published_schema(name: str) -> None:
    catalog = load_all()
    assert name in catalog, f"{name} was published and must not disappear"
    published = json.loads((PUBLISHED / f"{name}.json").read_text())
    assert published["x-version"] == catalog.by_name(name).version
    assert breaking_changes(published, catalog.json_schema(name)) == []


def schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


STR = {"type": "string"}
INT = {"type": "integer"}


@pytest.mark.parametrize(
    ("old", "new", "breaking"),
    [
        (schema({"a": STR}, ["a"]), schema({"a": STR, "b": INT}, ["a"]), False),  # added optional
        (schema({"a": STR}, []), schema({"a": STR}, ["a"]), False),  # now required
        (schema({"a": STR, "b": INT}, ["a"]), schema({"a": STR}, ["a"]), True),  # removed
        (schema({"a": STR}, ["a"]), schema({"a": INT}, ["a"]), True),  # type changed
        (schema({"a": STR}, ["a"]), schema({"a": {"anyOf": [STR, {"type": "null"}]}}, ["a"]), True),
        (schema({"s": {"enum": ["x", "y"]}}, []), schema({"s": {"enum": ["x"]}}, []), False),
        (schema({"s": {"enum": ["x"]}}, []), schema({"s": {"enum": ["x", "z"]}}, []), True),
    ],
)
def test_compatibility_rules(old: dict[str, Any], new: dict[str, Any], breaking: bool) -> None:
    assert bool(breaking_changes(old, new)) is breaking


def test_asyncapi_document_has_a_channel_per_event_type() -> None:
    doc = asyncapi_document(load_all())
    assert doc["asyncapi"] == "3.0.0"
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {e.name for e in load_all() if not e.name.startswith("test.")} <= addresses


# ---------------------------------------------------------------- personal fields

# Field names that always hold personal data wherever a payload has them: each must be
# declared `personal` (a new payload with one fails here until it is).
PERSONAL_NAMES = {"email", "owner_email", "user_name", "first_name", "last_name", "ip"}


def leaf_paths(payload: type[msgspec.Struct], prefix: str = "") -> list[str]:
    paths = []
    for name in payload.__struct_fields__:
        nested = struct_in(typing.get_type_hints(payload)[name])
        path = f"{prefix}{name}"
        paths += leaf_paths(nested, f"{path}.") if nested is not None else [path]
    return paths


def test_every_field_named_as_personal_data_is_declared_personal() -> None:
    undeclared = [
        f"{e.name}: {path}"
        for e in load_all()
        for path in leaf_paths(e.payload)
        if path.rsplit(".", 1)[-1] in PERSONAL_NAMES and path not in e.personal
    ]
    assert undeclared == []


class Inner(msgspec.Struct):
    email: str


class Outer(msgspec.Struct):
    who: Inner | None


def test_a_personal_path_must_name_a_field_of_the_payload() -> None:
    assert field_type(Outer, "who.email") is str
    for wrong in ("email", "who.name", "who.email.x"):
        with pytest.raises(ValueError, match=f"Outer has no field '{re.escape(wrong)}'"):
            field_type(Outer, wrong)
    catalog = Catalog()
    with pytest.raises(ValueError, match=r"no field 'who\.phone'"):
        catalog.register(
            EventType(
                name="test.outer",
                payload=Outer,
                owner="tests",
                public=False,
                version=1,
                description="",
                personal=("who.phone",),
            )
        )


@pytest.mark.parametrize("name", published_types())
def test_published_schemas_name_the_personal_fields(name: str) -> None:
    """`make docs` was run after declaring personal fields (x-personal is published)."""
    published = json.loads((PUBLISHED / f"{name}.json").read_text())
    assert published.get("x-personal", []) == list(load_all().by_name(name).personal)
