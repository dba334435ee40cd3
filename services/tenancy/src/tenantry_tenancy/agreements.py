"""A tenant's acceptance of a legal document (issue 19 §2; docs/legal): the rules, pure.

Only the DPA is accepted per tenant (the SCCs are incorporated by it, the TIA is the
customer's own assessment). A version is accepted by its exact text: the acceptance keeps
the SHA-256 the catalog lists for it. The per-tenant rendering fills the template's
`{{placeholders}}` from the tenant, its plan, the deployment's legal settings and the
acceptance; a placeholder nothing fills stays visible, marked to be agreed, never blank.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from tenantry_tenancy.domain import DomainError

ACCEPTABLE = ("dpa",)
MAX_FIELD = 200
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z0-9_.]+)\s*\}\}")
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class AgreementRefused(DomainError):
    """An acceptance's rule said no: 422 unless said otherwise."""

    def __init__(self, slug: str, message: str, status: int = 422) -> None:
        super().__init__(slug, message, status)


@dataclass(frozen=True)
class Version:
    document: str
    version: str
    effective: str
    sha256: str


def chosen(versions: list[Version], document: str, version: str | None) -> Version:
    """The version to accept: the one named, or the newest (versions are dates)."""
    if document not in ACCEPTABLE:
        raise AgreementRefused(
            "unknown-document", f"{document!r} is not accepted per tenant; one of {ACCEPTABLE}"
        )
    mine = sorted((v for v in versions if v.document == document), key=lambda v: v.version)
    if not mine:
        raise AgreementRefused("unknown-document", f"no version of {document!r} is published")
    if version is None:
        return mine[-1]
    for candidate in mine:
        if candidate.version == version:
            return candidate
    known = ", ".join(v.version for v in mine)
    raise AgreementRefused("unknown-version", f"no version {version!r}; published: {known}")


def signatory(name: str, title: str, email: str) -> tuple[str, str, str]:
    """The person accepting, checked: non-empty, bounded, one line, a plausible email."""
    cleaned = []
    for label, value in (("name", name), ("title", title), ("email", email)):
        value = value.strip()
        if not value or len(value) > MAX_FIELD or any(c in value for c in "\r\n\x00"):
            raise AgreementRefused("invalid-signatory", f"{label} must be one line of 1-200")
        cleaned.append(value)
    if not _EMAIL.match(cleaned[2]):
        raise AgreementRefused("invalid-signatory", "email is not an email address")
    return cleaned[0], cleaned[1], cleaned[2]


def body(text: str) -> str:
    """The document without its front matter."""
    return _FRONT_MATTER.sub("", text, count=1)


def filled(text: str, values: Mapping[str, str]) -> str:
    """The template with each `{{key}}` replaced by its value, or marked when unknown."""

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        value = values.get(key)
        return value if value else f"[{key}: to be agreed]"

    return _PLACEHOLDER.sub(replace, text)


_ANNEX_III = "## Annex III. Sub-processors"
_NO_TRANSFER = ("none (in the EEA)", "")


def tenant_annexes(annexes: str, home_region: str) -> str:
    """The annexes as they apply to one tenant: Annex III keeps the sub-processors of the
    tenant's home region only, followed by the transfers they make: each sub-processor
    that would receive the tenant's personal data outside the EEA, with its basis (the
    SCC module). A tenant whose region has none is told so."""
    head, found, annex = annexes.partition(_ANNEX_III)
    if not found:
        return annexes
    intro, *regions = re.split(r"(?m)^(?=### Region )", annex)
    mine = [r for r in regions if r.startswith(f"### Region {home_region} (")]
    transfers = [
        cells
        for region in mine
        for cells in _table_rows(region)
        if cells[-1] not in _NO_TRANSFER and cells[0] != "(none configured)"
    ]
    lines = ["### Transfers of this tenant's personal data", ""]
    if not transfers:
        lines.append(
            f"None: no sub-processor of region {home_region} processes the tenant's personal"
            " data outside the EEA."
        )
    else:
        lines.append("| sub-processor | location | basis |")
        lines.append("|---|---|---|")
        lines += [f"| {c[0]} | {c[3]} | {c[-1]} |" for c in transfers]
    return head + found + intro + "".join(mine).rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"


def _table_rows(section: str) -> list[list[str]]:
    """The body rows of the section's Markdown table, as cells ("\\|" is a pipe in a cell)."""
    rows = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| sub-processor", "|---")):
            continue
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([c.strip().replace("\\|", "|") for c in cells])
    return rows
