"""The one way Baton's services consume a JetStream stream: a durable consumer, in order.

A push consumer delivered to a queue group (nats-py names the durable consumer after the
queue): messages arrive in stream order and are handled one at a time, each acknowledged
by the handler only once its effect is durable. Not a pull consumer through FastStream: it
handles a fetched batch concurrently, and nats-py 2.16 raises a TimeoutError inside its
fetch that FastStream 0.7 does not expect, which leaves a pull request orphaned on the
server that holds the next messages back until their ack_wait (seen as 30 s stalls).

`DurableConsumer` is that consumer with nats-py alone: FastStream's subscriber took ~0.3 ms
of CPU per message against ~0.01 ms (dependency injection run in a thread pool, a log line
in and out; `python -m tests.benchmarks.consumers`, docs/architecture.md).

"In order" holds only while nothing is redelivered: with many messages unacknowledged, one
that a killed instance held comes back after its ack_wait, behind the newer ones its
successor already handled (a device's STARTED recorded after its SUCCEEDED, 30 s late). A
consumer that needs the order across crashes takes `max_ack_pending=1` (the next message
goes out only once the previous one is acknowledged). Every consumer calls
`resume_in_order` before it subscribes, so what a dead instance held comes back at once,
first, rather than after ack_wait (a deadline's `Requested` or a device's `Dispatched`
30 s late), and a consumer made by an older version takes today's settings.

A consumer given `filter_subjects` receives only the messages it acts on: the server skips
the rest, where the consumer used to receive, decode and acknowledge each one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from faststream.nats.annotations import NatsMessage
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from nats.js.api import DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from baton_platform import metrics

log = logging.getLogger(__name__)

MessageHandler = Callable[[Msg], Awaitable[None]]

ACK_WAIT_S = 30.0
MAX_ACK_PENDING = 1000
START_RETRY_S = 0.5  # the first wait after a failed start, doubled up to the next
START_RETRY_MAX_S = 5.0


@dataclass
class _Start:
    """What a consumer's start has done so far, across its tries."""

    taken_over: bool = False
    seq: int | None = None  # where a consumer made anew starts (None: where it was)


async def raw_body(message: NatsMessage) -> bytes:
    """FastStream's decoder for Baton's subscribers: the bytes as they came.

    Every handler reads `message.body` with its own typed model; FastStream's default decoder
    would first run `json.loads` on it, outside the handler, and a deep array (RecursionError)
    or a JSON content type over bad JSON would escape every handler: a request left without
    an answer, a stream message never acknowledged."""
    return message.body


async def resume_in_order(
    js: JetStreamContext,
    stream: str,
    name: str,
    max_ack_pending: int,
    ack_wait: float,
    filter_subjects: Iterable[str] | None = None,
    exclusive: bool = False,
) -> int | None:
    """Before subscribing as durable consumer `name`: give it these limits and, when given,
    these filter subjects (the subscription takes an existing consumer as it finds it, so
    one made by an older version would keep its own), updated in place: its position stays.
    Then have what it delivered but never saw acknowledged (an instance killed mid-message)
    come back now, in stream order, rather than after ack_wait. A live instance may then see
    a message twice: handlers are idempotent.

    Returns the stream sequence of the last message delivered before, when some were not
    acknowledged: up to there, messages come back that an earlier instance had.

    `exclusive`: deliveries go to this process's inbox alone from now on, whoever else is
    still subscribed (a process frozen past the lease that made it the consumer's one
    reader: its subscription, left in the queue group, would take its turn of them)."""
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        return None  # the first start: the subscription creates it with these settings
    config = info.config
    wanted: dict[str, object] = {"max_ack_pending": max_ack_pending, "ack_wait": ack_wait}
    # Deliveries go to this client's own inbox: its NATS user may subscribe there only, and
    # a consumer made before users had permissions (or by another client) delivers elsewhere.
    inbox = js._nc.new_inbox()  # nats-py offers no other way to the client's inbox prefix
    if exclusive or not (config.deliver_subject or "").startswith(inbox.rsplit(".", 1)[0] + "."):
        wanted["deliver_subject"] = inbox
    if filter_subjects is not None:
        # One or the other: the server refuses a consumer with both.
        wanted |= {"filter_subject": None, "filter_subjects": sorted(filter_subjects)}
    if any(getattr(config, key) != value for key, value in wanted.items()):
        await js.add_consumer(stream, config.evolve(**wanted))
        log.info("consumer %s of %s updated: %s", name, stream, wanted)
    if not info.num_ack_pending:
        return None
    log.info("%s: %d message(s) unacknowledged come back now", name, info.num_ack_pending)
    try:
        await js.reset_consumer(stream, name)
    except APIError as exc:  # a server older than 2.14: they come back after ack_wait
        log.warning("could not resume %s at its ack floor: %s", name, exc)
    upto: int = info.delivered.stream_seq
    return upto


