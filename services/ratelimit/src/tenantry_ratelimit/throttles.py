"""Sampled ratelimit.throttled events.

Every service's rate-limit step counts its refusals in Redis, inside the decision script
(no extra round trip): one hash per tenant, a field per policy. The ratelimit worker
drains those hashes once per window and reports each tenant that was refused at all as
one ratelimit.throttled event, through its outbox. So a tenant hammering its limits costs
one event a window, not one per 429.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from uuid import UUID

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tenantry_events.envelope import new_event
from tenantry_events.payloads.ratelimit import RateLimitThrottled
from tenantry_guardrails.rate_limits import THROTTLE_SUFFIX
from tenantry_platform.clock import Clock, SystemClock
from tenantry_service.runtime import Runtime

log = logging.getLogger("tenantry.ratelimit.throttles")

# Read and delete in one step, so a refusal counted meanwhile lands in the next window.
DRAIN = """
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return fields
"""


def tenant_of(key: str) -> UUID | None:
    """The tenant of a counters key `rl:{<tenant>}:throttled` (None for anything else)."""
    if not key.startswith("rl:{") or not key.endswith("}" + THROTTLE_SUFFIX):
        return None
    try:
        return UUID(key[4 : -len(THROTTLE_SUFFIX) - 1])
    except ValueError:
        return None


def report(counts: Mapping[str, int], start: datetime, end: datetime) -> RateLimitThrottled | None:
    refusals = {name: n for name, n in counts.items() if n > 0}
    if not refusals:
        return None
    return RateLimitThrottled(
        window_start=start, window_end=end, refusals=refusals, total=sum(refusals.values())
    )


class ThrottleReporter:
    def __init__(self, runtime: Runtime, redis: Redis, clock: Clock | None = None) -> None:
        self.runtime = runtime
        self.redis = redis
        self.clock = clock or SystemClock()
        self._drain = redis.register_script(DRAIN)
        self._since = datetime.fromtimestamp(self.clock.now(), UTC)

    async def drain_once(self) -> int:
        """Report every tenant refused since the last drain; returns how many."""
        end = datetime.fromtimestamp(self.clock.now(), UTC)
        start, self._since = self._since, end
        reported = 0
        # On Redis Cluster, SCAN each primary; one server here.
        async for raw in self.redis.scan_iter(match="rl:{*}" + THROTTLE_SUFFIX, count=500):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            tenant_id = tenant_of(key)
            if tenant_id is None:
                continue
            flat: list[bytes] = await self._drain(keys=[key])
            counts = {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
            payload = report(counts, start, end)
            if payload is None:
                continue
            event = new_event(
                payload,
                tenant_id=tenant_id,
                subject=str(tenant_id),
                aggregate_version=0,  # operational, not a stream's
                source=self.runtime.source,
                region=self.runtime.settings.region,
            )
            async with self.runtime.db.transaction(tenant_id=tenant_id) as tx:
                await self.runtime.outbox.put(tx, [event])
            reported += 1
        return reported

    async def run(self, stop: asyncio.Event, every: float) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
            try:
                done = await self.drain_once()
            except RedisError as exc:  # counters wait in Redis (with their TTL) meanwhile
                log.warning("throttle counters not drained: %s", exc)
                continue
            if done:
                log.info("reported %d throttled tenant(s)", done)


async def report_throttles(runtime: Runtime, stop: asyncio.Event) -> None:
    """The ratelimit worker's loop (a worker task)."""
    every = runtime.settings.ratelimit_throttle_window_seconds
    if every <= 0:
        return
    await ThrottleReporter(runtime, runtime.redis).run(stop, every)
