"""The burst: SCIM user creates into one tenant, a few in flight, retried the way an
identity provider retries them, and what came of each.

A create is retried after anything that leaves its outcome open (no answer, a 5xx, a 429),
waiting as `Retry-After` says (else a growing backoff), until its deadline. A 409
`uniqueness` after such an attempt is the earlier attempt having taken effect: the user is
looked up by userName and counted as accepted with the id found. A 409 on the first
attempt, or any other 4xx, is a refused command, reported as such.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

SCIM_JSON = "application/scim+json"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"


@dataclass
class Command:
    """One create: its userName, every answer it got, and how it ended."""

    index: int
    user_name: str
    answers: list[str] = field(default_factory=list)  # "201", "503", "ConnectError", ...
    user_id: str | None = None  # set once accepted
    refused: str | None = None  # set when it ended without the user
    started_at: float = 0.0  # time.monotonic() when first sent
    accepted_at: float | None = None


@dataclass
class BurstResult:
    commands: list[Command]
    started: float
    ended: float

    @property
    def accepted(self) -> dict[str, str]:
        """user id -> userName of every accepted create."""
        return {c.user_id: c.user_name for c in self.commands if c.user_id is not None}

    @property
    def refused(self) -> list[Command]:
        return [c for c in self.commands if c.user_id is None]

    @property
    def answers(self) -> Counter[str]:
        return Counter(a for c in self.commands for a in c.answers)

    @property
    def retried(self) -> int:
        return sum(1 for c in self.commands if len(c.answers) > 1)

    @property
    def last_accepted(self) -> float:
        return max((c.accepted_at for c in self.commands if c.accepted_at), default=self.ended)


def user_body(user_name: str, index: int) -> dict[str, Any]:
    return {
        "schemas": [USER],
        "userName": user_name,
        "externalId": f"chaos-{index}",
        "name": {"givenName": "Chaos", "familyName": f"User {index}"},
        "emails": [{"primary": True, "type": "work", "value": user_name}],
        "displayName": f"Chaos User {index}",
        "active": True,
    }


def retry_delay(response: httpx.Response | None, attempt: int) -> float:
    """What the server asked for (Retry-After seconds, capped), else 0.2 s doubling to 2 s."""
    if response is not None:
        raw = response.headers.get("retry-after", "")
        if raw.isdigit():
            return min(float(raw), 10.0)
    return float(min(2.0, 0.2 * 2**attempt))


async def create_user(scim: httpx.AsyncClient, command: Command, deadline: float) -> None:
    """Send one create until it is accepted, refused, or its deadline passes."""
    ambiguous = False  # an earlier attempt may have taken effect
    attempt = 0
    while True:
        response: httpx.Response | None = None
        try:
            response = await scim.post("/Users", json=user_body(command.user_name, command.index))
            command.answers.append(str(response.status_code))
        except httpx.HTTPError as exc:
            command.answers.append(type(exc).__name__)
            ambiguous = True
        if response is not None:
            status = response.status_code
            if status == 201:
                command.user_id = str(response.json()["id"])
                command.accepted_at = time.monotonic()
                return
            if status == 409 and ambiguous:
                found = await lookup(scim, command.user_name)
                if found is not None:
                    command.user_id = found
                    command.accepted_at = time.monotonic()
                    return
            if status < 500 and status != 429 and not (status == 409 and ambiguous):
                command.refused = f"{status} {response.text[:300]}"
                return
            ambiguous = ambiguous or status >= 500
        if time.monotonic() + retry_delay(response, attempt) > deadline:
            command.refused = f"no acceptance before the deadline: {command.answers[-5:]}"
            return
        await asyncio.sleep(retry_delay(response, attempt))
        attempt += 1


async def lookup(scim: httpx.AsyncClient, user_name: str) -> str | None:
    """The id of the user with this userName, None if there is none (a failed lookup is
    retried by the caller's loop, as an ambiguous attempt)."""
    try:
        r = await scim.get("/Users", params={"filter": f'userName eq "{user_name}"'})
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    found = r.json().get("Resources", [])
    return str(found[0]["id"]) if len(found) == 1 else None


async def run_burst(
    scim: httpx.AsyncClient,
    user_names: list[str],
    *,
    in_flight: int,
    on_start: Callable[[int], Awaitable[None]] | None = None,
    command_timeout: float,
) -> BurstResult:
    """Create every user, `in_flight` at a time; `on_start(i)` runs before command i is
    sent (the round starts its fault from there). Each command has `command_timeout`
    seconds from its start to be accepted."""
    commands = [Command(i, name) for i, name in enumerate(user_names)]
    queue: asyncio.Queue[Command] = asyncio.Queue()
    for command in commands:
        queue.put_nowait(command)

    async def worker() -> None:
        while not queue.empty():
            command = queue.get_nowait()
            if on_start is not None:
                await on_start(command.index)
            command.started_at = time.monotonic()
            await create_user(scim, command, command.started_at + command_timeout)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return BurstResult(commands, started, time.monotonic())


def scim_client(base_url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{base_url}/scim/v2",
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": SCIM_JSON,
            "Accept": SCIM_JSON,
        },
        timeout=httpx.Timeout(15.0, connect=5.0),
        limits=httpx.Limits(max_connections=32),
    )
