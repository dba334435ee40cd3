"""One command per service, the same subcommands for all five:

tenantry-<service> migrate   apply this service's migrations (owner role)
tenantry-<service> api       serve HTTP (uvicorn)
tenantry-<service> worker    run consumers and the outbox relay
tenantry-<service> openapi   print the OpenAPI 3.1 document
tenantry-<service> dead-letters list|show|replay   (tenantry_events.dead_letters_cli)
tenantry-<service> verify-state [--rebuild]   fold every stream of the service's
                             aggregates, compare with their state rows (exit 1 on a
                             difference); --rebuild rewrites the rows from the events
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TextIO
from urllib.parse import urlparse

from tenantry_events.pg import backbone_migrations, migrate, package_migrations
from tenantry_events.state_check import check_state
from tenantry_platform.settings import ServiceSettings, SettingsError, load_settings
from tenantry_platform.telemetry import setup_logging, setup_telemetry
from tenantry_projections import projection_migrations
from tenantry_service.app import ServiceSpec, asgi_app, create_app
from tenantry_service.runtime import Runtime


def all_migrations(spec: ServiceSpec) -> list:  # type: ignore[type-arg]
    out = [*backbone_migrations(), *projection_migrations()]
    for package in spec.migration_packages:
        out += package_migrations(package)
    return out


async def run_migrations(spec: ServiceSpec, settings: ServiceSettings) -> list[str]:
    dsn = settings.migration_database_url or settings.database_url
    app_user = urlparse(settings.database_url).username
    applied = await migrate(dsn, all_migrations(spec), app_role=app_user)
    if spec.more_migrations is not None:
        applied += await spec.more_migrations(settings)
    return applied


async def verify_state(
    spec: ServiceSpec, runtime: Runtime, *, rebuild: bool, out: TextIO = sys.stdout
) -> int:
    """Print each aggregate whose state row differs from its stream's fold (rebuilt, with
    `rebuild`); the exit status is 1 while any difference remains, else 0."""
    prog = f"tenantry-{spec.name} verify-state"
    if not spec.aggregates:
        print(f"{prog}: no event-sourced aggregates registered", file=out)
        return 0
    await runtime.db.connect()
    try:
        drifts = await check_state(runtime.db, runtime.events, spec.aggregates, rebuild=rebuild)
    finally:
        await runtime.db.close()
    for drift in drifts:
        outcome = "rebuilt" if drift.rebuilt else "differs"
        print(f"{drift.kind} {drift.stream_id}: {outcome}", file=out)
        for line in [*drift.differences, *([drift.error] if drift.error else [])]:
            print(f"  {line}", file=out)
    left = sum(1 for d in drifts if not d.rebuilt)
    kinds = ", ".join(k.name for k in spec.aggregates)
    print(f"{prog}: {len(drifts)} difference(s), {left} left ({kinds})", file=out)
    return 1 if left else 0


def service_main(spec: ServiceSpec, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"tenantry-{spec.name}", description=spec.description)
    commands = ["migrate", "api", "worker", "openapi", "dead-letters", "verify-state"]
    parser.add_argument("command", choices=commands)
    parser.add_argument(
        "args", nargs=argparse.REMAINDER, help="dead-letters' own arguments, or --rebuild"
    )
    args = parser.parse_args(argv)
    if args.command == "dead-letters":
        unknown = []  # its own parser checks them
    elif args.command == "verify-state":
        unknown = [a for a in args.args if a != "--rebuild"]
    else:
        unknown = args.args
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        settings = load_settings(spec.settings_cls)
    except SettingsError as exc:
        print(f"tenantry-{spec.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(spec.name, settings.log_level)
    setup_telemetry(spec.name, settings.otel_exporter, settings.region)
    runtime = Runtime.build(spec.name, settings, data_keys=spec.data_keys)

    if args.command == "migrate":
        applied = asyncio.run(run_migrations(spec, settings))
        print(f"tenantry-{spec.name}: {len(applied)} migration(s) applied")
    elif args.command == "openapi":
        print(json.dumps(create_app(spec, runtime).openapi_schema.to_schema(), indent=2))
    elif args.command == "worker":
        from tenantry_service.worker import run_worker

        asyncio.run(run_worker(spec, runtime))
    elif args.command == "dead-letters":
        from tenantry_events.dead_letters import Replayer
        from tenantry_events.dead_letters_cli import run_command

        groups = [spec.consumer_group, spec.critical_group, spec.background_group]
        replayer = Replayer(
            db=runtime.db,
            inbox=runtime.inbox,
            handlers=spec.handlers(runtime),
            groups=groups,
            keys=runtime.data_keys,
        )
        command = run_command(
            args.args,
            prog=f"{parser.prog} dead-letters",
            bootstrap=settings.kafka_bootstrap,
            replayer=replayer,
        )
        raise SystemExit(asyncio.run(command))
    elif args.command == "verify-state":
        rebuild = "--rebuild" in args.args
        raise SystemExit(asyncio.run(verify_state(spec, runtime, rebuild=rebuild)))
    else:
        from tenantry_http.http_server import serve

        serve(asgi_app(spec, runtime), settings)
