"""`tenantry-<service> dead-letters`: the operator's view of a service's dead letters.

    dead-letters list [--type TYPE] [--since WHEN] [--json]
    dead-letters show <event id | dlt ref | offset> [--json]
    dead-letters replay <event id | dlt ref | offset> [--dry-run] [--json]
    dead-letters replay --type TYPE [--since WHEN] [--dry-run] [--json]

A dlt ref is what `list` prints: `<dlt topic>:<partition>:<offset>`; `<partition>:<offset>`
or a bare offset also work when they name one record. WHEN is an ISO 8601 time (UTC if it
names no zone) or an age such as 90m, 6h, 2d. `replay --type` replays the records of that
type not replayed yet. How a replay applies an event at most once: dead_letters.py.

Exit codes: 0 done; 1 some replay failed (its error is printed; nothing of it committed);
2 a bad request (an unknown id, ref or type, a bad WHEN, a record that cannot be replayed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO
from uuid import UUID

import asyncpg
from aiokafka.errors import KafkaError

from tenantry_events.dead_letters import (
    AlreadyReplayed,
    DeadLetter,
    DeadLetterError,
    Replay,
    Replayer,
    read_dead_letters,
    replay_of,
    replays_of,
)
from tenantry_events.envelope import MalformedEvent
from tenantry_events.faults import is_transient_db_error

Now = Callable[[], datetime]
Replays = Mapping[tuple[str, int, int], Replay]
_AGE = re.compile(r"([0-9]{1,9})([smhd])")
_NUMBER = re.compile(r"[0-9]{1,19}")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def parser(prog: str) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog=prog, description="Inspect and replay this service's dead letters."
    )
    commands = root.add_subparsers(dest="action", required=True)
    listing = commands.add_parser("list", help="every dead letter, oldest first")
    listing.add_argument("--type", dest="event_type", help="only events of this type")
    listing.add_argument("--since", help="only dead-lettered since (ISO time or 90m, 6h, 2d)")
    show = commands.add_parser("show", help="one dead letter in full")
    show.add_argument("selector", help="event id, dlt ref (topic:partition:offset) or offset")
    replay = commands.add_parser("replay", help="apply dead letters again, after a fix")
    replay.add_argument("selector", nargs="?", help="event id, dlt ref or offset")
    replay.add_argument("--type", dest="event_type", help="every pending dead letter of a type")
    replay.add_argument("--since", help="with --type: only dead-lettered since")
    replay.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    for command in (listing, show, replay):
        command.add_argument("--json", action="store_true", help="JSON instead of a table")
    return root


async def run_command(
    argv: Sequence[str],
    *,
    prog: str,
    bootstrap: str,
    replayer: Replayer,
    out: TextIO | None = None,
    err: TextIO | None = None,
    now: Now = _utcnow,
) -> int:
    """Run one dead-letters command; returns the exit code."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser(prog).parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage and why (or the help)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        await replayer.db.connect()
        letters = await read_dead_letters(bootstrap, replayer.dead_letter_topics)
        replays = await replays_of(replayer.db, replayer.dead_letter_topics)
        if args.action == "list":
            chosen = _filtered(letters, replayer, args.event_type, args.since, now)
            _print_list(out, chosen, replays, as_json=args.json)
            return 0
        if args.action == "show":
            _print_show(out, select(letters, args.selector), replays, replayer, as_json=args.json)
            return 0
        return await _replay(out, args, letters, replays, replayer, now)
    except DeadLetterError as exc:
        print(f"{prog}: {exc}", file=err)
        return 2
    except asyncpg.UndefinedTableError as exc:
        print(f"{prog}: {exc}: run `migrate` first", file=err)
        return 1
    except Exception as exc:
        if not (isinstance(exc, KafkaError) or is_transient_db_error(exc)):
            raise
        print(f"{prog}: Kafka or the database is out of reach, try again: {exc!r}", file=err)
        return 1
    finally:
        await replayer.db.close()


