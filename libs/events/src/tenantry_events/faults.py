"""Which database errors are transient, in one place, and how long to wait before retrying.

A transient error says "the database (or the road to it) is not there right now": the same
work succeeds later, on a healthy database. Anything else is the work's own fault (bad
data, a bug) and fails again however often it is retried. The consumer, the relay, the
pool wrapper in pg.py and (later) the HTTP error mapping's 503s all ask
`is_transient_db_error`; `is_broken_connection` says which of those leave the connection
itself unusable, so it is terminated instead of going back to the pool.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

# SQLSTATEs of a server that is going away, coming back, or full (not of the statement).
_SERVER_GONE_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown: pg_ctl stop -m fast, pg_terminate_backend
        "57P02",  # crash_shutdown: another backend crashed, or stop -m immediate
        "57P03",  # cannot_connect_now: starting up, shutting down, in recovery
        "57P05",  # idle_session_timeout: the server closed an idle session
    }
)
_RETRY_TRANSACTION_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections: the pool refills as the server frees slots
    }
)
# asyncpg raises a bare InterfaceError for a connection in a bad state, and for mistakes
# in the calling code too ("n must be greater than zero"): only the former are transient.
_BROKEN_CONNECTION_MESSAGES = (
    "connection is closed",
    "connection was closed",
    "another operation is in progress",
    "another operation is cancelling",
    "pool is closing",
    "pool is closed",
)


class DatabaseUnavailable(ConnectionError):
    """No usable connection: the pool could not connect, or a pooled connection failed
    before the caller's work began (BEGIN, session settings). Never the work's fault."""


def is_broken_connection(exc: BaseException) -> bool:
    """The connection that raised `exc` cannot be trusted again: terminate it, never
    return it to the pool (a reset might even succeed on a protocol in a stuck state)."""
    return any(_broken(e) for e in _causes(exc))


def is_transient_db_error(exc: BaseException) -> bool:
    """`exc` (or an exception it was explicitly raised from) says the database or the
    network is unavailable for now, so the same work should be retried later: a broken or
    refused connection, a server shutting down or starting up, too many connections, a
    timeout, a serialization failure or a deadlock. False means the work itself failed."""
    return any(_broken(e) or _retry_transaction(e) for e in _causes(exc))


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised `from` (an explicit translation keeps its meaning; an
    implicit __context__ does not: a bug while handling an outage is still a bug)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__
    return chain


def _broken(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError):  # refused, reset, unreachable, timed out
        return True
    if isinstance(exc, asyncpg.PostgresConnectionError):  # SQLSTATE class 08
        return True
    if isinstance(exc, asyncpg.InternalClientError):  # asyncpg's protocol state is off
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return exc.sqlstate in _SERVER_GONE_SQLSTATES
    if type(exc) is asyncpg.InterfaceError:  # not DataError & co: bad input is poison
        message = str(exc)
        return any(m in message for m in _BROKEN_CONNECTION_MESSAGES)
    return False


def _retry_transaction(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.PostgresError) and exc.sqlstate in _RETRY_TRANSACTION_SQLSTATES


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, capped: attempt n waits between
    `(1 - jitter)` and 1 times `min(cap, base * 2**(n-1))` seconds. `rng` is injectable
    so tests see exact delays."""

    base: float = 0.2
    cap: float = 10.0
    jitter: float = 0.5
    rng: Callable[[], float] = field(default=random.random, repr=False)

    def delay(self, attempt: int) -> float:
        exponent = min(max(attempt, 1) - 1, 64)  # 2**64 * base is past any cap
        raw = min(self.cap, self.base * 2.0**exponent)
        return raw * (1.0 - self.jitter * self.rng())
