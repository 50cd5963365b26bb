"""The change feed and the finished webhook deliveries are pruned after
BATON_CHANGE_RETENTION_DAYS, by the replica that writes the views only."""

# The views tests' fixtures are imported, and their names are then the tests' parameters.
# ruff: noqa: F811

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from baton_api.feed_retention import FeedRetention
from baton_api.webhooks.delivery import payload_body
from baton_api.webhooks.store import WebhookStore
from baton_domain.application import Executions
from baton_platform.sql import Database
from baton_views import Change, ChangeFilter, ExecutionViews
from tests.unit.test_views import (  # noqa: F401  # fixtures
    Clock,
    app,
    clock,
    every_ending,
    place,
    project_all,
    views,
)


class Runner:
    def __init__(self, projecting: bool) -> None:
        self.projecting = projecting


@dataclass
class Feed:
    """Every ending projected: its changes, a webhook store, and a moment a week and a day
    after the last change (all of it past a week's retention)."""

    views: ExecutionViews
    changes: list[Change]
    webhooks: WebhookStore
    later: datetime

    def retention(self, projecting: bool, days: float) -> FeedRetention:
        runner = Runner(projecting)
        return FeedRetention(self.views, self.webhooks, runner, days, 60, lambda: self.later)  # type: ignore[arg-type]


@pytest.fixture
def feed(app: Executions, views: ExecutionViews, clock: Clock, tmp_path: Path) -> Iterator[Feed]:
    every_ending(app, clock)
    project_all(app, views)
    changes = views.changes(ChangeFilter(tenant=None), 0, 1000)
    webhooks = WebhookStore(Database(path=tmp_path / "webhooks.sqlite"))
    later = datetime.fromisoformat(changes[-1].at) + timedelta(days=8)
    yield Feed(views, changes, webhooks, later)
    webhooks.close()


async def test_only_the_projecting_replica_prunes_and_only_what_is_old(feed: Feed) -> None:
    views = feed.views
    assert await feed.retention(projecting=False, days=7).sweep() == (0, 0)
    assert views.change_floor() == 0
    # Nine days kept: none is that old.
    assert await feed.retention(projecting=True, days=9).sweep() == (0, 0)

    assert await feed.retention(projecting=True, days=7).sweep() == (len(feed.changes), 0)
    assert views.changes(ChangeFilter(tenant=None), 0, 1000) == []
    assert views.change_floor() == feed.changes[-1].position


async def test_a_webhook_sender_behind_the_pruned_feed_is_told_of(
    feed: Feed, caplog: pytest.LogCaptureFixture
) -> None:
    first, last = feed.changes[0].position, feed.changes[-1].position
    feed.webhooks.enqueue([], first, payload_body)  # the sender got no further
    writer = feed.retention(projecting=True, days=7)
    await writer.sweep()
    told = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert told == [
        f"webhooks: changes {first + 1}-{last} were pruned"
        " (BATON_CHANGE_RETENTION_DAYS) before they could be enqueued; they are not delivered"
    ]
    feed.webhooks.enqueue([], last, payload_body)  # caught up: nothing to say
    caplog.clear()
    await writer.sweep()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
