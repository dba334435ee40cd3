"""StartupComponents: what an api builds at startup reaches its routes by name, typed, and
is closed when it stops; Runtime.settings_as gives the service's own settings type."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from litestar import get
from litestar.di import NamedDependency, Provide
from litestar.testing import create_async_test_client

from tenantry_platform.settings import ServiceSettings
from tenantry_service.components import StartupComponents
from tenantry_service.runtime import Runtime


@dataclass
class Parts:
    greeting: str
    closed: list[str] = field(default_factory=list)


class OtherSettings(ServiceSettings, frozen=True, kw_only=True):
    pass


def runtime() -> Runtime:
    # Nothing connects until used: a runtime is cheap to build in a unit test.
    settings = ServiceSettings(
        database_url="postgresql://x@127.0.0.1:1/x", kafka_bootstrap="127.0.0.1:1"
    )
    return Runtime.build("unit", settings)


async def test_routes_receive_the_built_parts_by_name_and_stop_closes_them() -> None:
    closed: list[str] = []

    async def build(runtime: Runtime) -> Parts:
        return Parts(greeting=f"hello from {runtime.service}", closed=closed)

    async def close(parts: Parts) -> None:
        parts.closed.append("closed")

    parts = StartupComponents(Parts, build, close=close)
    rt = runtime()

    @get("/whole", sync_to_thread=False)
    def whole(me: NamedDependency[Parts]) -> str:
        return me.greeting.upper()

    @get("/field", sync_to_thread=False)
    def one_field(greeting: NamedDependency[str]) -> str:
        return greeting

    with pytest.raises(RuntimeError, match="built when the api starts"):
        parts.of(rt)
    await parts.start(rt)
    dependencies: dict[str, Provide] = {
        "runtime": Provide(lambda: rt, sync_to_thread=False),
        **parts.dependencies("me"),
        "greeting": parts.dependencies()["greeting"],
    }
    async with create_async_test_client([whole, one_field], dependencies=dependencies) as client:
        assert (await client.get("/whole")).text == "HELLO FROM UNIT"
        assert (await client.get("/field")).text == "hello from unit"
    await parts.stop(rt)
    assert closed == ["closed"]
    await parts.stop(rt)  # a second stop (or one without a start) closes nothing
    assert closed == ["closed"]


def test_settings_as_checks_the_services_settings_type() -> None:
    rt = runtime()
    assert rt.settings_as(ServiceSettings) is rt.settings
    with pytest.raises(TypeError, match="settings are not OtherSettings"):
        rt.settings_as(OtherSettings)
