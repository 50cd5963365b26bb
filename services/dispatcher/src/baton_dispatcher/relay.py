"""The outbox relay: every stored event, in notification order, onto JetStream.

Publishing is driven from the store (invariant 2): an event is published only once it is
stored, and after a crash the relay resumes from the last event the stream holds, read back
from the `Baton-Notification-Id` header. `Nats-Msg-Id` = notification id lets JetStream drop
an event published twice around a crash.

Up to `WINDOW` events are on their way at once, their acknowledgements awaited in order:
one round trip per window instead of one per event. Two expectations keep them in order:
each event names the notification id of the one before it (`Nats-Expected-Last-Msg-Id`)
and the stream sequence that one gets (`Nats-Expected-Last-Sequence`), so once one is lost
(a connection dropped mid-window) or another message got in between, the server refuses
every later one rather than storing it out of place. The same chain means an acknowledged
event vouches for every one sent before it, so only the last of each `ACK_EVERY` events
(and of each round) asks for an acknowledgement: the others go without a reply subject,
and nats-server sends nothing back for them (a reply per event was a fifth of the messages
a command sends through NATS). The position moves only over acknowledged events; after a
refusal or an error the relay reads the stream's last sequence again and goes on from its
position, the first event sent naming no predecessor (the stream's last message may be
another's, and nats-server keeps the last message id only in memory), and asks for an
acknowledgement of every event until a round goes through, so that an error the server
gives one event is seen as that event's. An event already in the stream (its
acknowledgement was lost) then comes back as a duplicate, which counts as published.

The stream is a copy of the store, so the relay also mends one that lost its newest
events: a nats-server killed before they reached its disk comes back without them (a
stream that does not fsync each write: docs/architecture.md, "What stored means"). The
relay then finds the stream ending before its position, at its next publish (refused: the
sequence it expects is gone) or, while the store is quiet, at its next look at the stream
(`check_stream_end`), and publishes again from the stream's last event: the same events,
in the same order, under the same sequences.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections import deque

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import APIError, NoStreamResponseError, NotFoundError

from baton_contracts.nats import (
    EVENTS_STREAM,
    NOTIFICATION_ID_HEADER,
    LifecycleEvent,
    event_subject,
)
from baton_dispatcher.traces import TraceContexts
from baton_domain.application import Executions
from baton_platform import metrics, tracing
from baton_platform.mapping import read_events

log = logging.getLogger(__name__)

BATCH = 500  # events read from the store at once
WINDOW = 256  # events published and not yet acknowledged
ACK_EVERY = 64  # events per acknowledgement asked for (the chain vouches for the rest)
ACK_TIMEOUT = 5.0
# JetStream's error codes for a failed Nats-Expected-Last-Sequence / -Last-Msg-Id.
OUT_OF_PLACE = frozenset({10071, 10070})


class AckWindow:
    """JetStream publishes whose acknowledgements are awaited later, as futures.

    What `JetStreamContext.publish_async` does, except that an error the server answers
    (here: a refused expected sequence) fails the future: nats-py 2.16 raises it inside its
    reply handler instead and leaves the future pending forever (nats-io/nats.py#985)."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._prefix: str | None = None
        self._tokens = itertools.count()
        self._futures: dict[str, asyncio.Future[api.PubAck]] = {}

    async def send(
        self, subject: str, payload: bytes, headers: dict[str, str], ack: bool = True
    ) -> asyncio.Future[api.PubAck] | None:
        """`ack` false: no reply subject, so no acknowledgement (None)."""
        if not ack:
            await self._nc.publish(subject, payload, headers=headers)
            return None
        if self._prefix is None:
            prefix = self._nc.new_inbox()
            await self._nc.subscribe(f"{prefix}.*", cb=self._on_reply)
            self._prefix = prefix
        token = str(next(self._tokens))
        future: asyncio.Future[api.PubAck] = asyncio.get_running_loop().create_future()
        self._futures[token] = future
        future.add_done_callback(lambda _: self._futures.pop(token, None))
        await self._nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers)
        return future

    async def _on_reply(self, msg: Msg) -> None:
        future = self._futures.get(msg.subject.rsplit(".", 1)[-1])
        if future is None or future.done():
            return  # given up on already
        if msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
            if "error" in reply:
                error = reply["error"]
                future.set_exception(
                    APIError(
                        code=error.get("code"),
                        err_code=error.get("err_code"),
                        description=error.get("description"),
                    )
                )
            else:
                future.set_result(api.PubAck.from_response(reply))
        except (ValueError, TypeError, KeyError) as exc:
            future.set_exception(exc)


