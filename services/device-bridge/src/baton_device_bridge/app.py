"""Composition root of the device-bridge: builds everything from Settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from pydantic import ValidationError

from baton_contracts.nats import (
    BRIDGE_RELEASED_SUBJECT,
    CATALOG_GET_SUBJECT,
    EVENTS_STREAM,
    REPORTS_STREAM,
    WATERMARKS_STREAM,
    CatalogQuery,
    CatalogReply,
)
from baton_device_bridge.answers import SERVICE, AnswerForwarder
from baton_device_bridge.edges import events_consumer
from baton_device_bridge.in_flight import (
    InFlight,
    InFlightRecord,
    KvInFlight,
    open_in_flight_bucket,
)
from baton_device_bridge.limits import DeviceLimits
from baton_device_bridge.link import MqttLink
from baton_device_bridge.replicas import probe_filter, share_of, slot_settings
from baton_device_bridge.reports import ReportSink
from baton_device_bridge.slots import SlotKeeper
from baton_device_bridge.watermark import Watermark, WatermarkSink
from baton_device_bridge.wiring import Wiring
from baton_domain.catalog import Catalog
from baton_platform import tracing
from baton_platform.consumers import DurableConsumer
from baton_platform.leases import holder_name, open_bucket
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.nats import connect, identity, wait_for_streams
from baton_platform.nats_access import DEVICE_BRIDGE
from baton_platform.settings import Settings

log = logging.getLogger(__name__)

CATALOG_TIMEOUT = 2.0
# Every tenant's devices: the bridge is the platform's one way to the broker, and the
# dispatcher has already checked each command against its device's tenant.
WHOLE_CATALOG = CatalogQuery(tenant=None).model_dump_json().encode()
LEASES_RETRY_S = 1.0


class DeviceBridge:
    """The service: the events consumer publishing to devices, the MQTT loop reading answers.

    `startup_wait` bounds how long `start` waits for the MQTT broker: without one the bridge
    still starts (events wait in JetStream, the loop keeps reconnecting). The catalog says
    which wire profile each device speaks: the dispatcher's stored one, every tenant's part
    of it (the seed file at `settings.catalog_path` before the dispatcher ever ran),
    reloaded on every catalog event, whichever tenant's, so the bridge follows changes live.
    A `catalog` handed in (tests) is kept as it is.
    """

    def __init__(
        self,
        settings: Settings,
        reconnect_cap: float = 5.0,
        retry_cap: float = 5.0,
        startup_wait: float = 5.0,
        *,
        catalog: Catalog | None = None,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        # Refuses replica settings it cannot work with before anything starts.
        self.share = share_of(settings)
        self._given_catalog = catalog
        self.wiring = Wiring(catalog or Catalog())
        self.in_flight: InFlightRecord | None = None
        self.reconnect_cap = reconnect_cap
        self.retry_cap = retry_cap
        self.startup_wait = startup_wait
        self._fence = fence  # a slot's: whether this process still holds it (MqttLink)
        self.link: MqttLink | None = None
        self.answers: AnswerForwarder | None = None
        self.watermark: Watermark | None = None
        self._watermark_task: asyncio.Task[None] | None = None
        self._events: DurableConsumer | None = None
        self._link_task: asyncio.Task[None] | None = None
        self._nc: Client | None = None

    async def start(self) -> None:
        settings = self.settings
        connection = await connect(
            settings.nats_url,
            f"baton-device-bridge-{settings.instance}",
            identity(settings, DEVICE_BRIDGE),
        )
        self._nc = connection
        js = connection.jetstream()
        # The consumer's stream must exist before it subscribes (the dispatcher creates it).
        await wait_for_streams(js, (EVENTS_STREAM, REPORTS_STREAM, WATERMARKS_STREAM))
        if self._given_catalog is None:
            await self._load_catalog(first=True)
        sink = ReportSink(js)
        if self.share.alone:
            self.in_flight = InFlight(settings.data_dir / "bridge.sqlite")
        else:  # readable by whichever replica runs the slot (baton_device_bridge.slots)
            bucket = await open_in_flight_bucket(js, settings.nats_replicas)
            self.in_flight = await KvInFlight.load(bucket, self.share.owns)
        traces = tracing.Remembered()  # each request's context, for its answers
        limits = DeviceLimits(settings.device_message_rate, settings.device_message_burst, SERVICE)
        self.answers = AnswerForwarder(
            sink, self.wiring, self.in_flight.current, self.retry_cap, traces, limits
        )
        marks = WatermarkSink(js, settings.instance)
        last = await marks.introduce(datetime.now(UTC))
        self.watermark = Watermark(
            settings.instance,
            marks.write,
            redelivery_wait=settings.mqtt_redelivery_wait,
            ready=self._events_caught_up,
            last=last,
        )
        self.link = MqttLink(
            settings,
            self.watermark.passing(self.answers.handle),
            reconnect_cap=self.reconnect_cap,
            answer_filters=self.wiring.device_filters(self.share),
            probe_filters=None if self.share.alone else [probe_filter(settings.instance)],
            fence=self._fence,
        )
        self._link_task = asyncio.create_task(self.link.run(), name="mqtt-link")
        self._watermark_task = asyncio.create_task(self.watermark.run(self.link), name="watermark")
        self._events = events_consumer(
            self.link,
            sink,
            self.wiring,
            self.in_flight,
            self._catalog_changed,
            self.watermark,
            self.share,
            traces,
        )
        # A lone bridge holds no lease, so it may wait for JetStream to answer (a cluster
        # just formed, or electing a leader, can leave a consumer request unanswered for
        # longer than a request's timeout: seen exiting the bridge at its start). A slot's
        # bridge starts inside its lease, which must not go unrenewed meanwhile: it raises,
        # and the lease is let go and taken again (consumers.DurableConsumer.start).
        await self._events.start(js, patient=self.share.alone)
        try:
            await asyncio.wait_for(self.link.connected.wait(), self.startup_wait)
        except TimeoutError:
            log.warning("no MQTT broker yet at %s:%d", settings.mqtt_host, settings.mqtt_port)
        if self.share.alone:
            log.info("device-bridge ready (instance %s)", settings.instance)
        else:
            log.info(
                "device-bridge ready (%s, slot %d of %d: %d MQTT filter(s))",
                settings.instance,
                self.share.index,
                self.share.replicas,
                len(self.link.answer_filters),
            )

    async def _events_caught_up(self) -> bool:
        """Whether the events an earlier process of this instance held are all handled: until
        then, requests it may have handed to the broker are not all reported."""
        return self._events is not None and await self._events.caught_up()

    async def _load_catalog(self, first: bool = False) -> None:
        """The stored catalog, every tenant's, from the dispatcher. At the very first start
        there may be no dispatcher yet: then the seed file, which is what it will store."""
        assert self._nc is not None, "start() connects first"
        try:
            reply = await self._nc.request(
                CATALOG_GET_SUBJECT, WHOLE_CATALOG, timeout=CATALOG_TIMEOUT
            )
            document = CatalogReply.model_validate_json(reply.data).document or {}
            catalog = Catalog.model_validate(document)
        except (nats.errors.Error, ValidationError) as exc:
            if not first:
                raise
            log.warning(
                "no catalog from the dispatcher (%s); using %s", exc, self.settings.catalog_path
            )
            catalog = Catalog.from_yaml(self.settings.catalog_path)
        self.wiring.load(catalog)
        if self.link is not None:
            await self.link.follow(self.wiring.device_filters(self.share))
        log.info(
            "catalog: %d device type(s), %d device(s)",
            len(catalog.device_types),
            len(catalog.devices),
        )

    async def _catalog_changed(self) -> None:
        """Raises while the dispatcher does not answer: the event is then redelivered."""
        if self._given_catalog is not None:
            return  # a catalog handed in (tests) is the one to keep
        await self._load_catalog()

    async def stop(self) -> None:
        # The watermark first: it must not move on while the rest winds down. What it last
        # wrote stays: deadlines after it wait for the next bridge of this instance.
        if self._watermark_task is not None:
            await cancel_and_wait(self._watermark_task)
            self._watermark_task = None
        # Events next: a message being handled finishes, none is left half-done.
        if self._events is not None:
            await self._events.stop()
            self._events = None
        if self._link_task is not None:
            # An answer read but not yet stored is not acknowledged: the broker keeps it in
            # the session and hands it to the next bridge with this instance name.
            await cancel_and_wait(self._link_task)
            self._link_task = None
        if self.in_flight is not None:
            self.in_flight.close()
            self.in_flight = None
        if self._nc is not None:
            await self._nc.close()
            self._nc = None


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set (or the task is cancelled), then shut down cleanly."""
    if settings.bridge_replicas > 1:
        await serve_slots(settings, stop or asyncio.Event())
        return
    bridge = DeviceBridge(settings)
    await bridge.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await bridge.stop()


