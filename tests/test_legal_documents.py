"""The legal documents (issue 19 §1; docs/legal): drafts marked for legal review, the DPA
covering each point of Art. 28(3) GDPR in a clause of its own, the annexes regenerated
identically from the deployment's configuration and changing when it changes, the
transfer basis per sub-processor, and the catalog `GET /v1/legal/documents` serves."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tenantry_testkit.stack import Stack
from tools import legal

DPA = legal.LEGAL / "dpa" / "2026-12-07.md"


def test_the_generated_annexes_and_catalog_are_committed_as_generated() -> None:
    assert legal.main(["--check"]) == 0, "run `make docs`"


def test_every_document_is_a_draft_for_legal_review() -> None:
    for name in legal.DOCUMENTS:
        for path in (legal.LEGAL / name).glob("*.md"):
            text = path.read_text()
            assert "status: DRAFT FOR LEGAL REVIEW" in text, path
            assert "> **DRAFT FOR LEGAL REVIEW.**" in text, path
    assert "DRAFT FOR LEGAL REVIEW" in legal.ANNEXES.read_text()


@pytest.mark.parametrize("point", list("abcdefgh"))
def test_the_dpa_has_a_clause_for_each_point_of_article_28_3(point: str) -> None:
    headings = re.findall(r"^## \d+\. .*$", DPA.read_text(), re.M)
    matching = [h for h in headings if f"Art. 28(3)({point})" in h]
    assert len(matching) == 1, (point, headings)


def test_a_changed_configuration_changes_the_annexes() -> None:
    deployments = legal.load_deployments()
    before = legal.render_annexes(deployments)
    assert legal.render_annexes(copy.deepcopy(deployments)) == before  # deterministic
    changed = copy.deepcopy(deployments)
    eu = next(d for d in changed if d["region"] == "eu")
    eu["legal"]["subprocessors"].append(
        {"name": "Tokyo Analytics KK", "purpose": "support tooling", "country": "JP"}
    )
    after = legal.render_annexes(changed)
    assert after != before
    row = next(line for line in after.splitlines() if "Tokyo Analytics KK" in line)
    assert "adequacy decision" in row


def test_a_measure_without_its_evidence_fails_the_generation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone = legal.Measure("Imaginary", "nothing", ("docs/no-such-file.md",))
    monkeypatch.setattr(legal, "MEASURES", (*legal.MEASURES, gone))
    with pytest.raises(legal.LegalConfigError, match="no-such-file"):
        legal.render_annexes(legal.load_deployments())


def test_a_country_that_is_not_iso_3166_is_refused() -> None:
    deployments = legal.load_deployments()
    deployments[0]["legal"]["subprocessors"] = [{"name": "X", "purpose": "y", "country": "usa"}]
    with pytest.raises(legal.LegalConfigError, match="ISO 3166"):
        legal.render_annexes(deployments)


@pytest.mark.parametrize(
    ("jurisdiction", "country", "basis"),
    [
        ("EU", "DE", "none (in the EEA)"),
        ("EU", "NO", "none (in the EEA)"),
        ("EU", "CH", "adequacy decision"),
        ("EU", "GB", "adequacy decision"),
        ("EU", "US", "Module 3"),
        ("EU", "IN", "Module 3"),
        ("US", "DE", "outside the EEA"),
    ],
)
def test_the_transfer_basis_of_a_subprocessor(jurisdiction: str, country: str, basis: str) -> None:
    assert basis in legal.transfer_basis(jurisdiction, country)


def test_the_eu_region_lists_its_transfer_out_of_the_eea_with_its_module() -> None:
    text = legal.ANNEXES.read_text()
    eu = text.split("### Region eu", 1)[1].split("### Region", 1)[0]
    relay = next(line for line in eu.splitlines() if "Example Mail Relay" in line)
    assert "EU SCCs Module 3" in relay


async def test_the_catalog_is_served_with_the_documents_hashes(stack: Stack) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(f"{stack.service_url('tenancy')}/v1/legal/documents")
    assert answer.status_code == 200, answer.text
    documents: list[dict[str, Any]] = answer.json()["documents"]
    assert {d["document"] for d in documents} == {"dpa", "sccs", "tia", "annexes"}
    repo = Path(legal.REPO)
    for document in documents:
        for version in document["versions"]:
            data = (repo / version["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == version["sha256"], version["path"]
            assert version["status"] == "DRAFT FOR LEGAL REVIEW"
