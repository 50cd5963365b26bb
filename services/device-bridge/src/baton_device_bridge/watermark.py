"""The bridge's watermark: a time before which everything the broker took for it is stored.

A device answer must win over a deadline it came before, also when it was still in the
broker (the bridge down, restarting or slow) when the deadline passed. So the bridge proves,
every `interval`, how far it has drained its MQTT session, and the dispatcher applies a
deadline only once every bridge's watermark has reached it (docs/architecture.md, "Deadlines
and answers").

A round: publish one probe (QoS 1, `BridgeProbe`) on `probe_topic(filter)` of each of the
bridge's subscriptions, wait until all of them came back, then write the round's start time
to BATON_WATERMARKS. The broker hands a session's messages out in the order it took them,
and the bridge handles them one at a time, storing each report before it reads the next; so
when a probe is back, everything the broker took before it is stored (or was dropped as
unreadable). Only this process's own probe counts: one a killed process left unhandled waits
in the session ahead of what came after it (each probe names the process that sent it). Two
brokers bend that order, and the round allows for both:
- nats-server's MQTT listener keeps one JetStream consumer per subscription, in no order
  between them: hence one probe per subscription rather than one per session;
- it also hands out again a message the previous connection never acknowledged only after
  its `ack_wait`, even to a resumed session (Mosquitto resends at once): on a resumed session
  a round counts only once the connection is `redelivery_wait` old, and a round across a
  reconnect does not count.

Requests out: a `published` report is stored after the broker's PUBACK, so until a lifecycle
event is acknowledged (`hold`, across its redeliveries), the watermark stays at the time the
broker may have taken its request (baton_device_bridge.handover): a deadline never calls
EXPIRED a request the broker took before it. A process that starts with events an earlier
one was handling writes no watermark until they are acknowledged (`ready`): the earlier
one's last watermark holds deadlines back meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from uuid import uuid4

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError
from pydantic import ValidationError

from baton_contracts.mqtt import BridgeProbe, is_probe_topic, probe_topic
from baton_contracts.nats import WATERMARKS_STREAM, BridgeWatermark, watermark_subject
from baton_device_bridge.link import SERVICE, AnswerHandler, MqttUnavailableError
from baton_platform.metrics import REJECTED_MESSAGES

log = logging.getLogger(__name__)

INTERVAL_S = 0.25
PROBE_TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 5.0
INTRODUCE_RETRY_S = 0.5  # how often a bridge starting asks JetStream again for its watermark

Clock = Callable[[], datetime]
# A message of the session, with the earliest time the broker may have taken it if that is
# before now (`Watermark.taken_since`; None: it did not wait there, the broker took it now)
# and a time it certainly took it after (`Watermark.taken_after`).
StampedHandler = Callable[[str, bytes, datetime | None, datetime | None], Awaitable[None]]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Link(Protocol):
    """What a round needs of the MQTT link (baton_device_bridge.link.MqttLink)."""

    connected: asyncio.Event
    connection: int
    connected_since: float
    resumed: bool

    @property
    def probe_filters(self) -> list[str]: ...

    async def publish(self, topic: str, payload: bytes, expiry: int | None = None) -> None: ...


class WatermarkSink:
    """Writes the bridge's watermark to BATON_WATERMARKS (the latest one per bridge is kept)."""

    def __init__(self, js: JetStreamContext, bridge: str) -> None:
        self._js = js
        self._bridge = bridge

    async def introduce(self, now: datetime) -> datetime:
        """A bridge's first watermark, before its first MQTT session: nothing can wait in a
        session that does not exist yet, and from now on deadlines wait for this bridge.
        Returns the bridge's watermark: the one an earlier process (or replica running the
        slot) wrote last, else `now`."""
        told = False
        while True:
            try:
                msg = await self._js.get_last_msg(
                    WATERMARKS_STREAM, watermark_subject(self._bridge)
                )
            except NotFoundError:
                await self.write(now)
                return now
            except (nats.errors.TimeoutError, ServiceUnavailableError) as exc:
                # JetStream not answering yet (a cluster electing its leaders at start):
                # wait for it, as for the streams, rather than exit.
                if not told:
                    log.info("JetStream not answering yet (%s); waiting", exc)
                    told = True
                await asyncio.sleep(INTRODUCE_RETRY_S)
                continue
            try:
                return BridgeWatermark.model_validate_json(msg.data or b"").drained_to
            except ValidationError:
                return now  # not ours to read: only this process's rounds count from here

    async def write(self, drained_to: datetime) -> None:
        mark = BridgeWatermark(bridge=self._bridge, drained_to=drained_to)
        await self._js.publish(
            watermark_subject(self._bridge),
            mark.model_dump_json().encode(),
            timeout=WRITE_TIMEOUT_S,
            stream=WATERMARKS_STREAM,
        )


@dataclass
class _Round:
    number: int
    waiting: set[str]
    back: asyncio.Event = field(default_factory=asyncio.Event)


