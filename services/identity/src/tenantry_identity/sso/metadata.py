"""IdP metadata from a URL: fetched through tenantry_outbound's client (SSRF guard on the
connected address, timeouts, a size cap, a circuit breaker per host), parsed with
python3-saml's parser, and refreshed on a schedule by the worker. A failed refresh keeps
the last good settings and shows the error on the connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from tenantry_events.pg import Database
from tenantry_identity.sso import saml
from tenantry_identity.sso.store import ConnectionRow, SsoStore
from tenantry_outbound.outbound import (
    BlockedDestination,
    BreakerOpen,
    OutboundClient,
    OutboundError,
    OutboundTimeout,
)
from tenantry_platform.clock import Clock

log = logging.getLogger("tenantry.identity.sso")


class MetadataFetcher:
    def __init__(self, db: Database, client: OutboundClient, store: SsoStore, clock: Clock) -> None:
        self.db = db
        self.client = client
        self.store = store
        self.clock = clock

    async def fetch(self, url: str) -> saml.IdpMetadata:
        """Fetch and parse; ValueError with a reason a tenant admin can act on."""
        # One breaker per IdP origin: a dead IdP fails fast without pausing the others.
        host = urlsplit(url).netloc or "?"
        try:
            answer = await self.client.request(
                "GET",
                url,
                headers={"Accept": "application/samlmetadata+xml, application/xml"},
                breaker_key=f"saml-metadata:{host}",
            )
        except BlockedDestination as exc:
            raise ValueError(f"metadata URL refused: {exc.reason}") from None
        except OutboundTimeout as exc:
            raise ValueError(f"metadata URL timed out ({exc.phase})") from None
        except BreakerOpen:
            raise ValueError(f"{host} has been failing; fetching paused for a while") from None
        except OutboundError as exc:
            raise ValueError(f"metadata URL unreachable: {exc}") from None
        if answer.status != 200:
            raise ValueError(f"metadata URL answered HTTP {answer.status}")
        if answer.truncated:
            raise ValueError("metadata document is larger than the size cap")
        return await asyncio.to_thread(saml.parse_idp_metadata, answer.body)

    async def refresh(self, row: ConnectionRow, *, by: str | None = None) -> ConnectionRow:
        """Fetch a connection's metadata URL and apply it (new certificates, endpoints).
        `by`: the admin who asked for it now (not the worker's schedule); their refresh says
        what it found (sso.metadata_refreshed), in the transaction that records it, and a
        change it applies is theirs (sso.connection_changed)."""
        url = str(row.config["metadata_url"])
        try:
            meta = await self.fetch(url)
        except ValueError as exc:
            async with self.db.transaction(tenant_id=row.tenant_id) as tx:
                await self.store.record_metadata_error(tx, row.connection_id, str(exc))
                fresh = await self.store.get_connection(tx, row.connection_id)
                if by is not None:
                    await self.store.metadata_refreshed(tx, row, "failed", str(exc))
            # Said once per new error; the connection shows it (metadata_error) meanwhile.
            if str(exc)[:500] != (row.metadata_error or ""):
                log.warning("metadata refresh of connection %s failed: %s", row.connection_id, exc)
            return fresh or row
        config = dict(row.config)
        config.update(saml.config_fields(meta))
        async with self.db.transaction(tenant_id=row.tenant_id) as tx:
            current = await self.store.get_connection(tx, row.connection_id)
            if current is None:
                return row
            if current.config == config:
                await self.store.record_metadata_fresh(tx, row.connection_id)
                if by is not None:
                    await self.store.metadata_refreshed(tx, current, "unchanged")
                return await self.store.get_connection(tx, row.connection_id) or current
            updated = await self.store.update_connection(
                tx,
                current,
                changed_by=by or "metadata-refresh",
                config=config,
                metadata_fetched_at=datetime.now(UTC),
                metadata_error=None,
            )
            if by is not None:
                await self.store.metadata_refreshed(tx, updated, "updated")
            return updated

    async def run(self, stop: asyncio.Event, every: float) -> None:
        """The worker's loop: refresh what is due, then sleep a little."""
        while not stop.is_set():
            cutoff = datetime.fromtimestamp(self.clock.now(), UTC) - timedelta(seconds=every)
            async with self.db.transaction(platform=True) as tx:
                due = await self.store.connections_due_for_metadata(tx, cutoff)
                await self.store.purge_expired(tx, datetime.fromtimestamp(self.clock.now(), UTC))
            for row in due:
                if stop.is_set():
                    break
                try:
                    await self.refresh(row)
                except Exception:  # one tenant's broken IdP must not stop the others
                    log.exception("metadata refresh of %s crashed", row.connection_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(every, 30.0))
