"""Idempotency-Key for POSTs (the IETF httpapi draft, as Stripe does it).

The first request with a key runs and its response (status < 500) is stored for 24 h; a
retry with the same key and the same request replays it (`Idempotent-Replayed: true`); the
same key with a different request is 422; a retry while the first still runs is 409 with
Retry-After. A 5xx or a crash releases the key, so the client may retry. Keys are scoped
per credential.

A running request renews its lock every HEARTBEAT; a lock not renewed for STALE_LOCK
belongs to a process that died, and the next retry takes the key over. So a crash holds a
key for seconds, not for a request timeout, while a slow request is never run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from datetime import timedelta

import asyncpg
import msgspec

from tenantry_events.pg import Database
from tenantry_http.asgi import ASGIApp, Message, Receive, Scope, Send, read_body, replay
from tenantry_http.problems import PROBLEM_JSON, Problem

log = logging.getLogger(__name__)

HEADER = b"idempotency-key"
RETENTION = timedelta(hours=24)
HEARTBEAT = timedelta(seconds=2)
STALE_LOCK = timedelta(seconds=10)  # several missed heartbeats
MAX_KEY_LENGTH = 255


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return bytes(v)
    return None


async def _send_problem(send: Send, problem: Problem, path: str) -> None:
    body = msgspec.json.encode(problem.body(instance=path))
    headers = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in problem.headers.items()]
    await send({"type": "http.response.start", "status": problem.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _principal_scope(scope: Scope) -> str:
    """Whose key this is: the authenticated principal (set by the pipeline before us), so
    two callers never share records and a revoked credential never reaches them."""
    principal = scope.get("state", {}).get("principal")
    if principal is None:
        return "anonymous"
    return f"{principal.kind}:{principal.subject}:{principal.tenant_id}"


class IdempotencyMiddleware:
    """ASGI middleware inside Litestar, after authentication; only POSTs that carry the
    header are affected."""

    def __init__(
        self,
        app: ASGIApp,
        db: Database,
        *,
        max_body: int,
        heartbeat: timedelta = HEARTBEAT,
        stale_lock: timedelta = STALE_LOCK,
    ) -> None:
        self.app = app
        self.db = db
        self.max_body = max_body
        self.heartbeat = heartbeat
        self.stale_lock = stale_lock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        raw_key = _header(scope, HEADER)
        if raw_key is None:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            await _send_problem(
                send,
                Problem(
                    400,
                    "invalid-idempotency-key",
                    "Idempotency-Key must be 1-255 printable characters",
                ),
                path,
            )
            return
        # Buffer the body (bounded) to fingerprint it, then replay it to the app.
        try:
            body = await read_body(receive, self.max_body)
        except Problem as too_large:
            await _send_problem(send, too_large, path)
            return
        if body is None:
            return  # the client went away
        scope_key = _principal_scope(scope)
        fingerprint = hashlib.sha256(
            b"POST " + path.encode() + b"?" + scope.get("query_string", b"") + b"\n" + body
        ).hexdigest()

        claimed = await self._claim(scope_key, key, fingerprint)
        if isinstance(claimed, _Stored):
            await claimed.replay(send)
            return
        if isinstance(claimed, Problem):
            await _send_problem(send, claimed, path)
            return

        status = 500
        headers: list[tuple[bytes, bytes]] = []
        response_body: list[bytes] = []

        async def capture_send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                response_body.append(message.get("body", b""))
            await send(message)

        heartbeat = asyncio.create_task(self._renew(scope_key, key))
        try:
            await self.app(scope, replay(body, receive), capture_send)
        except BaseException:
            await _stop(heartbeat)
            await self._release(scope_key, key)
            raise
        await _stop(heartbeat)
        if status >= 500:
            await self._release(scope_key, key)
        else:
            await self._store(scope_key, key, status, headers, b"".join(response_body))

    async def _claim(self, scope_key: str, key: str, fingerprint: str) -> _Stored | Problem | None:
        async with self.db.transaction() as tx:
            await tx.execute(
                """DELETE FROM idempotency_keys
                   WHERE scope = $1 AND key = $2 AND created_at < now() - $3::interval""",
                scope_key,
                key,
                RETENTION,
            )
            inserted = await tx.fetchval(
                """INSERT INTO idempotency_keys (scope, key, fingerprint, state)
                   VALUES ($1, $2, $3, 'started') ON CONFLICT DO NOTHING RETURNING true""",
                scope_key,
                key,
                fingerprint,
            )
            if inserted:
                return None
            row = await tx.fetchrow(
                """SELECT fingerprint, state, status, headers, body,
                          locked_at < now() - $3::interval AS stale
                   FROM idempotency_keys WHERE scope = $1 AND key = $2 FOR UPDATE""",
                scope_key,
                key,
                self.stale_lock,
            )
            if row is None:  # released between our insert and select: treat as new
                return Problem(
                    409, "idempotency-key-in-use", "Retry the request", headers={"Retry-After": "1"}
                )
            if row["fingerprint"] != fingerprint:
                return Problem(
                    422,
                    "idempotency-key-reused",
                    "This Idempotency-Key was used with a different request",
                )
            if row["state"] == "done":
                return _Stored(row["status"], row["headers"], row["body"])
            if row["stale"]:  # the first attempt died: take the key over
                await tx.execute(
                    "UPDATE idempotency_keys SET locked_at = now() WHERE scope = $1 AND key = $2",
                    scope_key,
                    key,
                )
                return None
            return Problem(
                409,
                "idempotency-key-in-use",
                "A request with this Idempotency-Key is still being processed",
                headers={"Retry-After": "1"},
            )

    async def _renew(self, scope_key: str, key: str) -> None:
        """Keep the lock fresh while the request runs (a failed renewal is retried at the
        next beat: a lock goes stale only when its process is gone for STALE_LOCK)."""
        while True:
            await asyncio.sleep(self.heartbeat.total_seconds())
            try:
                await self.db.pool.execute(
                    """UPDATE idempotency_keys SET locked_at = now()
                       WHERE scope = $1 AND key = $2 AND state = 'started'""",
                    scope_key,
                    key,
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("idempotency lock renewal failed: %s", exc)

    async def _store(
        self, scope_key: str, key: str, status: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        kept = [
            [k.decode("latin-1"), v.decode("latin-1")]
            for k, v in headers
            if k.lower() not in (b"content-length", b"date", b"x-request-id")
        ]
        await self.db.pool.execute(
            """UPDATE idempotency_keys SET state = 'done', status = $3, headers = $4, body = $5
               WHERE scope = $1 AND key = $2""",
            scope_key,
            key,
            status,
            kept,
            body,
        )

    async def _release(self, scope_key: str, key: str) -> None:
        await self.db.pool.execute(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND state = 'started'",
            scope_key,
            key,
        )


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class _Stored:
    def __init__(self, status: int, headers: list[list[str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    async def replay(self, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers
        ]
        headers += [
            (b"content-length", str(len(self.body)).encode()),
            (b"idempotent-replayed", b"true"),
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})
