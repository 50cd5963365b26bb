"""The bridge's JetStream edge: lifecycle events in, MQTT requests and cancellations out.

A durable consumer of BATON_EVENTS (`baton_platform.consumers.DurableConsumer`, plain
nats-py), handled one message at a time in order, filtered on the server to the event types
the bridge acts on (`SUBJECTS`: `Dispatched`, `Canceled` and the catalog's changes). A message is
acknowledged only once its effect is durable: the broker's PUBACK for the MQTT message and,
for a request, JetStream's acknowledgement of the `published` report. While MQTT or NATS is
unavailable the event is negatively acknowledged with a delay, so JetStream redelivers it
(never dropped). A message that cannot be decoded is logged, counted and acknowledged (a
poison message must not loop).

Every event may arrive twice: a request published twice carries the same execution id (the
device de-duplicates on it) and the `published` report keeps the same `report_id`. A request
that comes back past its deadline is not sent again, but reported `published` if the broker
may have taken it before (baton_device_bridge.handover).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.aio.msg import Msg

from baton_contracts.nats import CATALOG_EVENTS, EVENTS_STREAM, DeviceReport, events_of_type
from baton_device_bridge.commands import (
    Late,
    MalformedEventError,
    Outgoing,
    Skipped,
    decode,
    plan,
    published_report,
)
from baton_device_bridge.handover import Attempt, Handovers, Holds, NoHolds
from baton_device_bridge.in_flight import InFlightRecord
from baton_device_bridge.link import MqttLink, MqttNotConnectedError, MqttUnavailableError
from baton_device_bridge.replicas import Share
from baton_device_bridge.reports import ReportNotStoredError, ReportRefusedError, ReportSink
from baton_device_bridge.wiring import Wiring
from baton_platform import tracing
from baton_platform.consumers import DurableConsumer
from baton_platform.logs import about
from baton_platform.metrics import REJECTED_MESSAGES
from baton_platform.nats_access import bridge_durable

log = logging.getLogger(__name__)

SERVICE = "device-bridge"
PRODUCER = tracing.SpanKind.PRODUCER
MAX_REDELIVERY_DELAY = 5.0
DURABLE = bridge_durable((0, 1))  # a lone bridge's events consumer
# How long a delivered request may go unacknowledged before nats-server sends it again: what
# a delivery lost in flight costs (seen when a cluster node died and the consumer's leader
# moved: a `Dispatched` back after the default 30 s, its deadline passed, the command never
# sent). The message in hand is kept in progress however long it takes, and only one is
# out at a time, so nothing merely queued here comes back while it waits.
EVENTS_ACK_WAIT_S = 5.0


async def deliver(
    link: MqttLink,
    sink: ReportSink,
    in_flight: InFlightRecord,
    outgoing: Outgoing,
    attempt: Attempt,
    traces: tracing.Remembered | None = None,
) -> None:
    """The effect of one event: (for a profile without execution ids) the execution stored
    as the device's one in flight, the MQTT message taken by the broker, then (for a
    request) the `published` report stored. Raises MqttUnavailableError /
    ReportNotStoredError; `attempt` says whether the broker may have taken it meanwhile.

    Inside the span of the publish (when traced): its context goes to the device and into
    the report, and is kept in `traces` for the device's answers to continue."""
    if outgoing.remember:
        # Before the publish: the device may answer before the PUBACK is even back.
        await in_flight.remember(outgoing.device_id, outgoing.execution_id)
    carrier = tracing.current()
    if traces is not None and outgoing.report_published:
        traces.keep(outgoing.execution_id, carrier)
    try:
        await link.publish(outgoing.topic, outgoing.payload, outgoing.expiry, carrier)
    except MqttNotConnectedError:
        raise  # nothing was written
    except MqttUnavailableError:
        attempt.maybe_taken = True  # written, the PUBACK lost with the connection
        raise
    attempt.maybe_taken = True
    if outgoing.report_published:
        await store_published(
            sink, published_report(outgoing.device_id, outgoing.execution_id, datetime.now(UTC))
        )


async def store_published(sink: ReportSink, report: DeviceReport) -> None:
    """Raises ReportNotStoredError."""
    try:
        await sink.store(report)
    except ReportRefusedError:
        # Cannot happen for a report this small; if it did, redelivery would not help
        # and the execution will time out rather than stay stuck.
        REJECTED_MESSAGES.labels(service=SERVICE, reason="report-refused").inc()
        log.exception("JetStream refused the published report of %s", report.execution_id)


def _device_of(body: bytes) -> str | None:
    """The device a lifecycle event is about (None: a catalog event, or unreadable)."""
    try:
        event = decode(body)
    except MalformedEventError:
        return None
    device_id = event.data.get("device_id")
    return device_id if isinstance(device_id, str) else None


def _unknown_device(action: Outgoing | Late | Skipped) -> bool:
    return isinstance(action, Skipped) and action.reason == "unknown-device"


# What the server delivers: what `plan` acts on and the catalog's changes, nothing else.
SUBJECTS = tuple(sorted(events_of_type(t) for t in CATALOG_EVENTS | {"Dispatched", "Canceled"}))


