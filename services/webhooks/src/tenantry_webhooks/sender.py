"""The dispatcher's HTTP side: the outbound client (SSRF guard on the connected address,
connect and total timeouts, a streamed and capped read, no redirects), and what a send
returns whatever happened."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tenantry_outbound.outbound import (
    BlockedDestination,
    OutboundClient,
    OutboundError,
    OutboundPolicy,
    OutboundTimeout,
)
from tenantry_webhooks.settings import WebhooksSettings

USER_AGENT = "Tenantry-Webhooks/1"


@dataclass(frozen=True)
class Response:
    """What the receiver answered (status None: no answer, see `error`)."""

    status: int | None
    headers: Mapping[str, str]
    body: str
    truncated: bool
    error: str | None = None


class Sender(Protocol):
    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> Response: ...


def outbound_policy(settings: WebhooksSettings) -> OutboundPolicy:
    return OutboundPolicy(
        allow_networks=settings.allow_networks(),
        allow_http=settings.webhook_allow_http,
        connect_timeout=settings.webhook_connect_timeout_seconds,
        total_timeout=settings.webhook_timeout_seconds,
        max_response_bytes=settings.webhook_max_response_bytes,
        user_agent=USER_AGENT,
    )


class OutboundSender:
    """Every failure to get an answer becomes a Response without a status and with an
    error a tenant can act on (it is shown in the delivery log)."""

    def __init__(self, client: OutboundClient) -> None:
        self.client = client

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> Response:
        try:
            answer = await self.client.request("POST", url, headers=dict(headers), content=body)
        except BlockedDestination as exc:
            return Response(None, {}, "", False, f"destination refused: {exc.reason}")
        except OutboundTimeout as exc:
            return Response(None, {}, "", False, f"timed out ({exc.phase})")
        except OutboundError as exc:
            return Response(None, {}, "", False, f"no response: {exc}")
        return Response(
            answer.status,
            {k.lower(): v for k, v in answer.headers.items()},
            answer.body.decode("utf-8", "replace"),
            answer.truncated,
        )
