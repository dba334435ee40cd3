"""The dispatcher's HTTP side: servicekit's outbound client (SSRF guard on the connected
address, connect and total timeouts, a streamed and capped read, no redirects)."""

from __future__ import annotations

from collections.abc import Mapping

from tenantry_outbound.outbound import (
    BlockedDestination,
    OutboundClient,
    OutboundError,
    OutboundPolicy,
    OutboundTimeout,
)
from tenantry_webhooks.dispatcher import Response
from tenantry_webhooks.settings import WebhooksSettings


def outbound_policy(settings: WebhooksSettings) -> OutboundPolicy:
    return OutboundPolicy(
        allow_networks=settings.allow_networks(),
        allow_http=settings.webhook_allow_http,
        connect_timeout=settings.webhook_connect_timeout_seconds,
        total_timeout=settings.webhook_timeout_seconds,
        max_response_bytes=settings.webhook_max_response_bytes,
        user_agent="Tenantry-Webhooks/1",
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
