"""The worker process of a service: its Kafka consumers, its outbox relay and its worker
tasks (the spec's own, after the ones every service runs: housekeeping).

Graceful shutdown on SIGTERM/SIGINT: stop consuming (FastStream finishes the record in
hand and commits), stop the relay (one last flush, bounded), close the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from faststream.kafka import KafkaBroker

from tenantry_events.consumer import BrokerDeadLetters, EventConsumer, attach
from tenantry_events.faults import Backoff, is_transient_db_error
from tenantry_events.relay import KafkaPublisher, run_relay
from tenantry_service.app import BACKGROUND_TOPICS, CRITICAL_TOPICS, ServiceSpec, WorkerTask
from tenantry_service.export import close_object_store
from tenantry_service.housekeeping import housekeeping
from tenantry_service.residency import directory_replication
from tenantry_service.runtime import Runtime
from tenantry_service.worker_health import WorkerHealth

log = logging.getLogger("tenantry.worker")

# Tasks every service's worker runs, before the spec's own `worker_tasks`.
DEFAULT_WORKER_TASKS: tuple[WorkerTask, ...] = (housekeeping, directory_replication)


async def run_worker(
    spec: ServiceSpec, runtime: Runtime, stop: asyncio.Event | None = None
) -> None:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await runtime.db.connect()
    broker = KafkaBroker(
        runtime.settings.kafka_bootstrap,
        client_id=f"{spec.consumer_group}-worker",
        enable_idempotence=True,
        acks="all",
        graceful_timeout=runtime.settings.shutdown_grace_seconds,
    )
    handlers = spec.handlers(runtime)
    # Three lanes (consumer groups): critical events (suspension, revocation) never queue
    # behind bulk ones, and bulk usage reports never in front of anything (seen in bench).
    lanes = CRITICAL_TOPICS | BACKGROUND_TOPICS
    groups = {
        spec.critical_group: {t: h for t, h in handlers.items() if t in CRITICAL_TOPICS},
        spec.consumer_group: {t: h for t, h in handlers.items() if t not in lanes},
        spec.background_group: {t: h for t, h in handlers.items() if t in BACKGROUND_TOPICS},
    }
    for group, group_handlers in groups.items():
        if group_handlers:
            attach(
                broker,
                EventConsumer(
                    group=group,
                    db=runtime.db,
                    inbox=runtime.inbox,
                    handlers=group_handlers,
                    dead_letters=BrokerDeadLetters(broker),
                    keys=runtime.data_keys,
                ),
            )
    publisher = KafkaPublisher(
        runtime.settings.kafka_bootstrap, client_id=f"{spec.consumer_group}-relay"
    )
    health = WorkerHealth(runtime.db.ping)
    async with contextlib.AsyncExitStack() as exits:
        port = runtime.settings.worker_health_port
        if port:
            await exits.enter_async_context(health.serving(runtime.settings.http_host, port))
        await _run(spec, runtime, broker, publisher, health, stop)


async def _run(
    spec: ServiceSpec,
    runtime: Runtime,
    broker: KafkaBroker,
    publisher: KafkaPublisher,
    health: WorkerHealth,
    stop: asyncio.Event,
) -> None:
    await _start_with_retry(broker.start, stop)
    await _start_with_retry(publisher.start, stop)
    health.started = True
    log.info("worker started: group %s", spec.consumer_group)
    tasks = [
        asyncio.create_task(_supervised(task, runtime, stop))
        for task in (*DEFAULT_WORKER_TASKS, *spec.worker_tasks)
    ]
    try:
        await run_relay(runtime.settings.database_url, runtime.outbox, publisher, stop)
    finally:
        health.started = False
        stop.set()
        if tasks:  # each task finishes what it holds once stop is set
            await asyncio.gather(*tasks, return_exceptions=True)
        await broker.stop()
        await publisher.stop()
        await runtime.data_keys.aclose()
        await close_object_store(runtime.extras)  # an export's S3 client, if one was opened
        await runtime.db.close()
        log.info("worker stopped")


async def _supervised(task: WorkerTask, runtime: Runtime, stop: asyncio.Event) -> None:
    """Run a worker task until stop; a crash is logged and the task restarted (backing
    off), never left dead while the process looks healthy. The database going away is an
    outage, not a bug: one warning line, no traceback."""
    backoff = Backoff(base=0.5, cap=30.0)
    attempt = 0
    while not stop.is_set():
        try:
            await task(runtime, stop)
            attempt = 0
        except Exception as exc:
            attempt += 1
            delay = backoff.delay(attempt)
            if is_transient_db_error(exc):
                log.warning(
                    "worker task %s: database unavailable (%r); restarting in %.1fs",
                    task.__name__,
                    exc,
                    delay,
                )
            else:
                log.exception("worker task %s crashed; restarting in %.1fs", task.__name__, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)


async def _start_with_retry(start: object, stop: asyncio.Event) -> None:
    """Kafka may still be starting (make up, a broker restart): wait for it, bounded by stop."""
    delay = 0.5
    while not stop.is_set():
        try:
            await start()  # type: ignore[operator]
            return
        except Exception as exc:
            log.warning("kafka not reachable yet (%r); retrying in %.1fs", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(delay * 2, 5.0)