async def serve_slots(settings: Settings, stop: asyncio.Event) -> None:
    """A bridge replica: a `DeviceBridge` for each slot it holds (baton_device_bridge.slots),
    its own first, a dead replica's until that one is back; all in this event loop."""
    share_of(settings)  # refuses settings it cannot work with
    connection = await connect(
        settings.nats_url,
        f"baton-device-bridge-{settings.instance}-slots",
        identity(settings, DEVICE_BRIDGE),
    )
    engines: dict[int, DeviceBridge] = {}

    async def start(slot: int) -> None:
        engine = engines[slot] = DeviceBridge(
            slot_settings(settings, slot), fence=lambda: keeper.holds(slot)
        )
        await engine.start()

    async def halt(slot: int) -> None:
        engine = engines.pop(slot, None)
        if engine is not None:
            await engine.stop()

    async def released(slot: int) -> None:
        await connection.publish(BRIDGE_RELEASED_SUBJECT, str(slot).encode())

    try:
        bucket = await _leases_bucket(connection, settings, stop)
        if bucket is None:
            return
        keeper = SlotKeeper(
            bucket,
            holder_name("device-bridge", settings.instance),
            settings.bridge_replica,
            settings.bridge_replicas,
            start,
            halt,
            released,
        )

        async def heard(msg: Msg) -> None:
            if msg.data == str(keeper.own).encode():
                keeper.look_now()

        await connection.subscribe(BRIDGE_RELEASED_SUBJECT, cb=heard)
        await keeper.run(stop)
    finally:
        for slot in list(engines):
            await halt(slot)
        await connection.close()


async def _leases_bucket(
    connection: Client, settings: Settings, stop: asyncio.Event
) -> KeyValue | None:
    """The leases bucket, retried while JetStream does not answer (None: stopped first)."""
    js = connection.jetstream()
    told = False
    while not stop.is_set():
        try:
            return await open_bucket(js, settings.nats_replicas)
        except Exception as exc:
            if not told:
                log.warning("lease bucket not available (%s); trying again", exc)
                told = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LEASES_RETRY_S)
    return None
