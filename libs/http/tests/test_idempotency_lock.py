"""The Idempotency-Key lock on real Postgres: a running request keeps its key however long
it runs; a key whose process died is taken over after a short window, not a minute."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

from tenantry_http.asgi import Message, Receive, Scope, Send
from tenantry_http.idempotency import STALE_LOCK, IdempotencyMiddleware
from tenantry_testkit.fixtures import ScratchDatabase


class SlowApp:
    """Answers 201 once `go` is set; counts its runs."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.runs = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.runs += 1
        await receive()
        await self.go.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"made"})


async def post(app: Any, key: str) -> tuple[int, dict[bytes, bytes]]:
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/things",
        "query_string": b"",
        "headers": [(b"idempotency-key", key.encode())],
        "state": {},
    }
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"])


def test_a_crashed_request_holds_its_key_for_seconds_not_a_minute() -> None:
    assert timedelta(0) < STALE_LOCK <= timedelta(seconds=10)


async def test_a_running_request_keeps_its_key_past_the_stale_window(
    scratch_db: ScratchDatabase,
) -> None:
    app = SlowApp()
    middleware = IdempotencyMiddleware(
        app,
        scratch_db.db,
        max_body=1000,
        heartbeat=timedelta(seconds=0.1),
        stale_lock=timedelta(seconds=0.5),
    )
    first = asyncio.create_task(post(middleware, "k1"))
    await asyncio.sleep(1.2)  # over twice the stale window: the heartbeat kept the lock
    status, headers = await post(middleware, "k1")
    assert status == 409
    assert headers[b"retry-after"] == b"1"
    assert app.runs == 1, "the running request was not run a second time"
    app.go.set()
    assert (await first)[0] == 201
    replayed, replay_headers = await post(middleware, "k1")
    assert replayed == 201
    assert replay_headers[b"idempotent-replayed"] == b"true"
    assert app.runs == 1


async def test_a_key_whose_process_died_is_taken_over_after_the_window(
    scratch_db: ScratchDatabase,
) -> None:
    app = SlowApp()
    app.go.set()
    middleware = IdempotencyMiddleware(
        app, scratch_db.db, max_body=1000, stale_lock=timedelta(seconds=0.5)
    )
    # What a SIGKILLed request leaves: its key started, its lock no longer renewed.
    await scratch_db.db.pool.execute(
        """INSERT INTO idempotency_keys (scope, key, fingerprint, state, locked_at)
           VALUES ('anonymous', 'k2', $1, 'started', now())""",
        hashlib.sha256(b"POST /v1/things?\n{}").hexdigest(),
    )
    status, _ = await post(middleware, "k2")
    assert status == 409, "fresh: still its owner's"
    await asyncio.sleep(0.7)
    status, _ = await post(middleware, "k2")
    assert status == 201, "stale: taken over"
    assert app.runs == 1
