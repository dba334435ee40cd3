"""SCIM totalResults against the running suite (issue 20): exact on every page, after
creates and deletes, and while creates run concurrently, whether the list's total comes
from the page itself, from the tenant's kept count (unfiltered lists) or from a count of a
filter's matches. Okta and Entra page with startIndex/count and trust totalResults."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import httpx
import pytest

from tenantry_testkit.stack import Stack

from .test_scim import GROUP, USER, scim_client, scim_tenant

pytestmark = pytest.mark.kafka


def _user(user_name: str, *, active: bool = True) -> dict[str, Any]:
    return {
        "schemas": [USER],
        "userName": user_name,
        "active": active,
        "emails": [{"primary": True, "type": "work", "value": user_name}],
    }


async def _create(scim: httpx.AsyncClient, user_name: str, *, active: bool = True) -> str:
    r = await scim.post("/Users", json=_user(user_name, active=active))
    assert r.status_code == 201, r.text
    user_id: str = r.json()["id"]
    return user_id


async def _pages(
    scim: httpx.AsyncClient, path: str, size: int, **params: str
) -> tuple[set[int], list[str]]:
    """Every page of a listing, from startIndex 1 to one past the end: the totals the
    pages gave, and the ids in page order."""
    totals, ids, start = set(), list[str](), 1
    while True:
        r = await scim.get(path, params={**params, "startIndex": str(start), "count": str(size)})
        assert r.status_code == 200, r.text
        body = r.json()
        totals.add(body["totalResults"])
        assert body["itemsPerPage"] == len(body["Resources"])
        ids += [resource["id"] for resource in body["Resources"]]
        if not body["Resources"]:
            return totals, ids
        start += size


async def test_total_results_is_exact_on_every_page_after_creates_and_deletes(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    _, key = await scim_tenant(stack, operator_headers)
    tag = uuid4().hex[:8]
    async with scim_client(stack, key) as scim:
        ids = [
            await _create(scim, f"page-{tag}-{n}@example.com", active=n % 4 != 0) for n in range(23)
        ]
        # Unfiltered: full pages take the kept count, the short last page its own rows, the
        # empty page past the end the kept count again.
        totals, listed = await _pages(scim, "/Users", 10)
        assert totals == {23}
        assert sorted(listed) == sorted(ids)
        # Filtered across pages: counted through the filter.
        totals, listed = await _pages(scim, "/Users", 5, filter="active eq false")
        assert totals == {6}
        assert len(set(listed)) == 6
        # A lookup answers from its page alone.
        found = await scim.get(
            "/Users", params={"filter": f'userName eq "PAGE-{tag}-7@EXAMPLE.COM"', "count": "100"}
        )
        assert found.json()["totalResults"] == 1
        assert [u["id"] for u in found.json()["Resources"]] == [ids[7]]
        email = await scim.get(
            "/Users",
            params={"filter": f'emails[type eq "work" and value eq "page-{tag}-7@example.com"]'},
        )
        assert [u["id"] for u in email.json()["Resources"]] == [ids[7]]
        # count=0: the total alone.
        only = await scim.get("/Users", params={"count": "0"})
        assert (only.json()["totalResults"], only.json()["Resources"]) == (23, [])

        for user_id in ids[:4]:
            assert (await scim.delete(f"/Users/{user_id}")).status_code == 204
        totals, listed = await _pages(scim, "/Users", 10)
        assert totals == {19}
        assert sorted(listed) == sorted(ids[4:])
        totals, _ = await _pages(scim, "/Users", 5, filter="active eq false")
        assert totals == {5}

        for n in range(3):
            r = await scim.post(
                "/Groups", json={"schemas": [GROUP], "displayName": f"Team {tag} {n}"}
            )
            assert r.status_code == 201, r.text
        totals, groups = await _pages(scim, "/Groups", 2)
        assert (totals, len(groups)) == ({3}, 3)


async def test_total_results_stays_exact_under_concurrent_creates(
    stack: Stack, operator_headers: dict[str, str]
) -> None:
    _, key = await scim_tenant(stack, operator_headers)
    tag = uuid4().hex[:8]
    async with scim_client(stack, key) as scim:
        before = [await _create(scim, f"seed-{tag}-{n}@example.com") for n in range(5)]
        writers = 12
        done = asyncio.Event()
        seen: list[tuple[int, int]] = []

        async def watch() -> None:
            # While creates land, a page that holds every user (its own total) and a full
            # page of two (the kept count): each total is a count the directory had, never
            # below an earlier answer's, never beyond what will exist.
            while not done.is_set():
                for size in ("100", "2"):
                    r = await scim.get("/Users", params={"count": size})
                    body = r.json()
                    seen.append((body["totalResults"], len(body["Resources"])))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        created = await asyncio.gather(
            *(_create(scim, f"burst-{tag}-{n}@example.com") for n in range(writers))
        )
        done.set()
        await watcher

        totals, listed = await _pages(scim, "/Users", 4)
        assert totals == {len(before) + writers}
        assert sorted(listed) == sorted(before + list(created))
    assert seen, "the watcher read during the creates"
    assert [total for total, _ in seen] == sorted(total for total, _ in seen)
    assert all(len(before) <= total <= len(before) + writers for total, _ in seen)
    assert all(total == items for total, items in seen[::2])  # the whole list
