"""The webhook sender outlives a failing store: a read that raises (the database restarting:
`AdminShutdown`) costs a round, never the sender (seen in the cluster chaos run: after a
PostgreSQL restart no webhook was sent again until the api restarted). Its rounds are
spaced, and with no webhook a round reads no feed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

from baton_api.webhooks.delivery import ROUND_GAP_S, DeliveryPolicy, WebhookSender
from baton_api.webhooks.store import PENDING, WebhookStore
from baton_platform.lifecycle import cancel_and_wait
from baton_platform.sql import Database
from baton_views import Change, ChangeFilter
from tests.conftest import eventually


class Runner:
    """A replica that does not project: the sender only waits, reading when retries are due."""

    projecting = False

    def __init__(self) -> None:
        self.signal = asyncio.Event()

    def advance_signal(self) -> asyncio.Event:
        return self.signal


def sender_of(
    store: object,
    runner: object,
    poll_interval: float,
    views: object = Any,
    stored_position: Any = lambda: None,
) -> WebhookSender:
    """A sender over `store` (by default for a replica that does not project: the views
    are not read)."""
    return WebhookSender(
        store,  # type: ignore[arg-type]
        views=views,  # type: ignore[arg-type]
        runner=runner,  # type: ignore[arg-type]
        policy=DeliveryPolicy(
            max_attempts=3, backoff_initial=1, backoff_max=2, timeout=1, targets="loopback"
        ),
        stored_position=stored_position,
        poll_interval=poll_interval,
    )


class CountingReads:
    def __init__(self) -> None:
        self.reads = 0

    def next_due(self) -> int | None:
        self.reads += 1  # once per round
        return None


class FailingOnce(CountingReads):
    """A store whose first read of the next due delivery fails as a restarting database's."""

    def next_due(self) -> int | None:
        found = super().next_due()
        if self.reads == 1:
            raise ConnectionError("terminating connection due to administrator command")
        return found


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


async def test_rounds_are_at_least_a_gap_apart_however_fast_the_views_advance() -> None:
    store = CountingReads()
    sender = sender_of(store, Advancing(), poll_interval=1.0)
    running = asyncio.create_task(sender.run())
    try:
        await asyncio.sleep(10 * ROUND_GAP_S)
    finally:
        await cancel_and_wait(running)
    assert 1 <= store.reads <= 11


class Feed:
    """Views whose change feed holds `held`, counting its reads."""

    def __init__(self, held: list[Change]) -> None:
        self.held = held
        self.reads = 0

    def changes(self, _filter: ChangeFilter, after: int, limit: int) -> list[Change]:
        self.reads += 1
        return [c for c in self.held if c.position > after][:limit]


class SkipsCounted(WebhookStore):
    """The store, noting each position an idle round writes."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.skips: list[int] = []

    def skip_to(self, position: int) -> None:
        self.skips.append(position)
        super().skip_to(position)


class Projecting(Runner):
    projecting = True


def change(position: int) -> Change:
    return Change(
        position, "default", UUID(int=position), "dev-1", "reboot", "SUCCEEDED",
        "Succeeded", 3, "2026-12-03T10:00:00.000000+00:00",
    )  # fmt: skip


async def test_with_no_webhook_a_round_moves_on_without_reading_the_feed(
    tmp_path: Path, database_url: str | None
) -> None:
    """The common case (no webhook) costs a round two reads, and a write only when the
    event store moved, not the feed's pages; a webhook created afterwards is sent what
    comes after it, not what came before."""
    where = Database(path=tmp_path / "w.sqlite") if database_url is None else None
    store = SkipsCounted(where or Database(url=database_url, schema="webhooks"))
    feed = Feed([change(1), change(2)])
    stored = [2]  # the event store's last notification id
    sender = sender_of(store, Projecting(), 1.0, feed, lambda: stored[0])
    try:
        await sender.round(None)  # type: ignore[arg-type]
        assert (feed.reads, store.position()) == (0, 2)
        await sender.round(None)  # type: ignore[arg-type]  # nothing stored meanwhile
        assert store.skips == [2]

        # 192.0.2.1 (TEST-NET) is refused by the loopback-only policy: no request leaves.
        hook = store.create("default", "http://192.0.2.1/hook", ["*"], None, "k")
        feed.held.append(change(3))
        stored[0] = 3
        await sender.round(None)  # type: ignore[arg-type]
        assert feed.reads >= 1 and store.position() == 3

        async def attempted() -> bool:
            due = store.due(now_ms=2**62, limit=100)
            return [(d.position, d.attempts) for d, _ in due] == [(3, 1)]

        await eventually(attempted, what="the one delivery, of change 3, tried once")
        assert store.counts(hook.id)[PENDING] == 1
    finally:
        store.close()
