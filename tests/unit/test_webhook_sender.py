"""The webhook sender outlives a failing store: a read that raises (the database restarting:
`AdminShutdown`) costs a round, never the sender (seen in the cluster chaos run: after a
PostgreSQL restart no webhook was sent again until the api restarted)."""

from __future__ import annotations

import asyncio
from typing import Any

from baton_api.webhooks.delivery import ROUND_GAP_S, DeliveryPolicy, WebhookSender
from baton_platform.lifecycle import cancel_and_wait
from tests.conftest import eventually


class Runner:
    """A replica that does not project: the sender only waits, reading when retries are due."""

    projecting = False

    def __init__(self) -> None:
        self.signal = asyncio.Event()

    def advance_signal(self) -> asyncio.Event:
        return self.signal


def sender_of(store: object, runner: object, poll_interval: float) -> WebhookSender:
    """A sender over `store` for a replica that does not project (the views are not read)."""
    return WebhookSender(
        store,  # type: ignore[arg-type]
        views=Any,  # type: ignore[arg-type]
        runner=runner,  # type: ignore[arg-type]
        policy=DeliveryPolicy(
            max_attempts=3, backoff_initial=1, backoff_max=2, timeout=1, targets="loopback"
        ),
        stored_position=lambda: None,
        poll_interval=poll_interval,
    )


class FailingOnce:
    """A store whose first read of the next due delivery fails as a restarting database's."""

    def __init__(self) -> None:
        self.reads = 0

    def next_due(self) -> int | None:
        self.reads += 1
        if self.reads == 1:
            raise ConnectionError("terminating connection due to administrator command")
        return None


async def test_a_store_that_fails_a_read_costs_a_round_not_the_sender() -> None:
    store = FailingOnce()
    sender = sender_of(store, Runner(), poll_interval=0.01)
    running = asyncio.create_task(sender.run())
    try:

        async def read_again() -> bool:
            return store.reads >= 3

        await eventually(read_again, what="the store read again after its failure")
        assert not running.done()
    finally:
        await cancel_and_wait(running)


class Advancing:
    """Views that advance all the time (under load: a batch every few ms)."""

    projecting = False

    def advance_signal(self) -> asyncio.Event:
        advanced = asyncio.Event()
        advanced.set()
        return advanced


class CountingReads:
    def __init__(self) -> None:
        self.reads = 0

    def next_due(self) -> int | None:
        self.reads += 1  # once per round
        return None


async def test_rounds_are_at_least_a_gap_apart_however_fast_the_views_advance() -> None:
    store = CountingReads()
    sender = sender_of(store, Advancing(), poll_interval=1.0)
    running = asyncio.create_task(sender.run())
    try:
        await asyncio.sleep(10 * ROUND_GAP_S)
    finally:
        await cancel_and_wait(running)
    assert 1 <= store.reads <= 11
