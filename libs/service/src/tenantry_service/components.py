"""What an api process builds once at startup (stores, clients, service objects) and hands to
its routes by name through Litestar's dependency injection, typed.

The app factory hands every hook and route one `Runtime`; the built object is kept on it
(`runtime.extras`) under a key only this module reads, and each route declares what it uses
as `NamedDependency[<its type>]`. A service's app.py makes one `StartupComponents` and wires
its `start`, `stop` and `dependencies()` into the ServiceSpec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from litestar.di import NamedDependency, Provide

from tenantry_service.runtime import Runtime

C = TypeVar("C")


class StartupComponents(Generic[C]):
    """One object of type `C`, built by `build` when the api starts and closed by `close`
    when it stops."""

    def __init__(
        self,
        component_type: type[C],
        build: Callable[[Runtime], Awaitable[C]],
        *,
        close: Callable[[C], Awaitable[None]] | None = None,
    ) -> None:
        self._type = component_type
        self._build = build
        self._close = close
        self._key = f"{component_type.__module__}.{component_type.__qualname__}"

    async def start(self, runtime: Runtime) -> None:
        runtime.extras[self._key] = await self._build(runtime)

    async def stop(self, runtime: Runtime) -> None:
        built = runtime.extras.pop(self._key, None)
        if isinstance(built, self._type) and self._close is not None:
            await self._close(built)

    def of(self, runtime: Runtime) -> C:
        built = runtime.extras.get(self._key)
        if not isinstance(built, self._type):
            raise RuntimeError(f"{self._type.__name__} is built when the api starts")
        return built

    def provide(self, attribute: str | None = None) -> Provide:
        """A provider of the object itself, or of one of its attributes."""

        def provide(runtime: NamedDependency[Runtime]) -> object:
            built = self.of(runtime)
            return built if attribute is None else getattr(built, attribute)

        return Provide(provide, sync_to_thread=False)

    def dependencies(self, name: str | None = None) -> dict[str, Provide]:
        """Route dependencies: each field of a dataclass by its own name, or (with `name`)
        the object itself under that name."""
        if name is not None:
            return {name: self.provide()}
        fields = dataclasses.fields(self._type)  # type: ignore[arg-type]
        return {f.name: self.provide(f.name) for f in fields}
