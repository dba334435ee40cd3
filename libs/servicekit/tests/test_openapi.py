from __future__ import annotations

import json
from pathlib import Path

from tenantry_servicekit.openapi import (
    SERVICES,
    merged_document,
    service_document,
    service_spec,
    to_json,
)

REPO = Path(__file__).resolve().parents[3]


def test_each_service_publishes_openapi_31_under_v1() -> None:
    for name in SERVICES:
        doc = service_document(service_spec(name))
        assert doc["openapi"].startswith("3.1")
        # Everything public is versioned under /v1; only discovery documents and the SSO
        # protocol endpoints (URLs registered at identity providers) sit at the root.
        paths = [p for p in doc.get("paths", {}) if not p.startswith(("/.well-known/", "/sso/"))]
        assert all(path.startswith("/v1/") for path in paths), name


def test_merged_document_holds_every_service_route_and_is_committed() -> None:
    merged = merged_document()
    tenancy = service_document(service_spec("tenancy"))
    assert set(tenancy["paths"]) <= set(merged["paths"])
    assert {t["name"] for t in merged["tags"]} == set(SERVICES)
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert committed == json.loads(to_json(merged)), "run `make docs`"
