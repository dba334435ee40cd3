"""Where the real servers of the local stack are (deploy/local/stack.env + environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[5]
STACK_ENV = REPO / "deploy" / "local" / "stack.env"


def read_stack_env(path: Path = STACK_ENV) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = os.environ.get(key.strip(), value.strip())
    return values


@dataclass(frozen=True)
class Stack:
    env: dict[str, str]

    def _get(self, key: str) -> str:
        return self.env[f"TENANTRY_{key}"]

    @property
    def pg_port(self) -> int:
        return int(self._get("PG_PORT"))

    def owner_dsn(self, database: str) -> str:
        return (
            f"postgresql://{self._get('PG_OWNER')}:{self._get('PG_OWNER_PASSWORD')}"
            f"@127.0.0.1:{self.pg_port}/{database}"
        )

    def app_dsn(self, database: str) -> str:
        return (
            f"postgresql://{self._get('PG_APP')}:{self._get('PG_APP_PASSWORD')}"
            f"@127.0.0.1:{self.pg_port}/{database}"
        )

    def super_dsn(self, database: str = "postgres") -> str:
        return (
            f"postgresql://{self._get('PG_SUPERUSER')}:{self._get('PG_SUPERPASSWORD')}"
            f"@127.0.0.1:{self.pg_port}/{database}"
        )

    @property
    def app_role(self) -> str:
        return self._get("PG_APP")

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self._get('KAFKA_PORT')}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self._get('REDIS_PORT')}/0"

    def service_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self._get(service.upper() + '_PORT')}"

    def service_database(self, service: str) -> str:
        return f"tenantry_{service}"

    @property
    def stack_script(self) -> Path:
        return REPO / "deploy" / "local" / "stack.sh"


def load_stack() -> Stack:
    return Stack(read_stack_env())
