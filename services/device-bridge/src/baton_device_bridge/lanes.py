"""Handling the bridge's MQTT messages concurrently, in order where order matters.

Each message waits for JetStream to store its report before it is acknowledged; one at a time,
a burst (every device's presence after a broker restart: hundreds of messages) holds the
answers behind it for seconds, long enough for deadlines to wait on them. So messages run
concurrently, in lanes: one per topic (a device's answers come on one topic, and STARTED must
be stored before SUCCEEDED), arrival order within a lane. A barrier (the watermark's probe)
runs only once every message that arrived before it has finished: the probe's promise is
that everything before it is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

Work = Callable[[], Awaitable[None]]

# Messages in hand at once; past it, the bridge stops reading from the broker (which queues).
MAX_IN_HAND = 256


class Lanes:
    def __init__(self, limit: int = MAX_IN_HAND) -> None:
        self._gate = asyncio.Semaphore(limit)
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, lane: str, work: Work) -> None:
        """Start `work` after the lane's previous work; returns once it is started (waits
        while `limit` are in hand)."""
        previous = self._tails.get(lane)
        task = await self._start({previous} if previous is not None else set(), work)
        self._tails[lane] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tails.get(lane) is done:
                del self._tails[lane]

        task.add_done_callback(forget)

    async def barrier(self, work: Work) -> None:
        """Start `work` after everything submitted before it."""
        await self._start(set(self._running), work)

    async def _start(self, after: set[asyncio.Task[None]], work: Work) -> asyncio.Task[None]:
        await self._gate.acquire()
        task = asyncio.create_task(_after(after, work))
        self._running.add(task)

        def release(done: asyncio.Task[None]) -> None:
            self._running.discard(done)
            self._gate.release()

        task.add_done_callback(release)
        return task

    async def close(self) -> None:
        """Cancel what is in hand (the broker hands back what was not acknowledged)."""
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)


async def _after(earlier: set[asyncio.Task[None]], work: Work) -> None:
    if earlier:
        await asyncio.wait(earlier)
    await work()