async def _replay(
    out: TextIO,
    args: argparse.Namespace,
    letters: list[DeadLetter],
    replays: Replays,
    replayer: Replayer,
    now: Now,
) -> int:
    if (args.selector is None) == (args.event_type is None):
        raise DeadLetterError("replay takes an event id, a dlt ref or --type TYPE (one of them)")
    if args.selector is not None:
        if args.since is not None:
            raise DeadLetterError("--since goes with --type, not with one record")
        targets = select(letters, args.selector)
        for letter in targets:
            if replay_of(letter, replays) is None:
                replayer.check(letter)  # refuse before anything is applied
    else:
        if not replayer.handles(args.event_type):
            _known_type(args.event_type, replayer)
            raise DeadLetterError(f"this service does not consume {args.event_type}")
        targets = [
            letter
            for letter in _filtered(letters, replayer, args.event_type, args.since, now)
            if replay_of(letter, replays) is None
        ]
    results = [await _replay_one(letter, replays, replayer, args.dry_run) for letter in targets]
    if args.json:
        json.dump({"replays": results}, out, indent=2)
        out.write("\n")
    elif not results:
        out.write("nothing to replay\n")
    else:
        rows = [
            [
                r["ref"],
                r["event_id"] or "-",
                r["event_type"] or "-",
                f"{r['outcome']}: {r['error']}" if r.get("error") else r["outcome"],
            ]
            for r in results
        ]
        _table(out, ["REF", "EVENT ID", "TYPE", "OUTCOME"], rows)
    return 1 if any(r["outcome"] == "failed" for r in results) else 0


async def _replay_one(
    letter: DeadLetter, replays: Replays, replayer: Replayer, dry_run: bool
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ref": letter.ref,
        "event_id": str(letter.event_id) if letter.event_id else None,
        "event_type": letter.event_type,
    }
    earlier = replay_of(letter, replays)
    if earlier is not None:
        return {**result, "outcome": "already-replayed", "earlier": _replay_json(earlier)}
    try:
        replayer.check(letter)
        if dry_run:
            return {**result, "outcome": "would-replay"}
        outcome = await replayer.replay(letter)
    except AlreadyReplayed:
        return {**result, "outcome": "already-replayed"}
    except Exception as exc:  # the handler still fails: report it, commit nothing
        return {**result, "outcome": "failed", "error": f"{type(exc).__name__}: {exc}"}
    # "duplicate": the group had applied the event (a copy redelivered meanwhile)
    return {**result, "outcome": outcome}


def select(letters: Sequence[DeadLetter], selector: str) -> list[DeadLetter]:
    """The records an event id, a ref (`topic:partition:offset`, `partition:offset`) or an
    offset names. An event id may name several (dead-lettered more than once); a partial
    ref must name exactly one."""
    text = selector.strip()
    try:
        event_id = UUID(text)
    except ValueError:
        event_id = None
    if event_id is not None:
        found = [d for d in letters if d.event_id == event_id]
        if not found:
            raise DeadLetterError(f"no dead letter of event {event_id}")
        return found
    parts = text.split(":")
    topic = parts[0] if len(parts) == 3 else None
    numbers = parts[1:] if len(parts) == 3 else parts
    if len(parts) > 3 or not all(_NUMBER.fullmatch(n) for n in numbers):
        raise DeadLetterError(
            f"{selector!r} is not an event id, a dlt ref (<topic>:<partition>:<offset>) "
            "or an offset"
        )
    offset = int(numbers[-1])
    partition = int(numbers[0]) if len(numbers) == 2 else None
    found = [
        d
        for d in letters
        if d.offset == offset and partition in (None, d.partition) and topic in (None, d.topic)
    ]
    if not found:
        raise DeadLetterError(f"no dead letter at {selector}")
    if len(found) > 1:
        raise DeadLetterError(
            f"{selector} names {len(found)} dead letters: " + ", ".join(d.ref for d in found)
        )
    return found


