"""Composition root of the dispatcher: builds everything from Settings."""

from __future__ import annotations

import asyncio
import logging

from faststream.nats import NatsBroker
from nats.aio.client import Client

from baton_dispatcher.backlog import ReportsBacklog
from baton_dispatcher.edges import register, resume_reports
from baton_dispatcher.relay import OutboxRelay
from baton_dispatcher.writer import Writer
from baton_domain.catalog import Catalog
from baton_platform.eventstore import open_executions
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.nats import connect, ensure_streams
from baton_platform.settings import Settings

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._nc: Client | None = None
        self._broker: NatsBroker | None = None
        self._writer: Writer | None = None
        self._relay_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        settings = self.settings
        catalog = Catalog.from_yaml(settings.catalog_path)
        executions = await asyncio.to_thread(open_executions, settings, catalog)
        self._nc = await connect(settings.nats_url, f"baton-dispatcher-{settings.instance}")
        js = self._nc.jetstream()
        await ensure_streams(js)
        relay = OutboxRelay(executions, self._nc, settings.relay_poll_interval)
        self._writer = Writer(executions, on_stored=relay.wake, backlog=ReportsBacklog(js))
        # The catalog file seeds the stored catalog on the first start only; after that the
        # catalog is managed data (the api's /v1/device-types and /v1/devices, `baton
        # catalog import`).
        await self._writer.seed_catalog()
        self._broker = NatsBroker(
            settings.nats_url,
            name=f"baton-dispatcher-{settings.instance}",
            max_reconnect_attempts=-1,
            logger=logging.getLogger("baton_dispatcher.broker"),
        )
        await resume_reports(js)
        register(self._broker, self._writer, js)
        await self._broker.start()
        # Make sure the server has our subscriptions before we call ourselves ready.
        await self._broker.connection.flush()
        self._relay_task = asyncio.create_task(relay.run(), name="outbox-relay")
        log.info(
            "dispatcher ready: %d device types, %d devices, store %s",
            len(executions.catalog.device_types),
            len(executions.catalog.devices),
            settings.event_store_path,
        )

    async def stop(self) -> None:
        if self._relay_task is not None:
            await cancel_and_wait(self._relay_task)
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
