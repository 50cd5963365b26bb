"""The bridge handles MQTT messages concurrently across topics, in order within one topic,
and a watermark probe only once everything before it is done (baton_device_bridge.lanes)."""

from __future__ import annotations

import asyncio

from baton_device_bridge.lanes import Lanes, Work


async def test_one_topic_in_order_others_alongside_and_a_barrier_after_all() -> None:
    lanes = Lanes(limit=10)
    done: list[str] = []
    release = asyncio.Event()

    def work(name: str, wait: bool = False) -> Work:
        async def run() -> None:
            if wait:
                await release.wait()
            done.append(name)

        return run

    await lanes.submit("a", work("a1", wait=True))  # held until released
    await lanes.submit("a", work("a2"))
    await lanes.submit("b", work("b1"))
    await lanes.barrier(work("probe"))
    await lanes.submit("c", work("c1"))
    for _ in range(20):
        await asyncio.sleep(0)
    # b and c went on while a1 was held; a2 waits for a1; the probe waits for all before it.
    assert done == ["b1", "c1"]
    release.set()
    await asyncio.wait_for(_drained(lanes), 2)
    assert done == ["b1", "c1", "a1", "a2", "probe"]


async def test_the_limit_holds_back_the_reader() -> None:
    lanes = Lanes(limit=2)
    release = asyncio.Event()

    async def held() -> None:
        await release.wait()

    await lanes.submit("a", held)
    await lanes.submit("b", held)
    third = asyncio.create_task(lanes.submit("c", held))
    await asyncio.sleep(0.05)
    assert not third.done()  # two in hand: the third waits before it starts
    release.set()
    await asyncio.wait_for(third, 2)
    await lanes.close()


async def _drained(lanes: Lanes) -> None:
    while lanes._running:
        await asyncio.sleep(0.01)
