"""A tenant accepts the DPA (issue 19 §2; docs/legal), on the real stack: only a signed-in
owner or admin accepts, with a name, title and email checked; the acceptance keeps the
text's SHA-256, the time and the address; the tenant's history lists it, and no other
tenant sees it; the tenant's webhook endpoint receives tenant.agreement_accepted (signed,
its sealed fields opened for the tenant); the rendered DPA is filled in for the tenant,
with nothing left as a raw placeholder, and loads nothing."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pypdfium2 as pdfium  # type: ignore[import-untyped]
from PIL import Image
from uuid_utils.compat import uuid4

from tenantry_testkit.fixtures import eventually
from tenantry_testkit.receiver import Receiver
from tenantry_testkit.stack import Stack
from tools import legal

from .test_offboarding import problem_type, tenant_with_people


def pdf_pages(data: bytes) -> list[tuple[Image.Image, str]]:
    """Each page rendered to an image (pdfium, an independent renderer) and its text."""
    document = pdfium.PdfDocument(data)
    try:
        pages = []
        for page in document:
            image = page.render(scale=1).to_pil()
            text = page.get_textpage().get_text_range()
            pages.append((image, text))
        return pages
    finally:
        document.close()


def dpa_sha256() -> str:
    catalog = json.loads(legal.CATALOG.read_text())
    (dpa,) = [d for d in catalog["documents"] if d["document"] == "dpa"]
    newest = max(dpa["versions"], key=lambda v: v["version"])
    return str(newest["sha256"])


async def test_an_owner_accepts_the_dpa_for_the_tenant(
    stack: Stack, operator_headers: dict[str, str], receiver: Receiver
) -> None:
    tenant = await tenant_with_people(stack, operator_headers)
    other = await tenant_with_people(stack, operator_headers)
    tenancy = f"{stack.service_url('tenancy')}/v1/tenants/{tenant.tenant_id}"
    signatory = {"name": "Ada Lovelace", "title": "CTO", "email": "ada@example.com"}
    async with httpx.AsyncClient(timeout=15) as http:
        hooked = await http.post(
            f"{stack.service_url('webhooks')}/v1/tenants/{tenant.tenant_id}/webhooks/endpoints",
            headers=operator_headers,
            json={"url": f"{receiver.url}/legal", "event_types": ["tenant.agreement_accepted"]},
        )
        assert hooked.status_code == 201, hooked.text

        # Who may not: a member, an API key (even with every scope), an operator, and the
        # other tenant's owner.
        for who, headers, status in (
            ("member", tenant.headers["member"], 403),
            ("key", tenant.headers["key"], 403),
            ("operator", operator_headers, 403),
            ("other tenant's owner", other.headers["owner"], 404),
        ):
            refused = await http.post(f"{tenancy}/agreements", json=signatory, headers=headers)
            assert refused.status_code == status, (who, refused.text)
        # Bad input: a clear problem, nothing recorded.
        for body, slug in (
            ({**signatory, "version": "1999-01-01"}, "unknown-version"),
            ({**signatory, "document": "sccs"}, "unknown-document"),
            ({**signatory, "email": "not-an-address"}, "invalid-signatory"),
            ({**signatory, "name": "   "}, "invalid-signatory"),
        ):
            refused = await http.post(
                f"{tenancy}/agreements", json=body, headers=tenant.headers["owner"]
            )
            assert refused.status_code == 422, refused.text
            assert problem_type(refused) == slug
        extra = await http.post(
            f"{tenancy}/agreements",
            json={**signatory, "ip": "10.0.0.1"},
            headers=tenant.headers["owner"],
        )
        assert extra.status_code == 400, extra.text
        empty = await http.get(f"{tenancy}/agreements", headers=tenant.headers["admin"])
        assert empty.json() == []

        key = str(uuid4())
        accepted = await http.post(
            f"{tenancy}/agreements",
            json=signatory,
            headers={**tenant.headers["owner"], "Idempotency-Key": key},
        )
        assert accepted.status_code == 201, accepted.text
        acceptance: dict[str, Any] = accepted.json()
        assert acceptance["document"] == "dpa"
        assert acceptance["sha256"] == dpa_sha256()
        assert acceptance["ip"] == "127.0.0.1"
        assert acceptance["accepted_by"].startswith("user:")
        assert {k: acceptance[k] for k in signatory} == signatory
        replayed = await http.post(
            f"{tenancy}/agreements",
            json=signatory,
            headers={**tenant.headers["owner"], "Idempotency-Key": key},
        )
        assert replayed.json()["acceptance_id"] == acceptance["acceptance_id"]

        history = await http.get(f"{tenancy}/agreements", headers=tenant.headers["admin"])
        assert [a["acceptance_id"] for a in history.json()] == [acceptance["acceptance_id"]]
        elsewhere = await http.get(
            f"{stack.service_url('tenancy')}/v1/tenants/{other.tenant_id}/agreements",
            headers=other.headers["owner"],
        )
        assert elsewhere.json() == []

        page = await http.get(
            f"{tenancy}/agreements/{acceptance['acceptance_id']}/document",
            headers=tenant.headers["owner"],
        )
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == "default-src 'none'"
        text = page.text
        for expected in ("Ada Lovelace", "CTO", tenant.tenant_id, dpa_sha256(), "Annex III"):
            assert expected in text, expected
        assert not re.search(r"\{\{\s*[a-z0-9_.]+\s*\}\}", text), "a raw placeholder"
        assert "DRAFT FOR LEGAL REVIEW" in text

        pdf = await http.get(
            f"{tenancy}/agreements/{acceptance['acceptance_id']}/document.pdf",
            headers=tenant.headers["owner"],
        )
        assert pdf.status_code == 200, pdf.text
        assert pdf.headers["content-type"] == "application/pdf"
        pages = pdf_pages(pdf.content)
        assert len(pages) >= 3, "the DPA and its annexes span pages"
        for number, (image, _) in enumerate(pages):
            histogram = image.convert("L").histogram()  # pixels per grey level, 0 = black
            inked = sum(histogram[:128])
            assert inked > 500, f"page {number + 1} renders blank"
        everything = " ".join(page_text for _, page_text in pages)
        for expected in ("Ada Lovelace", "Data Processing Agreement", acceptance["sha256"][:16]):
            assert expected in everything.replace("\n", " "), expected

    async def delivered() -> dict[str, Any] | None:
        for request in receiver.to("/legal"):
            message: dict[str, Any] = json.loads(request.body)
            if message["type"] == "tenant.agreement_accepted":
                return message
        return None

    message = await eventually(delivered, timeout=30, message="tenant.agreement_accepted")
    assert message["data"]["acceptance_id"] == acceptance["acceptance_id"]
    assert message["data"]["name"] == "Ada Lovelace"
    assert message["data"]["sha256"] == dpa_sha256()


async def test_operators_see_which_tenants_have_not_accepted_the_newest_dpa(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    accepted = await tenant_with_people(stack, operator_headers)
    waiting = await tenant_with_people(stack, operator_headers)
    tenancy = stack.service_url("tenancy")
    signatory = {"name": "Grace Hopper", "title": "CISO", "email": "grace@example.com"}
    async with httpx.AsyncClient(timeout=15) as http:
        r = await http.post(
            f"{tenancy}/v1/tenants/{accepted.tenant_id}/agreements",
            json=signatory,
            headers=accepted.headers["owner"],
        )
        assert r.status_code == 201, r.text

        async def listed(pending: bool) -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            cursor = None
            while True:
                params: dict[str, Any] = {"pending": str(pending).lower(), "limit": 200}
                if cursor:
                    params["cursor"] = cursor
                page = await http.get(
                    f"{tenancy}/v1/legal/documents/dpa/acceptances",
                    params=params,
                    headers=operator_headers,
                )
                assert page.status_code == 200, page.text
                body = page.json()
                assert body["current_version"] == max(
                    v["version"]
                    for d in json.loads(legal.CATALOG.read_text())["documents"]
                    if d["document"] == "dpa"
                    for v in d["versions"]
                )
                found.update({t["tenant_id"]: t for t in body["data"]})
                cursor = body["next_cursor"]
                if not cursor:
                    return found

        everyone = await listed(pending=False)
        assert everyone[accepted.tenant_id]["current"] is True
        assert everyone[accepted.tenant_id]["accepted_version"] is not None
        assert everyone[waiting.tenant_id]["accepted_version"] is None
        pending = await listed(pending=True)
        assert waiting.tenant_id in pending
        assert accepted.tenant_id not in pending
        assert all(not t["current"] for t in pending.values())
        for who in ("owner", "key"):
            refused = await http.get(
                f"{tenancy}/v1/legal/documents/dpa/acceptances", headers=accepted.headers[who]
            )
            assert refused.status_code == 403, (who, refused.text)
        unknown = await http.get(
            f"{tenancy}/v1/legal/documents/nda/acceptances", headers=operator_headers
        )
        assert unknown.status_code == 404, unknown.text
