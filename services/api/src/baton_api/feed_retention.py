"""The change feed and the webhook delivery log are kept `BATON_CHANGE_RETENTION_DAYS`.

Both grow with every event; neither is the record (the event store is, and `baton replay`
builds the feed again in full). The replica that writes the views (the projection's lease
holder) prunes them, a page per transaction so the projection never waits long: the feed's
oldest rows, raising its floor (a client resuming below it is told so: 410 `feed-expired`),
and the deliveries that ended, delivered or dead. Pending deliveries stay, however old.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

from baton_api.projector import ProjectionRunner
from baton_api.retention import every
from baton_api.webhooks.store import WebhookStore
from baton_views import ExecutionViews
from baton_views.changes import PRUNE_PAGE
from baton_views.store import canonical_time

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


class FeedRetention:
    def __init__(
        self,
        views: ExecutionViews,
        webhooks: WebhookStore | None,
        runner: ProjectionRunner,
        retention_days: float,
        interval: float,
        clock: Clock = lambda: datetime.now(UTC),
    ) -> None:
        self._views = views
        self._webhooks = webhooks
        self._runner = runner
        self._retention = timedelta(days=retention_days)
        self._interval = interval
        self._clock = clock

    async def sweep(self) -> tuple[int, int]:
        """Prune what is older than the retention: (changes, deliveries) deleted. Nothing
        on a replica that does not write the views."""
        if not self._runner.projecting:
            return 0, 0
        cutoff = self._clock() - self._retention
        changes = await _in_pages(partial(self._views.prune_changes, cutoff, PRUNE_PAGE))
        deliveries = 0
        if self._webhooks is not None:
            await asyncio.to_thread(self._say_what_webhooks_missed)
            before = canonical_time(cutoff)
            deliveries = await _in_pages(partial(self._webhooks.prune, before, PRUNE_PAGE))
        if changes or deliveries:
            log.info(
                "pruned %d change(s) and %d finished webhook delivery(ies) from before %s",
                changes,
                deliveries,
                cutoff,
            )
        return changes, deliveries

    def _say_what_webhooks_missed(self) -> None:
        """The webhook sender behind the pruned feed (away longer than the retention) goes on
        after the floor: what was pruned before it was enqueued is never delivered."""
        assert self._webhooks is not None
        position, floor = self._webhooks.position(), self._views.change_floor()
        if position is not None and position < floor:
            log.warning(
                "webhooks: changes %d-%d were pruned (BATON_CHANGE_RETENTION_DAYS) before they"
                " could be enqueued; they are not delivered",
                position + 1,
                floor,
            )

    async def run(self) -> None:
        await every(self._interval, self.sweep, "feed retention sweep")


async def _in_pages(prune: Callable[[], int]) -> int:
    """`prune` (a page of deletions, one transaction, in a worker thread) until a page
    comes back short; how many in all."""
    total = 0
    while True:
        pruned = await asyncio.to_thread(prune)
        total += pruned
        if pruned < PRUNE_PAGE:
            return total
