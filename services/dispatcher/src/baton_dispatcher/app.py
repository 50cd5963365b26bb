"""Composition root of the dispatcher: builds everything from Settings."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from faststream.nats import NatsBroker
from faststream.security import BaseSecurity, SASLPlaintext
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from baton_contracts.nats import (
    DISPATCHER_QUEUE,
    RELAY_LEASE,
    RELEASED_SUBJECT,
    STORED_SUBJECT,
)
from baton_dispatcher.backlog import ReportsBacklog
from baton_dispatcher.edges import (
    CONCURRENT_REQUESTS,
    SERVICE,
    register,
    register_admin,
    serve_partition,
)
from baton_dispatcher.partitions import PartitionKeeper
from baton_dispatcher.relay import OutboxRelay
from baton_dispatcher.reports import ReportsConsumer, narrow_legacy_consumer
from baton_dispatcher.router import Router
from baton_dispatcher.traces import TraceContexts
from baton_dispatcher.writer import Writer
from baton_domain.catalog import Catalog
from baton_domain.catalog_document import document_of
from baton_platform import tracing
from baton_platform.eventstore import open_executions
from baton_platform.leases import hold, holder_name, open_bucket
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.metrics import observe_recorded
from baton_platform.nats import (
    NatsIdentity,
    connect,
    ensure_streams,
    identity,
    server_urls,
    synced,
)
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


@dataclass
class _Held:
    """What runs for one partition this dispatcher holds."""

    subscriptions: list[Subscription]
    consumers: list[ReportsConsumer] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def _consume(consumer: ReportsConsumer) -> None:
    """For as long as the partition is held (cancelled when it is left): an error is logged
    and the loop run again, never the end of the task, which would leave the partition's
    reports unread while its lease is kept."""
    await consumer.start()
    while True:
        try:
            await consumer.run()
        except Exception:
            log.exception("a reports consumer failed; running it again")
            await asyncio.sleep(1.0)


class Dispatcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._nc: Client | None = None
        self._edges: RequestEdges | None = None
        self._broker: NatsBroker | None = None
        self._writer: Writer | None = None
        self._traces: TraceContexts | None = None
        self._relay: OutboxRelay | None = None
        self._relay_task: asyncio.Task[None] | None = None
        self._held: dict[int, _Held] = {}
        self._legacy_reports = False
        self._keeper: PartitionKeeper | None = None
        self._keeper_task: asyncio.Task[None] | None = None
        self._relay_lease: asyncio.Task[None] | None = None
        self._to_announce = asyncio.Event()
        self._announcer: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        settings = self.settings
        catalog = Catalog.from_yaml(settings.catalog_path)
        executions = await asyncio.to_thread(
            partial(open_executions, settings, catalog, writer=True, on_recorded=observe_recorded)
        )
        who = identity(settings, DISPATCHER)
        self._nc = await connect(settings.nats_url, f"baton-dispatcher-{settings.instance}", who)
        js = self._nc.jetstream()
        await ensure_streams(js, settings.nats_replicas, settings.nats_events_persist)
        if tracing.enabled():
            self._traces = await asyncio.to_thread(TraceContexts, settings.traces_database)
        relay_poll = settings.relay_poll_interval
        self._relay = OutboxRelay(executions, self._nc, relay_poll, self._traces)
        self._writer = Writer(
            executions,
            on_stored=self._stored,
            backlog=ReportsBacklog(js, settings.deadline_max_hold),
            traces=self._traces,
        )
        # Whichever dispatcher relays is woken by every dispatcher's commits.
        await self._nc.subscribe(STORED_SUBJECT, cb=self._heard_stored)
        self._announcer = asyncio.create_task(self._announce_stored(), name="stored-announcer")
        # The catalog file seeds the stored catalog on the first start only; after that the
        # catalog is managed data (the api's /v1/device-types and /v1/devices, `baton
        # catalog import`).
        await self._writer.seed_catalog()
        stored = await asyncio.to_thread(executions.catalog_document)
        if stored != document_of(catalog):
            log.warning(
                "the stored catalog is in use, not BATON_CATALOG_PATH=%s: the file seeds an "
                "empty store only (`baton catalog import FILE` loads it)",
                settings.catalog_path,
            )
        self._edges = RequestEdges(self._nc, SERVICE, DISPATCHER_QUEUE, CONCURRENT_REQUESTS)
        self._legacy_reports = await narrow_legacy_consumer(js)
        self._keeper = PartitionKeeper(
            js,
            await open_bucket(js, settings.nats_replicas),
            holder_name(SERVICE, settings.instance),
            self._take_partition,
            self._leave_partition,
            self._announce_released,
        )
        await self._nc.subscribe(RELEASED_SUBJECT, cb=self._heard_released)
        router = Router(self._nc, executions, self._keeper.holds, settings.request_timeout)
        await register(self._edges, self._writer, router)
        self._broker = NatsBroker(
            server_urls(settings.nats_url),
            name=f"baton-dispatcher-admin-{settings.instance}",
            max_reconnect_attempts=-1,
            **broker_identity(who),
            logger=logging.getLogger("baton_dispatcher.broker"),
            # Its `Received`/`Processed` line per message only when asked for (debug else).
            log_level=logging.INFO if settings.log_messages else logging.DEBUG,
        )
        register_admin(self._broker, self._writer)
        await self._broker.start()
        # The first round takes every free partition before we call ourselves ready.
        await self._keeper.step()
        self._keeper_task = asyncio.create_task(self._keeper.run(self._stopping), name="partitions")
        # Make sure the server has our subscriptions before we call ourselves ready.
        await synced(self._nc)
        await synced(self._broker.connection)
        # One dispatcher at a time relays (docs/architecture.md, "Replicas").
        self._relay_lease = asyncio.create_task(
            hold(
                js,
                RELAY_LEASE,
                holder_name("dispatcher", settings.instance),
                self._start_relay,
                self._stop_relay,
                self._stopping,
                settings.nats_replicas,
                alive=lambda: self.relaying,
            ),
            name="relay-lease",
        )
        log.info(
            "dispatcher ready: %d device types, %d devices, partitions %s, store %s",
            len(executions.catalog.device_types),
            len(executions.catalog.devices),
            self._keeper.held,
            settings.event_store,
        )

    async def _take_partition(self, partition: int) -> None:
        assert self._nc is not None
        assert self._edges is not None
        assert self._writer is not None
        await self._writer.forget_cached()
        held = _Held(await serve_partition(self._edges, self._writer, partition))
        self._held[partition] = held
        held.consumers.append(ReportsConsumer(self._nc, self._writer, partition))
        if partition == 0 and self._legacy_reports:
            held.consumers.append(ReportsConsumer(self._nc, self._writer, None))
        # In the background: the partition's requests are answered meanwhile.
        for consumer in held.consumers:
            held.tasks.append(asyncio.create_task(_consume(consumer), name=f"reports-{partition}"))

    async def _announce_released(self) -> None:
        if self._nc is not None and self._nc.is_connected:
            assert self._keeper is not None
            await self._nc.publish(RELEASED_SUBJECT, self._keeper.holder.encode())

    async def _leave_partition(self, partition: int) -> None:
        """Stop taking its requests and reports; what is in hand is still stored, and a
        report not yet acknowledged goes to the next holder."""
        held = self._held.pop(partition, None)
        if held is None or self._edges is None:
            return
        for sub in held.subscriptions:
            await self._edges.unserve(sub)
        for consumer in held.consumers:
            await consumer.stop()
        for task in held.tasks:
            await cancel_and_wait(task)
        for consumer in held.consumers:
            await consumer.stop()  # again: a start still under way at the first one subscribed

    @property
    def relaying(self) -> bool:
        """Whether this dispatcher runs the outbox relay (holds the lease)."""
        return self._relay_task is not None and not self._relay_task.done()

    def _stored(self) -> None:
        """After a commit: the relay looks now, here or (announced) in the dispatcher that
        runs it."""
        if self.relaying:
            assert self._relay is not None
            self._relay.wake()
        else:
            self._to_announce.set()

    async def _announce_stored(self) -> None:
        """One announcement per wake, however many commits came meanwhile."""
        while True:
            await self._to_announce.wait()
            self._to_announce.clear()
            if self._nc is not None and self._nc.is_connected:
                try:
                    await self._nc.publish(STORED_SUBJECT, b"")
                except Exception as exc:  # the relay's next poll finds the events anyway
                    log.debug("could not announce stored events: %s", exc)

    async def _heard_released(self, msg: Msg) -> None:
        # Its own note comes back too: it must not take back what it just gave away.
        if self._keeper is not None and msg.data != self._keeper.holder.encode():
            self._keeper.look_now()

    async def _heard_stored(self, _msg: Msg) -> None:
        if self._relay is not None and self.relaying:
            self._relay.wake()

    async def _start_relay(self) -> None:
        assert self._relay is not None
        self._relay_task = asyncio.create_task(self._relay.run(), name="outbox-relay")

    async def _stop_relay(self) -> None:
        if self._relay_task is not None:
            await cancel_and_wait(self._relay_task)
            self._relay_task = None

    async def stop(self) -> None:
        if self._stopping.is_set():
            return  # stopped already
        self._stopping.set()
        if self._edges is not None:
            # Every request in hand answered first, while the partitions are still ours:
            # requests meanwhile wait for the next holder (`request_patiently`).
            await self._edges.drain()
        if self._keeper_task is not None:
            # It gives every partition away as it ends: the others take them at once.
            await asyncio.wait({self._keeper_task}, timeout=5)
            await cancel_and_wait(self._keeper_task)
        if self._relay_lease is not None:
            # Stops the relay and releases the lease, so another dispatcher relays at once.
            await self._relay_lease
        if self._announcer is not None:
            await cancel_and_wait(self._announcer)
        if self._edges is not None:
            await self._edges.stop()
        if self._broker is not None:
            await self._broker.stop()
        if self._nc is not None:
            await self._nc.close()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
        if self._traces is not None:
            await asyncio.to_thread(self._traces.close)


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    dispatcher = Dispatcher(settings)
    await dispatcher.start()
    try:
        await stop.wait()
    finally:
        await dispatcher.stop()
