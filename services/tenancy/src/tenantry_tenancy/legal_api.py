"""The legal documents a customer signs or reads (docs/legal/README.md, issue 19).

    GET /v1/legal/documents      each document, its versions, effective dates and sha256

Public: a prospective customer reads the DPA before it has an account. The catalog is
generated with the documents (`make docs`, tools/legal.py) and shipped in this package,
so the hashes are the released texts'.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import msgspec
from litestar import get

from tenantry_http.auth import PUBLIC
from tenantry_regions.routing import REGION_LOCAL


class DocumentVersion(msgspec.Struct, frozen=True, kw_only=True):
    version: str
    effective: str
    status: str  # "DRAFT FOR LEGAL REVIEW" until counsel has reviewed it
    sha256: str  # of the text at `path`
    path: str  # in the repository


class LegalDocument(msgspec.Struct, frozen=True, kw_only=True):
    document: str  # dpa | sccs | tia | annexes
    title: str
    versions: list[DocumentVersion]


class LegalDocuments(msgspec.Struct, frozen=True, kw_only=True):
    documents: list[LegalDocument]


@cache
def catalog() -> LegalDocuments:
    data = resources.files("tenantry_tenancy.legal").joinpath("catalog.json").read_bytes()
    return msgspec.json.decode(data, type=LegalDocuments)


@get(
    "/legal/documents",
    tags=["legal"],
    opt={"auth": PUBLIC, REGION_LOCAL: True},
    summary="The legal documents: versions, effective dates, sha256",
)
async def legal_documents() -> LegalDocuments:
    """The DPA, the SCCs' guide, the transfer impact assessment template and the generated
    annexes, each with every version's effective date, status and SHA-256 (drafts for
    legal review until counsel has reviewed them)."""
    return catalog()
