"""A CustomResourceDefinition's openAPIV3Schema as a JSON Schema that rejects unknown fields.

    python deploy/helm/crd_schema.py keda.sh_scaledobjects.yaml scaledobject.json

Used by deploy/helm/install-tools.sh so tests/test_helm.py can validate rendered KEDA
ScaledObjects offline with the `jsonschema` package. The conversion:

- one JSON Schema per served version, under `versions` (keyed by apiVersion);
- `x-kubernetes-int-or-string: true` becomes "integer or string";
- an object that lists `properties` gets `additionalProperties: false` (unless it keeps
  unknown fields, `x-kubernetes-preserve-unknown-fields: true`, or already says what it
  allows): the API server's strict field validation refuses unknown fields too, and a typo
  in a template must fail here rather than be pruned silently in the cluster.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items()}
    if out.get("x-kubernetes-int-or-string") is True and "type" not in out:
        out["type"] = ["integer", "string"]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and out.get("x-kubernetes-preserve-unknown-fields") is not True
    ):
        out["additionalProperties"] = False
    return out


def convert(crd: dict[str, Any]) -> dict[str, Any]:
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    versions: dict[str, Any] = {}
    for version in crd["spec"]["versions"]:
        if not version.get("served", False):
            continue
        schema = to_json_schema(version["schema"]["openAPIV3Schema"])
        # metadata is `type: object` in a CRD: the API server checks it, not the schema.
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        schema["title"] = f"{kind} {group}/{version['name']}"
        versions[f"{group}/{version['name']}"] = schema
    if not versions:
        raise SystemExit(f"{kind}: the CRD serves no version")
    return {"kind": kind, "versions": versions}


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: crd_schema.py CRD.yaml OUT.json")
    source, target = (Path(a) for a in argv)
    crd = yaml.safe_load(source.read_text())
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise SystemExit(f"{source}: not a CustomResourceDefinition")
    target.write_text(json.dumps(convert(crd), indent=1, sort_keys=True) + "\n")
    print(f"{source.name} -> {target}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