def events_consumer(
    link: MqttLink,
    sink: ReportSink,
    wiring: Wiring,
    in_flight: InFlightRecord,
    on_catalog_change: Callable[[], Awaitable[None]],
    holds: Holds | None = None,
    share: Share | None = None,
    traces: tracing.Remembered | None = None,
) -> DurableConsumer:
    """`holds`: where each event holds the watermark back until it is acknowledged.

    `share`: this replica's devices (baton_device_bridge.replicas). Each replica reads every
    event through a durable consumer of its own (`bridge_durable`; its catalog changes
    included), and sends the requests and cancels of its own devices only: it is the one
    subscribed to their answers, and it subscribes before it sends (a device new to it: the
    catalog is reloaded first), as a single bridge does. An event of another replica's
    device is acknowledged at once and changes nothing: it holds no watermark. (Handing such
    events on through one shared consumer instead, by negative acknowledgements, cost each a
    redelivery delay: the unloaded p50 of a command went from ~40 ms to ~400 ms.)

    `traces`: where each request's trace context is kept for its answers (`deliver`)."""
    handovers = Handovers(holds or NoHolds())
    mine = share or Share()

    # From the start of the stream on first run: events relayed before the bridge ever ran
    # must go out too (those past their deadline are not sent).
    async def on_event(message: Msg) -> None:
        meta = message.metadata
        seq = meta.sequence.stream
        if not mine.alone:
            device_id = _device_of(message.data)
            if device_id is not None and not mine.owns(device_id):
                await message.ack()  # another replica's device: its own consumer has it
                return
        earlier = consumer.delivered_before(message)
        attempt = handovers.begin(seq, earlier, meta.timestamp, datetime.now(UTC))
        if await handle(message, attempt):
            handovers.done(seq)

    async def handle(message: Msg, attempt: Attempt) -> bool:
        """Whether the message is acknowledged (else it comes back)."""
        subject = message.subject
        try:
            event = decode(message.data)
            if event.type in CATALOG_EVENTS:
                # Events come in stream order: a device added before its first command is
                # known by the time that command's Dispatched arrives.
                try:
                    await on_catalog_change()
                except Exception as exc:  # the dispatcher did not answer: try again shortly
                    log.warning("catalog not reloaded (%s); redelivering %s", exc, subject)
                    await message.nak(delay=1.0)
                    return False
                await message.ack()
                return True
            action = plan(event, datetime.now(UTC), wiring)
            if _unknown_device(action) and not mine.alone:
                # Another replica may have had the catalog event that added it.
                try:
                    await on_catalog_change()
                except Exception as exc:
                    log.warning("catalog not reloaded (%s); redelivering %s", exc, subject)
                    await message.nak(delay=1.0)
                    return False
                action = plan(event, datetime.now(UTC), wiring)
        except MalformedEventError as exc:
            REJECTED_MESSAGES.labels(service=SERVICE, reason="malformed-event").inc()
            log.warning("dropped a malformed message on %s: %s", subject, exc)
            await message.ack()
            return True
        if isinstance(action, Skipped):
            if action.reason is not None:
                REJECTED_MESSAGES.labels(service=SERVICE, reason=action.reason).inc()
                log.warning("%s: nothing sent (%s)", subject, action.why)
            elif action.notable:
                log.info("%s: nothing sent (%s)", subject, action.why)
            await message.ack()
            return True
        try:
            if isinstance(action, Late):
                late(action, attempt)
                if attempt.maybe_taken:
                    report = published_report(action.device_id, action.execution_id, attempt.since)
                    await store_published(sink, report)
            else:
                parent = tracing.extract(message.headers)
                name = f"mqtt publish {action.topic}"
                with (
                    tracing.continued(name, PRODUCER, parent, action.execution_id),
                    about(action.execution_id),
                ):
                    await deliver(link, sink, in_flight, action, attempt, traces)
        except (MqttUnavailableError, ReportNotStoredError) as exc:
            deliveries = message.metadata.num_delivered or 1
            delay = min(0.2 * deliveries, MAX_REDELIVERY_DELAY)
            # Logged at warning on the first delivery only: an outage would flood the log.
            level = logging.WARNING if deliveries == 1 else logging.DEBUG
            log.log(level, "%s not delivered (%s); redelivering in %.1fs", subject, exc, delay)
            await message.nak(delay=delay)
            return False
        await message.ack()
        return True

    def late(action: Late, attempt: Attempt) -> None:
        if attempt.maybe_taken:
            log.warning(
                "%s: deadline %s passed; not sent again, but the broker may have taken it "
                "since %s: reported published",
                action.execution_id,
                action.deadline.isoformat(),
                attempt.since.isoformat(),
            )
        else:
            log.info(
                "%s: nothing sent (deadline %s already passed)",
                action.execution_id,
                action.deadline.isoformat(),
            )

    durable = bridge_durable((mine.index, mine.replicas))
    # A slot's consumer is read by whichever process runs the slot: deliveries to this one
    # alone, not to a process frozen past its lease that still has a subscription.
    consumer = DurableConsumer(
        EVENTS_STREAM,
        durable,
        SUBJECTS,
        on_event,
        max_ack_pending=1,
        ack_wait=EVENTS_ACK_WAIT_S,
        exclusive=not mine.alone,
    )
    return consumer
