"""Dead letters on the real broker and Postgres: a poison event is dead-lettered, listed
and shown; after the fix a replay applies it once through the group's inbox, a second
replay (even after housekeeping pruned the inbox) changes nothing, `--type` replays every
pending one of a type, and bad requests get exit code 2 and change nothing."""

from __future__ import annotations

import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
import pytest
import pytest_asyncio
from uuid_utils.compat import uuid4

from tenantry_events.catalog import load_all
from tenantry_events.dead_letters import Replayer, read_dead_letters
from tenantry_events.dead_letters_cli import run_command
from tenantry_events.envelope import Envelope
from tenantry_events.kafka_codec import to_record
from tenantry_events.pg import Database
from tenantry_events.storage import PostgresInbox
from tenantry_platform.clock import FakeClock
from tenantry_platform.settings import ServiceSettings
from tenantry_service.housekeeping import Housekeeping
from tenantry_testkit.fixtures import ScratchDatabase, eventually
from tenantry_testkit.stack import Stack

from .conftest import ScratchTopic, record_effect

pytestmark = pytest.mark.kafka


async def fixed_record_effect(tx: asyncpg.Connection, event: Envelope[Any]) -> None:
    """The handler after "the fix": a negative n is no longer poison."""
    payload = type(event.payload)(n=abs(event.payload.n))
    await record_effect(tx, msgspec.structs.replace(event, payload=payload))


class Command:
    """`dead-letters ...` as the service's CLI runs it, with its own pool (a separate
    process in production), against the test topic's group and the effects database."""

    def __init__(self, stack: Stack, db: ScratchDatabase, topic: ScratchTopic) -> None:
        self.stack = stack
        self.db = db
        self.topic = topic
        self.handler = fixed_record_effect
        self.bootstrap = stack.kafka_bootstrap

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        replayer = Replayer(
            db=Database(self.db.app_dsn),
            inbox=PostgresInbox(),
            handlers={self.topic.name: self.handler},
            groups=[self.topic.dlt.removeprefix("dlt.")],
        )
        out, err = io.StringIO(), io.StringIO()
        code = await run_command(
            list(argv),
            prog="tenantry-test dead-letters",
            bootstrap=self.bootstrap,
            replayer=replayer,
            out=out,
            err=err,
        )
        return code, out.getvalue(), err.getvalue()

    async def json(self, *argv: str) -> Any:
        code, out, err = await self(*argv, "--json")
        assert code == 0, err
        return json.loads(out)


async def send(producer: Any, event: Envelope[Any]) -> None:
    record = to_record(event)
    await producer.send_and_wait(record.topic, record.value, key=record.key, headers=record.headers)


async def effects(db: ScratchDatabase) -> dict[UUID, int]:
    rows = await db.db.pool.fetch("SELECT event_id, applied FROM effects")
    return {r["event_id"]: r["applied"] for r in rows}


async def state(db: ScratchDatabase) -> tuple[Any, ...]:
    """Everything a replay may change: effects, inbox marks, recorded replays."""
    pool = db.db.pool
    return (
        sorted((await effects(db)).items()),
        await pool.fetchval("SELECT count(*) FROM inbox"),
        [
            tuple(r)
            for r in await pool.fetch(
                "SELECT * FROM dead_letter_replays ORDER BY dlt_partition, dlt_offset"
            )
        ],
    )


@dataclass
class Poisoned:
    first: Envelope[Any]
    second: Envelope[Any]
    good: Envelope[Any]
    command: Command


@pytest_asyncio.fixture
async def poisoned(
    stack: Stack,
    topic: ScratchTopic,
    start_consumer: Any,
    effects_db: ScratchDatabase,
    producer: Any,
) -> AsyncIterator[Poisoned]:
    """Two poison events (n < 0) and a good one after them, consumed by the real consumer
    with the handler before the fix: the poison ones are on the dead-letter topic. The
    command works on the test topic's group."""
    await start_consumer(topic)
    tenant = uuid4()
    bad = [topic.event(-1, tenant_id=tenant), topic.event(-2, tenant_id=tenant)]
    good = topic.event(5, tenant_id=tenant)
    for event in [*bad, good]:
        await send(producer, event)
    await eventually(
        lambda: _has(effects(effects_db), good.id), timeout=30, message="the good event applied"
    )
    letters = await eventually(
        lambda: _at_least(read_dead_letters(stack.kafka_bootstrap, [topic.dlt]), 2),
        timeout=30,
        message="both poison events dead-lettered",
    )
    assert {d.event_id for d in letters} == {e.id for e in bad}
    yield Poisoned(bad[0], bad[1], good, Command(stack, effects_db, topic))