class OutboxRelay:
    def __init__(
        self,
        executions: Executions,
        nc: Client,
        poll_interval: float,
        traces: TraceContexts | None = None,
    ) -> None:
        self._executions = executions
        # Each execution's trace context, continued by the span of each of its events.
        self._traces = traces
        self._carriers = tracing.Remembered()
        self._js = nc.jetstream()
        self._acks = AckWindow(nc)
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()
        self.position = 0
        # The stream sequence the next event expects before it; None: read the stream.
        self._last_seq: int | None = None
        # The notification id the next event expects before it; None: the first after
        # reading the stream, which expects only the sequence.
        self._last_id: int | None = None
        # Events per acknowledgement: every one after a failure, until a round goes through.
        self._ack_every = ACK_EVERY

    def wake(self) -> None:
        """Called after each write so events go out at once rather than at the next poll."""
        self._wake.set()

    async def read_stream_end(self) -> None:
        """Take the stream's last sequence, and the position of its last message when that
        is one of ours: ahead of us at the start, or what a relay stopped mid-window left
        landing behind it (not published again, one duplicate at a time); behind us when
        the stream lost its newest events (published again)."""
        info = await self._js.stream_info(EVENTS_STREAM)
        self._last_seq, self._last_id = info.state.last_seq, None
        if not info.state.last_seq:
            return
        try:
            last = await self._js.get_msg(EVENTS_STREAM, seq=info.state.last_seq)
        except NotFoundError:
            return  # expired or purged: nothing says where the stream's copy ends
        published = int((last.headers or {}).get(NOTIFICATION_ID_HEADER, 0))
        if not published:
            return  # someone else's message: ours before it are all in
        if published < self.position:
            # Acknowledged once, so the stream had them: it lost them since.
            log.warning(
                "%s ends at notification %d, before %d: the stream lost its newest events;"
                " publishing them again",
                EVENTS_STREAM,
                published,
                self.position,
            )
        self.position = published

    async def check_stream_end(self) -> None:
        """Whether the stream still ends where the relay left it; when it ends before, the
        next publish reads it again. For a quiet store: a publish would find out at once."""
        info = await self._js.stream_info(EVENTS_STREAM)
        if self._last_seq is not None and info.state.last_seq < self._last_seq:
            self._last_seq = None

    async def publish(self, events: list[LifecycleEvent], after: int | None = None) -> None:
        """Publish those of `events` (in notification order, read from the store `after`
        that notification; None: `position`) past `position`, up to `WINDOW` in flight;
        `position` follows each one acknowledged. Raises on the first one refused or
        unanswered: the rest are dropped, to be read and published again after the
        stream's end is read again."""
        after = self.position if after is None else after
        if self._last_seq is None:
            await self.read_stream_end()
            if self.position < after:
                # `events` start past a gap in the stream: read them again from its end.
                raise OutOfPlaceError(f"{EVENTS_STREAM} ends at notification {self.position}")
        todo = [event for event in events if event.notification_id > self.position]
        every = self._ack_every
        # Each acknowledgement awaited stands for `every` events sent before it.
        in_flight: deque[tuple[int, asyncio.Future[api.PubAck]]] = deque()
        try:
            for index, event in enumerate(todo, start=1):
                first_of_chunk = (index - 1) % every == 0
                if first_of_chunk and len(in_flight) >= WINDOW // every:
                    await self._settle(*in_flight.popleft())
                ack = index % every == 0 or index == len(todo)
                future = await self._send(event, ack)
                if future is not None:
                    in_flight.append((event.notification_id, future))
            while in_flight:
                await self._settle(*in_flight.popleft())
        except BaseException:
            self._last_seq = None  # what follows a failed one is refused: read the stream
            self._ack_every = 1
            raise
        else:
            if todo:
                self._ack_every = ACK_EVERY
        finally:
            for _, future in in_flight:
                future.cancel()

    async def _send(self, event: LifecycleEvent, ack: bool) -> asyncio.Future[api.PubAck] | None:
        assert self._last_seq is not None
        notification_id = str(event.notification_id)
        headers = {
            "Nats-Msg-Id": notification_id,
            NOTIFICATION_ID_HEADER: notification_id,
            "Nats-Expected-Stream": EVENTS_STREAM,
            "Nats-Expected-Last-Sequence": str(self._last_seq),
        }
        if self._last_id is not None:
            headers["Nats-Expected-Last-Msg-Id"] = str(self._last_id)
        subject = event_subject(event.execution_id, event.type)
        # Its execution's trace goes on (none: tracing is off, or none was kept for it).
        parent = self._carriers.parent(event.execution_id)
        kind, about = tracing.SpanKind.PRODUCER, event.execution_id
        with tracing.continued(f"relay {event.type}", kind, parent, about):
            tracing.inject(headers)
            future = await self._acks.send(subject, event.model_dump_json().encode(), headers, ack)
        self._last_seq += 1
        self._last_id = event.notification_id
        return future

    async def _settle(self, notification_id: int, future: asyncio.Future[api.PubAck]) -> None:
        ack = await asyncio.wait_for(future, ACK_TIMEOUT)
        self.position = notification_id
        if ack.duplicate:
            # In the stream already (its acknowledgement was lost): published, but it did
            # not take the sequence the ones after it expect.
            raise OutOfPlaceError(f"notification {notification_id} was in the stream already")

    def _read(self) -> list[LifecycleEvent]:
        """The next events, and the trace contexts of their executions not yet known."""
        events = read_events(self._executions, self.position, BATCH)
        if self._traces is not None:
            unknown = (e.execution_id for e in events if e.execution_id not in self._carriers)
            for execution_id, carrier in self._traces.find(unknown).items():
                self._carriers.keep(execution_id, carrier)
        return events

    async def run(self) -> None:
        """Until cancelled: an error is logged and tried again, never the end of the task
        (the dispatcher holds the relay's lease while it runs: a relay that ended would
        leave every event unpublished until that dispatcher stopped)."""
        while True:
            try:
                await self.read_stream_end()
                break
            except Exception as exc:
                # Just after a NATS node failed, the stream may have no leader for a while.
                log.warning("relay cannot read the stream's end yet (%r); trying again", exc)
                await asyncio.sleep(1.0)
        log.info("relay resuming after notification %d", self.position)
        # How far behind the store the relay is: an event the stream refuses, or a NATS that
        # will not take them, leaves it growing.
        stored = self._executions.recorder.max_notification_id
        async with metrics.lag_sampled(metrics.RELAY_BEHIND, stored, lambda: self.position):
            await self._relay()

    async def _relay(self) -> None:
        while True:
            # Cleared before reading, so a write that lands while we read still wakes us.
            self._wake.clear()
            try:
                after = self.position
                events = await asyncio.to_thread(self._read)
                await self.publish(events, after)
            except asyncio.CancelledError:
                raise
            except OutOfPlaceError as exc:
                log.info("relay reads the stream's end again: %s", exc)
                continue
            except APIError as exc:
                if exc.err_code in OUT_OF_PLACE:
                    # One before it was lost or a duplicate, or another message got in
                    # between: go on from our position after the stream's last message.
                    log.info("relay reads the stream's end again: %s", exc.description)
                    continue
                log.exception("relay could not publish; retrying")
                await asyncio.sleep(1.0)
                continue
            except Exception:
                # NATS or the store is unavailable: keep the position, try again shortly.
                log.exception("relay could not publish; retrying")
                await asyncio.sleep(1.0)
                continue
            if len(events) < BATCH:
                try:
                    await asyncio.wait_for(self._wake.wait(), self._poll_interval)
                except TimeoutError:
                    await self._look_while_quiet()

    async def _look_while_quiet(self) -> None:
        """`check_stream_end`, its failure logged: NATS may be down, the next round retries."""
        try:
            await self.check_stream_end()
        except Exception as exc:
            log.info("relay could not look at the stream's end: %r", exc)


class OutOfPlaceError(Exception):
    """The events in flight expect a stream sequence it no longer has."""
