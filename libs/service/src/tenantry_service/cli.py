"""One command per service, the same subcommands for all five:

tenantry-<service> migrate   apply this service's migrations (owner role)
tenantry-<service> api       serve HTTP (uvicorn)
tenantry-<service> worker    run consumers and the outbox relay
tenantry-<service> openapi   print the OpenAPI 3.1 document
tenantry-<service> dead-letters list|show|replay   (tenantry_events.dead_letters_cli)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from urllib.parse import urlparse

from tenantry_events.pg import backbone_migrations, migrate, package_migrations
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
    return await migrate(dsn, all_migrations(spec), app_role=app_user)


def service_main(spec: ServiceSpec, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"tenantry-{spec.name}", description=spec.description)
    commands = ["migrate", "api", "worker", "openapi", "dead-letters"]
    parser.add_argument("command", choices=commands)
    parser.add_argument("args", nargs=argparse.REMAINDER, help="dead-letters' own arguments")
    args = parser.parse_args(argv)
    if args.args and args.command != "dead-letters":
        parser.error(f"unrecognized arguments: {' '.join(args.args)}")
    try:
        settings = load_settings(spec.settings_cls)
    except SettingsError as exc:
        print(f"tenantry-{spec.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    setup_logging(spec.name, settings.log_level)
    setup_telemetry(spec.name, settings.otel_exporter, settings.region)
    runtime = Runtime.build(spec.name, settings)

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
            db=runtime.db, inbox=runtime.inbox, handlers=spec.handlers(runtime), groups=groups
        )
        command = run_command(
            args.args,
            prog=f"{parser.prog} dead-letters",
            bootstrap=settings.kafka_bootstrap,
            replayer=replayer,
        )
        raise SystemExit(asyncio.run(command))
    else:
        from tenantry_http.http_server import serve

        serve(asgi_app(spec, runtime), settings)
