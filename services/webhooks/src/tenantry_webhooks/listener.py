"""The dispatcher's LISTEN connection, kept up.

NOTIFY wakes the dispatcher within milliseconds of a delivery becoming due; without it
the dispatcher finds new work only at its poll. LISTEN needs a connection of its own,
outside the pool, and asyncpg never reconnects one: a Postgres restart or a dropped TCP
session used to leave the dispatcher polling until the worker restarted (issue 20).

`NotifyListener` owns that connection. It learns of a loss from asyncpg's termination
listener (the server closed it) or from a cheap `SELECT 1` every `check_seconds` (a
connection that died without a word), and then reconnects, with capped exponential
backoff and full jitter (tenacity), until it is back. Meanwhile the dispatcher polls, as
before. Right after every (re)connection it wakes its owner once: a NOTIFY sent while
nobody listened is gone, and the owner's round finds what it announced.

One warning line when the connection is lost (or cannot be opened at start), one info
line when it is back; the connection attempts in between log at debug. The gauge
`tenantry.webhooks.listen.active` is 1 while LISTEN is up, the counter
`tenantry.webhooks.listen.reconnects` counts recoveries. The DSN is never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import asyncpg
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential
from tenacity.wait import WaitBaseT

log = logging.getLogger("tenantry.webhooks.listener")

Sleep = Callable[[float], Awaitable[None]]


def listen_backoff(cap: float = 5.0) -> WaitBaseT:
    """Full jitter: attempt n waits uniformly between 50 ms and min(cap, 0.2 s * 2**(n-1)),
    so the worker replicas that lost the same server do not all come back in step."""
    return wait_random_exponential(multiplier=0.2, min=0.05, max=cap)


class ListenLost(Exception):
    """A LISTEN session ended. `established`: it had passed a liveness check, so the next
    connection starts the backoff afresh; a session lost at once (a server that accepts
    and drops) keeps the backoff growing instead of reconnecting in a tight loop."""

    def __init__(self, reason: str, *, established: bool) -> None:
        super().__init__(reason)
        self.established = established


def _worth_a_backoff(exc: BaseException) -> bool:
    # Any error is retried (a refused connection, a bad password being fixed, a server in
    # recovery); cancellation is not. An established session's loss ends this round of
    # retries instead, so `run` starts a fresh backoff.
    if isinstance(exc, ListenLost):
        return not exc.established
    return isinstance(exc, Exception)


@dataclass(eq=False)  # identity, not value: listeners sit in a WeakSet
class NotifyListener:
    """LISTEN on `channel` and call `on_notify` for every notification, and once after
    every (re)connection, while `run` runs (until cancelled)."""

    dsn: str = field(repr=False)  # holds the password
    channel: str
    on_notify: Callable[[], None]
    check_seconds: float = 5.0  # between liveness checks
    check_timeout: float = 5.0
    connect_timeout: float = 5.0
    backoff: WaitBaseT = field(default_factory=listen_backoff)
    sleep: Sleep = asyncio.sleep  # the backoff's and the liveness checks' waits
    clock: Callable[[], float] = time.monotonic  # how long an outage lasted, for the log
    _active: bool = field(default=False, init=False)
    _ever_connected: bool = field(default=False, init=False)
    _down_since: float | None = field(default=None, init=False)

    @property
    def active(self) -> bool:
        """LISTEN is up: a NOTIFY on the channel reaches `on_notify`."""
        return self._active

    async def run(self) -> None:
        """Listen, reconnecting after every loss, until cancelled."""
        _live.add(self)
        try:
            while True:
                # An established session's loss (logged where it happened) ends one
                # round of retries: reconnect at once, with a fresh backoff.
                with contextlib.suppress(ListenLost):
                    await self._listen_with_retries()
        finally:
            self._active = False
            _live.discard(self)  # a stopped dispatcher has no LISTEN to report

    async def _listen_with_retries(self) -> None:
        retrying = AsyncRetrying(
            wait=self.backoff,
            sleep=self.sleep,
            retry=retry_if_exception(_worth_a_backoff),
            before_sleep=_log_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._session()

    async def _session(self) -> None:
        """One connection: connect, LISTEN, wake the owner, then watch it until it is
        lost. Never returns: it raises when the connection fails or is lost."""
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
        except Exception as exc:
            self._went_down(repr(exc))
            raise
        closed = asyncio.Event()
        conn.add_termination_listener(lambda _conn: closed.set())
        established = False
        try:
            await conn.add_listener(self.channel, self._notified)
            self._came_up()
            self.on_notify()
            while True:
                if await self._closed_within(closed, self.check_seconds):
                    raise ListenLost("connection closed", established=established)
                try:
                    await conn.execute("SELECT 1", timeout=self.check_timeout)
                except Exception as exc:
                    raise ListenLost(
                        f"liveness check failed: {exc!r}", established=established
                    ) from exc
                established = True
        except ListenLost as exc:
            self._went_down(str(exc))
            raise
        except asyncio.CancelledError:
            self._active = False
            # Shutting down on a healthy connection: say goodbye, so the server does not
            # log an unexpected EOF; bounded, then cut.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2.0)
            raise
        except Exception as exc:  # LISTEN itself failed
            self._went_down(repr(exc))
            raise
        finally:
            self._active = False
            if not conn.is_closed():
                conn.terminate()  # a lost connection is not worth a goodbye

    async def _closed_within(self, closed: asyncio.Event, seconds: float) -> bool:
        """Wait `seconds` (on `sleep`), or less if the connection closes meanwhile."""
        if closed.is_set():
            return True
        waiter = asyncio.ensure_future(closed.wait())
        timer = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            timer.cancel()
        return closed.is_set()

    def _notified(self, *_: object) -> None:
        self.on_notify()

    def _came_up(self) -> None:
        self._active = True
        if self._down_since is not None:
            if self._ever_connected:
                _reconnects.add(1, {"channel": self.channel})
            log.info(
                "LISTEN %s connection back after %.1fs: deliveries wake on NOTIFY again",
                self.channel,
                self.clock() - self._down_since,
            )
            self._down_since = None
        self._ever_connected = True

    def _went_down(self, reason: str) -> None:
        """One warning per outage, however many attempts it takes to end it."""
        self._active = False
        if self._down_since is not None:
            return
        self._down_since = self.clock()
        if self._ever_connected:
            log.warning(
                "LISTEN %s connection lost (%s): polling and reconnecting", self.channel, reason
            )
        else:
            log.warning(
                "no LISTEN %s connection (%s): polling until it connects", self.channel, reason
            )


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome is not None else None
    delay = state.next_action.sleep if state.next_action is not None else 0.0
    log.debug("LISTEN connection attempt failed (%r); next in %.2fs", error, delay)


# Instruments are registered once per process (the SDK keeps only the first registration
# of a name); the gauge reads every live listener, of which a worker has one.
_meter = metrics.get_meter("tenantry.webhooks")
_reconnects = _meter.create_counter(
    "tenantry.webhooks.listen.reconnects",
    unit="{connection}",
    description="LISTEN connections re-established after a loss",
)
_live: weakref.WeakSet[NotifyListener] = weakref.WeakSet()


def observe_active(options: CallbackOptions) -> Iterable[Observation]:
    for listener in list(_live):
        yield Observation(1 if listener.active else 0, {"channel": listener.channel})


_meter.create_observable_gauge(
    "tenantry.webhooks.listen.active",
    callbacks=[observe_active],
    unit="1",
    description="1 while the dispatcher's LISTEN connection is up, 0 while it only polls",
)
