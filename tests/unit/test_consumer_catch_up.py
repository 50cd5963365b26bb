"""A durable consumer is not "caught up" while its start is still counting what an earlier
instance left unacknowledged: the bridge's watermark asks while the consumer starts, and an
early yes (kept for good) let it write a watermark before the inherited request was
reported (seen once in CI under load)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from baton_platform import consumers
from baton_platform.consumers import DurableConsumer


class FakeJetStream:
    """What `start` and `caught_up` ask of JetStream: the ack floor, and a subscription."""

    def __init__(self, ack_floor: int) -> None:
        self.ack_floor = ack_floor

    async def consumer_info(self, stream: str, name: str) -> Any:
        return SimpleNamespace(ack_floor=SimpleNamespace(stream_seq=self.ack_floor))

    async def subscribe(self, *args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace()


async def test_not_caught_up_while_the_start_still_counts_what_was_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counting = asyncio.Event()
    counted = asyncio.Event()

    async def resume_in_order(*args: Any) -> int:
        counting.set()
        await counted.wait()
        return 7  # an earlier instance had been delivered up to stream sequence 7

    monkeypatch.setattr(consumers, "resume_in_order", resume_in_order)

    async def handle(msg: Any) -> None:
        return None

    consumer = DurableConsumer("EVENTS", "bridge", ["baton.v1.events.>"], handle)
    js = FakeJetStream(ack_floor=5)
    starting = asyncio.create_task(consumer.start(js))  # type: ignore[arg-type]
    await counting.wait()

    assert not await consumer.caught_up()  # still counting: no answer yet but "no"

    counted.set()
    await starting
    assert not await consumer.caught_up()  # 5 and 6 come back unacknowledged
    js.ack_floor = 7
    assert await consumer.caught_up()