class DurableConsumer:
    """Durable consumer `name` of `stream`, receiving only `filter_subjects`, each message
    passed to `handle` in stream order, one at a time; `handle` acknowledges it (or not).

    nats-py's subscription callback, nothing in between: no decoding, no log line, no
    thread pool. A message `handle` raises on is logged and delivered again a second later.
    """

    def __init__(
        self,
        stream: str,
        name: str,
        filter_subjects: Sequence[str],
        handle: MessageHandler,
        max_ack_pending: int = MAX_ACK_PENDING,
        ack_wait: float = ACK_WAIT_S,
        exclusive: bool = False,
    ) -> None:
        self.stream = stream
        self._exclusive = exclusive  # resume_in_order
        self.name = name
        self.filter_subjects = sorted(filter_subjects)
        self._handle = handle
        self._max_ack_pending = max_ack_pending
        self._ack_wait = ack_wait
        self._subscription: Subscription | None = None
        self._handling = asyncio.Lock()
        self._stopping = False
        self._js: JetStreamContext | None = None
        # The stream sequence up to which messages come back that an earlier instance had
        # been delivered (they come back as first deliveries: the reset forgets the count).
        self._inherited_upto: int | None = None
        self._caught_up = False

    async def start(self, js: JetStreamContext, patient: bool = False) -> None:
        """From the start of the stream the first time (nothing relayed before the service
        first ran is missed), then from where it left off.

        `patient`: tried again until it succeeds, for an owner that starts it in the
        background. Just after a NATS node failed, the consumer's stream may have no leader
        for a few seconds, and a consumer that gave up would leave its messages unread while
        its owner goes on holding them (a partition's reports, seen stalled until the
        dispatcher stopped). Not inside a lease's start: that would hold the lease unrenewed
        meanwhile; there the failure is raised, and the lease released and tried again."""
        # `caught_up` reads `_js` as "started": set only once `_inherited_upto` is known, or a
        # watermark round asking meanwhile would be told "caught up" (and keep that answer)
        # before the messages an earlier instance left are even counted.
        self._js = None
        self._caught_up = False
        self._inherited_upto = None
        start = _Start()
        delay = START_RETRY_S
        while True:
            try:
                await self._subscribe(js, start)
                break
            except Exception as exc:
                self._js = None
                if not patient:
                    raise
                log.warning("%s: could not start (%r); again in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, START_RETRY_MAX_S)
        _RUNNING[self.stream, self.name] = self
        _sample_lag_while_running()

    async def _subscribe(self, js: JetStreamContext, start: _Start) -> None:
        """One try of `start`; `start` keeps what an earlier try did that cannot be done
        twice (a consumer taken over is deleted: asked again, nobody would be bound)."""
        if self._exclusive and not start.taken_over:
            start.seq = await self._take_over(js)
            start.taken_over = True
        if start.seq is None:
            upto = await resume_in_order(
                js,
                self.stream,
                self.name,
                self._max_ack_pending,
                self._ack_wait,
                self.filter_subjects,
                self._exclusive,
            )
            # An earlier try's reset already brought them back: keep what it counted.
            if upto is not None:
                self._inherited_upto = max(upto, self._inherited_upto or 0)
        self._js = js
        self._stopping = False
        config = api.ConsumerConfig(
            ack_wait=self._ack_wait,
            max_ack_pending=self._max_ack_pending,
            filter_subjects=self.filter_subjects,
            opt_start_seq=start.seq,
        )
        self._subscription = await js.subscribe(
            self.filter_subjects[0],  # only names the stream: the filters are in `config`
            queue=self.name,
            stream=self.stream,
            cb=self._on_message,
            manual_ack=True,
            deliver_policy=DeliverPolicy.ALL
            if start.seq is None
            else DeliverPolicy.BY_START_SEQUENCE,
            config=config,
        )

    async def _take_over(self, js: JetStreamContext) -> int | None:
        """An exclusive consumer still bound to another process's subscription (one frozen
        past its lease): the server refuses to send its deliveries elsewhere while that
        subscription lives, and would go on handing it its turn of them. So the consumer is
        made anew, from its ack floor on: what lies above the floor comes again, as
        delivered before (`delivered_before`: the earlier process may have acted on it).
        Returns the stream sequence to start from, or None: nobody else is bound."""
        try:
            info = await js.consumer_info(self.stream, self.name)
        except NotFoundError:
            return None
        if not info.push_bound:
            return None
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        delivered = info.delivered.stream_seq if info.delivered is not None else 0
        await js.delete_consumer(self.stream, self.name)
        log.warning(
            "%s: still bound to another subscriber; made anew from its ack floor (%d)",
            self.name,
            floor,
        )
        self._inherited_upto = delivered if delivered > floor else None
        return floor + 1

    def delivered_before(self, msg: Msg) -> bool:
        """Whether `msg` was delivered before: to this instance (JetStream counts it), or to
        an earlier one (the reset at start counts from 1 again, so by where that one had got)."""
        meta = msg.metadata
        upto = self._inherited_upto
        return (meta.num_delivered or 1) > 1 or (upto is not None and meta.sequence.stream <= upto)

    async def caught_up(self) -> bool:
        """Whether every message an earlier instance was handling when this one started is
        acknowledged (False until started; asks the server until then, cheap after)."""
        if self._caught_up:
            return True
        if self._js is None:
            return False  # not started
        upto = self._inherited_upto
        if upto is not None:
            info = await self._js.consumer_info(self.stream, self.name)
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            if floor < upto:
                return False
        self._caught_up = True
        return True

    async def stop(self) -> None:
        """The message being handled finishes; the ones received after it are left
        unacknowledged, for the next start (`resume_in_order`) or another instance."""
        async with self._handling:
            self._stopping = True
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
        if _RUNNING.get((self.stream, self.name)) is self:
            del _RUNNING[self.stream, self.name]
            # Its lag is another's to say now (a partition handed over), or nobody's.
            for gauge in (metrics.CONSUMER_PENDING, metrics.CONSUMER_ACK_PENDING):
                with contextlib.suppress(KeyError):
                    gauge.remove(self.stream, self.name)

    async def sample_lag(self) -> None:
        """Its lag as the server tells it, into the gauges (nothing when it cannot tell)."""
        if self._js is None:
            return
        try:
            info = await asyncio.wait_for(
                self._js.consumer_info(self.stream, self.name), LAG_QUERY_TIMEOUT_S
            )
        except Exception as exc:  # NATS away: the gauges keep the last value they had
            log.debug("lag of %s not sampled: %s", self.name, exc)
            return
        if _RUNNING.get((self.stream, self.name)) is self:  # not stopped meanwhile
            metrics.CONSUMER_PENDING.labels(self.stream, self.name).set(info.num_pending or 0)
            metrics.CONSUMER_ACK_PENDING.labels(self.stream, self.name).set(
                info.num_ack_pending or 0
            )

    async def _on_message(self, msg: Msg) -> None:
        async with self._handling:
            if self._stopping:
                return
            # Told "still working on it" while in hand: a short ack wait (which a delivery
            # lost in flight costs) never sends back a message that is only slow.
            alive = asyncio.create_task(self._keep_in_progress(msg))
            try:
                await self._handle(msg)
            except Exception:
                log.exception("%s: handling %s failed; delivering it again", self.name, msg.subject)
                await msg.nak(delay=1.0)
            finally:
                alive.cancel()

    async def _keep_in_progress(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            with contextlib.suppress(Exception):  # acknowledged meanwhile, or disconnected
                await msg.in_progress()


# The durable consumers this process runs, by (stream, name): their lag is sampled every
# metrics.SAMPLE_INTERVAL_S while metrics are served (one consumer-info request each), not
# counted per message.
_RUNNING: dict[tuple[str, str], DurableConsumer] = {}
LAG_QUERY_TIMEOUT_S = 2.0
_sampler: asyncio.Task[None] | None = None


def _sample_lag_while_running() -> None:
    """Start the lag sampler of this event loop, if metrics are served and it is not running."""
    global _sampler
    if not metrics.serving():
        return
    loop = asyncio.get_running_loop()
    if _sampler is not None and not _sampler.done() and _sampler.get_loop() is loop:
        return
    _sampler = loop.create_task(_sample_lag(), name="consumer-lag")


async def _sample_lag() -> None:
    while _RUNNING:
        for consumer in list(_RUNNING.values()):
            await consumer.sample_lag()
        await asyncio.sleep(metrics.SAMPLE_INTERVAL_S)


BatchHandler = Callable[[list[Msg]], Awaitable[None]]


class BatchingConsumer:
    """A `DurableConsumer` whose messages are handled in batches: what arrived while the
    previous batch was being handled (up to `batch`, in stream order) goes to `handle` at
    once, so it can be stored in one transaction and acknowledged after it. `handle`
    acknowledges each message (or not). Nothing waits when idle: a lone message is a batch
    of one. The server sends at most `batch` unacknowledged, so a batch never waits for
    messages behind a slow one.

    `run` is the batching loop, for the owner to run as a task and cancel after `stop`.
    """

    def __init__(
        self,
        stream: str,
        name: str,
        filter_subjects: Sequence[str],
        handle: BatchHandler,
        batch: int = 256,
        ack_wait: float = ACK_WAIT_S,
    ) -> None:
        self._handle = handle
        self._batch = batch
        self._inbox: deque[Msg] = deque()
        self._ready = asyncio.Event()
        self.consumer = DurableConsumer(
            stream, name, filter_subjects, self._arrived, max_ack_pending=batch, ack_wait=ack_wait
        )

    async def start(self, js: JetStreamContext, patient: bool = False) -> None:
        await self.consumer.start(js, patient)

    async def stop(self) -> None:
        await self.consumer.stop()

    async def _arrived(self, msg: Msg) -> None:
        # Called in delivery order, one at a time.
        self._inbox.append(msg)
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            size = min(len(self._inbox), self._batch)
            batch = [self._inbox.popleft() for _ in range(size)]
            if not self._inbox:
                self._ready.clear()
            try:
                await self._handle(batch)
            except Exception:
                log.exception(
                    "%s: a batch of %d failed; delivering it again", self.consumer.name, size
                )
                for msg in batch:
                    await msg.nak(delay=1.0)
