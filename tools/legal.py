"""The legal documents' generated parts (issue 19 §1; docs/legal/README.md).

    uv run python -m tools.legal            # writes docs/legal/annexes.md and the catalog
    uv run python -m tools.legal --check    # exit 1 when either is not what it would write

Annexes I to III of the DPA (and the SCCs') are generated from what is deployed, so they
cannot drift from it:
- the regions, their jurisdictions and the sub-processors per region, from the chart's
  region files (deploy/helm/values-<region>.yaml) over its defaults;
- the kinds of personal data each service holds, from each service's export sources (what
  a customer's export carries: a new kind of record there is a new line here);
- the technical and organisational measures, from MEASURES below, each naming the code
  or document that implements it (a path that no longer exists fails the generation).

The catalog (services/tenancy/.../legal/catalog.json) lists every version of every
document with its effective date and sha256, for `GET /v1/legal/documents`; the texts are
copied beside it (legal/texts/), for tenancy to render a tenant's DPA.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tenantry_identity.export import IDENTITY_EXPORTS
from tenantry_provisioning.export import PROVISIONING_EXPORTS
from tenantry_ratelimit.export import RATELIMIT_EXPORTS
from tenantry_service.export import ExportSource
from tenantry_tenancy.export_sources import TENANCY_EXPORTS
from tenantry_webhooks.export import WEBHOOKS_EXPORTS

REPO = Path(__file__).resolve().parent.parent
LEGAL = REPO / "docs" / "legal"
ANNEXES = LEGAL / "annexes.md"
PACKAGE = REPO / "services" / "tenancy" / "src" / "tenantry_tenancy" / "legal"
CATALOG = PACKAGE / "catalog.json"
# The texts tenancy renders per tenant (a released image has no docs/): copies.
TEXTS = PACKAGE / "texts"
CHART_VALUES = REPO / "deploy" / "helm" / "tenantry" / "values.yaml"
REGION_VALUES = sorted((REPO / "deploy" / "helm").glob("values-*.yaml"))
DOCUMENTS = ("dpa", "sccs", "tia")

# The EEA (EU, Iceland, Liechtenstein, Norway), and the countries with an adequacy decision
# under Art. 45 GDPR (the US: for importers certified under the EU-US Data Privacy
# Framework only, so it is not listed: an uncertified US importer needs the SCCs).
EEA = frozenset(
    {
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "HU",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
        "IS",
        "LI",
        "NO",
    }
)
ADEQUATE = frozenset(
    {
        "AD",
        "AR",
        "CA",
        "FO",
        "GG",
        "IL",
        "IM",
        "JP",
        "JE",
        "NZ",
        "KR",
        "CH",
        "GB",
        "UY",
    }
)
JURISDICTION_IN_EEA = frozenset({"EU", "EEA", *EEA})


@dataclass(frozen=True)
class Measure:
    area: str
    what: str
    evidence: tuple[str, ...]  # repository paths that implement or document it


MEASURES = (
    Measure(
        "Encryption in transit",
        "TLS on every public endpoint (the chart's Ingress), to PostgreSQL, Redis and the "
        "object store; webhook deliveries to HTTPS endpoints, signed (Standard Webhooks).",
        ("deploy/helm/tenantry/templates/ingress.yaml", "docs/deploy.md"),
    ),
    Measure(
        "Encryption at rest",
        "Secrets that must be read back (SSO client secrets and keys, webhook signing "
        "secrets, token signing keys) sealed with AES-256-GCM under the region's master key; "
        "passwords and API keys stored as hashes only; volumes and object storage encrypted "
        "by the hosting provider.",
        ("libs/credentials/src/tenantry_credentials/crypto.py", "docs/deploy.md"),
    ),
    Measure(
        "Crypto-shredding",
        "Personal fields of events sealed with a per-tenant and a per-person key; destroying "
        "the key erases every retained copy (event store, Kafka, backups).",
        ("docs/data-keys.md", "libs/events/src/tenantry_events/sealing.py"),
    ),
    Measure(
        "Tenant isolation",
        "Every query scoped to its tenant in code, and PostgreSQL row-level security as a "
        "second wall; a credential of one tenant is refused on another's resources.",
        ("libs/events/src/tenantry_events/pg.py", "libs/http/src/tenantry_http/auth.py"),
    ),
    Measure(
        "Data residency",
        "A tenant's personal data stays in its home region; only non-personal routing facts "
        "cross regions; checked by a test scanning every store of the other region.",
        ("docs/residency.md", "tests/test_residency_leaks.py"),
    ),
    Measure(
        "Access control",
        "Tenant users by role and verified email, API keys by scope and expiry, SSO (SAML, "
        "OIDC) and SCIM deprovisioning that cuts access everywhere; operators per region; "
        "internal APIs behind shared secrets, never published.",
        ("libs/http/src/tenantry_http/auth.py", "docs/sso.md"),
    ),
    Measure(
        "Availability and resilience",
        "Each service's writes and events committed together (transactional outbox), "
        "consumers idempotent (inbox), retries with backoff and circuit breakers, per-tenant "
        "rate limits and load shedding; tested by killing processes and the broker.",
        ("docs/architecture.md", "docs/runbooks/faults.md"),
    ),
    Measure(
        "Deletion and return",
        "Export of a tenant's or a person's data (machine-readable); offboarding with a grace "
        "period; purge of every service's rows and keys with a signed deletion certificate; "
        "erasure of one person.",
        ("docs/lifecycle.md",),
    ),
    Measure(
        "Logging and audit",
        "Structured logs with request ids, without secrets; the tenant's lifecycle history.",
        ("docs/architecture.md",),
    ),
    Measure(
        "Breach notification",
        "The processor notifies the customer without undue delay and within the hours the "
        "DPA states (clause 9), so the customer meets the 72 hours of Art. 33 GDPR.",
        ("docs/legal/dpa/2026-12-07.md",),
    ),
)

# What each service keeps of a tenant's people (from its export sources' schemas).
SERVICE_EXPORTS: Mapping[str, Sequence[ExportSource]] = {
    "identity": IDENTITY_EXPORTS,
    "provisioning": PROVISIONING_EXPORTS,
    "ratelimit": RATELIMIT_EXPORTS,
    "tenancy": TENANCY_EXPORTS,
    "webhooks": WEBHOOKS_EXPORTS,
}


class LegalConfigError(Exception):
    """The configuration cannot be turned into annexes (a missing path, a bad country)."""


def _merged(defaults: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_deployments(
    chart_values: Path = CHART_VALUES, region_values: Sequence[Path] = tuple(REGION_VALUES)
) -> list[dict[str, Any]]:
    """Each region's values, over the chart's defaults, in the order of the files."""
    defaults = yaml.safe_load(chart_values.read_text())
    return [_merged(defaults, yaml.safe_load(path.read_text()) or {}) for path in region_values]


def transfer_basis(region_jurisdiction: str, country: str) -> str:
    """How data of a region reaches a processor in `country`."""
    if region_jurisdiction.upper() not in JURISDICTION_IN_EEA:
        return "outside the EEA: per the customer's own law (an EEA customer: Module 2 to it)"
    if country in EEA:
        return "none (in the EEA)"
    if country in ADEQUATE:
        return "adequacy decision (Art. 45 GDPR)"
    return "EU SCCs Module 3 (processor to processor) + transfer impact assessment"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_annexes(deployments: Sequence[Mapping[str, Any]], repo: Path = REPO) -> str:
    for measure in MEASURES:
        for path in measure.evidence:
            if not (repo / path).exists():
                raise LegalConfigError(f"measure {measure.area!r}: {path} does not exist")
    regions = {d["region"]: d for d in deployments}
    listed = {r["id"]: r for d in deployments for r in d.get("regions", [])}
    lines = [
        "<!-- GENERATED by `make docs` (tools/legal.py) from deploy/helm/values*.yaml, the",
        "     services' export sources and tools/legal.py's measures. Do not edit. -->",
        "",
        "> **DRAFT FOR LEGAL REVIEW.** Generated from this deployment's configuration.",
        "",
        "# Annexes to the Data Processing Agreement and the SCCs",
        "",
        "## Annex I. Description of the processing",
        "",
        "### 1. Categories of data subjects",
        "",
        "The Controller's users of the service (its employees and contractors signing in "
        "directly, through SSO or provisioned by SCIM), and the people named in the data the "
        "Controller sends (e.g. in webhook payloads it asks the service to deliver).",
        "",
        "### 2. Categories of personal data, by service",
        "",
        "What each service keeps, as a customer's export carries it (one record kind each):",
        "",
        "| service | record kinds (export schema) |",
        "|---|---|",
    ]
    for service, sources in sorted(SERVICE_EXPORTS.items()):
        kinds = ", ".join(f"`{s.schema}`" for s in sources)
        lines.append(f"| {service} | {kinds} |")
    lines += [
        "",
        "No special categories of data (Art. 9) are required by the service; the Controller "
        "should not send them in free-text fields.",
        "",
        "### 3. Nature and purposes",
        "",
        "Authentication (passwords, SSO, sessions, API keys), user provisioning (SCIM), "
        "delivery of the Controller's events to its endpoints (webhooks), rate limiting, and "
        "the administration of the Controller's tenant (plans, lifecycle, exports).",
        "",
        "### 4. Duration",
        "",
        "The term of the Principal Agreement, then the offboarding grace period; then every "
        "service erases the tenant's data and destroys its keys (DPA clause 11).",
        "",
        "### 5. Where the data is stored",
        "",
        "| region | jurisdiction | public base (tenancy) |",
        "|---|---|---|",
    ]
    for region_id, region in sorted(listed.items()):
        url = region.get("urls", {}).get("tenancy", "")
        lines.append(f"| {region_id} | {region.get('jurisdiction', '')} | {url} |")
    lines += [
        "",
        "A tenant's personal data is stored in its home region only.",
        "",
        "### 6. What crosses regions",
        "",
        "The global directory's routing facts, none of them personal: tenant id, slug, home "
        "region, status, verified email domains and SSO connection ids "
        "(docs/residency.md).",
        "",
        "## Annex II. Technical and organisational measures",
        "",
        "| area | what Tenantry does | where |",
        "|---|---|---|",
    ]
    for measure in MEASURES:
        where = ", ".join(f"`{p}`" for p in measure.evidence)
        lines.append(f"| {measure.area} | {_cell(measure.what)} | {where} |")
    lines += ["", "## Annex III. Sub-processors", ""]
    for region_id, values in sorted(regions.items()):
        legal = values.get("legal", {})
        jurisdiction = listed.get(region_id, {}).get("jurisdiction", "")
        processor = legal.get("processor", {})
        lines += [
            f"### Region {region_id} ({jurisdiction})",
            "",
            f"Processor: {processor.get('legalName') or '{{processor.legal_name}}'}; "
            f"contact {processor.get('contact') or '{{processor.contact}}'}; new "
            f"sub-processors notified {legal.get('noticeDays', 30)} days ahead; breaches "
            f"within {legal.get('breachNoticeHours', 48)} hours.",
            "",
            "| sub-processor | purpose | data | location | transfer basis |",
            "|---|---|---|---|---|",
        ]
        subprocessors = legal.get("subprocessors") or []
        if not subprocessors:
            lines.append("| (none configured) | | | | |")
        for sub in subprocessors:
            country = str(sub["country"])
            if not re.fullmatch("[A-Z]{2}", country):
                raise LegalConfigError(f"{sub['name']}: country {country!r} is not ISO 3166")
            location = f"{sub.get('location', '')} ({country})".strip()
            basis = transfer_basis(jurisdiction, country)
            lines.append(
                f"| {_cell(sub['name'])} | {_cell(sub['purpose'])} | "
                f"{_cell(sub.get('data', ''))} | {_cell(location)} | {basis} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _front_matter(text: str) -> dict[str, str]:
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    if not match:
        raise LegalConfigError("a document without its front matter")
    fields = yaml.safe_load(match.group(1))
    return {str(k): str(v) for k, v in fields.items()}


def render_catalog(legal: Path = LEGAL, annexes: str | None = None) -> str:
    """Every version of every document: its effective date, status and sha256."""
    documents = []
    for name in DOCUMENTS:
        versions = []
        for path in sorted((legal / name).glob("*.md")):
            data = path.read_bytes()
            meta = _front_matter(data.decode())
            if meta["document"] != name or meta["version"] != path.stem:
                raise LegalConfigError(f"{path}: its front matter names another document")
            versions.append(
                {
                    "version": meta["version"],
                    "effective": meta["effective"],
                    "status": meta["status"],
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "path": f"docs/legal/{name}/{path.name}",
                }
            )
        documents.append(
            {"document": name, "title": _front_matter(data.decode())["title"], "versions": versions}
        )
    annexes_text = annexes if annexes is not None else (legal / "annexes.md").read_text()
    documents.append(
        {
            "document": "annexes",
            "title": "Annexes I to III, generated from the deployment",
            "versions": [
                {
                    "version": "generated",
                    "effective": "with the release",
                    "status": "DRAFT FOR LEGAL REVIEW",
                    "sha256": hashlib.sha256(annexes_text.encode()).hexdigest(),
                    "path": "docs/legal/annexes.md",
                }
            ],
        }
    )
    return json.dumps({"documents": documents}, indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    annexes = render_annexes(load_deployments())
    outputs = {ANNEXES: annexes, CATALOG: render_catalog(annexes=annexes)}
    for name in DOCUMENTS:
        for path in sorted((LEGAL / name).glob("*.md")):
            outputs[TEXTS / name / path.name] = path.read_text()
    outputs[TEXTS / "annexes.md"] = annexes
    stale = [p for p, text in outputs.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)} is stale: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(path.relative_to(REPO))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
