"""`DurableConsumer` against a real nats-server: in order, only its subjects, and a stop
that leaves nothing half-done and nothing waiting for the ack wait."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import REGISTRY

from baton_contracts.nats import EVENTS_STREAM, event_subject, events_of_type
from baton_platform import metrics
from baton_platform.consumers import DurableConsumer
from tests.conftest import eventually

pytestmark = pytest.mark.integration

NAME = "test-consumer"


class Recorder:
    """A handler recording what it acknowledged; `hold` keeps it inside the n-th message."""

    def __init__(self, hold: int | None = None) -> None:
        self.acked: list[str] = []
        self.hold = hold
        self.inside = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, msg: Msg) -> None:
        if len(self.acked) + 1 == self.hold:
            self.inside.set()
            await self.release.wait()
        await msg.ack()
        self.acked.append(msg.data.decode())

    async def has(self, count: int) -> bool:
        return len(self.acked) >= count


async def publish(nc: Client, *types: str) -> None:
    js = nc.jetstream()
    for n, type_ in enumerate(types):
        await js.publish(event_subject("e", type_), f"{type_}-{n}".encode())


def consumer(handle: Recorder) -> DurableConsumer:
    subjects = [events_of_type("Requested"), events_of_type("Succeeded")]
    return DurableConsumer(EVENTS_STREAM, NAME, subjects, handle)


async def handled(nc: Client, count: int, last: str | None = None) -> list[str]:
    """What a new consumer acknowledges, once it has `count` (and `last`, when given);
    within 5 s (the ack wait is 30 s: nothing may wait for it)."""
    handle = Recorder()
    events = consumer(handle)
    await events.start(nc.jetstream())

    async def done() -> bool:
        return await handle.has(count) and (last is None or last in handle.acked)

    try:
        await eventually(done, timeout=5, what=f"{count} handled, {last or 'any'} last")
    finally:
        await events.stop()
    return handle.acked


async def test_only_its_subjects_in_stream_order(nc: Client) -> None:
    await publish(nc, "Requested", "Dispatched", "Published", "Succeeded", "Requested")
    assert await handled(nc, 3) == ["Requested-0", "Succeeded-3", "Requested-4"]
    info = await nc.jetstream().consumer_info(EVENTS_STREAM, NAME)
    assert info.delivered.consumer_seq == 3


async def test_a_stop_finishes_the_message_in_hand_and_the_rest_come_back_at_once(
    nc: Client,
) -> None:
    await publish(nc, *["Requested"] * 5)
    handle = Recorder(hold=2)
    events = consumer(handle)
    await events.start(nc.jetstream())
    await asyncio.wait_for(handle.inside.wait(), 5)  # the second one in hand, the rest queued
    stopping = asyncio.create_task(events.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waits for the message in hand
    handle.release.set()
    await asyncio.wait_for(stopping, 5)
    assert handle.acked == ["Requested-0", "Requested-1"]
    # What the stopped one had received comes back at once, in order. The one it had just
    # acknowledged may come again before them: an acknowledgement is not waited for (at
    # least once), and nats-server may reset the consumer for the next instance before it
    # has applied that acknowledgement (seen once in CI, under load: Requested-1 again).
    again = await handled(nc, 3, last="Requested-4")
    assert again[-3:] == ["Requested-2", "Requested-3", "Requested-4"]
    assert set(again[:-3]) <= {"Requested-1"}


async def test_its_lag_is_sampled_while_it_runs_and_goes_when_it_stops(
    nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With metrics served: the server's num_pending / num_ack_pending in the gauges every
    round, nothing per message; a stopped consumer (a partition given away) leaves them."""
    monkeypatch.setattr(metrics, "_serving", True)
    monkeypatch.setattr(metrics, "SAMPLE_INTERVAL_S", 0.1)
    await publish(nc, *["Requested"] * 3)
    handle = Recorder(hold=1)  # holds the first: 1 unacknowledged, the other 2 behind it
    events = DurableConsumer(
        EVENTS_STREAM, NAME, [events_of_type("Requested")], handle, max_ack_pending=1
    )
    labels = {"stream": EVENTS_STREAM, "consumer": NAME}

    def lag() -> tuple[float | None, float | None]:
        return (
            REGISTRY.get_sample_value("baton_consumer_pending_messages", labels),
            REGISTRY.get_sample_value("baton_consumer_ack_pending_messages", labels),
        )

    await events.start(nc.jetstream())
    try:
        await eventually(_returns(lambda: lag() == (2, 1)), timeout=5, what="lag 2 + 1")
        handle.release.set()
        await eventually(_returns(lambda: lag() == (0, 0)), timeout=5, what="lag 0")
    finally:
        await events.stop()
    assert lag() == (None, None)


def _returns(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return check()

    return probe


async def test_an_exclusive_consumer_takes_the_deliveries_off_a_subscriber_still_bound(
    nc: Client,
) -> None:
    """A process frozen inside a message keeps its subscription (the server hands it its
    turn of a queue group's deliveries, and refuses to send them elsewhere while it lives).
    An exclusive consumer started meanwhile makes the consumer anew from its ack floor:
    it gets what the frozen one held, as delivered before, and everything after it."""
    subjects = [events_of_type("Requested"), events_of_type("Succeeded")]
    await publish(nc, *["Requested"] * 3)
    frozen = Recorder(hold=2)
    first = DurableConsumer(EVENTS_STREAM, NAME, subjects, frozen, exclusive=True)
    await first.start(nc.jetstream())
    await asyncio.wait_for(frozen.inside.wait(), 5)  # the second in hand, the third queued

    async def first_acknowledged() -> bool:
        info = await nc.jetstream().consumer_info(EVENTS_STREAM, NAME)
        return info.ack_floor is not None and info.ack_floor.stream_seq == 1

    await eventually(first_acknowledged, what="the first acknowledged at the server")
    earlier: list[bool] = []

    class Next(Recorder):
        async def __call__(self, msg: Msg) -> None:
            earlier.append(second.delivered_before(msg))
            await super().__call__(msg)

    handle = Next()
    second = DurableConsumer(EVENTS_STREAM, NAME, subjects, handle, exclusive=True)
    await second.start(nc.jetstream())
    await publish(nc, "Succeeded")
    try:
        await eventually(lambda: handle.has(3), timeout=5, what="3 handled")
        assert handle.acked == ["Requested-1", "Requested-2", "Succeeded-0"]
        assert earlier == [True, True, False]
    finally:
        frozen.release.set()
        await first.stop()
        await second.stop()


async def test_a_message_in_hand_longer_than_the_ack_wait_is_not_delivered_again(
    nc: Client,
) -> None:
    """The handler is told to keep going, not sent the message again: a short ack wait (a
    lost delivery's cost) is then safe for a handler that is only slow."""
    await publish(nc, "Requested", "Requested")
    seen: list[tuple[str, int]] = []

    async def slow(msg: Msg) -> None:
        seen.append((msg.data.decode(), msg.metadata.num_delivered or 0))
        if len(seen) == 1:
            await asyncio.sleep(3.5)  # over three ack waits of 1 s
        await msg.ack()

    subjects = [events_of_type("Requested")]
    events = DurableConsumer(EVENTS_STREAM, NAME, subjects, slow, max_ack_pending=1, ack_wait=1.0)
    await events.start(nc.jetstream())
    try:

        async def both() -> bool:
            return len(seen) >= 2

        await eventually(both, timeout=10, what="both handled")
        await asyncio.sleep(1.5)  # a redelivery of either would come within this
    finally:
        await events.stop()
    assert seen == [("Requested-0", 1), ("Requested-1", 1)]