def parse_since(text: str, now: Now) -> datetime:
    """An ISO 8601 time (UTC unless it says otherwise) or an age back from now."""
    age = _AGE.fullmatch(text.strip())
    try:
        if age:
            return now() - timedelta(**{_UNITS[age[2]]: int(age[1])})
        when = datetime.fromisoformat(text.strip())
    except (ValueError, OverflowError):
        raise DeadLetterError(
            f"--since {text!r} is neither an ISO 8601 time nor an age like 90m, 6h, 2d"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _known_type(event_type: str, replayer: Replayer) -> None:
    if event_type not in replayer.catalog:
        raise DeadLetterError(f"unknown event type {event_type!r}")


def _filtered(
    letters: Sequence[DeadLetter],
    replayer: Replayer,
    event_type: str | None,
    since: str | None,
    now: Now,
) -> list[DeadLetter]:
    chosen = list(letters)
    if event_type is not None:
        _known_type(event_type, replayer)
        chosen = [d for d in chosen if d.event_type == event_type]
    if since is not None:
        cutoff = parse_since(since, now)
        chosen = [d for d in chosen if d.dead_lettered_at >= cutoff]
    return chosen


# --------------------------------------------------------------------------- output


def _replay_json(replay: Replay | None) -> dict[str, str] | None:
    if replay is None:
        return None
    return {"outcome": replay.outcome, "replayed_at": replay.replayed_at.isoformat()}


def letter_json(letter: DeadLetter, replays: Replays) -> dict[str, Any]:
    return {
        "ref": letter.ref,
        "dlt_topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "dead_lettered_at": letter.dead_lettered_at.isoformat(),
        "original_topic": letter.original_topic,
        "consumer_group": letter.consumer_group,
        "key": letter.key.decode(errors="replace") if letter.key is not None else None,
        "event_id": str(letter.event_id) if letter.event_id else None,
        "event_type": letter.event_type,
        "error_type": letter.error_type,
        "error": letter.error,
        "replay": _replay_json(replay_of(letter, replays)),
    }


def _print_list(
    out: TextIO, letters: Sequence[DeadLetter], replays: Replays, *, as_json: bool
) -> None:
    if as_json:
        json.dump({"dead_letters": [letter_json(d, replays) for d in letters]}, out, indent=2)
        out.write("\n")
        return
    if not letters:
        out.write("no dead letters\n")
        return
    rows = []
    for d in letters:
        replay = replay_of(d, replays)
        rows.append(
            [
                d.ref,
                d.dead_lettered_at.strftime("%Y-%m-%d %H:%M:%S"),
                d.event_type or "-",
                str(d.event_id) if d.event_id else "-",
                _clip(d.error or d.error_type, 60),
                f"{replay.outcome} {replay.replayed_at:%Y-%m-%d %H:%M}" if replay else "-",
            ]
        )
    _table(out, ["REF", "DEAD-LETTERED (UTC)", "TYPE", "EVENT ID", "ERROR", "REPLAYED"], rows)


def _print_show(
    out: TextIO,
    letters: Sequence[DeadLetter],
    replays: Replays,
    replayer: Replayer,
    *,
    as_json: bool,
) -> None:
    documents = []
    for letter in letters:
        document = letter_json(letter, replays)
        document["headers"] = {k: v.decode(errors="replace") for k, v in letter.headers}
        try:
            document["payload"] = json.loads(letter.value)
        except ValueError:  # not JSON (or not UTF-8): show the bytes, escaped
            document["payload"] = None
            document["value"] = letter.value.decode(errors="backslashreplace")
        try:
            envelope = letter.envelope(replayer.catalog)
            document["tenant_id"] = str(envelope.tenant_id)
            document["subject"] = envelope.subject
            document["aggregate_version"] = envelope.aggregate_version
            document["occurred_at"] = envelope.occurred_at.isoformat()
            document["replayable"] = replayer.handles(envelope.type)
        except MalformedEvent as exc:
            document["replayable"] = False
            document["malformed"] = str(exc)
        documents.append(document)
    if as_json:
        json.dump({"dead_letters": documents}, out, indent=2)
        out.write("\n")
        return
    for document in documents:
        for name, value in document.items():
            if name in ("headers", "payload", "value"):
                continue
            if name == "replay":
                value = f"{value['outcome']} at {value['replayed_at']}" if value else "no"
            out.write(f"{name + ':':<19} {_printable('-' if value is None else str(value))}\n")
        out.write("headers:\n")
        for name, value in document["headers"].items():
            if name != "dlt_error":
                out.write(f"  {_printable(name)}: {_printable(value)}\n")
        out.write("payload:\n")
        body = (
            json.dumps(document["payload"], indent=2)
            if document["payload"] is not None
            else document["value"]
        )
        out.write("".join(f"  {_printable(line)}\n" for line in body.splitlines() or [""]))
        out.write("\n")


def _table(out: TextIO, header: list[str], rows: list[list[str]]) -> None:
    rows = [[_printable(cell) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _printable(text: str) -> str:
    """Record contents are whatever reached the topic: control characters (an escape
    sequence, a NUL) are shown escaped, never sent to the operator's terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
