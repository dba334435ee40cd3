from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.openapi import (
    SERVICES,
    merged_document,
    service_document,
    service_spec,
    to_json,
)

REPO = Path(__file__).resolve().parents[1]


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


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def test_every_operation_says_how_to_authenticate() -> None:
    merged = merged_document()
    scheme = merged["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    public = {
        (path, method)
        for path, method, op in operations(merged)
        if op["security"] == []  # KeyError: an operation without a `security` entry
    }
    # Sign-in and the anonymous SSO entry points are public; reading tenants is not.
    assert ("/v1/sessions", "post") in public
    assert ("/v1/tenants", "get") not in public
    for path, method, op in operations(merged):
        if (path, method) not in public:
            assert op["security"] == [{"bearer": []}], (path, method)


def test_every_operation_documents_the_pipelines_errors_as_problems() -> None:
    merged = merged_document()
    assert merged["components"]["schemas"]["Problem"]["required"] == ["type", "title", "status"]
    for path, method, op in operations(merged):
        responses = op["responses"]
        expected = {"400", "414", "503"}
        if op["security"]:
            expected |= {"401", "403", "429"}
        if "{" in path:
            expected.add("404")
        if method in ("post", "put", "patch"):
            expected |= {"409", "413", "415", "422"}
        assert expected <= set(responses), (path, method, expected - set(responses))
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}, (path, method, status)
