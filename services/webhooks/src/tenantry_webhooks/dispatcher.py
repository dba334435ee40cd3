"""The dispatcher: sends due deliveries, records every attempt, schedules the next one.

Durability: a delivery is claimed with a lease (a time in `leased_until`), committed,
then sent, then its attempt recorded in a second transaction. A dispatcher killed
mid-send never records the attempt; once the lease is over, any dispatcher sends it again,
with the same webhook-id. So nothing is lost, and a repeat is always the same message.

Isolation: at most `per_endpoint` sends in flight per endpoint (1 in FIFO mode), a
circuit breaker per endpoint, an optional rate per endpoint, and a claim that takes the
same number of deliveries from every tenant with due work (round robin by rank), so one
tenant's backlog or one dead endpoint cannot starve the others. A suspended tenant's
deliveries are not claimed: they wait, and go out once it is reactivated.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from tenantry_credentials.crypto import SecretBox
from tenantry_events.envelope import new_event
from tenantry_events.payloads.webhooks import WebhookEndpointDisabled
from tenantry_events.pg import Database
from tenantry_events.storage import PostgresOutbox
from tenantry_guardrails.rate_limits import AppliedPolicy, LocalLimiter, requests_policy
from tenantry_resilience import BreakerConfig, BreakerRegistry, CallNotPermitted
from tenantry_webhooks import store
from tenantry_webhooks.domain import (
    RetrySchedule,
    Verdict,
    delivery_status,
    parse_retry_after,
    signature_header,
    verdict,
)
from tenantry_webhooks.endpoint_secrets import SECRET_CONTEXT, EndpointSecrets
from tenantry_webhooks.listener import NotifyListener, listen_backoff
from tenantry_webhooks.sender import USER_AGENT, Response, Sender
from tenantry_webhooks.store import Attempt, Claimed, ClaimLimits

log = logging.getLogger("tenantry.webhooks.dispatcher")


class BackPressure(Exception):
    """What an endpoint's breaker is told of a 429 or 503 with a Retry-After we honour: the
    receiver is up and paces us. The breaker ignores it (resilience4j's ignored outcome:
    neither a failure nor a success, and a half-open trial slot is given back), so a
    throttling receiver gets its retries at the time it asked for, not a minute later."""

    def __init__(self, status: int | None, retry_after: float) -> None:
        super().__init__(f"HTTP {status}, Retry-After {retry_after:g}s")


def _is_back_pressure(exc: BaseException) -> bool:
    return isinstance(exc, BackPressure)


ENDPOINT_BREAKER = BreakerConfig(
    # Judged on the endpoint's last 10 attempts once 5 are in: a dead endpoint stops
    # taking dispatcher time within seconds, and one trial a minute tells when it is back.
    sliding_window_size=10,
    minimum_number_of_calls=5,
    failure_rate_threshold=50.0,
    slow_call_duration_threshold=10.0,
    slow_call_rate_threshold=100.0,
    wait_duration_in_open_state=60.0,
    permitted_calls_in_half_open_state=1,
    ignore=_is_back_pressure,
)


@dataclass
class DispatcherSettings:
    concurrency: int = 64
    per_endpoint: int = 4
    # At most this many sends of one tenant in flight, so a tenant with many hanging
    # endpoints cannot hold every slot while its sends time out (found by bench/webhooks).
    per_tenant: int = 16
    per_tenant_claim: int = 16
    lease_seconds: float = 60.0
    # The longest sleep between rounds. The dispatcher wakes at the next due time, on
    # NOTIFY and when a send finishes; the poll is the safety net for what tells it
    # nothing (a lost NOTIFY, another dispatcher's lease running out, a reactivation).
    poll_seconds: float = 0.5
    # The LISTEN connection (listener.py): a liveness check this often finds one that
    # died without a word; reconnecting backs off up to the cap.
    listen_check_seconds: float = 5.0
    listen_retry_max_seconds: float = 5.0
    auto_disable_after: timedelta = timedelta(days=5)
    secret_context: str = SECRET_CONTEXT


def wake_delay(due: float | None, now: float, poll: float) -> float:
    """Seconds to sleep before the next round: until `due` (epoch seconds; the earliest
    pending delivery), never longer than `poll`, never negative."""
    if due is None:
        return poll
    return min(poll, max(0.0, due - now))


@dataclass
class Dispatcher:
    db: Database
    # LISTEN needs a connection of its own, outside the pool. Not in repr: a password.
    listen_dsn: str = field(repr=False)
    sender: Sender
    box: SecretBox
    outbox: PostgresOutbox
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    settings: DispatcherSettings = field(default_factory=DispatcherSettings)
    source: str = "/tenantry/webhooks"
    region: str = "local"
    clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    breakers: BreakerRegistry | None = None  # built on `clock` unless given
    _in_flight: Counter[str] = field(default_factory=Counter)
    _tenant_in_flight: Counter[UUID] = field(default_factory=Counter)
    _rates: LocalLimiter | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _listener: NotifyListener | None = None

    def __post_init__(self) -> None:
        # Breakers and endpoint rates run on the dispatcher's clock, so tests that move
        # time move them too.
        if self.breakers is None:
            self.breakers = BreakerRegistry(ENDPOINT_BREAKER, clock=self.clock)
        if self._rates is None:
            self._rates = LocalLimiter(clock=self.clock)

    # ------------------------------------------------------------ the loop

    @property
    def listening(self) -> bool:
        """`run`'s LISTEN connection is up (else it only polls until it is back)."""
        return self._listener is not None and self._listener.active

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and send until `stop`. Between rounds it sleeps until the next pending
        delivery is due, or until woken: NOTIFY (fan-out, resend, an endpoint enabled), the
        LISTEN connection coming (back) up, or a send finishing (a free slot, a new next
        attempt); at most `poll_seconds`. A lost LISTEN connection is reconnected in the
        background (listener.py) while the rounds go on."""
        wake = self._wake
        self._listener = NotifyListener(
            self.listen_dsn,
            store.NOTIFY_CHANNEL,
            wake.set,
            check_seconds=self.settings.listen_check_seconds,
            backoff=listen_backoff(self.settings.listen_retry_max_seconds),
        )
        listening = asyncio.create_task(self._listener.run())
        try:
            while not stop.is_set():
                # Cleared before the claim: whatever happens from here on wakes the sleep.
                wake.clear()
                try:
                    claimed = await self.claim_and_start()
                    room = len(self._tasks) < self.settings.concurrency
                    if claimed and room:
                        continue  # there may be more due right now
                    # Full: only a finished send (which wakes us) can make room.
                    due = await self._next_due() if room else None
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("claim failed (%r); retrying", exc)
                    due = None
                sleep = wake_delay(due, self.clock(), self.settings.poll_seconds)
                woken = asyncio.ensure_future(wake.wait())
                stopped = asyncio.ensure_future(stop.wait())
                _, pending = await asyncio.wait(
                    {woken, stopped}, timeout=sleep, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    waiter.cancel()
        finally:
            if self._tasks:  # let sends in flight finish and record, bounded by the lease
                await asyncio.wait(set(self._tasks), timeout=self.settings.lease_seconds)
            listening.cancel()
            # wait(), not await: our own cancellation must still propagate from here.
            await asyncio.wait({listening})

    async def _next_due(self) -> float | None:
        """When the earliest delivery that a claim could take comes due (epoch seconds on
        `clock`), if after now: pending, its endpoint enabled, its tenant active. Due ones
        left unclaimed wait for a cap (a finished send wakes the loop) or a FIFO head."""
        async with self.db.transaction(platform=True) as tx:
            due = await store.next_due(tx, self._now())
        return due.timestamp() if due is not None else None

    async def drain(self) -> None:
        """Claim and send until nothing is due (tests and the benchmark drive it)."""
        while True:
            # A send that finishes during a claim is recorded after the claim's snapshot:
            # only a claim that started with nothing in flight may end the drain.
            was_busy = bool(self._tasks)
            claimed = await self.claim_and_start()
            if self._tasks:
                await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
            elif not claimed and not was_busy:
                return

    async def claim_and_start(self) -> int:
        free = self.settings.concurrency - len(self._tasks)
        if free <= 0:
            return 0
        claimed = await self._claim(free)
        for item in claimed:
            self._in_flight[item.endpoint_id] += 1
            self._tenant_in_flight[item.tenant_id] += 1
            task = asyncio.create_task(self._deliver(item))
            self._tasks.add(task)
            task.add_done_callback(self._done(item))
        return len(claimed)

    def _done(self, item: Claimed) -> Callable[[asyncio.Task[None]], None]:
        def finished(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._wake.set()  # a free slot, and maybe a next attempt to sleep until
            self._in_flight[item.endpoint_id] -= 1
            if self._in_flight[item.endpoint_id] <= 0:
                del self._in_flight[item.endpoint_id]
            self._tenant_in_flight[item.tenant_id] -= 1
            if self._tenant_in_flight[item.tenant_id] <= 0:
                del self._tenant_in_flight[item.tenant_id]
            if not task.cancelled() and task.exception() is not None:
                log.error("delivery %s crashed", item.delivery_id, exc_info=task.exception())

        return finished

    # ------------------------------------------------------------ claiming

    async def _claim(self, limit: int) -> list[Claimed]:
        busy = [e for e, n in self._in_flight.items() if n >= self.settings.per_endpoint]
        full = [t for t, n in self._tenant_in_flight.items() if n >= self.settings.per_tenant]
        limits = ClaimLimits(
            total=limit,
            per_endpoint=self.settings.per_endpoint,
            per_tenant_claim=self.settings.per_tenant_claim,
            lease_seconds=self.settings.lease_seconds,
        )
        async with self.db.transaction(platform=True) as tx:
            claimed = await store.claim(
                tx, self._now(), limits, busy_endpoints=busy, full_tenants=full
            )
        # Never more than per_endpoint (or per_tenant) in flight: give back what would
        # pass a cap.
        kept: list[Claimed] = []
        taken: Counter[str] = Counter()
        taken_by_tenant: Counter[UUID] = Counter()
        extra: list[int] = []
        for item in claimed:
            endpoint_load = self._in_flight[item.endpoint_id] + taken[item.endpoint_id]
            tenant_load = self._tenant_in_flight[item.tenant_id] + taken_by_tenant[item.tenant_id]
            if (
                endpoint_load < self.settings.per_endpoint
                and tenant_load < self.settings.per_tenant
            ):
                taken[item.endpoint_id] += 1
                taken_by_tenant[item.tenant_id] += 1
                kept.append(item)
            else:
                extra.append(item.delivery_id)
        for endpoint_id in list(self._in_flight):
            if self._in_flight[endpoint_id] == 0:
                del self._in_flight[endpoint_id]
        for tenant_id in list(self._tenant_in_flight):
            if self._tenant_in_flight[tenant_id] == 0:
                del self._tenant_in_flight[tenant_id]
        if extra:
            await self._release(*extra)
        return kept

    # ------------------------------------------------------------ one delivery

    async def _deliver(self, item: Claimed) -> None:
        async with self.db.transaction(platform=True) as tx:
            target = await store.deliverable(tx, item.delivery_id, self._now())
        if target is None or not target.enabled:
            await self._release(item.delivery_id)  # deleted or disabled meanwhile
            return
        if target.body is None:  # expunged meanwhile: nothing will ever be sent
            async with self.db.transaction(platform=True) as tx:
                await store.fail_expunged(tx, item.delivery_id)
            return
        body: bytes = target.body
        assert self.breakers is not None
        assert self._rates is not None
        breaker = self.breakers.get(item.endpoint_id)
        try:
            breaker.try_acquire()
        except CallNotPermitted as exc:
            # The endpoint is failing: do not spend an attempt; look again when it may
            # have recovered (the breaker's half-open trial decides).
            await self._postpone(item.delivery_id, exc.retry_after or 5.0)
            return
        if target.rate_limit_per_second:
            policy = requests_policy(target.rate_limit_per_second, 1)
            rate = self._rates.decide([AppliedPolicy(policy, f"endpoint:{item.endpoint_id}")])
            if not rate.allowed:
                breaker.release_permission()
                await self._postpone(item.delivery_id, rate.retry_after_seconds)
                return
        began = time.monotonic()
        started = self._now()
        try:
            secrets = [self._secret(target.secret, item.endpoint_id)]
            if target.previous_secret is not None:
                secrets.append(self._secret(target.previous_secret, item.endpoint_id))
            timestamp = int(self.clock())
            headers = {
                **target.headers,
                "content-type": "application/json",
                "user-agent": USER_AGENT,
                "webhook-id": item.message_id,
                "webhook-timestamp": str(timestamp),
                "webhook-signature": signature_header(secrets, item.message_id, timestamp, body),
            }
            started = self._now()
            began = time.monotonic()
            response = await self.sender.send(target.url, headers, body)
        except asyncio.CancelledError:
            breaker.release_permission()
            raise
        except Exception as exc:
            # Not the receiver's answer but our failure (an unencodable header, a bug):
            # record it as a failed attempt, so it is visible and scheduled, never a
            # delivery that crashes on every lease.
            log.exception("delivery %s failed before an answer", item.delivery_id)
            response = Response(None, {}, "", False, f"could not send: {type(exc).__name__}")
        elapsed = time.monotonic() - began
        retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock())
        outcome = verdict(response.status, retry_after)
        if outcome is Verdict.SUCCESS:
            breaker.on_success(elapsed)
        elif outcome is Verdict.BACK_PRESSURE:
            assert retry_after is not None
            breaker.on_error(elapsed, BackPressure(response.status, retry_after))
        else:
            breaker.on_error(elapsed, RuntimeError(response.error or f"HTTP {response.status}"))
        await self._record(item, target.url, response, outcome, retry_after, started, elapsed)

    def _secret(self, sealed: bytes, endpoint_id: str) -> str:
        return EndpointSecrets(self.box, self.settings.secret_context).unseal(endpoint_id, sealed)

    async def _release(self, *delivery_ids: int) -> None:
        async with self.db.transaction(platform=True) as tx:
            await store.release(tx, delivery_ids)

    async def _postpone(self, delivery_id: int, seconds: float) -> None:
        async with self.db.transaction(platform=True) as tx:
            await store.postpone(tx, delivery_id, max(0.05, seconds), self._now())

    def _now(self) -> datetime:
        """Time comes from `clock` (tests move it), never from the database's now()."""
        return datetime.fromtimestamp(self.clock(), UTC)

    async def _record(
        self,
        item: Claimed,
        url: str,
        response: Response,
        outcome: Verdict,
        retry_after: float | None,
        started: datetime,
        elapsed: float,
    ) -> None:
        number = item.attempts + 1
        delay: float | None = None
        if outcome in (Verdict.RETRY, Verdict.BACK_PRESSURE):
            delay = self.schedule.next_delay(number, response.status, retry_after, self.rng)
        next_at = datetime.fromtimestamp(self.clock() + delay, UTC) if delay is not None else None
        attempt = Attempt(
            number=number,
            started_at=started,
            latency_ms=elapsed * 1000,
            status_code=response.status,
            error=response.error,
            response_body=response.body,
            response_truncated=response.truncated,
            next_attempt_at=next_at,
            delivery_status=delivery_status(outcome, delay),
        )
        async with self.db.transaction(platform=True) as tx:
            await store.record_attempt(tx, item, attempt)
            await self._endpoint_health(tx, item, url, outcome)

    async def _endpoint_health(
        self, tx: asyncpg.Connection, item: Claimed, url: str, outcome: Verdict
    ) -> None:
        if outcome is Verdict.BACK_PRESSURE:
            return  # the receiver is up and pacing us: its failing streak neither starts nor ends
        if outcome is Verdict.SUCCESS:
            await store.end_failing_streak(tx, item.endpoint_id)
            return
        now = self._now()
        failing_since = await store.failing_since(tx, item.endpoint_id, now)
        if outcome is Verdict.GONE:
            await self._disable(tx, item, url, "gone", None)
        elif failing_since is not None and now - failing_since >= self.settings.auto_disable_after:
            await self._disable(tx, item, url, "failing", failing_since)

    async def _disable(
        self,
        tx: asyncpg.Connection,
        item: Claimed,
        url: str,
        reason: str,
        failing_since: datetime | None,
    ) -> None:
        """Disable once (the UPDATE says whether this attempt did it) and tell the tenant:
        webhook.endpoint_disabled, which identity turns into a mail to its admins. The
        endpoint's pending deliveries wait: re-enabling it sends them."""
        if not await store.disable_endpoint(tx, item.endpoint_id, reason):
            return
        log.warning("endpoint %s disabled: %s", item.endpoint_id, reason)
        event = new_event(
            WebhookEndpointDisabled(
                endpoint_id=item.endpoint_id,
                url=url,
                reason=reason,
                failing_since=failing_since.isoformat() if failing_since else None,
            ),
            tenant_id=item.tenant_id,
            subject=item.endpoint_id,
            aggregate_version=0,  # an operational fact, not an aggregate change
            source=self.source,
            region=self.region,
        )
        await self.outbox.put(tx, [event])