async def test_a_dead_letter_is_listed_shown_and_after_the_fix_replayed_exactly_once(
    topic: ScratchTopic, effects_db: ScratchDatabase, poisoned: Poisoned
) -> None:
    first, second, good, command = (
        poisoned.first,
        poisoned.second,
        poisoned.good,
        poisoned.command,
    )

    listed = (await command.json("list"))["dead_letters"]
    assert [d["event_id"] for d in listed] == [str(first.id), str(second.id)]
    for entry in listed:
        assert entry["event_type"] == topic.name
        assert entry["original_topic"] == topic.name
        assert entry["consumer_group"] == topic.dlt.removeprefix("dlt.")
        assert entry["error_type"] == "ValueError"
        assert "is poison for this handler" in entry["error"]
        assert entry["replay"] is None
    code, table, _ = await command("list")
    assert code == 0
    assert listed[0]["ref"] in table
    assert "ValueError" in table

    (shown,) = (await command.json("show", str(first.id)))["dead_letters"]
    assert shown["payload"] == {"n": -1}
    assert shown["replayable"] is True
    assert shown["tenant_id"] == str(first.tenant_id)
    assert shown["headers"]["ce_id"] == str(first.id)
    code, text, _ = await command("show", listed[0]["ref"])  # by its ref, as printed
    assert code == 0
    assert f"event_id:           {first.id}" in text
    assert '"n": -1' in text

    assert await effects(effects_db) == {good.id: 1}
    (replayed,) = (await command.json("replay", str(first.id)))["replays"]
    assert replayed["outcome"] == "applied"
    assert await effects(effects_db) == {good.id: 1, first.id: 1}

    # Again: recorded as replayed, nothing runs.
    before = await state(effects_db)
    (again,) = (await command.json("replay", str(first.id)))["replays"]
    assert again["outcome"] == "already-replayed"
    assert again["earlier"]["outcome"] == "applied"
    assert await state(effects_db) == before

    # Housekeeping later prunes the inbox row that also guarded it: still replayed once.
    settings = ServiceSettings(database_url=effects_db.app_dsn, kafka_bootstrap="unused")
    clock = FakeClock(time.time() + (settings.inbox_retention_hours + 1) * 3600)
    pruned = await Housekeeping(effects_db.db, settings, clock=clock).run_once()
    assert pruned["inbox"] >= 2
    assert await effects_db.db.pool.fetchval("SELECT count(*) FROM inbox") == 0
    (after_pruning,) = (await command.json("replay", str(first.id)))["replays"]
    assert after_pruning["outcome"] == "already-replayed"
    assert await effects(effects_db) == {good.id: 1, first.id: 1}

    # --type replays what of that type is still pending: only the second.
    results = (await command.json("replay", "--type", topic.name))["replays"]
    assert [(r["event_id"], r["outcome"]) for r in results] == [(str(second.id), "applied")]
    assert await effects(effects_db) == {good.id: 1, first.id: 1, second.id: 1}
    assert (await command.json("replay", "--type", topic.name))["replays"] == []
    code, text, _ = await command("replay", "--type", topic.name)
    assert (code, text) == (0, "nothing to replay\n")
    assert await effects(effects_db) == {good.id: 1, first.id: 1, second.id: 1}

    listed = (await command.json("list"))["dead_letters"]
    assert [d["replay"]["outcome"] for d in listed] == ["applied", "applied"]


