"""Settings from the environment, validated at start-up.

One style for every service: a msgspec Struct whose fields map to TENANTRY_<FIELD>
variables. A missing or malformed variable stops the process with a message naming it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

import msgspec

PREFIX = "TENANTRY_"


class SettingsError(SystemExit):
    """Raised at start-up; its message names every bad variable."""


class ServiceSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What every service process needs. Services subclass it to add their own."""

    database_url: str
    migration_database_url: str = ""
    kafka_bootstrap: str
    redis_url: str = "redis://127.0.0.1:6379/0"
    region: str = "local"
    # Data residency (tenantry_regions, docs/residency.md): every region of the deployment
    # as JSON ([{"id", "jurisdiction", "urls": {service: public base URL}}]; empty = this
    # region alone, its URLs from service_urls), the region hosting the global directory
    # (empty = this one), the directory's base URL (empty = that region's tenancy URL) and
    # the secret every region presents to it. Each service pulls its replica of the
    # directory every directory_pull_seconds.
    regions: str = ""
    directory_region: str = ""
    directory_url: str = ""
    directory_secret: str = ""
    directory_pull_seconds: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # true while a rolling upgrade from a release before issue 20 is under way: appends
    # then write each outbox row's headers too, which older relays need (the current relay
    # derives them from the event row). docs/deploy.md, "Upgrade".
    outbox_stored_headers: bool = False
    # Several api processes of one service on one port (SO_REUSEPORT): the kernel spreads
    # connections over them, as a Kubernetes Service spreads them over pods. One process
    # runs one event loop on one core; this is how a host gives a service more cores.
    http_reuse_port: bool = False
    worker_health_port: int = 0  # the worker's /healthz and /readyz (0 = not served)
    log_level: str = "INFO"
    otel_exporter: str = "none"  # none | console | memory
    db_pool_size: int = 10
    request_max_body_bytes: int = 1_048_576
    shutdown_grace_seconds: float = 10.0
    service_urls: str = ""  # "tenancy=http://...,identity=http://..."
    jwks_ttl_seconds: float = 300.0
    apikey_usage_flush_seconds: float = 10.0
    master_key: str = ""  # base64 of 32 bytes; services that keep readable secrets need it
    # Shared by the services of one deployment: it authenticates calls to tenancy's
    # internal key API and wraps the keys it answers (docs/data-keys.md). Empty: no keys.
    internal_api_secret: str = ""
    redis_timeout_seconds: float = 0.25  # past it a rate-limit decision falls back to local
    # Rate limits (ratelimit.py): what applies before the ratelimit service has published a
    # tenant's policies, how fresh a policy read must be, and the local fallback's share.
    ratelimit_enabled: bool = True
    # ratelimit's decision API answers well-formed operator requests without the general
    # pipeline (tenantry_ratelimit.fast_path); false sends every request through it.
    ratelimit_decisions_fast_path: bool = True
    ratelimit_policy_ttl_seconds: float = 1.0
    ratelimit_default_rps: float = 10.0
    ratelimit_default_burst: int = 20
    ratelimit_max_in_flight: int = 20  # per tenant, until ratelimit publishes one; 0 = none
    ratelimit_slot_ttl_seconds: float = 60.0
    ratelimit_local_divisor: int = 1  # instances expected to share the limit if Redis is down
    # Refusals are counted in Redis per tenant and policy; the ratelimit service reports
    # them as ratelimit.throttled at most once per tenant per window. 0 counts nothing.
    ratelimit_throttle_window_seconds: float = 60.0
    # Admission control (every knob is in tenantry_guardrails.admission.settings; these are
    # the ones worth setting).
    admission_enabled: bool = True
    admission_mode: str = "adaptive"  # adaptive (Gradient2) | aimd | fixed
    admission_fixed_limit: int = 64
    admission_initial_limit: int = 20
    admission_min_limit: int = 4
    admission_max_limit: int = 256
    admission_max_queue: int = 128
    admission_critical_max_wait_seconds: float = 5.0
    admission_default_max_wait_seconds: float = 1.0
    admission_sheddable_max_wait_seconds: float = 0.25
    admission_large_list_threshold: int = 200
    # The utilization shedder: refuse a class at once while the event loop lags this much
    # (ms; 0 = never). See AdmissionSettings.
    admission_sheddable_loop_lag_ms: float = 25.0
    admission_default_loop_lag_ms: float = 100.0
    # Housekeeping (housekeeping.py): the worker prunes the inbox and idempotency_keys by
    # age every interval, in batches. The inbox's 168 h is Kafka's default log retention:
    # a record can come back (an offset reset re-reads the topic) for as long as the broker
    # keeps it, so keep this at least the topics' retention.ms. Idempotency keys: Stripe's
    # 24 h, never less than the middleware replays them (idempotency.RETENTION).
    inbox_retention_hours: Annotated[float, msgspec.Meta(gt=0)] = 168.0
    idempotency_retention_hours: Annotated[float, msgspec.Meta(gt=0)] = 24.0
    housekeeping_interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    housekeeping_batch_size: Annotated[int, msgspec.Meta(gt=0)] = 5000
    # Object storage (tenantry_objectstore; export archives): "local" keeps objects under
    # object_store_dir (make up; a relative path is from the working directory), "s3" in
    # s3_bucket on an S3-compatible API (production). s3_endpoint empty = AWS's for the
    # region. Parts of a streamed upload are s3_part_size_bytes (S3's minimum is 5 MiB).
    object_store: Literal["local", "s3"] = "local"
    object_store_dir: str = ".local/objects"
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key: str = ""
    s3_secret_key: str = ""  # a secret: masked in repr (below), never logged
    s3_part_size_bytes: Annotated[int, msgspec.Meta(ge=5 * 1024 * 1024)] = 8 * 1024 * 1024
    s3_create_bucket: bool = False  # make the bucket when missing (local stacks, tests)

    def __repr__(self) -> str:
        # Settings end up in tracebacks and debug logs: secrets show as "***".
        shown = ", ".join(
            f"{name}={'***' if _is_secret(name) and value else repr(value)}"
            for name in self.__struct_fields__
            for value in (getattr(self, name),)
        )
        return f"{type(self).__name__}({shown})"

    def service_url(self, service: str) -> str:
        for item in self.service_urls.split(","):
            name, _, url = item.partition("=")
            if name.strip() == service:
                return url.strip()
        raise KeyError(f"{PREFIX}SERVICE_URLS names no URL for {service!r}")


def _is_secret(field: str) -> bool:
    return field.endswith(("secret", "secret_key", "master_key", "password"))


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    problems: list[str] = []
    fields = msgspec.structs.fields(cls)
    for field in fields:
        name = PREFIX + field.name.upper()
        if name in env:
            raw[field.name] = env[name]
        elif field.required:
            problems.append(f"{name} is required but not set")
    if not problems:
        try:
            # strict=False lets "8000" become 8000 and "true" become True.
            return msgspec.convert(raw, type=cls, strict=False)
        except msgspec.ValidationError as exc:
            # msgspec says "... - at `$.http_port`": name the variable instead.
            message = str(exc)
            for field in fields:
                message = message.replace(f"`$.{field.name}`", PREFIX + field.name.upper())
            problems.append(message)
    raise SettingsError(f"{cls.__name__}: invalid settings: " + "; ".join(problems))
