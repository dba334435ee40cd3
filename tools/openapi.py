"""One OpenAPI 3.1 document for the whole suite, merged from each service's own
(`make docs` writes docs/openapi.json).

Paths never collide (each service owns its resources under /v1); component schemas that
two services name alike are kept apart by prefixing the later one with its service.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from tenantry_platform.settings import ServiceSettings
from tenantry_service.app import ServiceSpec, create_app
from tenantry_service.runtime import Runtime

SERVICES = ("tenancy", "identity", "provisioning", "webhooks", "ratelimit")
SHARED_PATHS = frozenset({"/v1/whoami"})  # the app factory's own routes, in every service


def service_spec(name: str) -> ServiceSpec:
    spec: ServiceSpec = importlib.import_module(f"tenantry_{name}.app").SPEC
    return spec


def service_document(spec: ServiceSpec) -> dict[str, Any]:
    """The service's OpenAPI document, built without connecting to anything."""
    settings = ServiceSettings(
        database_url="postgresql://docs@127.0.0.1/docs",
        kafka_bootstrap="docs",
        service_urls="identity=http://127.0.0.1:1",
    )
    runtime = Runtime.build(spec.name, settings)
    document: dict[str, Any] = create_app(spec, runtime).openapi_schema.to_schema()
    return document


def _rename_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                name = value.rsplit("/", 1)[-1]
                out[key] = f"#/components/schemas/{renames.get(name, name)}"
            else:
                out[key] = _rename_refs(value, renames)
        return out
    if isinstance(node, list):
        return [_rename_refs(v, renames) for v in node]
    return node


def merged_document(services: tuple[str, ...] = SERVICES) -> dict[str, Any]:
    merged: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Tenantry",
            "version": "1.0.0",
            "description": "Every public route of the Tenantry suite. Errors are RFC 9457 "
            "problem+json with types under https://tenantry.dev/problems/.",
        },
        "paths": {},
        "components": {"schemas": {}, "securitySchemes": {}},
        "security": [],
        "tags": [],
    }
    for name in services:
        doc = service_document(service_spec(name))
        schemas: dict[str, Any] = doc.get("components", {}).get("schemas", {})
        # Every service signs in the same way (api_docs.py): one scheme, one default.
        merged["components"]["securitySchemes"].update(
            doc.get("components", {}).get("securitySchemes", {})
        )
        merged["security"] = doc.get("security", [])
        renames = {
            s: f"{name}.{s}"
            for s, body in schemas.items()
            if s in merged["components"]["schemas"] and merged["components"]["schemas"][s] != body
        }
        for schema_name, body in schemas.items():
            merged["components"]["schemas"][renames.get(schema_name, schema_name)] = _rename_refs(
                body, renames
            )
        for path, item in doc.get("paths", {}).items():
            item = _rename_refs(item, renames)
            if path in merged["paths"]:
                # Routes every service answers alike (/v1/whoami) appear once.
                if path not in SHARED_PATHS:
                    raise ValueError(f"two services serve {path}")
                continue
            for operation in item.values():
                if isinstance(operation, dict):
                    operation["tags"] = [name, *operation.get("tags", [])]
                    operation["x-service"] = name
            merged["paths"][path] = item
        merged["tags"].append({"name": name, "description": doc["info"].get("description", "")})
    return merged


def _plain(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot write {type(value).__name__} into the OpenAPI document")


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, default=_plain) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/openapi.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(merged_document()))
    print(args.out)


if __name__ == "__main__":
    main()