async def test_replaying_an_event_the_group_applied_meanwhile_is_a_no_op(
    topic: ScratchTopic, effects_db: ScratchDatabase, poisoned: Poisoned
) -> None:
    first, command = poisoned.first, poisoned.command
    # A copy of the event reached the group with the fix deployed (the consumer's unit of
    # work: inbox mark and effect in one transaction).
    group = topic.dlt.removeprefix("dlt.")
    async with effects_db.db.transaction(tenant_id=first.tenant_id) as tx:
        assert await PostgresInbox().claim(tx, group, first.id)
        await fixed_record_effect(tx, first)

    (result,) = (await command.json("replay", str(first.id)))["replays"]
    assert result["outcome"] == "duplicate"
    assert (await effects(effects_db))[first.id] == 1
    (again,) = (await command.json("replay", str(first.id)))["replays"]
    assert again["outcome"] == "already-replayed"
    assert (await effects(effects_db))[first.id] == 1


async def test_a_replay_whose_handler_still_fails_commits_nothing_and_exits_1(
    effects_db: ScratchDatabase, poisoned: Poisoned
) -> None:
    first, command = poisoned.first, poisoned.command
    command.handler = record_effect  # not fixed yet
    before = await state(effects_db)
    code, out, _ = await command("replay", str(first.id))
    assert code == 1
    assert "failed: ValueError: payload n=-1 is poison for this handler" in out
    assert await state(effects_db) == before
    command.handler = fixed_record_effect
    (result,) = (await command.json("replay", str(first.id)))["replays"]
    assert result["outcome"] == "applied"


async def test_bad_requests_exit_2_with_a_clear_message_and_change_nothing(
    stack: Stack,
    topic: ScratchTopic,
    effects_db: ScratchDatabase,
    poisoned: Poisoned,
    producer: Any,
) -> None:
    load_all()  # the suite's event types, so tenant.created is a known type
    command = poisoned.command
    # A record that is no event at all, dead-lettered as MalformedEvent.
    await producer.send_and_wait(topic.name, b"\xff not json", key=b"k")
    letters = await eventually(
        lambda: _at_least(read_dead_letters(stack.kafka_bootstrap, [topic.dlt]), 3),
        timeout=30,
        message="the malformed record dead-lettered",
    )
    malformed = next(d for d in letters if d.error_type == "MalformedEvent")
    unknown = str(uuid4())
    before = await state(effects_db)
    cases = [
        (["show", unknown], f"no dead letter of event {unknown}"),
        (["replay", unknown], f"no dead letter of event {unknown}"),
        (["replay", "--type", "no.such.type"], "unknown event type 'no.such.type'"),
        (["list", "--type", "no.such.type"], "unknown event type 'no.such.type'"),
        (["replay", "--type", "tenant.created"], "does not consume tenant.created"),
        (["show", "not-an-id"], "is not an event id, a dlt ref"),
        (["show", f"{topic.dlt}:0:999999"], "no dead letter at"),
        (["replay", "--type", topic.name, "--since", "yesterday"], "neither an ISO 8601"),
        (["replay"], "replay takes an event id, a dlt ref or --type"),
        (["replay", unknown, "--type", topic.name], "replay takes an event id, a dlt ref"),
        (["replay", malformed.ref], "is not a valid event and cannot be replayed"),
        (["replay", "--bogus"], "unrecognized arguments"),
        (["frobnicate"], "invalid choice"),
    ]
    for argv, message in cases:
        code, out, err = await command(*argv)
        assert code == 2, (argv, out, err)
        assert message in err, (argv, err)
        assert out == "", argv
    assert await state(effects_db) == before

    # Kafka out of reach (a closed loopback port): a clear message and exit 1, not a trace.
    command.bootstrap = "127.0.0.1:1"
    code, out, err = await command("replay", "--type", topic.name)
    assert code == 1
    assert "Kafka or the database is out of reach, try again" in err
    command.bootstrap = stack.kafka_bootstrap

    # --dry-run says what it would do and does nothing.
    results = (await command.json("replay", "--type", topic.name, "--dry-run"))["replays"]
    assert {r["outcome"] for r in results} == {"would-replay"}
    assert len(results) == 2
    assert await state(effects_db) == before


async def _has(probe: Any, event_id: UUID) -> bool:
    return event_id in await probe


async def _at_least(probe: Any, count: int) -> Any:
    found = await probe
    return found if len(found) >= count else None
