"""The watermark logic on both sides, with an in-memory broker and stream.

Bridge side (baton_device_bridge.watermark): a round's watermark is the time it started,
written only once every probe came back through the same handler as the answers; never past
an answer still being stored, a lifecycle event still being handled, a reconnect, or the
broker's redelivery wait on a resumed session. Dispatcher side (baton_dispatcher.watermarks):
a deadline waits for every bridge behind it, for max_hold at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from baton_contracts.mqtt import (
    RESPONSE_FILTER,
    BridgeProbe,
    is_probe_topic,
    probe_topic,
    response_topic,
)
from baton_contracts.nats import BridgeWatermark, watermark_subject
from baton_device_bridge.watermark import Watermark
from baton_dispatcher.backlog import due_of
from baton_dispatcher.watermarks import BridgeWatermarks, holding
from baton_domain.application import Executions, RequestCommand
from baton_domain.catalog import Catalog
from baton_domain.statuses import AnswerStatus
from baton_platform.metrics import DEADLINES_UNCONFIRMED, REJECTED_MESSAGES
from tests.conftest import DEMO

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
STATUS_FILTER = "baton/v1/devices/+/status"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float = 1.0) -> None:
        self.now += timedelta(seconds=seconds)


# --- the bridge -------------------------------------------------------------------------------


class FakeLink:
    """An MQTT session in memory: what is published comes back, in order, one message at a
    time, through the handler the bridge gives it (as MqttLink's loop does)."""

    def __init__(self, filters: list[str]) -> None:
        self.answer_filters = filters
        self.connected = asyncio.Event()
        self.connected.set()
        self.connection = 1
        self.connected_since = time.monotonic()
        self.resumed = False
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self.handler: Callable[[str, bytes], Awaitable[None]] | None = None

    @property
    def probe_filters(self) -> list[str]:
        return self.answer_filters

    async def publish(self, topic: str, payload: bytes, expiry: int | None = None) -> None:
        await self.queue.put((topic, payload))

    async def loop(self) -> None:
        while True:
            topic, payload = await self.queue.get()
            assert self.handler is not None, "a Bridge sets it"
            await self.handler(topic, payload)


class Bridge:
    """A Watermark on a FakeLink; `forwarded` holds the answers, `written` the watermarks."""

    def __init__(self, link: FakeLink, clock: Clock, **kwargs: Any) -> None:
        self.link = link
        self.written: list[datetime] = []
        self.forwarded: list[str] = []
        self.stamps: list[datetime | None] = []  # since when each waited in the broker
        self.afters: list[datetime | None] = []  # a time it took each one after
        self.release = asyncio.Event()
        self.release.set()
        self.watermark = Watermark("b1", self._write, clock=clock, probe_timeout=1.0, **kwargs)
        link.handler = self.watermark.passing(self._forward)

    async def _write(self, drained_to: datetime) -> None:
        self.written.append(drained_to)

    async def _forward(
        self, topic: str, raw: bytes, taken_since: datetime | None, taken_after: datetime | None
    ) -> None:
        await self.release.wait()  # storing the report
        self.forwarded.append(topic)
        self.stamps.append(taken_since)
        self.afters.append(taken_after)


@pytest.fixture
async def link() -> AsyncIterator[FakeLink]:
    fake = FakeLink([RESPONSE_FILTER, STATUS_FILTER])
    loop = asyncio.create_task(fake.loop())
    yield fake
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop


def test_a_probe_topic_fills_every_wildcard_level_and_is_told_apart() -> None:
    topic = probe_topic(RESPONSE_FILTER)
    assert topic == "baton/v1/devices/_baton_probe_/executions/_baton_probe_/response"
    assert probe_topic("site/#") == "site/_baton_probe_"
    assert probe_topic("fixed/topic") is None  # every topic it matches is a device's own
    assert is_probe_topic(topic)
    assert not is_probe_topic(response_topic("demo-thermostat-1", uuid4()))


async def test_a_round_writes_its_start_once_every_probe_came_back(link: FakeLink) -> None:
    clock = Clock()
    bridge = Bridge(link, clock)
    assert await bridge.watermark.advance(link) == T0
    assert bridge.written == [T0]
    assert bridge.forwarded == []  # probes never reach the answers' handler
    clock.tick()
    assert await bridge.watermark.advance(link) == T0 + timedelta(seconds=1)


async def test_what_a_resumed_session_held_is_dated_back_to_the_last_watermark(
    link: FakeLink,
) -> None:
    """The bridge was down (or died, and its slot was taken over): an answer waiting in the
    session may have reached the broker any time since the last watermark, so until a
    round proves the session drained, what arrives carries that time; then its own."""
    clock = Clock()
    before = T0 - timedelta(seconds=10)  # the last watermark, of the process before
    link.resumed = True
    bridge = Bridge(link, clock, last=before)
    waited = response_topic("demo-thermostat-1", uuid4())
    await link.publish(waited, b"{}")
    assert await bridge.watermark.advance(link) == T0
    clock.tick()
    live = response_topic("demo-thermostat-2", uuid4())
    await link.publish(live, b"{}")
    await eventually_forwarded(bridge, 2)
    assert bridge.forwarded == [waited, live]
    assert bridge.stamps == [before, None]  # then live: taken now
    # A new connection, resumed again: dated back to the watermark just written, until the
    # next round.
    link.connection += 1
    clock.tick()
    await link.publish(waited, b"{}")
    await eventually_forwarded(bridge, 3)
    assert bridge.stamps[-1] == T0


async def test_a_new_session_held_nothing_and_is_not_dated_back(link: FakeLink) -> None:
    clock = Clock()
    bridge = Bridge(link, clock, last=T0 - timedelta(seconds=10))
    assert not link.resumed
    assert await bridge.watermark.advance(link) == T0  # the link known to the watermark
    link.connection += 1  # a clean session, before its first round
    await link.publish(response_topic("demo-thermostat-1", uuid4()), b"{}")
    await eventually_forwarded(bridge, 1)
    assert bridge.stamps == [None]


async def test_what_arrives_is_known_taken_after_the_last_watermark_not_when_read(
    link: FakeLink,
) -> None:
    """Between broker and bridge a message can wait (a loaded machine): it arrives `now`,
    but the broker may have taken it any time after the last round's start, whose probe came
    back before it. That, not its arrival, is what a deadline is weighed against."""
    clock = Clock()
    bridge = Bridge(link, clock)
    first = response_topic("demo-thermostat-1", uuid4())
    await link.publish(first, b"{}")
    await eventually_forwarded(bridge, 1)
    assert bridge.afters == [None]  # no watermark yet: not known
    assert await bridge.watermark.advance(link) == T0
    clock.tick(2)
    await link.publish(response_topic("demo-thermostat-2", uuid4()), b"{}")
    await eventually_forwarded(bridge, 2)
    assert bridge.stamps[-1] is None  # live: taken when it arrived, as before
    assert bridge.afters[-1] == T0  # but taken after the round's start only


async def test_a_bridge_whose_watermark_is_not_written_stamps_what_it_reads_with_the_old_one(
    link: FakeLink,
) -> None:
    """Its watermark not written (BATON_WATERMARKS not answering), a bridge goes on reading
    and storing: every report carries the last watermark written as `taken_after`, however
    long ago that was. What a deadline makes of such a report once the watermark is older
    than the max hold: tests/integration/test_report_order.py."""
    clock = Clock()
    bridge = Bridge(link, clock)
    assert await bridge.watermark.advance(link) == T0

    async def unwritable(drained_to: datetime) -> None:
        raise TimeoutError("BATON_WATERMARKS not answering")

    bridge.watermark._write = unwritable
    clock.tick(120)
    with pytest.raises(TimeoutError):
        await bridge.watermark.advance(link)
    await link.publish(response_topic("demo-thermostat-1", uuid4()), b"{}")
    await eventually_forwarded(bridge, 1)
    assert bridge.stamps == [None]  # live: read now
    assert bridge.afters == [T0]  # "taken after" the watermark of 120 s ago


async def eventually_forwarded(bridge: Bridge, n: int) -> None:
    for _ in range(200):
        if len(bridge.forwarded) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{n} answers not forwarded: {bridge.forwarded}")


async def test_an_answer_before_the_probe_holds_the_round_until_it_is_stored(
    link: FakeLink,
) -> None:
    clock = Clock()
    bridge = Bridge(link, clock)
    bridge.release.clear()
    answer = response_topic("demo-thermostat-1", uuid4())
    await link.publish(answer, b'{"status": "SUCCEEDED"}')  # queued before the round
    round_ = asyncio.create_task(bridge.watermark.advance(link))
    await asyncio.sleep(0.05)
    assert not round_.done() and bridge.written == []
    bridge.release.set()
    assert await round_ == T0
    assert bridge.forwarded == [answer]


async def test_a_probe_that_never_comes_back_proves_nothing(link: FakeLink) -> None:
    bridge = Bridge(link, Clock())
    bridge.release.clear()  # an answer stuck in the store, the probes behind it
    await link.publish(response_topic("demo-thermostat-1", uuid4()), b"{}")
    with pytest.raises(TimeoutError):
        await bridge.watermark.advance(link)
    assert bridge.written == []


async def test_a_lifecycle_event_not_yet_acknowledged_holds_the_watermark_where_it_began(
    link: FakeLink,
) -> None:
    clock = Clock()
    bridge = Bridge(link, clock)
    bridge.watermark.hold(7, T0)
    clock.tick(5)
    assert await bridge.watermark.advance(link) == T0
    bridge.watermark.release(7)
    assert await bridge.watermark.advance(link) == T0 + timedelta(seconds=5)


async def test_no_watermark_is_written_until_an_earlier_process_events_are_handled(
    link: FakeLink,
) -> None:
    caught_up = False

    async def ready() -> bool:
        return caught_up

    bridge = Bridge(link, Clock(), ready=ready)
    assert await bridge.watermark.advance(link) is None
    assert bridge.written == []
    caught_up = True
    assert await bridge.watermark.advance(link) == T0


async def test_a_resumed_session_proves_nothing_within_the_redelivery_wait(
    link: FakeLink,
) -> None:
    bridge = Bridge(link, Clock(), redelivery_wait=0.2)
    link.resumed = True
    link.connected_since = time.monotonic()
    assert await bridge.watermark.advance(link) is None  # waited, then gave the round up
    assert bridge.written == []
    assert await bridge.watermark.advance(link) == T0  # the connection is old enough now


async def test_a_round_across_a_reconnect_does_not_count(link: FakeLink) -> None:
    bridge = Bridge(link, Clock())
    original = link.publish

    async def publish_and_reconnect(topic: str, payload: bytes, expiry: int | None = None) -> None:
        link.connection += 1
        await original(topic, payload)

    link.publish = publish_and_reconnect  # type: ignore[method-assign]
    assert await bridge.watermark.advance(link) is None
    assert bridge.written == []


def malformed_probes() -> float:
    counter = REJECTED_MESSAGES.labels(service="device-bridge", reason="malformed-probe")
    return float(counter._value.get())


async def test_probes_of_other_bridges_and_old_rounds_are_ignored(link: FakeLink) -> None:
    bridge = Bridge(link, Clock())
    before = malformed_probes()
    bridge.release.clear()  # the round's own probes wait behind an answer being stored
    await link.publish(response_topic("demo-thermostat-1", uuid4()), b"{}")
    round_ = asyncio.create_task(bridge.watermark.advance(link))
    await asyncio.sleep(0.05)
    handle = link.handler
    assert handle is not None
    for topic in [t for f in link.answer_filters if (t := probe_topic(f)) is not None]:
        process = bridge.watermark.process
        for probe in [
            BridgeProbe(bridge="b2", process=process, round=1),
            BridgeProbe(bridge="b1", process=process, round=0),
        ]:
            await handle(topic, probe.model_dump_json().encode())
        await handle(topic, b"not a probe")
    await asyncio.sleep(0.05)
    assert not round_.done() and bridge.written == []
    bridge.release.set()
    assert await round_ == T0
    assert len(bridge.forwarded) == 1  # the answer; no probe, nothing on a probe topic
    # What is no probe at all (a device can publish on its own topics' probe level) is a
    # rejection: logged and counted, once per message.
    assert malformed_probes() == before + len(link.answer_filters)


async def test_a_probe_a_killed_process_left_in_the_session_does_not_count(
    link: FakeLink,
) -> None:
    """A bridge killed with its first round's probe unhandled leaves it in its MQTT session,
    ahead of the answers devices sent while it was down. The next process of the same
    instance starts at round 1 too: taking that probe for its own wrote a watermark before
    those answers were stored, and their deadlines beat them (TIMED_OUT although answered)."""
    previous = Watermark("b1", _no_write).process
    written: list[datetime] = []

    async def write(drained_to: datetime) -> None:
        written.append(drained_to)

    watermark = Watermark("b1", write, clock=Clock(), probe_timeout=1.0)
    assert watermark.process != previous
    first, queued = (response_topic("demo-thermostat-1", uuid4()) for _ in range(2))
    stored = {first: asyncio.Event(), queued: asyncio.Event()}
    forwarded: list[str] = []

    async def forward(
        topic: str, raw: bytes, taken_since: datetime | None, taken_after: datetime | None
    ) -> None:
        await stored[topic].wait()
        forwarded.append(topic)

    link.handler = watermark.passing(forward)
    # The session as the new process finds it: an answer it is storing, the probes the killed
    # process left, an answer a device sent while no bridge was there.
    await link.publish(first, b"{}")
    for topic in [t for f in link.answer_filters if (t := probe_topic(f)) is not None]:
        left = BridgeProbe(bridge="b1", process=previous, round=1)
        await link.publish(topic, left.model_dump_json().encode())
    await link.publish(queued, b"{}")
    round_ = asyncio.create_task(watermark.advance(link))
    await asyncio.sleep(0.05)
    stored[first].set()  # the left probes come back now, the queued answer is being stored
    await asyncio.sleep(0.05)
    assert not round_.done() and written == []
    stored[queued].set()
    assert await round_ == T0
    assert forwarded == [first, queued]


async def _no_write(drained_to: datetime) -> None:
    raise AssertionError("never written")


# --- the dispatcher ---------------------------------------------------------------------------


def mark(bridge: str, drained_to: datetime) -> BridgeWatermark:
    return BridgeWatermark(bridge=bridge, drained_to=drained_to)


def test_a_deadline_waits_for_each_bridge_behind_it_for_max_hold_at_most() -> None:
    deadline, max_hold = T0, timedelta(seconds=60)
    ahead = mark("ahead", T0 + timedelta(seconds=1))
    behind = mark("behind", T0 - timedelta(seconds=1))
    silent = mark("silent", T0 - timedelta(seconds=120))
    marks = [ahead, behind, silent]
    assert holding(marks, deadline, T0 + timedelta(seconds=2), max_hold) == ([behind], [silent])
    # Once `behind` has been silent for max_hold, it is given up on too.
    late = T0 - timedelta(seconds=1) + max_hold
    assert holding(marks, deadline, late, max_hold) == ([], [behind, silent])
    assert holding([ahead], deadline, T0, max_hold) == ([], [])
    assert holding([], deadline, T0, max_hold) == ([], [])


class FakeStream:
    """BATON_WATERMARKS in memory: one message per subject, sequence numbers rising."""

    def __init__(self) -> None:
        self.messages: dict[int, RawStreamMsg] = {}
        self.seq = 0
        self.gets = 0

    def write(self, watermark: BridgeWatermark) -> None:
        subject = watermark_subject(watermark.bridge)
        for seq in [s for s, m in self.messages.items() if m.subject == subject]:
            del self.messages[seq]
        self.seq += 1
        msg = RawStreamMsg(subject=subject, seq=self.seq)
        msg.data = watermark.model_dump_json().encode()
        self.messages[self.seq] = msg

    async def get_msg(self, stream: str, seq: int, **_: object) -> RawStreamMsg:
        self.gets += 1
        following = sorted(s for s in self.messages if s >= seq)
        if not following:
            raise NotFoundError
        return self.messages[following[0]]


async def test_the_dispatcher_reads_every_bridge_and_counts_a_deadline_it_gave_up_waiting_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="baton_dispatcher.watermarks")
    stream, clock = FakeStream(), Clock()
    stream.write(mark("b-live", T0 - timedelta(seconds=1)))
    stream.write(mark("b-gone", T0 - timedelta(hours=1)))
    stream.write(mark("b-live", T0 + timedelta(seconds=1)))  # replaces its first one
    marks = BridgeWatermarks(stream, max_hold=60, refresh=0, clock=clock)  # type: ignore[arg-type]
    counter = DEADLINES_UNCONFIRMED.labels(bridge="b-gone")
    before = counter._value.get()

    assert sorted(m.bridge for m in await marks.read()) == ["b-gone", "b-live"]
    assert not await marks.hold(T0)  # b-live is past it; b-gone given up on
    assert not await marks.hold(T0)
    assert counter._value.get() == before + 2  # each deadline decided without it
    assert caplog.text.count("device-bridge b-gone has confirmed nothing since") == 1
    assert await marks.hold(T0 + timedelta(seconds=2))  # b-live is not there yet


async def test_the_dispatcher_reads_the_stream_at_most_once_per_refresh() -> None:
    stream = FakeStream()
    stream.write(mark("b1", T0))
    marks = BridgeWatermarks(stream, max_hold=60, refresh=60)  # type: ignore[arg-type]
    await marks.read()
    reads = stream.gets
    await marks.read()
    assert stream.gets == reads


def test_a_deadline_that_can_change_nothing_waits_for_nothing() -> None:
    now = [T0]
    app = Executions(
        Catalog.from_yaml(DEMO),
        env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
        clock=lambda: now[0],
    )
    execution = app.request(RequestCommand("demo-thermostat-1", "reboot", {}, ttl=5)).execution
    due = due_of(app.get(execution.id), "execution")
    assert (due.device_id, due.at) == ("demo-thermostat-1", T0 + timedelta(seconds=5))
    assert due_of(app.get(execution.id), "verification").at is None  # none to verify
    app.record_answer(execution.id, "demo-thermostat-1", "a", AnswerStatus.SUCCEEDED, {}, T0)
    assert due_of(app.get(execution.id), "execution").at is None  # it ended
