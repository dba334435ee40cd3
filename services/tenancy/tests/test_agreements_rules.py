"""Accepting a legal document (pure): which version, who signs, and the template filled in
with nothing left blank or unfilled."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenantry_tenancy.agreements import (
    AgreementRefused,
    Version,
    body,
    chosen,
    filled,
    signatory,
    tenant_annexes,
)

VERSIONS = [
    Version(document="dpa", version="2026-12-07", effective="2027-01-01", sha256="a"),
    Version(document="dpa", version="2027-06-01", effective="2027-07-01", sha256="b"),
    Version(document="sccs", version="2026-12-07", effective="2027-01-01", sha256="c"),
]


def test_the_newest_version_unless_one_is_named() -> None:
    assert chosen(VERSIONS, "dpa", None).sha256 == "b"
    assert chosen(VERSIONS, "dpa", "2026-12-07").sha256 == "a"


@pytest.mark.parametrize(
    ("document", "version", "slug"),
    [("sccs", None, "unknown-document"), ("nda", None, "unknown-document"),
     ("dpa", "2025-01-01", "unknown-version")],
)  # fmt: skip
def test_what_cannot_be_accepted(document: str, version: str | None, slug: str) -> None:
    with pytest.raises(AgreementRefused) as refused:
        chosen(VERSIONS, document, version)
    assert refused.value.slug == slug
    assert refused.value.status == 422


def test_a_signatory_is_one_line_each_and_an_email() -> None:
    assert signatory(" Ada ", "CTO", "ada@example.com") == ("Ada", "CTO", "ada@example.com")
    for bad in (("", "CTO", "a@b.co"), ("Ada", "x\ny", "a@b.co"), ("Ada", "CTO", "ada"),
                ("A" * 201, "CTO", "a@b.co")):  # fmt: skip
        with pytest.raises(AgreementRefused):
            signatory(*bad)


keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.[a-z0-9_]{1,8})?", fullmatch=True)


@given(
    text=st.lists(st.one_of(st.text(alphabet="ab {}\n", max_size=8), keys.map("{{%s}}".__mod__))),
    values=st.dictionaries(keys, st.text(alphabet="xyz", max_size=5)),
)
def test_every_placeholder_is_filled_or_marked(text: list[str], values: dict[str, str]) -> None:
    template = "".join(text)
    out = filled(template, values)
    assert not re.search(r"\{\{\s*[a-z0-9_.]+\s*\}\}", out)
    for key in re.findall(r"\{\{\s*([a-z0-9_.]+)\s*\}\}", template):
        assert (values.get(key) or f"[{key}: to be agreed]") in out


def test_the_front_matter_is_not_part_of_the_text() -> None:
    assert body("---\ndocument: dpa\n---\n# DPA\n") == "# DPA\n"


ANNEXES = """# Annexes

## Annex II. Technical and organisational measures

| area | what | where |
|---|---|---|
| encryption | AES | `x` |

## Annex III. Sub-processors

### Region eu (EU)

Processor: P.

| sub-processor | purpose | data | location | transfer basis |
|---|---|---|---|---|
| Mailer \\| EU | email | addresses | Dublin (IE) | none (in the EEA) |
| Pager Inc | alerts | names | Virginia (US) | EU SCCs Module 3 (processor to processor) |

### Region us (US)

Processor: P.

| sub-processor | purpose | data | location | transfer basis |
|---|---|---|---|---|
| (none configured) | | | | |
"""


def test_a_tenants_annex_keeps_its_region_and_lists_its_transfers() -> None:
    eu = tenant_annexes(ANNEXES, "eu")
    assert "### Region us" not in eu
    assert "Annex II" in eu
    assert "Mailer \\| EU" in eu
    transfers = eu.split("### Transfers of this tenant's personal data", 1)[1]
    assert "Pager Inc" in transfers
    assert "Module 3" in transfers
    assert "Mailer" not in transfers, "a processor in the EEA is no transfer"
    us = tenant_annexes(ANNEXES, "us")
    assert "### Region eu" not in us
    assert "None: no sub-processor of region us" in us
    assert tenant_annexes("no annex III here", "eu") == "no annex III here"
