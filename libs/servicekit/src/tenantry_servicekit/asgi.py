"""Loose ASGI types for the pure-ASGI layers of the pipeline (as asgiref spells them);
Litestar's own ASGI types are TypedDict unions too strict for raw message plumbing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