class Watermark:
    def __init__(
        self,
        bridge: str,
        write: Callable[[datetime], Awaitable[None]],
        interval: float = INTERVAL_S,
        redelivery_wait: float = 0.0,
        probe_timeout: float = PROBE_TIMEOUT_S,
        clock: Clock = utc_now,
        ready: Callable[[], Awaitable[bool]] | None = None,
        last: datetime | None = None,
    ) -> None:
        """`last`: the watermark the bridge had before this process (`introduce`)."""
        self.bridge = bridge
        self._write = write
        self.interval = interval
        self.redelivery_wait = redelivery_wait
        self.probe_timeout = probe_timeout
        self.clock = clock
        self._ready = ready
        # The newest watermark written, by this process or (`last`) the one before it.
        self.drained_to = last
        self.process = uuid4().hex  # tells our probes from a previous process's (BridgeProbe)
        self._rounds = itertools.count(1)
        self._round: _Round | None = None
        self._held: dict[object, datetime] = {}
        self._announced = 0  # the connection whose first drained round was logged
        self._proven = 0  # the connection whose session a round has proven drained
        self._link: Link | None = None

    # --- what passes through the bridge -------------------------------------------------------

    def hold(self, key: object, since: datetime) -> None:
        """The watermark stays at or before `since` until `key` is released: a request the
        broker may have taken since then is not yet reported."""
        self._held[key] = since

    def release(self, key: object) -> None:
        self._held.pop(key, None)

    def passing(self, forward: StampedHandler) -> AnswerHandler:
        """The MQTT message handler: a probe is taken here, anything else goes to `forward`
        with the time the broker may have taken it (`taken_since`) and one it took it after
        (`taken_after`)."""

        async def handle(topic: str, raw: bytes) -> None:
            if is_probe_topic(topic):
                self._returned(topic, raw)
            else:
                await forward(topic, raw, self.taken_since(), self.taken_after())

        return handle

    def taken_since(self) -> datetime | None:
        """The earliest time the broker may have taken a message handed over now, if that
        is before now.

        None on a connection a round has proven drained (and on a new session: nothing
        waited in it): the message is live, taken now. On a resumed session before that,
        the message may have waited in the broker since the last watermark: the bridge
        down, restarting, or dead and its slot taken over. Stamped with that time, a device
        answer the broker took before a deadline holds it back until it is applied
        (baton_dispatcher.backlog); stamped with its arrival, it lost the race to a deadline
        once the watermark passed (seen in a chaos run: TIMED_OUT for an answer the broker
        had 5 s before the deadline)."""
        link = self._link
        drained = link is not None and (self._proven == link.connection or not link.resumed)
        if drained or self.drained_to is None or self.drained_to >= self.clock():
            return None
        return self.drained_to

    def taken_after(self) -> datetime | None:
        """A time the broker took a message handed over now after (None: not known yet).

        The last watermark: its round's probe on the message's subscription came back before
        the message, and the broker hands a session's messages out in the order it took them
        (on a resumed session, the watermark of the process before: what that one had not
        handled, the broker took after it). Not the time the message arrives: between broker
        and bridge a message can wait, on a loaded machine for tenths of a second, and a
        deadline that fell meanwhile must still wait for an answer the broker took before it
        (seen in a chaos run: TIMED_OUT for an answer the device sent 0.1 s before the
        deadline, read by the bridge 0.2 s after it)."""
        return self.drained_to

    def _returned(self, topic: str, raw: bytes) -> None:
        try:
            probe = BridgeProbe.model_validate_json(raw)
        except ValidationError:
            # Not the bridge's: a device publishing on its own topics with the probe level.
            REJECTED_MESSAGES.labels(service=SERVICE, reason="malformed-probe").inc()
            log.warning("dropped a message on probe topic %s that is no probe", topic)
            return
        current = self._round
        ours = probe.bridge == self.bridge and probe.process == self.process
        if not ours or current is None or probe.round != current.number:
            return  # another bridge's, a previous process's, or a round given up on
        current.waiting.discard(topic)
        if not current.waiting:
            current.back.set()

    # --- the rounds ---------------------------------------------------------------------------

    async def run(self, link: Link) -> None:
        """A round every `interval`, until cancelled; a failed round proves nothing, that's all."""
        while True:
            try:
                await self.advance(link)
            except (MqttUnavailableError, nats.errors.Error, TimeoutError) as exc:
                log.debug("watermark round failed: %s", exc or type(exc).__name__)
            except Exception:
                log.exception("watermark round failed")
            await asyncio.sleep(self.interval)

    async def advance(self, link: Link) -> datetime | None:
        """One round: the watermark it wrote, or None when it proves nothing (yet)."""
        self._link = link
        await link.connected.wait()
        connection = link.connection
        if link.resumed:
            early = link.connected_since + self.redelivery_wait - time.monotonic()
            if early > 0:
                # What the previous connection held may still come back: nothing to prove yet.
                await asyncio.sleep(early)
                return None
        started = self.clock()
        topics = {t for f in link.probe_filters if (t := probe_topic(f)) is not None}
        current = _Round(next(self._rounds), set(topics))
        self._round = current
        probe = BridgeProbe(bridge=self.bridge, process=self.process, round=current.number)
        payload = probe.model_dump_json().encode()
        for topic in topics:
            await link.publish(topic, payload)
        if topics:
            await asyncio.wait_for(current.back.wait(), self.probe_timeout)
        if link.connection != connection:
            return None
        if self._ready is not None and not await self._ready():
            return None  # an earlier process's events are not all handled yet
        drained_to = min([started, *self._held.values()])
        await self._write(drained_to)
        self.drained_to = drained_to
        self._proven = connection
        if self._announced != connection:
            self._announced = connection
            log.info(
                "MQTT session drained: everything the broker took before %s is stored",
                drained_to.isoformat(),
            )
        return drained_to
