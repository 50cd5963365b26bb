"""Composition root of the dispatcher: builds everything from Settings."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from faststream.nats import NatsBroker
from faststream.security import BaseSecurity, SASLPlaintext
from nats.aio.client import Client

from baton_contracts.nats import DISPATCHER_QUEUE
from baton_dispatcher.backlog import ReportsBacklog
from baton_dispatcher.edges import CONCURRENT_REQUESTS, SERVICE, register, register_admin
from baton_dispatcher.relay import OutboxRelay
from baton_dispatcher.reports import ReportsConsumer
from baton_dispatcher.writer import Writer
from baton_domain.catalog import Catalog
from baton_platform.eventstore import open_executions
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.nats import NatsIdentity, connect, ensure_streams, identity
from baton_platform.nats_access import DISPATCHER
from baton_platform.requests import RequestEdges
from baton_platform.settings import Settings

log = logging.getLogger(__name__)


def broker_identity(who: NatsIdentity) -> dict[str, Any]:
    """FastStream's spelling of `who` (its admin subjects' connection)."""
    if who.user is None or who.password is None:
        return {} if who.tls is None else {"security": BaseSecurity(ssl_context=who.tls)}
    return {
        "security": SASLPlaintext(who.user, who.password, ssl_context=who.tls),
        "inbox_prefix": who.options()["inbox_prefix"],
    }


class Dispatcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._nc: Client | None = None
        self._edges: RequestEdges | None = None
        self._broker: NatsBroker | None = None
        self._writer: Writer | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._reports: ReportsConsumer | None = None
        self._reports_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        catalog = Catalog.from_yaml(settings.catalog_path)
        executions = await asyncio.to_thread(open_executions, settings, catalog, writer=True)
        who = identity(settings, DISPATCHER)
        self._nc = await connect(settings.nats_url, f"baton-dispatcher-{settings.instance}", who)
        js = self._nc.jetstream()
        await ensure_streams(js)
        relay = OutboxRelay(executions, self._nc, settings.relay_poll_interval)
        self._writer = Writer(
            executions, on_stored=relay.wake, backlog=ReportsBacklog(js, settings.deadline_max_hold)
        )
        # The catalog file seeds the stored catalog on the first start only; after that the
        # catalog is managed data (the api's /v1/device-types and /v1/devices, `baton
        # catalog import`).
        await self._writer.seed_catalog()
        self._edges = RequestEdges(self._nc, SERVICE, DISPATCHER_QUEUE, CONCURRENT_REQUESTS)
        await register(self._edges, self._writer)
        self._broker = NatsBroker(
            settings.nats_url,
            name=f"baton-dispatcher-admin-{settings.instance}",
            max_reconnect_attempts=-1,
            **broker_identity(who),
            logger=logging.getLogger("baton_dispatcher.broker"),
        )
        register_admin(self._broker, self._writer)
        await self._broker.start()
        self._reports = ReportsConsumer(self._nc, self._writer)
        await self._reports.start()
        self._reports_task = asyncio.create_task(self._reports.run(), name="reports")
        # Make sure the server has our subscriptions before we call ourselves ready.
        await self._nc.flush()
        await self._broker.connection.flush()
        self._relay_task = asyncio.create_task(relay.run(), name="outbox-relay")
        log.info(
            "dispatcher ready: %d device types, %d devices, store %s",
            len(executions.catalog.device_types),
            len(executions.catalog.devices),
            settings.event_store,
        )

    async def stop(self) -> None:
        if self._reports is not None:
            await self._reports.stop()
        if self._reports_task is not None:
            await cancel_and_wait(self._reports_task)
        if self._relay_task is not None:
            await cancel_and_wait(self._relay_task)
        if self._edges is not None:
            await self._edges.stop()
        if self._broker is not None:
            await self._broker.stop()
        if self._nc is not None:
            await self._nc.close()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    dispatcher = Dispatcher(settings)
    await dispatcher.start()
    try:
        await stop.wait()
    finally:
        await dispatcher.stop()
